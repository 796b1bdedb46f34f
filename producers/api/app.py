"""The Web API's app factory: ``create_app(settings, publisher, outcomes, kms)``.

Everything the app talks to is passed in, so unit tests build it with fakes and ``kmsbridge run api``
(:mod:`kmsbridge.wiring_api`) with Kafka, the outcome feed and the SOAP client. Besides the ``/v1``
routes the app serves, without authentication: ``/healthz`` (the outcome reader is alive), ``/readyz``
(it has caught up) and ``/metrics`` (Prometheus text).

Limits, each a setting of ``KMSBRIDGE_API__*``:

* ``MAX_BODY_BYTES``: a longer body is a 413 before it is parsed (FastAPI's ``max_body_size``: a
  ``Content-Length`` over the limit is refused unread, a chunked body is counted as it arrives);
* ``RATE_LIMIT``: requests per API key (:mod:`producers.api.ratelimit`), 429 beyond;
* ``READ_TIMEOUT_SECONDS``: the server's bound on receiving a request (:mod:`producers.api.server`);
* ``DOCS``: ``off`` (default) serves no ``/openapi.json``, ``/docs`` or ``/redoc``; ``key`` serves
  ``/openapi.json`` to API-key holders only; ``open`` serves all three to anyone.

Metric labels come from closed sets: the method is one of :data:`METHODS` or ``OTHER``, the route is
the route's template (never a raw path) or ``unmatched``.

The app owns ``kms`` from then on: it closes it when it shuts down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute, APIRouter
from prometheus_client import Counter, Histogram, make_asgi_app
from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kafka_edge.tracing import server_span
from kms_adapter.port import KmsPort
from producers.api.allow import complete_allow_header
from producers.api.auth import ApiKeyAuth
from producers.api.deps import AlwaysReady, ApiServices, OutcomeSource, Probe
from producers.api.ratelimit import KeyRateLimit, limited_caller
from producers.api.routes import router
from producers.api.routes_log import log_router
from producers.api.routes_runs import runs_router
from producers.requests import RequestPublisher

__all__ = ["API_REQUESTS", "API_REQUEST_SECONDS", "METHODS", "ApiConfig", "create_app", "validation_error"]

log = logging.getLogger(__name__)

API_REQUESTS = Counter("kmsbridge_api_requests_total", "Web API requests by route template and status",
                       ["method", "route", "status"])
API_REQUEST_SECONDS = Histogram("kmsbridge_api_request_seconds", "Web API request duration",
                                ["method", "route"],
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


#: The HTTP methods a metric label may name; any other is counted as ``OTHER``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Routes that are not FastAPI routes (they do not record themselves in the scope); no ids in them.
_STATIC_PATHS = frozenset({"/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class _ApiSection(Protocol):
    @property
    def wait_seconds(self) -> float: ...

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def rate_limit(self) -> str: ...

    @property
    def docs(self) -> Literal["off", "key", "open"]: ...


class ApiConfig(Protocol):
    """What the factory reads from :class:`kmsbridge.settings.Settings` (a structural subset)."""

    @property
    def api(self) -> _ApiSection: ...

    def api_keys(self) -> list[SecretStr]: ...


class _Asgi:
    """An ASGI app as a route endpoint (a plain function would be taken for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 listing ``type``, ``loc`` and ``msg`` of each error: never the ``input`` (it may be a PIN)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def create_app(settings: ApiConfig, publisher: RequestPublisher, outcomes: OutcomeSource, kms: KmsPort,
               *, probe: Probe | None = None) -> FastAPI:
    """The Web API. Raises ``ValueError`` (naming the settings) when no API key is configured."""
    auth = ApiKeyAuth(settings.api_keys())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await kms.aclose()

    open_docs = settings.api.docs == "open"
    app = FastAPI(title="kmsbridge Web API", version="1", lifespan=lifespan,
                  description="PIN set/reset, re-authorisation, query, messages and resets for an Irdeto KMS. "
                              "Every write accepts ?process_immediately=true to wait for the outcome.",
                  max_body_size=settings.api.max_body_bytes, openapi_url="/openapi.json" if open_docs else None,
                  docs_url="/docs" if open_docs else None, redoc_url="/redoc" if open_docs else None)
    app.state.auth = auth
    app.state.rate_limit = KeyRateLimit(settings.api.rate_limit)
    app.state.services = ApiServices(publisher=publisher, outcomes=outcomes, kms=kms,
                                     wait_seconds=settings.api.wait_seconds, probe=probe or AlwaysReady())
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, complete_allow_header)
    app.include_router(router)
    app.include_router(log_router)  # the request log: app.state.request_log, set by kmsbridge.wiring_api
    app.include_router(runs_router)  # run definitions and the queue: app.state.run_store, .communication_queue

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> PlainTextResponse:
        ok = request.app.state.services.probe.healthy()
        return PlainTextResponse("ok\n" if ok else "outcome reader stalled\n", status_code=200 if ok else 503)

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request) -> PlainTextResponse:
        ok = request.app.state.services.probe.ready()
        return PlainTextResponse("ready\n" if ok else "not ready\n", status_code=200 if ok else 503)

    if settings.api.docs == "key":
        @app.get("/openapi.json", include_in_schema=False)
        def openapi(request: Request, _caller: Annotated[str, Depends(limited_caller)]) -> JSONResponse:
            return JSONResponse(request.app.openapi())

    # a route, not a mount: a mount at /metrics would redirect /metrics to /metrics/
    app.router.routes.append(Route("/metrics", _Asgi(make_asgi_app()), methods=["GET"], include_in_schema=False))
    repeatable = _repeatable_query_parameters(router, log_router, runs_router)
    app.middleware("http")(_one_value_per_query_parameter(repeatable))
    app.middleware("http")(_observe)
    return app


