"""The KMS simulator as a Starlette ASGI app.

Endpoints (all but ``/healthz`` require ``Authorization: Bearer <token>``, else HTTP 401):

- ``POST /kms``: the SOAP endpoint of ``irdeto.wsdl``; ``GET /kms?wsdl`` serves the WSDL with its
  address pointing back here.
- ``GET /admin/state``: the whole state (JSON shape of docs/architecture.md §8).
- ``POST /admin/state``: overwrite part of it (see :meth:`.state.SimulatorState.overwrite`).
- ``GET /admin/faults`` / ``POST /admin/faults``: read or change injected faults (:mod:`.faults`),
  among them the response-shape faults (:mod:`.shapes`).
- ``POST /admin/reset``: empty state and clear every fault.
- ``GET /healthz``: liveness, no token.

SOAP answers: business outcomes (``OK`` or a code such as ``UNKNOWN_CLIENT``) are HTTP 200 with
``resultCode``; a malformed request is HTTP 500 with a SOAP ``Client`` fault; an injected error is
HTTP 500 with a SOAP ``Server`` fault. Nothing here logs a request body (PINs and texts live there).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import IO, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kms_adapter.wsdl import MUTATING_SOAP_OPERATIONS, wsdl_bytes

from .faults import FaultError, Faults
from .shapes import SHAPE_HEADER
from .soap import (
    SoapParseError,
    SoapRequest,
    fault_response,
    mutation_response,
    parse_request,
    query_client_response,
    query_clients_response,
)
from .state import BUSINESS_ERRORS, Answer, SimulatorState, StateError

__all__ = ["create_app"]

_XML = "text/xml; charset=utf-8"
_PLACEHOLDER_ADDRESS = b"http://localhost:8089/kms"


def create_app(
    token: str,
    *,
    strict_clients: bool = False,
    audit_file: str | None = None,
    state: SimulatorState | None = None,
    faults: Faults | None = None,
) -> Starlette:
    """Build the simulator app.

    ``token`` must be non-empty; ``audit_file`` gets one JSON line per audit entry (appended).
    """
    if not token:
        raise ValueError("the simulator needs a token (setting KMSBRIDGE_KMS__TOKEN)")
    expected = f"Bearer {token}".encode()
    audit_fh: IO[str] | None = None

    def sink(entry: dict[str, Any]) -> None:
        if audit_fh is not None:
            audit_fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    kms = state or SimulatorState(strict_clients=strict_clients)
    if audit_file is not None:
        kms.audit_sink = sink
    fault_state = faults or Faults()

    def authorized(request: Request) -> bool:
        got = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, expected)

    def unauthorized() -> Response:
        return Response(b"missing or wrong bearer token", 401, media_type="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="kms"'})

    def admin(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                return unauthorized()
            result: Response = await handler(request)
            return result
        return wrapped

    # --- SOAP ------------------------------------------------------------------------------------------

    async def soap(request: Request) -> Response:
        remaining = fault_state.outage_remaining()
        if remaining:
            return Response(b"KMS outage (simulated)", 503, media_type="text/plain",
                            headers={"Retry-After": str(math.ceil(remaining)), "Connection": "close"})
        if not authorized(request):
            return unauthorized()
        body = await request.body()
        if fault_state.latency_ms:
            await asyncio.sleep(fault_state.latency_ms / 1000)
        if fault_state.timeout_seconds:
            await _hang(request, fault_state.timeout_seconds)
            return Response(b"simulated timeout", 504, media_type="text/plain")
        if fault_state.http_status:
            status = fault_state.http_status
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            return Response(f"simulated HTTP {status}".encode(), status, media_type="text/plain",
                            headers=headers)
        if fault_state.roll_error():
            return Response(fault_response("Server", "simulated internal error"), 500, media_type=_XML)
        try:
            req = parse_request(body)
        except SoapParseError as exc:
            return Response(fault_response("Client", str(exc)), 500, media_type=_XML)
        card_status = fault_state.card_http_status(req.card)
        if card_status is not None:  # a transient fault of this one card (card_errors code HTTP_<status>)
            return Response(f"simulated HTTP {card_status} for this card".encode(), card_status,
                            media_type="text/plain")
        return _shaped(dispatch(req), fault_state)

    def dispatch(req: SoapRequest) -> bytes:
        injected = fault_state.card_error(req.card) if req.soap_operation != "queryClients" else None
        if req.soap_operation in MUTATING_SOAP_OPERATIONS:
            if not req.operator_tag or not req.idempotency_key:
                answer = Answer.error("MISSING_FIELD", "operatorTag and idempotencyKey are required")
            elif injected:
                answer = Answer.error(injected, BUSINESS_ERRORS.get(injected, "Injected business error"))
            else:
                answer = kms.apply(
                    req.operation,
                    req.idempotency_key,
                    req.card,
                    products=req.products,
                    chipset=req.chipset,
                    pin=req.pin,
                    text=req.text,
                    text_mode=req.text_mode,
                )
            return mutation_response(req.soap_operation, answer)
        if req.soap_operation == "queryClient":
            if injected:
                return query_client_response(
                    Answer.error(injected, BUSINESS_ERRORS.get(injected, "Injected business error")), {})
            if not req.card:
                return query_client_response(Answer.error("MISSING_FIELD", "card is required"), {})
            answer, sections = kms.query(req.card, req.sections)
            return query_client_response(answer, sections)
        # queryClients: card errors are not applied to the batch read
        return query_clients_response(Answer("OK", "Success"), kms.summaries(req.cards))

    async def wsdl(request: Request) -> Response:
        if not authorized(request):
            return unauthorized()
        if "wsdl" not in request.query_params:
            return Response(b"POST SOAP requests here; GET /kms?wsdl for the WSDL", 405,
                            media_type="text/plain", headers={"Allow": "GET, POST"})
        address = str(request.url.replace(query="")).encode()
        return Response(wsdl_bytes().replace(_PLACEHOLDER_ADDRESS, address), 200, media_type=_XML)

    # --- admin -----------------------------------------------------------------------------------------

    async def get_state(request: Request) -> Response:
        return JSONResponse(kms.snapshot())

    async def post_state(request: Request) -> Response:
        try:
            kms.overwrite(await _json(request))
        except (StateError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(kms.snapshot())

    async def get_faults(request: Request) -> Response:
        return JSONResponse(fault_state.to_json())

    async def post_faults(request: Request) -> Response:
        try:
            fault_state.update(await _json(request))
        except (FaultError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(fault_state.to_json())

    async def reset(request: Request) -> Response:
        kms.reset()
        fault_state.clear()
        return JSONResponse({"reset": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal audit_fh
        if audit_file is not None:
            audit_fh = open(audit_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
        try:
            yield
        finally:
            if audit_fh is not None:
                audit_fh.close()
                audit_fh = None

    app = Starlette(
        routes=[
            Route("/kms", soap, methods=["POST"]),
            Route("/kms", wsdl, methods=["GET"]),
            Route("/admin/state", admin(get_state), methods=["GET"]),
            Route("/admin/state", admin(post_state), methods=["POST"]),
            Route("/admin/faults", admin(get_faults), methods=["GET"]),
            Route("/admin/faults", admin(post_faults), methods=["POST"]),
            Route("/admin/reset", admin(reset), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.kms = kms
    app.state.faults = fault_state
    return app


def _shaped(body: bytes, faults: Faults) -> Response:
    """A SOAP answer in the shape the faults ask for (``lose_answers``, then ``response_shape``)."""
    if faults.take_lost_answer():
        return Response(body, 200, media_type=_XML, headers={SHAPE_HEADER: "lose_answer"})
    shape = faults.response_shape
    if shape is None:
        return Response(body, 200, media_type=_XML)
    if shape == "oversized":
        return Response(b"".join(_padded(body, faults.oversized_bytes)), 200, media_type=_XML)
    if shape == "oversized_chunked":
        return StreamingResponse(_padded(body, faults.oversized_bytes), 200, media_type=_XML)
    return Response(body, 200, media_type=_XML, headers={SHAPE_HEADER: shape})


def _padded(body: bytes, size: int) -> Iterator[bytes]:
    """``body`` grown to ``size`` bytes with white space after the XML declaration (still the same XML),
    in pieces of 64 KiB."""
    end = body.find(b"?>") + 2 if body.startswith(b"<?xml") else 0
    yield body[:end]
    remaining = max(0, size - len(body))
    piece = b" " * 65536
    while remaining > 0:
        yield piece[:remaining]
        remaining -= len(piece)
    yield body[end:]


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc.msg}") from exc


async def _hang(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, returning early once the client has given up and disconnected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.sleep(min(0.1, deadline - loop.time()))
        if await request.is_disconnected():
            return
