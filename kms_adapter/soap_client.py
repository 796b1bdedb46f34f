"""The real KMS adapter: :class:`SoapKmsClient` speaks ``irdeto.wsdl`` (zeep reads the WSDL).

Two request paths, the same contract (``fast_path``, default on):

- **fast** (default): mutating calls, the executor's hot path, are written from per-operation
  templates whose element order, namespaces and SOAPAction zeep reads from the WSDL at start-up (the
  bytes equal what zeep would send), posted over :class:`_LeanHttp`, a small HTTP/1.1 keep-alive
  client on asyncio streams, and their ``MutationResult`` is read with lxml. Queries still go through
  zeep (over the same connections): they are rare and their answers richer. Measured in
  ``docs/benchmarks.md``: about a fifth of the CPU per call of the zeep + httpx path.
- **zeep** (``fast_path=False``): every call through zeep's ``AsyncClient`` over httpx, as before;
  kept as the reference and as the fallback should a KMS need something the lean path lacks.

Transport of the zeep path (httpx, shared by every call of one adapter):

- up to ``max_connections`` keep-alive connections, each held by its own one-connection
  ``httpx.AsyncClient`` and lent to one call at a time (:class:`_ConnectionSlots` says why), so a busy
  executor pays neither a TCP/TLS handshake per call nor httpcore's per-call pool scan;
- one ``timeout`` (seconds) bounds connect, write and read; waiting for a free connection is not
  bounded, because that wait is our own back-pressure, not a KMS failure (the executor bounds
  concurrency);
- TLS certificates are verified by default (``verify=True``; a string is a CA bundle path);
- every call carries ``Authorization: Bearer <token>``.

Error mapping (:mod:`kms_adapter.errors`), applied before zeep parses anything:

=====================================================  ======================================
what happened                                          raised
=====================================================  ======================================
httpx timeout (connect, read, write)                   ``KmsUnavailable(kind="timeout")``
connection refused / DNS / TLS handshake failure       ``KmsUnavailable(kind="connect")``
connection reset, protocol error                       ``KmsUnavailable(kind="network")``
HTTP 401 / 403                                         ``KmsAuthError`` (retryable, see errors.py)
HTTP 429, HTTP 5xx (incl. a SOAP ``Server`` fault)     ``KmsUnavailable(kind="http_<status>")``
HTTP 500 with a SOAP ``Client`` fault                  ``KmsRejected("SOAP_CLIENT_FAULT")``
SOAP fault in an HTTP 200 (non-conforming server)      ``Client``: ``KmsRejected``, else ``soap_fault``
HTTP 400 / 413 / 422                                   ``KmsRejected("HTTP_<status>")``
any other unexpected status (404, 405, ...)            ``KmsUnavailable(kind="http_<status>")``
response that is not the WSDL's XML, or holds a DTD   ``KmsUnavailable(kind="bad_response")``
(zeep's ``EntitiesForbidden``, a value no record holds)
``resultCode`` other than ``OK``                       ``KmsRejected(code, resultText)``
a value XML cannot carry (checked before the call)     ``KmsRejected("INVALID_COMMAND")``
any other exception before the KMS answered            ``KmsRejected("INVALID_COMMAND")``
any other exception after the KMS answered             ``KmsUnavailable(kind="bad_response")``
=====================================================  ======================================

So nothing but our error types leaves the adapter: an exception of lxml, zeep or pydantic is ours
(the request could not be written: terminal) until the KMS answered and theirs (transient) after.
:data:`_ANSWERED` tells the two apart: the HTTP layer sets it when an answer arrived.

An unexpected status other than 400/413/422 (e.g. 404 from a wrong endpoint setting) is treated as
transient so commands wait for an operator instead of being rejected.

The lean HTTP client keeps the same rules: ``max_connections`` keep-alive connections lent one per
call, ``timeout`` bounding the connect and, separately, the whole request/response exchange, TLS
verified with one shared context, the same status mapping (:func:`_raise_for_status`). A reused
connection the server had closed while idle (the request fails before a single response byte) is
retried once on a fresh connection; nothing else is retried here (the executor retries).

Nothing here logs or raises a payload: zeep's transport normally logs whole envelopes at DEBUG (the
PIN would be in them), so :class:`_KmsTransport` replaces its ``post``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from lxml import etree
from pydantic import SecretStr
from zeep import AsyncClient, Settings
from zeep.exceptions import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, Fault
from zeep.exceptions import TransportError as ZeepTransportError
from zeep.exceptions import ValidationError as ZeepValidationError
from zeep.exceptions import XMLSyntaxError as ZeepXMLSyntaxError
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.xsd.types.builtins import DateTime as XsdDateTime

from schemas.records import KmsCommand, Product

from .commands import CommandFields, check_xml_safe, command_fields
from .errors import KmsAuthError, KmsError, KmsRejected, KmsUnavailable
from .port import QUERY_SECTIONS, ClientState, KmsOutcome
from .wsdl import NAMESPACE, SOAP_OPERATION_OF, WSDL_PATH

__all__ = ["SoapKmsClient"]

log = logging.getLogger(__name__)

_BINDING = f"{{{NAMESPACE}}}IrdetoKmsBinding"
_REJECTED_STATUSES = frozenset({400, 413, 422})
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_T = TypeVar("_T")

#: Set when the KMS answered the current call (per task: concurrent calls do not see each other's).
_ANSWERED: ContextVar[bool] = ContextVar("kms_answered", default=False)
#: What zeep and lxml raise for an answer that is not the WSDL's XML (zeep refuses entity declarations).
_NOT_THE_WSDLS_XML = (ZeepTransportError, ZeepXMLSyntaxError, etree.XMLSyntaxError, DTDForbidden,
                      EntitiesForbidden, ExternalReferenceForbidden)


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the executor's own backoff applies


def _soap_operation(headers: dict[str, str]) -> str:
    """The operation name from the SOAPAction header zeep sets (for error messages)."""
    return headers.get("SOAPAction", "").strip('"').rpartition("#")[2] or "call"


class _ConnectionSlots:
    """Up to ``size`` one-connection ``httpx.AsyncClient`` clients, lent one per call (most recent first).

    Why not one ``httpx.AsyncClient`` with ``max_connections=size``: httpcore 1.0's pool walks every
    pooled connection (with a ``poll()`` syscall per idle socket) on each request and each release,
    so its CPU cost per call grows with the pool. Measured with plain httpx requests to the simulator
    at concurrency 50: one pool of 50 connections cost ~4 ms CPU per request, 50 one-connection
    clients ~1.2 ms (the cost of a single connection used alone).
    Clients are created on first need and share one TLS context.
    """

    def __init__(self, factory: Callable[[], httpx.AsyncClient], size: int) -> None:
        self._factory = factory
        self._size = max(1, size)
        self._idle: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._free: asyncio.Semaphore | None = None

    def new(self) -> httpx.AsyncClient:
        client = self._factory()
        self._all.append(client)
        return client

    def give_back(self, client: httpx.AsyncClient) -> None:
        self._idle.append(client)

    async def post(self, address: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        if self._free is None:
            self._free = asyncio.Semaphore(self._size)
        # Waiting here is our own back-pressure, not a KMS failure: no timeout (the caller bounds
        # concurrency; connect/read/write timeouts bound each call once it has a connection).
        async with self._free:
            client = self._idle.pop() if self._idle else self.new()
            try:
                response = await client.post(address, content=content, headers=headers)
            finally:
                self._idle.append(client)
            _ANSWERED.set(True)
            return response

    async def aclose(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            await client.aclose()


Poster = Callable[[str, bytes, dict[str, str]], Awaitable[httpx.Response]]


class _KmsTransport(AsyncTransport):
    """zeep's AsyncTransport over our connections (``poster``), with no payload logging and HTTP status
    mapping (zeep's own ``post`` logs whole envelopes at DEBUG, and would hand any status to zeep)."""

    def __init__(self, poster: Poster, first: httpx.AsyncClient, wsdl_client: httpx.Client,
                 close: Callable[[], Awaitable[None]]) -> None:
        headers = dict(first.headers)
        super().__init__(client=first, wsdl_client=wsdl_client)
        # AsyncTransport.__init__ replaces the client's headers with its User-Agent; put ours back.
        first.headers.update(headers)
        self._poster = poster
        self._close = close

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        op = _soap_operation(headers)
        try:
            response = await self._poster(address, message, headers)
        except httpx.TimeoutException as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out") from exc
        except httpx.ConnectError as exc:
            raise KmsUnavailable("connect", f"KMS call {op}: cannot connect to the KMS endpoint") from exc
        except httpx.TransportError as exc:
            raise KmsUnavailable("network", f"KMS call {op}: {type(exc).__name__}") from exc
        _raise_for_status(response.status_code, response.headers.get("retry-after"), response.content, op)
        return response

    async def aclose(self) -> None:
        await self._close()


def _raise_for_status(status: int, retry_after_header: str | None, content: bytes, op: str) -> None:
    """The HTTP part of the error table in the module docstring (nothing to do for 200)."""
    if status == 200:
        return
    if status in (401, 403):
        raise KmsAuthError(status)
    if status == 500:
        fault = _soap_fault(content)
        if fault is not None and fault[0].endswith("Client"):
            # The KMS says our request is malformed: retrying the same bytes cannot help.
            # faultstring is the server's text; cut it short in case a server echoes input back.
            raise KmsRejected("SOAP_CLIENT_FAULT", fault[1][:200], operation=op)
    if status in _REJECTED_STATUSES:
        raise KmsRejected(f"HTTP_{status}", f"KMS answered HTTP {status}", operation=op)
    retry_after = _parse_retry_after(retry_after_header) if status in (429, 503) else None
    raise KmsUnavailable(f"http_{status}", f"KMS call {op} answered HTTP {status}", retry_after=retry_after)


# --- the lean path ----------------------------------------------------------------------------------


class _Stale(Exception):
    """A reused connection failed before any byte of the answer: the server had closed it."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return (not self.writer.is_closing() and not self.reader.at_eof() and now - self.idle_since < expiry)

    def close(self) -> None:
        self.writer.close()


class _LeanHttp:
    """HTTP/1.1 POSTs to one endpoint over at most ``size`` keep-alive connections (asyncio streams).

    Why not httpx: at a few hundred calls a second httpx/httpcore cost ~1.2 ms of CPU per call, most
    of the executor's budget; this client does what the KMS calls need (POST, Content-Length or
    chunked answers, keep-alive, TLS) in a few tens of microseconds. Connections are lent most recent
    first; an idle one older than ``keepalive_expiry`` is closed rather than reused.
    """

    def __init__(self, endpoint: str, headers: dict[str, str], timeout: float, tls: ssl.SSLContext,
                 size: int, keepalive_expiry: float = 15.0) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the KMS endpoint {endpoint!r} is not an http(s) URL (setting KMSBRIDGE_KMS__ENDPOINT)")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = tls if url.scheme == "https" else None
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: text/xml; charset=utf-8",
                 *(f"{name}: {value}" for name, value in headers.items())]
        self._head = "\r\n".join(lines).encode("latin-1") + b"\r\n"
        self._timeout = timeout
        self._size = max(1, size)
        self._expiry = keepalive_expiry
        self._idle: list[_Connection] = []
        self._free: asyncio.Semaphore | None = None

    async def post(self, body: bytes, soap_action: str, op: str) -> tuple[int, dict[bytes, bytes], bytes]:
        """``(status, headers by lower-case name, body)``; raises ``KmsUnavailable`` for transport errors."""
        request = b"".join((self._head, b'SOAPAction: "', soap_action.encode("latin-1"), b'"\r\nContent-Length: ',
                            str(len(body)).encode(), b"\r\n\r\n", body))
        if self._free is None:
            self._free = asyncio.Semaphore(self._size)
        # Waiting for a connection is our own back-pressure, not a KMS failure: no timeout here.
        async with self._free:
            conn = self._checkout()
            answer = None
            if conn is not None:
                try:
                    answer = await self._exchange(conn, request, op, reused=True)
                except _Stale:
                    conn.close()  # closed by the server while idle: once more on a fresh connection
            if answer is None:
                answer = await self._exchange(await self._connect(op), request, op, reused=False)
        _ANSWERED.set(True)
        return answer

    def _checkout(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    async def _connect(self, op: str) -> _Connection:
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, server_hostname=self._host if self._tls else None)
        except TimeoutError as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out connecting") from exc
        except (OSError, ssl.SSLError) as exc:
            raise KmsUnavailable("connect", f"KMS call {op}: cannot connect to the KMS endpoint") from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes, op: str, *,
                        reused: bool) -> tuple[int, dict[bytes, bytes], bytes]:
        started = False  # a byte of the answer arrived: from then on a failure is not "stale"
        keep = False
        try:
            async with asyncio.timeout(self._timeout):
                conn.writer.write(request)
                await conn.writer.drain()
                while True:
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                    started = True
                    status, headers, version = _parse_head(head)
                    if status >= 200:
                        break  # 1xx (e.g. 100 Continue) are followed by the real answer
                content, delimited = await _read_body(conn.reader, status, headers)
            keep = delimited and version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
            return status, headers, content
        except TimeoutError as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out") from exc
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError) as exc:
            if reused and not started:
                raise _Stale() from exc
            raise KmsUnavailable("network", f"KMS call {op}: {type(exc).__name__}") from exc
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise KmsUnavailable("network", f"KMS call {op}: malformed HTTP answer") from exc
        finally:
            if keep:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def post_for_zeep(self, address: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """:meth:`post` answering an ``httpx.Response``, for zeep's transport (queries)."""
        action = headers.get("SOAPAction", "").strip('"')
        status, raw_headers, body = await self.post(content, action, _soap_operation(headers))
        return httpx.Response(status, headers=[(k, v) for k, v in raw_headers.items()], content=body,
                              request=httpx.Request("POST", address))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError("not an HTTP/1.x status line")
    status = int(rest[:3])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, version


