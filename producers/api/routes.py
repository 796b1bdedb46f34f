"""The ``/v1`` routes. Handlers are short: build a record, track it, publish it, maybe wait.

**process_immediately** is a query parameter of every write (``?process_immediately=true``), because
some writes have no body (re-authorise, reset). ``false`` (the default): 202 with the request id and
``state: PENDING``. ``true``: the call waits, at most ``KMSBRIDGE_API__WAIT_SECONDS``, for the outcome
and answers 200 with COMPLETED or REJECTED; if the bound passes first it answers 202 with the outcome so
far (PENDING), and ``GET /v1/requests/{id}`` tells the rest.

A request is tracked *before* it is published, so its outcome cannot arrive unseen. Publishing failures
are 503 (nothing was queued, try again). Logs name request ids and targets, never a PIN or a text.

Every status a route can answer is declared in the OpenAPI document (``responses`` below), with its
body model: the fuzz test (``tests/unit/test_api_fuzz.py``) fails on any other. Error bodies say what
went wrong in fixed words; the librdkafka or KMS transport message goes to the log only.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response, status
from starlette.concurrency import run_in_threadpool

from kms_adapter.errors import KmsError, KmsRejected
from producers.api.deps import ApiServices, services
from producers.api.models import (
    ClientInfo,
    ErrorBody,
    KmsErrorBody,
    MessageBody,
    PinBody,
    ReconcileRunBody,
    RequestOutcome,
    Section,
    outcome_view,
)
from producers.api.ratelimit import limited_caller
from producers.errors import ProducerError
from producers.requests import describe_target, new_request
from schemas.limits import MAX_SECTIONS, Identifier
from schemas.records import ReconcileRequest, RequestType, ServiceRequest

__all__ = ["PROCESS_NAME", "router"]

log = logging.getLogger(__name__)

PROCESS_NAME = "api"

Responses = dict[int | str, dict[str, Any]]

#: What every ``/v1`` route can answer besides its own statuses (422 is FastAPI's, for every route
#: with parameters: ``loc`` names the field).
_COMMON_RESPONSES: Responses = {
    401: {"model": ErrorBody, "description": "missing or unknown API key",
          "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}},
    413: {"description": "the body is larger than KMSBRIDGE_API__MAX_BODY_BYTES (FastAPI's plain-text answer)",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    429: {"model": ErrorBody, "description": "this API key is over KMSBRIDGE_API__RATE_LIMIT",
          "headers": {"Retry-After": {"description": "seconds until a request is allowed again",
                                      "schema": {"type": "integer", "minimum": 1}}}},
}
_WRITE_RESPONSES: Responses = {
    200: {"description": "process_immediately=true and the request settled: COMPLETED or REJECTED"},
    202: {"description": "accepted (PENDING): poll status_url"},
    503: {"model": ErrorBody, "description": "the request could not be queued; nothing was sent"},
}
#: Writes with a JSON body: FastAPI answers 400 when the body cannot be decoded (not UTF-8).
_BODY_WRITE_RESPONSES: Responses = {
    **_WRITE_RESPONSES,
    400: {"model": ErrorBody, "description": "the body is not UTF-8 JSON"},
}

router = APIRouter(prefix="/v1", dependencies=[Depends(limited_caller)], responses=_COMMON_RESPONSES)

Caller = Annotated[str, Depends(limited_caller)]
Services = Annotated[ApiServices, Depends(services)]
Immediately = Annotated[bool, Query(description="wait (bounded by KMSBRIDGE_API__WAIT_SECONDS) for the outcome")]
ClientId = Annotated[Identifier, Path(description="the secure client (card) id")]
SubscriptionId = Annotated[Identifier, Path(description="the subscription id")]
RequestId = Annotated[Identifier, Path(description="the request or reset run id")]


async def _submit(svc: ApiServices, req: ServiceRequest, immediately: bool, response: Response) -> RequestOutcome:
    await run_in_threadpool(svc.outcomes.track, req)  # may ask the device directory: off the event loop
    try:
        await run_in_threadpool(svc.publisher.publish_request, req)
    except ProducerError as exc:
        log.warning("request not published request_id=%s type=%s: %s", req.request_id, req.type.value, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the request could not be queued; try again") from exc
    log.info("api request accepted request_id=%s type=%s %s by=%s immediately=%s", req.request_id,
             req.type.value, describe_target(req), req.requested_by, immediately)
    return await _answer(svc, req.request_id, req.type.value, immediately, response)


async def _answer(svc: ApiServices, request_id: str, request_type: str, immediately: bool,
                  response: Response) -> RequestOutcome:
    outcome = await svc.outcomes.wait(request_id, svc.wait_seconds) if immediately else svc.outcomes.get(request_id)
    view = outcome_view(outcome, request_id, request_type)
    settled = outcome is not None and outcome.settled
    response.status_code = status.HTTP_200_OK if immediately and settled else status.HTTP_202_ACCEPTED
    return view


@router.post("/secure-clients/{secure_client_id}/pin", response_model=RequestOutcome, responses=_BODY_WRITE_RESPONSES,
             summary="Set the parental PIN, or reset it to the provider's default")
async def set_pin(secure_client_id: ClientId, body: PinBody, svc: Services, caller: Caller, response: Response,
                  process_immediately: Immediately = False) -> RequestOutcome:
    type_ = RequestType.RESET_PIN if body.default else RequestType.SET_PIN
    req = new_request(type_, secure_client_id=secure_client_id, pin=body.pin, requested_by=caller,
                      process_name=PROCESS_NAME)
    return await _submit(svc, req, process_immediately, response)


@router.post("/secure-clients/{secure_client_id}/reauthorise", response_model=RequestOutcome,
             responses=_WRITE_RESPONSES, summary="Re-authorise the secure client's sector (loss-of-signal refresh)")
async def reauthorise(secure_client_id: ClientId, svc: Services, caller: Caller, response: Response,
                      process_immediately: Immediately = False) -> RequestOutcome:
    req = new_request(RequestType.REAUTHORISE_SECTOR, secure_client_id=secure_client_id, requested_by=caller,
                      process_name=PROCESS_NAME)
    return await _submit(svc, req, process_immediately, response)


@router.get("/secure-clients/{secure_client_id}", response_model=ClientInfo,
            responses={400: {"model": KmsErrorBody, "description": "the KMS refused the query (its code)"},
                       404: {"model": KmsErrorBody, "description": "the KMS does not know the secure client"},
                       503: {"model": ErrorBody, "description": "the KMS did not answer"}},
            summary="Query a secure client's information sections (all nine when no section is given)")
async def query_client(secure_client_id: ClientId, svc: Services,
                       section: Annotated[list[Section] | None,
                                          Query(max_length=MAX_SECTIONS, description="repeat for several")] = None,
                       ) -> ClientInfo:
    wanted = [s.value for s in section or []]
    try:
        sections = await svc.kms.query_client(secure_client_id, wanted)
    except KmsRejected as exc:
        code = status.HTTP_404_NOT_FOUND if exc.code == "UNKNOWN_CLIENT" else status.HTTP_400_BAD_REQUEST
        raise HTTPException(code, {"code": exc.code, "description": exc.description}) from exc
    except KmsError as exc:
        log.warning("kms query failed secure_client_id=%s: %s", secure_client_id, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the KMS did not answer; try again") from exc
    return ClientInfo(secure_client_id=secure_client_id, sections=sections)


@router.post("/messages", response_model=RequestOutcome, responses=_BODY_WRITE_RESPONSES,
             summary="Send a Mail or an on-screen Message to a secure client, a subscription or everyone")
async def send_message(body: MessageBody, svc: Services, caller: Caller, response: Response,
                       process_immediately: Immediately = False) -> RequestOutcome:
    req = new_request(RequestType.SEND_MESSAGE, secure_client_id=body.secure_client_id,
                      subscription_id=body.subscription_id, all_=body.all, kind=body.kind,
                      text_mode=body.text_mode, text=body.text, requested_by=caller, process_name=PROCESS_NAME)
    return await _submit(svc, req, process_immediately, response)


@router.post("/subscriptions/{subscription_id}/reset", response_model=RequestOutcome, responses=_WRITE_RESPONSES,
             summary="Reset one subscription: re-send what CRM holds wherever the KMS differs")
async def reset_subscription(subscription_id: SubscriptionId, svc: Services,
                             caller: Caller, response: Response,
                             process_immediately: Immediately = False) -> RequestOutcome:
    req = new_request(RequestType.RESET_SUBSCRIPTION, subscription_id=subscription_id, requested_by=caller,
                      process_name=PROCESS_NAME)
    return await _submit(svc, req, process_immediately, response)


@router.post("/reconcile-runs", response_model=RequestOutcome, responses=_BODY_WRITE_RESPONSES,
             summary="Start a reset run (or preview it); the outcome is its report")
async def reconcile_run(svc: Services, caller: Caller, response: Response,
                        body: Annotated[ReconcileRunBody | None, Body()] = None,
                        process_immediately: Immediately = False) -> RequestOutcome:
    body = body or ReconcileRunBody()
    run = ReconcileRequest(run_id=str(uuid.uuid4()), created_from=body.created_from, created_to=body.created_to,
                           subscription_types=body.subscription_types, subscription_ids=body.subscription_ids,
                           preview=body.preview, requested_by=caller, requested_at=datetime.now(UTC))
    svc.outcomes.track_run(run)
    try:
        await run_in_threadpool(svc.publisher.publish_reconcile, run)
    except ProducerError as exc:
        log.warning("reset run not published run_id=%s: %s", run.run_id, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the run could not be queued; try again") from exc
    log.info("api reconcile run accepted run_id=%s preview=%s by=%s", run.run_id, run.preview, caller)
    return await _answer(svc, run.run_id, "RECONCILE_RUN", process_immediately, response)


@router.get("/requests/{request_id}", response_model=RequestOutcome,
            responses={404: {"model": ErrorBody, "description": "no request with this id is known to this API"}},
            summary="The state of a request or reset run: PENDING, COMPLETED or REJECTED")
async def get_request(request_id: RequestId, svc: Services) -> RequestOutcome:
    outcome = svc.outcomes.get(request_id)
    if outcome is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown request id {request_id}")
    return outcome_view(outcome, request_id)
