"""``/v1/provisioning-requests`` and ``/v1/secure-clients/{id}/history``: the request log for support.

The same reads as ``kmsbridge requests list`` and ``kmsbridge history``
(:class:`reconciler.request_log_store.RequestLog`), newest first with keyset pages for the list, oldest
first for a box's timeline. The app finds the log in ``app.state.request_log`` (set by
:mod:`kmsbridge.wiring_api`); without one these routes answer 503. PINs are never in the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from producers.api.models import ErrorBody
from producers.api.ratelimit import limited_caller
from producers.api.routes import _COMMON_RESPONSES
from reconciler.request_log_store import BadCursor, LogFilter, RequestLog

__all__ = ["HistoryPage", "LogEntry", "LogPage", "log_router"]

log_router = APIRouter(prefix="/v1", dependencies=[Depends(limited_caller)], responses=_COMMON_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "no request log is configured for this API"},
}


class LogEntry(BaseModel):
    """One row of the log: a command, a whole-input rejection, a service request or a reset run."""

    entry_key: str
    kind: str
    operation: str
    state: str
    secure_client_id: str | None
    subscription_id: str | None
    distributor: str | None
    source_kind: str
    source_id: str
    process_name: str
    requested_by: str | None
    priority: str | None
    created_at: str
    executed_at: str | None
    attempts: int | None
    duplicate: bool
    latency_ms: float | None
    error_code: str | None
    error_description: str | None
    provider_error_code: str | None
    provider_error_description: str | None


class LogPage(BaseModel):
    entries: list[LogEntry]
    next_cursor: str | None


class HistoryPage(BaseModel):
    secure_client_id: str
    timeline: list[dict[str, Any]]
Id = Annotated[str | None, Query(min_length=1, max_length=128)]
#: ISO 8601 with a zone, as a string: a bare number would otherwise be read as a Unix time
Moment = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$",
                                     description="ISO 8601 with a zone, e.g. 2026-11-25T10:00:00Z")]


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        # the app's 422 answer, as for every other invalid parameter
        raise RequestValidationError([{"type": "datetime_parsing", "loc": ("query", name),
                                       "msg": "not a valid time", "input": value}]) from None


def request_log(request: Request) -> RequestLog:
    """FastAPI dependency: the app's request log, or 503."""
    found: RequestLog | None = getattr(request.app.state, "request_log", None)
    if found is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no request log is configured")
    return found


Log = Annotated[RequestLog, Depends(request_log)]


@log_router.get("/provisioning-requests", response_model=LogPage,
                responses={**_ERRORS, 400: {"model": ErrorBody, "description": "a cursor this log did not hand out"}},
                summary="Requests and commands with their state, newest first; every filter optional")
async def list_requests(
    log: Log, secure_client_id: Id = None, subscription_id: Id = None,
    type: Annotated[str | None, Query(min_length=1, max_length=64, description="operation or request type")] = None,
    state: Literal["PENDING", "COMPLETED", "REJECTED"] | None = None,
    kind: Literal["COMMAND", "REJECTION", "REQUEST", "RUN"] | None = None,
    process: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    since: Moment = None, until: Moment = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
) -> dict[str, Any]:
    where = LogFilter(secure_client_id=secure_client_id, subscription_id=subscription_id, operation=type,
                      state=state, kind=kind, process_name=process, since=_moment("since", since),
                      until=_moment("until", until))
    try:
        page = await run_in_threadpool(log.search, where, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return {"entries": page.entries, "next_cursor": page.next_cursor}


@log_router.get("/secure-clients/{secure_client_id}/history", response_model=HistoryPage, responses=_ERRORS,
                summary="One box's events, the commands planned for it and their results, oldest first")
async def box_history(log: Log, secure_client_id: Annotated[str, Path(min_length=1, max_length=128)],
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> dict[str, Any]:
    items = await run_in_threadpool(log.history, secure_client_id, limit=limit)
    return {"secure_client_id": secure_client_id, "timeline": [i.view() for i in items]}