async def _read_body(reader: asyncio.StreamReader, status: int,
                     headers: dict[bytes, bytes]) -> tuple[bytes, bool]:
    """The body and whether its end was delimited (else the server closes the connection after it)."""
    if status in (204, 304):
        return b"", True
    length = headers.get(b"content-length")
    if length is not None:
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return await reader.readexactly(size), True
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(chunks), True
            chunks.append((await reader.readexactly(size + 2))[:-2])
    return await reader.read(), False


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ENVELOPE_HEAD = ("<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env=\""
                  f"{_SOAP_ENV}\"><soap-env:Body>")
_ENVELOPE_TAIL = "</soap-env:Body></soap-env:Envelope>"
_XSD_DATETIME = XsdDateTime()


def _text(value: str) -> str:
    """Text content escaped as lxml serialises it (so the bytes equal zeep's)."""
    return value.translate(_ESCAPES)


class _Envelopes:
    """Request envelopes of the mutating operations, in the element order the WSDL gives (read through
    zeep's binding once), written as zeep writes them: ``soap-env``/``ns0`` prefixes, ``<x/>`` for an
    empty product list, text escaped like lxml. A unit test pins them to zeep's bytes."""

    def __init__(self, binding: Any, operator_tag: str) -> None:
        self.tag = f"<ns0:operatorTag>{_text(operator_tag)}</ns0:operatorTag>"
        self.actions: dict[str, str] = {}
        self.fields: dict[str, tuple[str, ...]] = {}
        for name, operation in binding._operations.items():
            self.actions[name] = operation.soapaction or ""
            self.fields[name] = tuple(element_name for element_name, _ in operation.input.body.type.elements)

    def build(self, soap_op: str, f: CommandFields) -> bytes:
        parts = [_ENVELOPE_HEAD, f'<ns0:{soap_op} xmlns:ns0="{NAMESPACE}">']
        for name in self.fields[soap_op]:
            if name == "operatorTag":
                parts.append(self.tag)
                continue
            if name == "products":
                parts.append(_products(f.products))
                continue
            value = _FIELD_OF[name](f)
            if value is None:
                raise ZeepValidationError(f"missing {name}")  # the WSDL requires it (zeep says the same)
            parts.append(f"<ns0:{name}>{_text(value)}</ns0:{name}>")
        parts.append(f"</ns0:{soap_op}>{_ENVELOPE_TAIL}")
        return "".join(parts).encode()


