"""HTTP/1.1 POSTs to the KMS endpoint over keep-alive connections; answers parsed by httptools (llhttp).

What this layer guarantees (each rule is tested in ``tests/unit/test_soap_http.py`` and against the
simulator's response-shape faults in ``tests/integration/test_soap_client_vs_simulator.py``):

- **Framing per RFC 9112 §6.3**, decided by llhttp: ``Transfer-Encoding`` wins over
  ``Content-Length``; an answer carrying both is read by its chunks and its connection is closed
  afterwards (never reused: such an answer is the shape of response splitting). Chunked,
  length-delimited and close-delimited bodies (HTTP/1.0, ``Transfer-Encoding`` without a final
  ``chunked``) are all read; a body cut short is a ``network`` error, never a truncated answer.
- **A connection is reused** only after a complete HTTP/1.1 answer that llhttp says may be kept
  (no ``Connection: close``), with no stray bytes after it, within ``keepalive_expiry`` seconds
  (shortened to the server's ``Keep-Alive: timeout=N`` minus one second when it sends one).
- **Size caps**: a body above ``max_body_bytes`` (announced or streamed) and a header section above
  64 KiB end the exchange with ``KmsUnavailable("response_too_large")`` and close the connection,
  so a misbehaving server can neither hang a call nor exhaust memory.
- **Header values we send** are checked once, at construction: a CR, LF, NUL or other control
  character raises ``ValueError`` naming the value's source (the token setting, the WSDL's
  SOAPAction, the endpoint setting), so no setting can inject a header.
- **The endpoint's ``user:password@``** never reaches the ``Host`` header, a log or an error message
  (:attr:`Endpoint.display` is the URL without it).
- **Proxies are refused, not honoured**: when ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (either
  case) would apply to the KMS URL under ``NO_PROXY``'s rules, :func:`refuse_proxy` raises
  ``ValueError`` at start-up naming the variable; put the KMS host in ``NO_PROXY`` or unset it.
  A loopback endpoint (``localhost``, ``127.0.0.0/8``, ``::1``) is never proxied, so never refused.
  KMS head-ends sit on the operator's network, and a silent direct connection past a configured
  proxy would be worse than a clear refusal.
- **Never resend an effect**: a reused connection that fails before the first byte of the answer
  (the server closed it while idle) is retried once on a fresh connection only when the caller says
  the request is ``resendable`` (queries and absolute writes, docs/architecture.md §4); otherwise the failure is a
  ``KmsUnavailable("network")`` and the executor's ledger and retry policy decide.
- **TLS**: one shared :class:`ssl.SSLContext` (:func:`tls_context`), verified by default, with an
  optional client certificate (mTLS).

``timeout`` bounds the connect and, separately, the whole request/response exchange. Waiting for a
free connection is not bounded: that wait is our own back-pressure, not a KMS failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httptools

from .errors import KmsUnavailable

__all__ = [
    "MAX_HEAD_BYTES",
    "Endpoint",
    "HttpAnswer",
    "HttpPool",
    "check_header_value",
    "parse_endpoint",
    "refuse_proxy",
    "tls_context",
]

#: The largest header section of an answer we read (status line and headers).
MAX_HEAD_BYTES = 64 * 1024
_READ_SIZE = 64 * 1024
# RFC 9110 §5.5: a field value is visible characters, SP and HTAB; every other control is refused.
_NOT_FIELD_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_KEEP_ALIVE_TIMEOUT = re.compile(rb"timeout\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The parts of the KMS URL this layer uses. ``display`` is the URL without any ``user:password@``."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str
    display: str
    has_userinfo: bool


def parse_endpoint(url: str, setting: str = "KMSBRIDGE_KMS__ENDPOINT") -> Endpoint:
    """Split ``url``; raise ``ValueError`` naming ``setting`` (never echoing credentials) if it is unusable."""
    if _NOT_FIELD_VALUE.search(url) or " " in url or "\t" in url:
        raise ValueError(f"the KMS endpoint holds a space or a control character (setting {setting})")
    parts = urlsplit(url)
    hostinfo = parts.netloc.rpartition("@")[2]
    display = urlunsplit((parts.scheme, hostinfo, parts.path, parts.query, ""))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the KMS endpoint {display!r} is not an http(s) URL (setting {setting})")
    try:
        port = parts.port
        hostinfo.encode("ascii")
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"the KMS endpoint {display!r} has an invalid host or port (setting {setting})") from exc
    scheme = parts.scheme.lower()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(scheme=scheme, host=parts.hostname, port=port or (443 if scheme == "https" else 80),
                    target=target, host_header=hostinfo, display=display, has_userinfo="@" in parts.netloc)


def check_header_value(value: str, source: str) -> bytes:
    """``value`` as header bytes; ``ValueError`` naming ``source`` if it holds CR, LF, NUL or another control."""
    if _NOT_FIELD_VALUE.search(value):
        raise ValueError(f"the {source} holds a CR, LF, NUL or other control character, which an HTTP header "
                         "cannot carry")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the {source} holds characters an HTTP header cannot carry (not Latin-1)") from exc


def refuse_proxy(endpoint: Endpoint, environ: dict[str, str] | None = None) -> None:
    """Raise ``ValueError`` when a proxy variable would apply to ``endpoint`` (see the module docstring)."""
    env = dict(os.environ if environ is None else environ)
    if _loopback(endpoint.host):
        return  # no proxy can reach our own loopback (the local stack, tests)
    upper = ("HTTPS_PROXY" if endpoint.scheme == "https" else "HTTP_PROXY", "ALL_PROXY")
    found = [name for base in upper for name in (base, base.lower()) if env.get(name)]
    if not found:
        return
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    # NO_PROXY as urllib (and so requests) reads it; the function is stdlib but not in typeshed
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if no_proxy and bypass(endpoint.host, {"no": no_proxy}):
        return
    raise ValueError(
        f"{found[0]} is set and would apply to the KMS endpoint {endpoint.display!r}; kmsbridge calls the KMS "
        f"directly and does not use a proxy: add {endpoint.host} to NO_PROXY, or unset {found[0]}")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(verify: bool | str = True, *, client_cert: str | None = None, client_key: str | None = None,
                client_key_password: str | None = None) -> ssl.SSLContext:
    """One TLS context for every connection (building one costs tens of ms: CA bundle loading).

    ``verify``: ``True`` (system CAs), ``False`` (no verification) or a CA bundle path.
    ``client_cert``/``client_key``: PEM files of the client certificate and its key (mTLS); the key
    may sit in the certificate file (``client_key`` ``None``) and may be encrypted
    (``client_key_password``). Errors name the settings, never the password.
    """
    if isinstance(verify, str):
        try:
            context = ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the KMS CA bundle {verify!r} (setting KMSBRIDGE_KMS__CA_FILE)") from exc
    else:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    if client_key is not None and client_cert is None:
        raise ValueError("a KMS client key without a certificate (set KMSBRIDGE_KMS__CLIENT_CERT_FILE too)")
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert, client_key, password=client_key_password)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the KMS client certificate {client_cert!r} / key {client_key!r} ({type(exc).__name__};"
                " settings KMSBRIDGE_KMS__CLIENT_CERT_FILE, KMSBRIDGE_KMS__CLIENT_KEY_FILE,"
                " KMSBRIDGE_KMS__CLIENT_KEY_PASSWORD)") from exc
    return context


class HttpAnswer(NamedTuple):
    """A complete answer: status, headers by lower-case name (repeated ones joined by ``", "``), body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


