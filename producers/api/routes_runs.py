"""``/v1/run-definitions`` and ``/v1/communications``: run definitions, their executions, the queue.

The same operations as ``kmsbridge runs …`` and ``kmsbridge communications list``
(:class:`reconciler.run_definitions.RunDefinitionStore`, :class:`reconciler.communications_queue.
CommunicationQueue`). An execution asked for here is recorded REQUESTED; a running reconciler
claims and executes it (poll ``GET /v1/run-definitions/{name}/executions``). The app finds the
stores in ``app.state.run_store`` and ``app.state.communication_queue`` (set by
:mod:`kmsbridge.wiring_api`); without them these routes answer 503. A bad definition is a 422 that
names the field (an invalid cron expression, an unknown time zone, an empty external system).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from producers.api.models import ErrorBody
from producers.api.ratelimit import limited_caller
from producers.api.routes import _COMMON_RESPONSES
from reconciler.communications_queue import CommunicationQueue, CommunicationState
from reconciler.run_definitions import (
    DefinitionExists,
    DefinitionInUse,
    RunDefinition,
    RunDefinitionStore,
    UnknownDefinition,
)

__all__ = ["CommunicationView", "DefinitionView", "ExecutionView", "runs_router"]

runs_router = APIRouter(prefix="/v1", dependencies=[Depends(limited_caller)], responses=_COMMON_RESPONSES)

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "no run-definition database is configured for this API"},
}
_NAMED: dict[int | str, dict[str, Any]] = {
    **_UNAVAILABLE, 404: {"model": ErrorBody, "description": "no run definition has this name"},
}


class DefinitionView(RunDefinition):
    """A definition as stored, with its next due time (``null``: Not Effective or no schedule)."""

    next_due_at: str | None = None


class ExecutionView(BaseModel):
    execution_id: str
    definition: str
    kind: str
    trigger: str
    preview: bool
    due_at: str | None
    state: str
    requested_at: str | None
    started_at: str | None
    finished_at: str | None
    counts: dict[str, int]
    error: str | None


class DefinitionDetail(DefinitionView):
    executions: list[ExecutionView]


class CommunicationView(BaseModel):
    """A queued communication; its text is not shown, its length is."""

    communication_id: str
    external_system: str
    state: str
    kind: str
    text_mode: str
    text_length: int
    target: str
    scheduled_at: str | None
    received_at: str | None
    sent_at: str | None
    finished_at: str | None
    execution_id: str | None
    error_code: str | None
    error_description: str | None


def run_store(request: Request) -> RunDefinitionStore:
    found: RunDefinitionStore | None = getattr(request.app.state, "run_store", None)
    if found is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no run-definition database is configured")
    return found


def communication_queue(request: Request) -> CommunicationQueue:
    found: CommunicationQueue | None = getattr(request.app.state, "communication_queue", None)
    if found is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no communication queue is configured")
    return found


Store = Annotated[RunDefinitionStore, Depends(run_store)]
Queue = Annotated[CommunicationQueue, Depends(communication_queue)]
Name = Annotated[str, Path(min_length=1, max_length=128)]


def _view(definition: RunDefinition) -> dict[str, Any]:
    return definition.view(datetime.now(UTC))


async def _get(store: RunDefinitionStore, name: str) -> RunDefinition:
    try:
        return await run_in_threadpool(store.get, name)
    except UnknownDefinition as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@runs_router.post("/run-definitions", status_code=status.HTTP_201_CREATED, response_model=DefinitionView,
                  responses={**_UNAVAILABLE, 400: {"model": ErrorBody, "description": "the body is not UTF-8 JSON"},
                             409: {"model": ErrorBody, "description": "a definition of this name exists"}},
                  summary="Define a reset or a mail run")
async def define(store: Store, definition: RunDefinition) -> dict[str, Any]:
    try:
        await run_in_threadpool(store.define, definition)
    except DefinitionExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _view(definition)


@runs_router.get("/run-definitions", response_model=list[DefinitionView], responses=_UNAVAILABLE,
                 summary="Every run definition")
async def list_definitions(store: Store) -> list[dict[str, Any]]:
    return [_view(d) for d in await run_in_threadpool(store.all)]


@runs_router.get("/run-definitions/{name}", response_model=DefinitionDetail, responses=_NAMED,
                 summary="A definition and its newest executions")
async def show(store: Store, name: Name, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict[str, Any]:
    definition = await _get(store, name)
    executions = await run_in_threadpool(store.executions, name, limit=limit)
    return {**_view(definition), "executions": [e.view() for e in executions]}


@runs_router.post("/run-definitions/{name}/effective", response_model=DefinitionView, responses=_NAMED,
                  summary="Make a definition Effective: it runs when due")
async def make_effective(store: Store, name: Name) -> dict[str, Any]:
    return await _set_effective(store, name, True)


@runs_router.post("/run-definitions/{name}/not-effective", response_model=DefinitionView, responses=_NAMED,
                  summary="Make a definition Not Effective: it never runs when due")
async def make_not_effective(store: Store, name: Name) -> dict[str, Any]:
    return await _set_effective(store, name, False)


async def _set_effective(store: RunDefinitionStore, name: str, effective: bool) -> dict[str, Any]:
    await _get(store, name)
    return _view(await run_in_threadpool(store.set_effective, name, effective))


@runs_router.delete("/run-definitions/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
                    responses={**_NAMED, 409: {"model": ErrorBody, "description": "it has executed: not deletable"}},
                    summary="Delete a definition that has never executed")
async def delete(store: Store, name: Name) -> Response:
    await _get(store, name)
    try:
        await run_in_threadpool(store.delete, name)
    except DefinitionInUse as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@runs_router.post("/run-definitions/{name}/executions", status_code=status.HTTP_202_ACCEPTED,
                  response_model=ExecutionView, responses=_NAMED,
                  summary="Execute a definition now (REQUESTED; a reconciler carries it out)")
async def execute(store: Store, name: Name, preview: bool = False) -> dict[str, Any]:
    await _get(store, name)
    execution = await run_in_threadpool(store.request, name, preview=preview)
    return execution.view()


@runs_router.get("/run-definitions/{name}/executions", response_model=list[ExecutionView], responses=_NAMED,
                 summary="A definition's executions, newest first")
async def executions(store: Store, name: Name,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    await _get(store, name)
    return [e.view() for e in await run_in_threadpool(store.executions, name, limit=limit)]


@runs_router.get("/communications", response_model=list[CommunicationView], responses=_UNAVAILABLE,
                 summary="The communication queue, oldest first")
async def communications(queue: Queue, state: Literal["pending", "completed", "rejected"] | None = None,
                         external_system: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
                         limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
    wanted = CommunicationState(state.upper()) if state else None
    return await run_in_threadpool(queue.entries, state=wanted, external_system=external_system, limit=limit)