def _query_clients_envelope(tag: str, cards: Sequence[str]) -> bytes:
    """The ``queryClients`` request as zeep writes it (one ``card`` element per card)."""
    body = "".join(f"<ns0:card>{_text(card)}</ns0:card>" for card in cards)
    return (f'{_ENVELOPE_HEAD}<ns0:queryClients xmlns:ns0="{NAMESPACE}">{tag}{body}</ns0:queryClients>'
            f"{_ENVELOPE_TAIL}").encode()


_FIELD_OF: dict[str, Callable[[CommandFields], str | None]] = {
    "idempotencyKey": lambda f: f.idempotency_key,
    "card": lambda f: f.card,
    "chipset": lambda f: f.chipset,
    "pin": lambda f: f.pin,
    "text": lambda f: f.text,
    "textMode": lambda f: f.text_mode,
}


def _products(products: Sequence[Product]) -> str:
    if not products:
        return "<ns0:products/>"
    parts = ["<ns0:products>"]
    for p in products:
        parts.append(f"<ns0:product><ns0:productId>{_text(p.product_id)}</ns0:productId>")
        if p.valid_from is not None:
            parts.append(f"<ns0:validFrom>{_XSD_DATETIME.xmlvalue(p.valid_from)}</ns0:validFrom>")
        if p.valid_until is not None:
            parts.append(f"<ns0:validUntil>{_XSD_DATETIME.xmlvalue(p.valid_until)}</ns0:validUntil>")
        parts.append("</ns0:product>")
    parts.append("</ns0:products>")
    return "".join(parts)