def _repeatable_query_parameters(*routers: APIRouter) -> frozenset[str]:
    """The query parameters some route of ``routers`` declares as a list (``?section=A&section=B``)."""
    names: set[str] = set()
    for route in (route for r in routers for route in r.routes):
        if isinstance(route, APIRoute):
            for param in route.dependant.query_params:
                if get_origin(param.field_info.annotation) in (list, tuple, set) or any(
                        get_origin(arg) in (list, tuple, set) for arg in get_args(param.field_info.annotation)):
                    names.add(param.alias)
    return frozenset(names)


Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def _one_value_per_query_parameter(repeatable: frozenset[str]) -> Middleware:
    """A middleware: a query parameter that takes one value, given twice, is a 422 naming it; taking the
    last of several silently would act on something the caller did not mean."""

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        seen: set[str] = set()
        for name, _value in request.query_params.multi_items():
            if name in seen and name not in repeatable:
                return JSONResponse({"detail": [{"type": "repeated", "loc": ["query", name],
                                                 "msg": f"query parameter {name!r} given more than once"}]},
                                    status_code=422)
            seen.add(name)
        return await call_next(request)

    return check


async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Count and time every request by its route *template* (ids stay out of labels); log one line; trace
    it in a span that continues the caller's ``traceparent`` when tracing is on."""
    started = time.monotonic()
    status = 500
    method = request.method if request.method in METHODS else "OTHER"
    with server_span(f"{method} request", request.headers) as span:
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            elapsed = time.monotonic() - started
            route = _route_template(request.scope)
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.response.status_code", status)
            API_REQUESTS.labels(method, route, str(status)).inc()
            API_REQUEST_SECONDS.labels(method, route).observe(elapsed)
            if route not in ("/healthz", "/readyz", "/metrics"):
                log.info("api method=%s route=%s status=%s ms=%.1f", method, route, status, elapsed * 1000)


def _route_template(scope: Scope) -> str:
    """The template of the route that handled the request (routing records it in the scope)."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(path)
    return scope["path"] if scope.get("path") in _STATIC_PATHS else "unmatched"
