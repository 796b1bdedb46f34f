"""Translator handlers: one short function per input topic, decoded record in, commands and results out.

Business rules live in ``provisioning``; these functions only call the planner and turn a
``Rejection`` into a REJECTED ``KmsResult`` (never a DLQ entry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from provisioning.errors import Rejection
from provisioning.keys import KeySource, rejection_key
from provisioning.planning import plan_subscription
from provisioning.provider import ProviderConfig
from provisioning.requests import Skip, plan_communication, plan_request
from provisioning.text import TextLimits
from schemas.records import (
    CommunicationEvent,
    Device,
    KmsCommand,
    KmsResult,
    ReconcileRequest,
    RequestType,
    ResultState,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = ["DeviceDirectory", "Translation", "Translator", "build_handlers"]

PROCESS = "translator"


class DeviceDirectory(Protocol):
    """Where the translator finds a subscription's devices (the projector's desired-state store)."""

    def devices_of(self, subscription_id: str) -> Sequence[Device] | None: ...


@dataclass(frozen=True)
class Translation:
    commands: Sequence[KmsCommand] = ()
    results: Sequence[KmsResult] = ()
    outcome: str = "ok"  # ok, rejected, skipped
    skip_reason: str | None = None
    # RESET_SUBSCRIPTION hands over to the reconciler: published to reconcile.requests in the same transaction
    reconcile: Sequence[ReconcileRequest] = ()


Translator = Callable[[bytes | None], Translation]


@dataclass
class HandlerContext:
    provider: ProviderConfig
    limits: TextLimits
    directory: DeviceDirectory | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _rejected(rejection: Rejection, *, source_kind: KeySource, source_id: str, operation: str,
              secure_client_id: str | None = None, subscription_id: str | None = None,
              event_id: str | None = None, request_id: str | None = None,
              communication_id: str | None = None) -> KmsResult:
    return KmsResult(
        idempotency_key=rejection_key(source_kind, source_id),
        operation=operation,
        secure_client_id=secure_client_id,
        subscription_id=subscription_id,
        event_id=event_id,
        request_id=request_id,
        communication_id=communication_id,
        state=ResultState.REJECTED,
        error_code=rejection.code,
        error_description=rejection.description,
        executed_at=datetime.now(UTC),
    )


def translate_subscription(event: SubscriptionEvent, ctx: HandlerContext, topic: str) -> Translation:
    plan = plan_subscription(event, ctx.provider, process_name=PROCESS, topic=topic)
    if plan.rejection is not None:
        result = _rejected(plan.rejection, source_kind=KeySource.EVENT, source_id=event.event_id,
                           operation="SUBSCRIPTION_EVENT", subscription_id=event.subscription_id,
                           event_id=event.event_id)
        # The grant is refused, what the event takes away is not (docs/architecture.md §5): publish both.
        return Translation(commands=plan.commands, results=[result], outcome="rejected")
    return Translation(commands=plan.commands)


def translate_communication(comm: CommunicationEvent, ctx: HandlerContext, topic: str) -> Translation:
    devices = None
    if comm.subscription_id and ctx.directory is not None:
        devices = ctx.directory.devices_of(comm.subscription_id)
    plan = plan_communication(comm, ctx.provider, ctx.limits, devices, topic=topic)
    if isinstance(plan, Skip):
        return Translation(outcome="skipped", skip_reason=plan.reason)
    if plan.rejection is not None:
        result = _rejected(plan.rejection, source_kind=KeySource.COMMUNICATION, source_id=comm.communication_id,
                           operation=f"SEND_{comm.kind.value}", secure_client_id=comm.secure_client_id,
                           subscription_id=comm.subscription_id, communication_id=comm.communication_id)
        return Translation(results=[result], outcome="rejected")
    return Translation(commands=plan.commands)


def translate_request(req: ServiceRequest, ctx: HandlerContext, topic: str) -> Translation:
    devices = None
    if req.subscription_id and ctx.directory is not None:
        devices = ctx.directory.devices_of(req.subscription_id)
    plan = plan_request(req, ctx.provider, ctx.limits, devices=devices, topic=topic)
    if plan.rejection is not None:
        result = _rejected(plan.rejection, source_kind=KeySource.REQUEST, source_id=req.request_id,
                           operation=req.type.value, secure_client_id=req.secure_client_id,
                           subscription_id=req.subscription_id, request_id=req.request_id)
        return Translation(results=[result], outcome="rejected")
    if req.type is RequestType.RESET_SUBSCRIPTION and req.subscription_id:
        run = ReconcileRequest(run_id=req.request_id, subscription_ids=[req.subscription_id],
                               requested_by=req.requested_by, requested_at=req.requested_at)
        return Translation(reconcile=[run])
    return Translation(commands=plan.commands)


def build_handlers(ctx: HandlerContext) -> dict[str, tuple[type, Callable[..., Translation]]]:
    """Logical input name → (record type, handler)."""
    return {
        "subscriptions": (SubscriptionEvent, lambda rec, topic: translate_subscription(rec, ctx, topic)),
        "communications": (CommunicationEvent, lambda rec, topic: translate_communication(rec, ctx, topic)),
        "requests": (ServiceRequest, lambda rec, topic: translate_request(rec, ctx, topic)),
    }