_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_BODY = f"{{{_SOAP_ENV}}}Body"
_FAULT = f"{{{_SOAP_ENV}}}Fault"
_RESULT_CODE = f"{{{NAMESPACE}}}resultCode"
_RESULT_TEXT = f"{{{NAMESPACE}}}resultText"
_DUPLICATE = f"{{{NAMESPACE}}}duplicate"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _answer(content: bytes, soap_op: str) -> etree._Element:
    """The ``<soap_op>Response`` element of an answer. A SOAP fault raises as zeep's path does
    (``Client``: rejected, else transient); anything else unexpected is a ``bad_response``."""
    try:
        root = etree.fromstring(content, _XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is "
                             "not the WSDL's XML") from exc
    if root.getroottree().docinfo.internalDTD is not None:  # SOAP 1.1 forbids a DTD (zeep: EntitiesForbidden)
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered XML with a DTD")
    body = root.find(_BODY)
    answer = None if body is None else next((el for el in body if isinstance(el.tag, str)), None)
    if answer is not None and answer.tag == _FAULT:
        code = (answer.findtext("faultcode") or "").strip()
        if code.endswith("Client"):
            raise KmsRejected("SOAP_CLIENT_FAULT", (answer.findtext("faultstring") or "").strip(), operation=soap_op)
        raise KmsUnavailable("soap_fault", f"KMS call {soap_op} answered a SOAP fault ({code})")
    if answer is None or answer.tag != f"{{{NAMESPACE}}}{soap_op}Response" or answer.find(_RESULT_CODE) is None:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is not the WSDL's XML")
    return answer