class _Stale(Exception):
    """A reused connection failed before any byte of the answer: the server had closed it while idle."""


class _TooLarge(Exception):
    pass


class _Response:
    """httptools callbacks collecting one answer (1xx interim answers are skipped). One per connection:
    llhttp is ready for the next answer after a complete one, and :meth:`start` resets ours."""

    __slots__ = ("body", "conflict", "done", "extra", "head_done", "headers", "keep_alive", "limit", "parser",
                 "size", "status", "too_large", "until_close")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parser = httptools.HttpResponseParser(self)
        # Accept Transfer-Encoding with Content-Length (TE wins, RFC 9112 §6.3) instead of failing the
        # call; the connection is then closed (``conflict``).
        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self.start()

    def start(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.head_done = self.done = self.extra = self.keep_alive = False
        self.conflict = self.too_large = self.until_close = False

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # bytes after the answer: the connection's framing cannot be trusted
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        previous = self.headers.get(key)
        self.headers[key] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 1xx: the real answer follows
        self.status = status
        self.head_done = True
        te = self.headers.get(b"transfer-encoding")
        length = self.headers.get(b"content-length")
        self.conflict = te is not None and length is not None
        if status in (204, 304):
            return
        if te is not None:
            self.until_close = te.rsplit(b",", 1)[-1].strip().lower() != b"chunked"
        elif length is None:
            self.until_close = True
        elif int(length) > self.limit:
            self.too_large = True

    def on_body(self, data: bytes) -> None:
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.too_large = True
            self.body = []
        else:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.status:  # not a 1xx
            self.done = True
            self.keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() == "1.1"

    def reusable(self) -> bool:
        return self.done and self.keep_alive and not (self.conflict or self.extra or self.until_close)


class _Connection:
    __slots__ = ("expires", "reader", "response", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
        self.reader = reader
        self.writer = writer
        self.response = _Response(limit)
        self.expires = 0.0

    def usable(self, now: float) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and now < self.expires

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """HTTP/1.1 POSTs to one endpoint over at most ``size`` keep-alive connections (asyncio streams).

    ``headers`` are ``(name, value, source)``: ``source`` names where the value comes from, for the
    error a bad value raises. Connections are lent most recent first.
    """

    def __init__(self, endpoint: Endpoint, headers: list[tuple[str, str, str]], *, timeout: float,
                 tls: ssl.SSLContext, size: int, max_body_bytes: int, keepalive_expiry: float = 15.0) -> None:
        if max_body_bytes < 1:
            raise ValueError("the KMS answer size cap must be at least 1 byte (setting "
                             "KMSBRIDGE_KMS__MAX_RESPONSE_BYTES)")
        self.endpoint = endpoint
        self._tls = tls if endpoint.scheme == "https" else None
        where = "KMS endpoint {} (setting KMSBRIDGE_KMS__ENDPOINT)"
        lines = [b"POST " + check_header_value(endpoint.target, where.format("path")) + b" HTTP/1.1",
                 b"Host: " + check_header_value(endpoint.host_header, where.format("host")),
                 b"Content-Type: text/xml; charset=utf-8",
                 *(check_header_value(name, f"name of the header {name!r}") + b": " + check_header_value(value, source)
                   for name, value, source in headers)]
        self._head = b"\r\n".join(lines) + b"\r\n"
        self._timeout = timeout
        self._size = max(1, size)
        self._expiry = keepalive_expiry
        self._max_body = max_body_bytes
        self._idle: list[_Connection] = []
        self._free: asyncio.Semaphore | None = None
        self._actions: dict[str, bytes] = {}

    def soap_action(self, action: str, source: str) -> bytes:
        """The checked ``SOAPAction`` header line for ``action`` (checked once, then cached)."""
        line = self._actions.get(action)
        if line is None:
            line = self._actions[action] = b'SOAPAction: "' + check_header_value(action, source) + b'"\r\n'
        return line

    async def post(self, body: bytes, action_line: bytes, op: str, *, resendable: bool) -> HttpAnswer:
        """POST ``body``; raises ``KmsUnavailable`` for transport errors. ``action_line`` comes from
        :meth:`soap_action`; ``resendable`` allows one transparent resend on a stale reused connection."""
        request = b"".join((self._head, action_line, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n",
                            body))
        if self._free is None:
            self._free = asyncio.Semaphore(self._size)
        # Waiting for a connection is our own back-pressure, not a KMS failure: no timeout here.
        async with self._free:
            conn = self._checkout()
            if conn is not None:
                try:
                    return await self._exchange(conn, request, op, reused=True)
                except _Stale as exc:
                    if not resendable:
                        raise KmsUnavailable(
                            "network", f"KMS call {op}: the kept-alive connection closed before an answer; an "
                            "effect is not resent here (the KMS may have applied it)", maybe_applied=True) from exc
            return await self._exchange(await self._connect(op), request, op, reused=False)

    def _checkout(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    async def _connect(self, op: str) -> _Connection:
        host = self.endpoint.host
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    host, self.endpoint.port, ssl=self._tls, server_hostname=host if self._tls else None,
                    limit=_READ_SIZE)
        except TimeoutError as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out connecting") from exc
        except (OSError, ssl.SSLError) as exc:
            raise KmsUnavailable("connect", f"KMS call {op}: cannot connect to the KMS endpoint "
                                 f"({type(exc).__name__})") from exc
        return _Connection(reader, writer, self._max_body)

    async def _exchange(self, conn: _Connection, request: bytes, op: str, *, reused: bool) -> HttpAnswer:
        response = conn.response
        response.start()
        feed = response.parser.feed_data
        received = 0  # bytes of the answer: from the first one on, a failure is not "stale"
        keep = False
        try:
            async with asyncio.timeout(self._timeout):
                conn.writer.write(request)
                await conn.writer.drain()
                while not response.done:
                    data = await conn.reader.read(_READ_SIZE)
                    if not data:
                        if response.head_done and response.until_close:
                            response.done = True  # a close-delimited body ends here
                            break
                        raise ConnectionResetError("the KMS closed the connection before the answer ended")
                    received += len(data)
                    feed(data)
                    if response.too_large:
                        raise _TooLarge()
                    if not response.head_done and received > MAX_HEAD_BYTES:
                        raise _TooLarge()
            keep = response.reusable()
            if keep:
                conn.expires = time.monotonic() + self._keep_for(response.headers.get(b"keep-alive"))
            return HttpAnswer(response.status, response.headers, b"".join(response.body))
        # Every failure from here on came after the request may have been written: maybe applied.
        except TimeoutError as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out", maybe_applied=True) from exc
        except _TooLarge as exc:
            if not response.head_done:
                raise KmsUnavailable("response_too_large", f"KMS call {op}: the answer's header section is "
                                     f"larger than {MAX_HEAD_BYTES} bytes", maybe_applied=True) from exc
            raise KmsUnavailable("response_too_large", f"KMS call {op}: the answer's body is larger than "
                                 f"{self._max_body} bytes (setting KMSBRIDGE_KMS__MAX_RESPONSE_BYTES)",
                                 maybe_applied=True) from exc
        except httptools.HttpParserError as exc:
            raise KmsUnavailable("bad_response", f"KMS call {op}: malformed HTTP answer ({exc})",
                                 maybe_applied=True) from exc
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            if reused and not received:
                raise _Stale() from exc
            raise KmsUnavailable("network", f"KMS call {op}: {type(exc).__name__}", maybe_applied=True) from exc
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn.close()

    def _keep_for(self, keep_alive: bytes | None) -> float:
        """Seconds an idle connection stays reusable: ours, or less when the server says it keeps it less."""
        if keep_alive is not None:
            match = _KEEP_ALIVE_TIMEOUT.search(keep_alive)
            if match is not None:
                return min(self._expiry, max(0.0, int(match.group(1)) - 1.0))
        return self._expiry

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
