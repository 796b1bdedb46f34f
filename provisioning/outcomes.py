"""Outcomes of requests: PENDING → COMPLETED or REJECTED (docs/architecture.md §1 item 11).

One request can yield several ``KmsResult``s: a subscription target gets one command per device, a
rejection made by the translator gets one REJECTED result, a reset run gets a ``ReconcileReport``.
The outcome store (:class:`producers.outcomes.OutcomeStore`) and the request log
(:mod:`reconciler.request_log_store`) collect them by request id and apply one rule (:func:`settle`):

**How many results to expect.** Computed up front by :func:`expected_results`, with the *same planning
function the translator runs* (``provisioning.requests.plan_request``) and the same device directory,
so it is the number of commands the translator will publish; a plan that is rejected expects one
(REJECTED) result. Without a device directory a subscription-targeted request plans as
``UNKNOWN_SUBSCRIPTION`` (one result), exactly as the translator does without one; give the API and the
translator the same directory and the counts agree.

**The aggregate state** (:func:`settle`):

* REJECTED as soon as any result is REJECTED (it can never become COMPLETED); every rejected result's
  codes are listed;
* COMPLETED once COMPLETED results for ``expected`` distinct idempotency keys are in (a redelivered
  command's duplicate result counts once);
* a request whose expectation is unknown (one this process did not plan, e.g. first seen through its
  result) settles on its first result;
* a reset (``RESET_SUBSCRIPTION`` request or reconcile run) settles on its ``ReconcileReport`` and
  the results of the commands it published (keyed by ``run_id``): REJECTED when the report carries
  an ``error``, counts ``failed`` subscriptions or names ``unknown_subscriptions`` (code
  ``UNKNOWN_SUBSCRIPTION``), or as soon as one of its commands is REJECTED by the KMS; COMPLETED
  once the KMS completed all ``commands_published`` of them (the repair is applied);
* otherwise PENDING.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from provisioning.errors import UNKNOWN_SUBSCRIPTION
from provisioning.provider import ProviderConfig
from provisioning.requests import plan_request
from provisioning.text import TextLimits
from schemas.records import (
    Device,
    KmsResult,
    ReconcileReport,
    RequestType,
    ResultState,
    ServiceRequest,
)

__all__ = [
    "RESET_FAILED",
    "DeviceDirectory",
    "Expect",
    "Outcome",
    "RequestState",
    "expected_results",
    "planning_expectation",
    "settle",
]

#: Error code of a reset whose report says it failed (ours, not the KMS's).
RESET_FAILED = "RESET_FAILED"


class RequestState(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


class DeviceDirectory(Protocol):
    """A subscription's devices (the desired-state store); ``None`` when the subscription is unknown.

    The same surface as ``consumers.translation.DeviceDirectory``, so one object serves both.
    """

    def devices_of(self, subscription_id: str) -> Sequence[Device] | None: ...


#: How many results a request will yield, or ``None`` when that cannot be known here.
Expect = Callable[[ServiceRequest], int | None]


def expected_results(req: ServiceRequest, provider: ProviderConfig, limits: TextLimits,
                     directory: DeviceDirectory | None = None) -> int | None:
    """The number of results ``req`` will yield, planned exactly as the translator plans it."""
    if req.type is RequestType.QUERY_CLIENT:
        return None  # read directly from the KMS, never published
    if req.type is RequestType.RESET_SUBSCRIPTION:
        return None  # settles on its report
    devices = None
    if req.subscription_id and directory is not None:
        devices = directory.devices_of(req.subscription_id)
    plan = plan_request(req, provider, limits, devices=devices)
    if plan.rejection is not None:
        return 1
    return len(plan.commands) or None


def planning_expectation(provider: ProviderConfig, limits: TextLimits,
                         directory: DeviceDirectory | None = None) -> Expect:
    """:data:`Expect` bound to a provider, text limits and (optionally) a device directory."""
    return lambda req: expected_results(req, provider, limits, directory)


@dataclass(frozen=True)
class Outcome:
    """Where one request (or reset run) stands. ``results`` are de-duplicated by idempotency key."""

    request_id: str
    state: RequestState
    request_type: str | None = None
    expected: int | None = None
    results: tuple[KmsResult, ...] = ()
    report: ReconcileReport | None = None
    submitted_at: datetime | None = None

    @property
    def settled(self) -> bool:
        return self.state is not RequestState.PENDING

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(code, description) of every rejection, ours or the KMS's, in arrival order."""
        out: list[tuple[str, str]] = []
        for r in self.results:
            if r.state is ResultState.REJECTED:
                out.append((r.error_code or "REJECTED", r.error_description or ""))
        report = self.report
        if report is not None and self.state is RequestState.REJECTED and not out:
            if report.unknown_subscriptions:
                out.append((UNKNOWN_SUBSCRIPTION, "not in the desired-state store: "
                            + ", ".join(report.unknown_subscriptions[:10])))
            if report.error or report.failed:
                out.append((RESET_FAILED, report.error or f"{report.failed} subscription(s) failed"))
        return out


def settle(results: Sequence[KmsResult], expected: int | None, *, is_reset: bool = False,
           report: ReconcileReport | None = None, commands_seen: bool = True) -> RequestState:
    """The aggregate state of one request (the rule of the module docstring).

    ``commands_seen``: ``results`` holds the results of the commands a reset published (the outcome
    store's feed reads them by run id); a reader that holds only the request's own rows passes
    ``False`` and a reset then settles on its report alone.
    """
    if is_reset:
        # the translator's rejection of the request itself, or the KMS's of a command the reset published
        if any(r.state is ResultState.REJECTED for r in results):
            return RequestState.REJECTED
        if report is None:
            return RequestState.PENDING
        if not report.succeeded:
            return RequestState.REJECTED
        if not commands_seen or report.preview:  # a preview publishes nothing
            return RequestState.COMPLETED
        applied = sum(1 for r in results if r.state is ResultState.COMPLETED)
        return RequestState.COMPLETED if applied >= report.commands_published else RequestState.PENDING
    if any(r.state is ResultState.REJECTED for r in results):
        return RequestState.REJECTED
    completed = sum(1 for r in results if r.state is ResultState.COMPLETED)
    if completed and completed >= (expected or 1):
        return RequestState.COMPLETED
    return RequestState.PENDING