def _boolean(element: etree._Element, tag: str, soap_op: str) -> bool:
    value = _BOOLEANS.get((element.findtext(tag) or "").strip())
    if value is None:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is not the WSDL's XML")
    return value


def _mutation_result(content: bytes, soap_op: str) -> tuple[str, str, bool]:
    """``(resultCode, resultText, duplicate)`` of a ``MutationResult`` answer."""
    answer = _answer(content, soap_op)
    return (answer.findtext(_RESULT_CODE) or "", answer.findtext(_RESULT_TEXT) or "",
            _boolean(answer, _DUPLICATE, soap_op))


_NS = f"{{{NAMESPACE}}}"


def _client_states(content: bytes) -> list[ClientState]:
    """The ``ClientSummary`` entries of a ``queryClients`` answer (what zeep's path builds, read with
    lxml: zeep's deserialisation was ~75 % of a reset run's CPU, docs/benchmarks.md)."""
    answer = _answer(content, "queryClients")
    code = answer.findtext(_RESULT_CODE) or ""
    if code != "OK":
        raise KmsRejected(code, answer.findtext(_RESULT_TEXT) or "", operation="QUERY_CLIENTS")
    states = []
    for client in answer.iterchildren(f"{_NS}client"):
        products = client.find(f"{_NS}products")
        states.append(ClientState(
            secure_client_id=client.findtext(f"{_NS}card") or "",
            known=_boolean(client, f"{_NS}known", "queryClients"),
            entitlements=tuple(
                Product(product_id=p.findtext(f"{_NS}productId") or "",
                        valid_from=_xsd_datetime(p.findtext(f"{_NS}validFrom")),
                        valid_until=_xsd_datetime(p.findtext(f"{_NS}validUntil")))
                for p in (products.iterchildren(f"{_NS}product") if products is not None else ())
            ),
            paired_chipset=client.findtext(f"{_NS}pairedChipset") or None,
            pin_set=_boolean(client, f"{_NS}pinSet", "queryClients"),
        ))
    return states


