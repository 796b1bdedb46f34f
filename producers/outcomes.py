"""The outcome store: where each recent request stands, PENDING → COMPLETED or REJECTED, by the rule of
:mod:`provisioning.outcomes`.

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
from dataclasses import dataclass, field
from datetime import datetime

from provisioning.outcomes import (
    RESET_FAILED,
    DeviceDirectory,
    Expect,
    Outcome,
    RequestState,
    expected_results,
    planning_expectation,
    settle,
)
from schemas.records import (
    KmsResult,
    ReconcileReport,
    ReconcileRequest,
    RequestType,
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

DEFAULT_MAX_ENTRIES = 100_000


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
