"""405 answers list every method the path supports in ``Allow`` (RFC 9110 §15.5.6).

Starlette's router stops at the first route whose path matches, so a path served by two routes
(``GET`` and ``POST /v1/run-definitions``) would answer ``Allow`` with one of them only.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

__all__ = ["complete_allow_header"]


async def complete_allow_header(request: Request, exc: Exception) -> Response:
    """An ``HTTPException`` handler: FastAPI's answer, with the full ``Allow`` on a 405."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed: set[str] = set()
        for route in request.app.router.routes:
            if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
                allowed |= route.methods
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    return await http_exception_handler(request, exc)