def _xsd_datetime(text: str | None) -> datetime | None:
    """An ``xsd:dateTime`` as zeep reads it, then in UTC (as :func:`_aware` does on zeep's path)."""
    if text is None:
        return None
    try:
        value = _XSD_DATETIME.pythonvalue(text.strip())
    except (ValueError, TypeError) as exc:
        raise KmsUnavailable("bad_response", "KMS call queryClients answered a date that is not "
                             "xsd:dateTime") from exc
    return _aware(value)


def _soap_fault(content: bytes) -> tuple[str, str] | None:
    """``(faultcode, faultstring)`` of a SOAP 1.1 fault body, else ``None`` (only on the error path)."""
    if b"Fault" not in content:
        return None
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        root = etree.fromstring(content, parser)
    except etree.XMLSyntaxError:
        return None
    fault = root.find(f"{{{_SOAP_ENV}}}Body/{{{_SOAP_ENV}}}Fault")
    if fault is None:
        return None
    return (fault.findtext("faultcode") or "").strip(), (fault.findtext("faultstring") or "").strip()


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """One TLS context for every connection (building one costs tens of ms: CA bundle loading)."""
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the KMS CA bundle {verify!r} (the KMS TLS verify setting)") from exc
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class SoapKmsClient:
    """:class:`~kms_adapter.port.KmsPort` over SOAP (zeep ``AsyncClient`` on ``httpx``).

    ``endpoint`` is the SOAP address (e.g. ``https://kms.example/kms``); it overrides the WSDL's
    placeholder address. ``operator_tag`` is sent first in every request. Create it inside or
    outside an event loop; close it with :meth:`aclose`.
    """

    def __init__(
        self,
        endpoint: str,
        operator_tag: str,
        token: SecretStr | str,
        timeout: float = 5.0,
        verify: bool | str = True,
        max_connections: int = 100,
        *,
        query_batch_size: int = 100,
        fast_path: bool = True,
    ) -> None:
        if not endpoint:
            raise ValueError("the KMS endpoint is empty (setting KMSBRIDGE_KMS__ENDPOINT)")
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        if not secret.get_secret_value():
            raise ValueError("the KMS token is empty (setting KMSBRIDGE_KMS__TOKEN)")
        if not operator_tag:
            raise ValueError("the operator tag is empty (provider file: operator_tag)")
        self.endpoint = endpoint
        self.fast_path = fast_path
        self._operator_tag = operator_tag
        self._query_batch_size = max(1, query_batch_size)
        tls = _ssl_context(verify)
        auth = {"Authorization": f"Bearer {secret.get_secret_value()}"}
        http_timeout = httpx.Timeout(timeout)

        def one_connection() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                headers=auth,
                timeout=http_timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=15.0),
                verify=tls,
            )

        self._http: _LeanHttp | None = None
        poster: Poster
        if fast_path:
            lean = self._http = _LeanHttp(endpoint, auth, timeout, tls, max_connections)
            first = one_connection()  # zeep's transport wants a client; every call goes through ``lean``

            async def close() -> None:
                await lean.aclose()
                await first.aclose()

            poster = lean.post_for_zeep
        else:
            slots = _ConnectionSlots(one_connection, max_connections)
            first = slots.new()
            poster, close = slots.post, slots.aclose
        # zeep wants a sync client for fetching WSDLs; ours is a packaged file, so it is never used.
        wsdl_http = httpx.Client(verify=tls)
        try:
            self._transport = _KmsTransport(poster, first, wsdl_http, close)
            self._zeep = AsyncClient(str(WSDL_PATH), transport=self._transport,
                                     settings=Settings(strict=True))
        finally:
            wsdl_http.close()
        if not fast_path:
            slots.give_back(first)
        # AsyncClient.create_service returns a *sync* ServiceProxy (zeep issues #1168/#1288), so we
        # build the async proxy for our binding with the configured address ourselves.
        binding = self._zeep.wsdl.bindings[_BINDING]
        self._service = AsyncServiceProxy(self._zeep, binding, address=endpoint)
        self._envelopes = _Envelopes(binding, operator_tag)

    def __repr__(self) -> str:
        return f"SoapKmsClient(endpoint={self.endpoint!r}, operator_tag={self._operator_tag!r})"

    # --- KmsPort -------------------------------------------------------------------------------------

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        operation = command.operation.value
        code, text, duplicate = await _guarded(SOAP_OPERATION_OF.get(operation, operation),
                                               lambda: self._execute(command))
        if code != "OK":
            log.info("kms rejected operation=%s secure_client_id=%s idempotency_key=%s code=%s",
                     operation, command.secure_client_id, command.idempotency_key, code)
            raise KmsRejected(code, text, operation=operation)
        log.debug("kms ok operation=%s secure_client_id=%s idempotency_key=%s duplicate=%s",
                  operation, command.secure_client_id, command.idempotency_key, duplicate)
        return KmsOutcome(provider_code=code, provider_text=text, duplicate=duplicate)

    async def _execute(self, command: KmsCommand) -> tuple[str, str, bool]:
        if self._http is not None:
            return await self._execute_fast(command)
        soap_op, kwargs = self._request(command)
        result = await self._call(soap_op, kwargs)
        return result.resultCode or "", result.resultText or "", bool(result.duplicate)

    async def _execute_fast(self, command: KmsCommand) -> tuple[str, str, bool]:
        """The lean path of a mutating call: template envelope, lean HTTP, lxml answer."""
        assert self._http is not None
        f = command_fields(command)
        soap_op = SOAP_OPERATION_OF[f.operation]
        body = self._envelopes.build(soap_op, f)
        status, headers, content = await self._http.post(body, self._envelopes.actions[soap_op], soap_op)
        retry_after = headers.get(b"retry-after")
        _raise_for_status(status, retry_after.decode("latin-1") if retry_after is not None else None, content,
                          soap_op)
        return _mutation_result(content, soap_op)

    async def query_client(
        self, secure_client_id: str, sections: Sequence[str] = ()
    ) -> dict[str, dict[str, str]]:
        wanted = [s.lower() for s in sections]
        unknown = [s for s in wanted if s not in QUERY_SECTIONS]
        if unknown:
            raise KmsRejected("INVALID_SECTION",
                              f"unknown section {unknown[0]!r}; known: {', '.join(QUERY_SECTIONS)}",
                              operation="QUERY_CLIENT")
        check_xml_safe("QUERY_CLIENT", [("secure client id", secure_client_id)])

        async def call() -> dict[str, dict[str, str]]:
            result = await self._call(
                "queryClient",
                {"operatorTag": self._operator_tag, "card": secure_client_id, "section": wanted},
            )
            if (result.resultCode or "") != "OK":
                raise KmsRejected(result.resultCode or "", result.resultText or "", operation="QUERY_CLIENT")
            return {
                section.name: {entry.key: entry.value or "" for entry in (section.entry or [])}
                for section in (result.section or [])
            }

        return await _guarded("queryClient", call)

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        """Raises ``KmsRejected("INVALID_COMMAND")`` for the whole call when one card holds characters
        XML cannot carry (nothing is sent); the reconciler then splits the batch to check the others."""
        ids = list(dict.fromkeys(secure_client_ids))  # de-duplicated, order kept
        check_xml_safe("QUERY_CLIENTS", (("secure client id", card) for card in ids))
        out: dict[str, ClientState] = {}
        query = self._query_clients_fast if self._http is not None else self._query_clients_zeep
        for start in range(0, len(ids), self._query_batch_size):
            batch = ids[start:start + self._query_batch_size]
            states = await _guarded("queryClients", lambda: query(batch))  # noqa: B023 (awaited at once)
            for state in states:
                out[state.secure_client_id] = state
        return out

    async def _query_clients_fast(self, batch: Sequence[str]) -> list[ClientState]:
        assert self._http is not None
        body = _query_clients_envelope(self._envelopes.tag, batch)
        status, headers, content = await self._http.post(body, self._envelopes.actions["queryClients"],
                                                         "queryClients")
        retry_after = headers.get(b"retry-after")
        _raise_for_status(status, retry_after.decode("latin-1") if retry_after is not None else None, content,
                          "queryClients")
        return _client_states(content)

    async def _query_clients_zeep(self, batch: Sequence[str]) -> list[ClientState]:
        result = await self._call("queryClients", {"operatorTag": self._operator_tag, "card": list(batch)})
        if (result.resultCode or "") != "OK":
            raise KmsRejected(result.resultCode or "", result.resultText or "", operation="QUERY_CLIENTS")
        states = []
        for client in result.client or []:
            products = client.products.product if client.products is not None else []
            states.append(ClientState(
                secure_client_id=client.card,
                known=bool(client.known),
                entitlements=tuple(
                    Product(product_id=p.productId, valid_from=_aware(p.validFrom),
                            valid_until=_aware(p.validUntil))
                    for p in products or []
                ),
                paired_chipset=client.pairedChipset or None,
                pin_set=bool(client.pinSet),
            ))
        return states

    async def ping(self) -> None:
        """An empty batch query: proves reachability, the endpoint and the token, costs nothing."""
        await _guarded("queryClients", self._ping)

    async def _ping(self) -> None:
        if self._http is not None:  # reachability, endpoint and token: the answer's resultCode is not asked
            body = _query_clients_envelope(self._envelopes.tag, [])
            status, headers, content = await self._http.post(body, self._envelopes.actions["queryClients"],
                                                             "queryClients")
            retry_after = headers.get(b"retry-after")
            _raise_for_status(status, retry_after.decode("latin-1") if retry_after is not None else None, content,
                              "queryClients")
            _answer(content, "queryClients")
        else:
            await self._call("queryClients", {"operatorTag": self._operator_tag, "card": []})

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> SoapKmsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------------------------------

    def _request(self, command: KmsCommand) -> tuple[str, dict[str, Any]]:
        """The SOAP operation and its arguments for a mutating command (the PIN is unwrapped here)."""
        f = command_fields(command)
        kwargs: dict[str, Any] = {"operatorTag": self._operator_tag, "idempotencyKey": f.idempotency_key}
        if f.card is not None:
            kwargs["card"] = f.card
        if f.operation == "SYNC_ENTITLEMENTS":
            kwargs["products"] = {"product": [
                {"productId": p.product_id, "validFrom": p.valid_from, "validUntil": p.valid_until}
                for p in f.products
            ]}
        if f.chipset is not None:
            kwargs["chipset"] = f.chipset
        if f.pin is not None:
            kwargs["pin"] = f.pin
        if f.text is not None:
            kwargs.update(text=f.text, textMode=f.text_mode)
        return SOAP_OPERATION_OF[f.operation], kwargs

    async def _call(self, soap_op: str, kwargs: dict[str, Any]) -> Any:
        """One call through zeep; its exceptions are mapped by :func:`_guarded`, which wraps every call."""
        return await getattr(self._service, soap_op)(**kwargs)


