"""Outcomes of requests: PENDING → COMPLETED or REJECTED (DESIGN.md §1 item 11).

One request can yield several ``KmsResult``s: a subscription target gets one command per device, a
rejection made by the translator gets one REJECTED result, a reset run gets a ``ReconcileReport``.
:class:`OutcomeStore` collects them by request id and applies one rule (:func:`settle`):

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

The store is in memory, bounded (least recently updated entries are evicted first) and thread-safe:
a background reader (:mod:`producers.results_feed`) adds records from Kafka while request handlers
wait, synchronously (:meth:`OutcomeStore.wait_sync`, the CLI) or in an event loop
(:meth:`OutcomeStore.wait`, the Web API).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    ReconcileRequest,
    RequestType,
    ResultState,
    ServiceRequest,
)

__all__ = [
    "RESET_FAILED",
    "DeviceDirectory",
    "Expect",
    "Outcome",
    "OutcomeStore",
    "RequestState",
    "expected_results",
    "planning_expectation",
    "settle",
]

#: Error code of a reset whose report says it failed (ours, not the KMS's).
RESET_FAILED = "RESET_FAILED"
DEFAULT_MAX_ENTRIES = 100_000


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


@dataclass
class _Entry:
    request_id: str
    is_reset: bool = False
    request_type: str | None = None
    expected: int | None = None
    tracked: bool = False
    results: dict[str, KmsResult] = field(default_factory=dict)
    report: ReconcileReport | None = None
    submitted_at: datetime | None = None


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


class OutcomeStore:
    """Outcomes by request id (see the module docstring); thread-safe, bounded to ``max_entries``."""

    def __init__(self, expect: Expect | None = None, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._expect = expect or (lambda _req: None)
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._async_waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    # --- what comes in -------------------------------------------------------------------------------

    def track(self, req: ServiceRequest) -> None:
        """Remember a request as PENDING (idempotent: the first sighting's expectation stays)."""
        expected = self._expect(req)
        with self._lock:
            entry = self._entry(req.request_id)
            if entry.tracked:
                return
            entry.tracked = True
            entry.request_type = req.type.value
            entry.is_reset = req.type is RequestType.RESET_SUBSCRIPTION
            entry.expected = expected
            entry.submitted_at = req.requested_at
            self._notify(req.request_id)

    def track_run(self, run: ReconcileRequest) -> None:
        """Remember a reset run (``POST /v1/reconcile-runs``) as PENDING until its report arrives."""
        with self._lock:
            entry = self._entry(run.run_id)
            if entry.tracked:
                return
            entry.tracked = True
            entry.is_reset = True
            entry.request_type = entry.request_type or "RECONCILE_RUN"
            entry.submitted_at = run.requested_at
            self._notify(run.run_id)

    def add_result(self, result: KmsResult) -> None:
        """Attach a result to its request (``request_id``) or reset run (``run_id``)."""
        request_id = result.request_id or result.run_id
        if not request_id:
            return  # a subscription event's or a communication's result: not a request of ours
        with self._lock:
            entry = self._entry(request_id)
            if not entry.tracked and result.run_id and not result.request_id:
                entry.is_reset = True
            entry.results.setdefault(result.idempotency_key, result)
            self._notify(request_id)

    def add_report(self, report: ReconcileReport) -> None:
        with self._lock:
            entry = self._entry(report.run_id)
            entry.is_reset = True
            entry.report = report
            self._notify(report.run_id)

    # --- what goes out -------------------------------------------------------------------------------

    def get(self, request_id: str) -> Outcome | None:
        """The outcome so far, or ``None`` for an id this store never saw."""
        with self._lock:
            entry = self._entries.get(request_id)
            return None if entry is None else _outcome(entry)

    def wait_sync(self, request_id: str, timeout: float) -> Outcome | None:
        """Block until the request settles or ``timeout`` passes; the outcome as it then stands."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                entry = self._entries.get(request_id)
                outcome = None if entry is None else _outcome(entry)
                remaining = deadline - time.monotonic()
                if (outcome is not None and outcome.settled) or remaining <= 0:
                    return outcome
                self._changed.wait(remaining)

    async def wait(self, request_id: str, timeout: float) -> Outcome | None:
        """:meth:`wait_sync` for an event loop: the loop keeps serving other requests meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = asyncio.Event()
            with self._lock:
                entry = self._entries.get(request_id)
                outcome = None if entry is None else _outcome(entry)
                remaining = deadline - loop.time()
                if (outcome is not None and outcome.settled) or remaining <= 0:
                    return outcome
                waiter = (loop, event)
                self._async_waiters.setdefault(request_id, []).append(waiter)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    waiters = self._async_waiters.get(request_id, [])
                    if waiter in waiters:
                        waiters.remove(waiter)
                    if not waiters:
                        self._async_waiters.pop(request_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # --- internals (called with the lock held) -------------------------------------------------------

    def _entry(self, request_id: str) -> _Entry:
        entry = self._entries.get(request_id)
        if entry is None:
            entry = self._entries[request_id] = _Entry(request_id)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(request_id)
        return entry

    def _notify(self, request_id: str) -> None:
        self._changed.notify_all()
        for loop, event in self._async_waiters.get(request_id, ()):
            loop.call_soon_threadsafe(event.set)


def _outcome(entry: _Entry) -> Outcome:
    results = tuple(entry.results.values())
    state = settle(results, entry.expected, is_reset=entry.is_reset, report=entry.report)
    return Outcome(request_id=entry.request_id, state=state, request_type=entry.request_type,
                   expected=entry.expected, results=results, report=entry.report,
                   submitted_at=entry.submitted_at)
