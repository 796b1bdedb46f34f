"""The real KMS adapter: :class:`SoapKmsClient` speaks ``irdeto.wsdl`` over HTTP/1.1.

- **Mutating calls and the batch query** (the executor's and the reconciler's hot paths) are written
  from per-operation templates (:mod:`kms_adapter.envelopes`: element order, namespaces and
  SOAPAction read from the WSDL through zeep at start-up; a unit test pins every operation to zeep's
  bytes), posted over :class:`~kms_adapter.http11.HttpPool` (keep-alive connections, answers parsed
  by httptools), and their answers read with lxml.
- **The single-client query** (``queryClient``, rare, with the richest answer) goes through zeep's
  ``AsyncClient`` over the same connections (:class:`_KmsTransport`).

Transport (:mod:`kms_adapter.http11` states each rule): up to ``max_connections`` keep-alive
connections lent one per call; ``timeout`` (seconds) bounds the connect and, separately, the whole
exchange; TLS verified by default (``verify=True``; a string is a CA bundle path), with an optional
client certificate (``client_cert``, ``client_key``, ``client_key_password``); answers capped at
``max_response_bytes``; proxy variables that would apply to the endpoint are refused at start-up;
every call carries ``Authorization: Bearer <token>``. A reused connection the server had closed
while idle is resent once on a fresh connection for queries and absolute writes, never for an
effect (:data:`~kms_adapter.port.EFFECT_OPERATIONS`): that failure is raised for the executor.

Error mapping (:mod:`kms_adapter.errors`):

=====================================================  ======================================
what happened                                          raised
=====================================================  ======================================
timeout (connect, or the whole exchange)               ``KmsUnavailable(kind="timeout")``
connection refused / DNS / TLS handshake failure       ``KmsUnavailable(kind="connect")``
connection reset or closed before the answer ended     ``KmsUnavailable(kind="network")``
malformed HTTP answer                                  ``KmsUnavailable(kind="bad_response")``
answer body above ``max_response_bytes``               ``KmsUnavailable(kind="response_too_large")``
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
transient so commands wait for an operator instead of being rejected. Settings that cannot work (an
endpoint that is not http(s), a CR/LF in the token, an unreadable client certificate, a proxy
variable that applies) raise ``ValueError`` naming the setting when the client is built.

Nothing here logs or raises a payload: zeep's transport normally logs whole envelopes at DEBUG (the
PIN would be in them), so :class:`_KmsTransport` replaces its ``post``; the endpoint's
``user:password@``, if any, is never used, sent or shown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TypeVar

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

from schemas.records import KmsCommand

from .commands import check_xml_safe, command_fields
from .envelopes import Envelopes, answer_element, client_states, mutation_result, query_clients_envelope, soap_fault
from .errors import KmsAuthError, KmsError, KmsRejected, KmsUnavailable
from .http11 import HttpAnswer, HttpPool, parse_endpoint, refuse_proxy, tls_context
from .port import EFFECT_OPERATIONS, QUERY_SECTIONS, ClientState, KmsOutcome
from .wsdl import NAMESPACE, SOAP_OPERATION_OF, WSDL_PATH

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "SoapKmsClient"]

log = logging.getLogger(__name__)

#: The default cap on an answer's body: a ``queryClients`` answer of 100 cards with many dated
#: products is well under 1 MiB.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024

_BINDING = f"{{{NAMESPACE}}}IrdetoKmsBinding"
_REJECTED_STATUSES = frozenset({400, 413, 422})
#: SOAP operations that converge when repeated (absolute writes and queries): resendable on a stale connection.
_RESENDABLE = frozenset(soap for op, soap in SOAP_OPERATION_OF.items() if op not in EFFECT_OPERATIONS)
_T = TypeVar("_T")

#: Set when the KMS answered the current call (per task: concurrent calls do not see each other's).
_ANSWERED: ContextVar[bool] = ContextVar("kms_answered", default=False)
#: What zeep and lxml raise for an answer that is not the WSDL's XML (zeep refuses entity declarations).
_NOT_THE_WSDLS_XML = (ZeepTransportError, ZeepXMLSyntaxError, etree.XMLSyntaxError, DTDForbidden,
                      EntitiesForbidden, ExternalReferenceForbidden)


def _parse_retry_after(value: bytes | str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the executor's own backoff applies


def _soap_operation(headers: dict[str, str]) -> str:
    """The operation name from the SOAPAction header zeep sets (for error messages)."""
    return headers.get("SOAPAction", "").strip('"').rpartition("#")[2] or "call"


Poster = Callable[[str, bytes, dict[str, str]], Awaitable[httpx.Response]]


class _KmsTransport(AsyncTransport):
    """zeep's AsyncTransport over our connections (``poster``), with no payload logging and HTTP status
    mapping (zeep's own ``post`` logs whole envelopes at DEBUG, and would hand any status to zeep)."""

    def __init__(self, poster: Poster, unused: httpx.AsyncClient, wsdl_client: httpx.Client) -> None:
        super().__init__(client=unused, wsdl_client=wsdl_client)
        self._poster = poster

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        response = await self._poster(address, message, headers)
        _raise_for_status(response.status_code, response.headers.get("retry-after"), response.content,
                          _soap_operation(headers))
        return response


def _raise_for_status(status: int, retry_after_header: bytes | str | None, content: bytes, op: str) -> None:
    """The HTTP part of the error table in the module docstring (nothing to do for 200)."""
    if status == 200:
        return
    if status in (401, 403):
        raise KmsAuthError(status)
    if status == 500:
        fault = soap_fault(content)
        if fault is not None and fault[0].endswith("Client"):
            # The KMS says our request is malformed: retrying the same bytes cannot help.
            # faultstring is the server's text; cut it short in case a server echoes input back.
            raise KmsRejected("SOAP_CLIENT_FAULT", fault[1][:200], operation=op)
    if status in _REJECTED_STATUSES:
        raise KmsRejected(f"HTTP_{status}", f"KMS answered HTTP {status}", operation=op)
    retry_after = _parse_retry_after(retry_after_header) if status in (429, 503) else None
    raise KmsUnavailable(f"http_{status}", f"KMS call {op} answered HTTP {status}", retry_after=retry_after)


class SoapKmsClient:
    """:class:`~kms_adapter.port.KmsPort` over SOAP 1.1 / HTTP/1.1.

    ``endpoint`` is the SOAP address (e.g. ``https://kms.example/kms``); it overrides the WSDL's
    placeholder address. ``operator_tag`` is sent first in every request. Create it inside or
    outside an event loop; close it with :meth:`aclose`.

    Keyword options (settings in brackets, ``KMSBRIDGE_KMS__*``): ``client_cert`` / ``client_key``
    [``CLIENT_CERT_FILE`` / ``CLIENT_KEY_FILE``] PEM files of a TLS client certificate (mTLS),
    ``client_key_password`` [``CLIENT_KEY_PASSWORD``] for an encrypted key, ``max_response_bytes``
    [``MAX_RESPONSE_BYTES``] the cap on an answer's body, ``keepalive_expiry`` [``KEEPALIVE_SECONDS``]
    how long an idle connection is reused, ``query_batch_size`` cards per ``queryClients`` call.
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
        client_cert: str | None = None,
        client_key: str | None = None,
        client_key_password: SecretStr | str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        keepalive_expiry: float = 15.0,
    ) -> None:
        if not endpoint:
            raise ValueError("the KMS endpoint is empty (setting KMSBRIDGE_KMS__ENDPOINT)")
        secret = token if isinstance(token, SecretStr) else SecretStr(token)
        if not secret.get_secret_value():
            raise ValueError("the KMS token is empty (setting KMSBRIDGE_KMS__TOKEN)")
        if not operator_tag:
            raise ValueError("the operator tag is empty (provider file: operator_tag)")
        try:
            check_xml_safe("any", [("operator tag", operator_tag)])
        except KmsRejected as exc:
            raise ValueError("the operator tag holds characters XML cannot carry (provider file: "
                             "operator_tag)") from exc
        target = parse_endpoint(endpoint)
        refuse_proxy(target)
        if target.has_userinfo:
            log.warning("the KMS endpoint setting KMSBRIDGE_KMS__ENDPOINT holds a user:password@ part; it is "
                        "not sent (the KMS credential is KMSBRIDGE_KMS__TOKEN)")
        self.endpoint = target.display
        self._operator_tag = operator_tag
        self._query_batch_size = max(1, query_batch_size)
        password = (client_key_password.get_secret_value() if isinstance(client_key_password, SecretStr)
                    else client_key_password)
        tls = tls_context(verify, client_cert=client_cert, client_key=client_key, client_key_password=password)
        self._http = HttpPool(
            target, [("Authorization", f"Bearer {secret.get_secret_value()}", "KMS token (setting "
                      "KMSBRIDGE_KMS__TOKEN or KMSBRIDGE_KMS__TOKEN_FILE)")],
            timeout=timeout, tls=tls, size=max_connections, max_body_bytes=max_response_bytes,
            keepalive_expiry=keepalive_expiry)
        # zeep's transport wants an async client and a sync one for fetching WSDLs; ours is a packaged
        # file and every call goes through ``self._http``, so neither is ever used.
        unused = httpx.AsyncClient(trust_env=False)
        wsdl_http = httpx.Client(trust_env=False)
        try:
            self._transport = _KmsTransport(self._post_for_zeep, unused, wsdl_http)
            self._zeep = AsyncClient(str(WSDL_PATH), transport=self._transport, settings=Settings(strict=True))
        finally:
            wsdl_http.close()
        self._unused = unused
        # AsyncClient.create_service returns a *sync* ServiceProxy (zeep issues #1168/#1288), so we
        # build the async proxy for our binding with the configured address ourselves.
        binding = self._zeep.wsdl.bindings[_BINDING]
        self._service = AsyncServiceProxy(self._zeep, binding, address=target.display)
        self._envelopes = Envelopes(binding, operator_tag)
        self._actions = {name: self._http.soap_action(action, f"SOAPAction of {name} (kms_adapter/irdeto.wsdl)")
                         for name, action in self._envelopes.actions.items()}

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
        """A mutating call: template envelope, one POST, lxml answer."""
        f = command_fields(command)
        soap_op = SOAP_OPERATION_OF[f.operation]
        answer = await self._post(self._envelopes.build(soap_op, f), soap_op)
        return mutation_result(answer.body, soap_op)

    async def _post(self, body: bytes, soap_op: str) -> HttpAnswer:
        """POST one envelope and map the HTTP status (the error table); marks the call answered."""
        answer = await self._http.post(body, self._actions[soap_op], soap_op, resendable=soap_op in _RESENDABLE)
        _ANSWERED.set(True)
        _raise_for_status(answer.status, answer.headers.get(b"retry-after"), answer.body, soap_op)
        return answer

    async def _post_for_zeep(self, address: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """One POST of zeep's envelope, answered as an ``httpx.Response`` for zeep's transport (queries)."""
        soap_op = _soap_operation(headers)
        line = self._actions.get(soap_op)
        if line is None:  # zeep sent an action our templates do not know: check it like the others
            line = self._http.soap_action(headers.get("SOAPAction", "").strip('"'), "SOAPAction zeep sent")
        answer = await self._http.post(content, line, soap_op, resendable=soap_op in _RESENDABLE)
        _ANSWERED.set(True)
        return httpx.Response(answer.status, headers=list(answer.headers.items()), content=answer.body,
                              request=httpx.Request("POST", address))

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
            result = await self._service.queryClient(
                operatorTag=self._operator_tag, card=secure_client_id, section=wanted)
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
        for start in range(0, len(ids), self._query_batch_size):
            batch = ids[start:start + self._query_batch_size]
            states = await _guarded("queryClients", lambda: self._query_clients(batch))  # noqa: B023 (awaited at once)
            for state in states:
                out[state.secure_client_id] = state
        return out

    async def _query_clients(self, batch: Sequence[str]) -> list[ClientState]:
        answer = await self._post(query_clients_envelope(self._envelopes.tag, batch), "queryClients")
        return client_states(answer.body)

    async def ping(self) -> None:
        """An empty batch query: proves reachability, the endpoint and the token, costs nothing."""
        await _guarded("queryClients", self._ping)

    async def _ping(self) -> None:
        # reachability, endpoint and token: the answer's resultCode is not asked
        answer = await self._post(query_clients_envelope(self._envelopes.tag, []), "queryClients")
        answer_element(answer.body, "queryClients")

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._unused.aclose()

    async def __aenter__(self) -> SoapKmsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


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