async def _guarded(soap_op: str, call: Callable[[], Awaitable[_T]]) -> _T:
    """``call()`` with every exception turned into one of ours (the table in the module docstring).

    Messages name the operation and the exception's type, never its text: lxml and zeep quote
    values (a PIN, a message text) in theirs.
    """
    token = _ANSWERED.set(False)
    try:
        return await call()
    except KmsError:
        raise
    except Fault as exc:
        code = str(exc.code or "")
        if code.endswith("Client"):
            raise KmsRejected("SOAP_CLIENT_FAULT", str(exc.message or "")[:200], operation=soap_op) from exc
        raise KmsUnavailable("soap_fault", f"KMS call {soap_op} answered a SOAP fault ({code})") from exc
    except _NOT_THE_WSDLS_XML as exc:
        raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is "
                             "not the WSDL's XML") from exc
    except Exception as exc:
        if _ANSWERED.get():
            raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something no record can hold"
                                 f" ({type(exc).__name__})") from exc
        if isinstance(exc, ZeepValidationError):  # a required value is missing: a bad command, terminal
            raise KmsRejected("INVALID_COMMAND", f"request for {soap_op} does not match the WSDL",
                              operation=soap_op) from exc
        raise KmsRejected("INVALID_COMMAND", f"request for {soap_op} cannot be written ({type(exc).__name__})",
                          operation=soap_op) from exc
    finally:
        _ANSWERED.reset(token)
