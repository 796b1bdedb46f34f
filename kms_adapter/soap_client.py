"""The real KMS adapter: :class:`SoapKmsClient` speaks ``irdeto.wsdl`` through zeep's async client.

Transport (httpx, shared by every call of one adapter):

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
response that is not the WSDL's XML                    ``KmsUnavailable(kind="bad_response")``
``resultCode`` other than ``OK``                       ``KmsRejected(code, resultText)``
=====================================================  ======================================

An unexpected status other than 400/413/422 (e.g. 404 from a wrong endpoint setting) is treated as
transient so commands wait for an operator instead of being rejected.

Nothing here logs or raises a payload: zeep's transport normally logs whole envelopes at DEBUG (the
PIN would be in them), so :class:`_KmsTransport` replaces its ``post``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from lxml import etree
from pydantic import SecretStr
from zeep import AsyncClient, Settings
from zeep.exceptions import Fault
from zeep.exceptions import TransportError as ZeepTransportError
from zeep.exceptions import ValidationError as ZeepValidationError
from zeep.exceptions import XMLSyntaxError as ZeepXMLSyntaxError
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from schemas.records import KmsCommand, Product

from .commands import command_fields
from .errors import KmsAuthError, KmsError, KmsRejected, KmsUnavailable
from .port import QUERY_SECTIONS, ClientState, KmsOutcome
from .wsdl import NAMESPACE, SOAP_OPERATION_OF, WSDL_PATH

__all__ = ["SoapKmsClient"]

log = logging.getLogger(__name__)

_BINDING = f"{{{NAMESPACE}}}IrdetoKmsBinding"
_REJECTED_STATUSES = frozenset({400, 413, 422})
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
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
                return await client.post(address, content=content, headers=headers)
            finally:
                self._idle.append(client)

    async def aclose(self) -> None:
        clients, self._all, self._idle = self._all, [], []
        for client in clients:
            await client.aclose()


class _KmsTransport(AsyncTransport):
    """zeep's AsyncTransport over :class:`_ConnectionSlots`, with no payload logging and HTTP status
    mapping (zeep's own ``post`` logs whole envelopes at DEBUG, and would hand any status to zeep)."""

    def __init__(self, slots: _ConnectionSlots, wsdl_client: httpx.Client) -> None:
        first = slots.new()
        headers = dict(first.headers)
        super().__init__(client=first, wsdl_client=wsdl_client)
        # AsyncTransport.__init__ replaces the client's headers with its User-Agent; put ours back.
        first.headers.update(headers)
        slots.give_back(first)
        self.slots = slots

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        op = _soap_operation(headers)
        try:
            response = await self.slots.post(address, message, headers)
        except httpx.TimeoutException as exc:
            raise KmsUnavailable("timeout", f"KMS call {op} timed out") from exc
        except httpx.ConnectError as exc:
            raise KmsUnavailable("connect", f"KMS call {op}: cannot connect to the KMS endpoint") from exc
        except httpx.TransportError as exc:
            raise KmsUnavailable("network", f"KMS call {op}: {type(exc).__name__}") from exc

        status = response.status_code
        if status == 200:
            return response
        if status in (401, 403):
            raise KmsAuthError(status)
        if status == 500:
            fault = _soap_fault(response.content)
            if fault is not None and fault[0].endswith("Client"):
                # The KMS says our request is malformed: retrying the same bytes cannot help.
                # faultstring is the server's text; cut it short in case a server echoes input back.
                raise KmsRejected("SOAP_CLIENT_FAULT", fault[1][:200], operation=op)
        if status in _REJECTED_STATUSES:
            raise KmsRejected(f"HTTP_{status}", f"KMS answered HTTP {status}", operation=op)
        retry_after = _retry_after(response) if status in (429, 503) else None
        raise KmsUnavailable(f"http_{status}", f"KMS call {op} answered HTTP {status}",
                             retry_after=retry_after)

    async def aclose(self) -> None:
        await self.slots.aclose()


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
    ) -> None:
        if not endpoint:
            raise ValueError("the KMS endpoint is empty (setting KMSBRIDGE_KMS__ENDPOINT)")
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        if not secret.get_secret_value():
            raise ValueError("the KMS token is empty (setting KMSBRIDGE_KMS__TOKEN)")
        if not operator_tag:
            raise ValueError("the operator tag is empty (provider file: operator_tag)")
        self.endpoint = endpoint
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

        self._slots = _ConnectionSlots(one_connection, max_connections)
        # zeep wants a sync client for fetching WSDLs; ours is a packaged file, so it is never used.
        wsdl_http = httpx.Client(verify=tls)
        try:
            self._transport = _KmsTransport(self._slots, wsdl_http)
            self._zeep = AsyncClient(str(WSDL_PATH), transport=self._transport,
                                     settings=Settings(strict=True))
        finally:
            wsdl_http.close()
        # AsyncClient.create_service returns a *sync* ServiceProxy (zeep issues #1168/#1288), so we
        # build the async proxy for our binding with the configured address ourselves.
        binding = self._zeep.wsdl.bindings[_BINDING]
        self._service = AsyncServiceProxy(self._zeep, binding, address=endpoint)

    def __repr__(self) -> str:
        return f"SoapKmsClient(endpoint={self.endpoint!r}, operator_tag={self._operator_tag!r})"

    # --- KmsPort -------------------------------------------------------------------------------------

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        operation = command.operation.value
        soap_op, kwargs = self._request(command)
        result = await self._call(soap_op, kwargs)
        code = result.resultCode or ""
        text = result.resultText or ""
        if code != "OK":
            log.info("kms rejected operation=%s secure_client_id=%s idempotency_key=%s code=%s",
                     operation, command.secure_client_id, command.idempotency_key, code)
            raise KmsRejected(code, text, operation=operation)
        duplicate = bool(result.duplicate)
        log.debug("kms ok operation=%s secure_client_id=%s idempotency_key=%s duplicate=%s",
                  operation, command.secure_client_id, command.idempotency_key, duplicate)
        return KmsOutcome(provider_code=code, provider_text=text, duplicate=duplicate)

    async def query_client(
        self, secure_client_id: str, sections: Sequence[str] = ()
    ) -> dict[str, dict[str, str]]:
        wanted = [s.lower() for s in sections]
        unknown = [s for s in wanted if s not in QUERY_SECTIONS]
        if unknown:
            raise KmsRejected("INVALID_SECTION",
                              f"unknown section {unknown[0]!r}; known: {', '.join(QUERY_SECTIONS)}",
                              operation="QUERY_CLIENT")
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

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        ids = list(dict.fromkeys(secure_client_ids))  # de-duplicated, order kept
        out: dict[str, ClientState] = {}
        for start in range(0, len(ids), self._query_batch_size):
            batch = ids[start:start + self._query_batch_size]
            result = await self._call("queryClients", {"operatorTag": self._operator_tag, "card": batch})
            if (result.resultCode or "") != "OK":
                raise KmsRejected(result.resultCode or "", result.resultText or "", operation="QUERY_CLIENTS")
            for client in result.client or []:
                products = client.products.product if client.products is not None else []
                out[client.card] = ClientState(
                    secure_client_id=client.card,
                    known=bool(client.known),
                    entitlements=tuple(
                        Product(product_id=p.productId, valid_from=_aware(p.validFrom),
                                valid_until=_aware(p.validUntil))
                        for p in products or []
                    ),
                    paired_chipset=client.pairedChipset or None,
                    pin_set=bool(client.pinSet),
                )
        return out

    async def ping(self) -> None:
        """An empty batch query: proves reachability, the endpoint and the token, costs nothing."""
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
        operation = getattr(self._service, soap_op)
        try:
            return await operation(**kwargs)
        except KmsError:
            raise
        except Fault as exc:
            code = str(exc.code or "")
            if code.endswith("Client"):
                raise KmsRejected("SOAP_CLIENT_FAULT", str(exc.message or ""), operation=soap_op) from exc
            raise KmsUnavailable("soap_fault", f"KMS call {soap_op} answered a SOAP fault ({code})") from exc
        except ZeepValidationError as exc:
            # Our request does not fit the WSDL (a required value is missing): a bad command, terminal.
            raise KmsRejected("INVALID_COMMAND", f"request for {soap_op} does not match the WSDL",
                              operation=soap_op) from exc
        except (ZeepTransportError, ZeepXMLSyntaxError, etree.XMLSyntaxError) as exc:
            raise KmsUnavailable("bad_response", f"KMS call {soap_op} answered something that is "
                                 "not the WSDL's XML") from exc
