"""The reset job (docs/architecture.md §1 items 3-4, §5): level-based, like a Kubernetes controller.

One run, for one :class:`~schemas.records.ReconcileRequest`:

1. **Lock** (reset runs only): hold the run lock (:mod:`reconciler.lock`) for the whole run, so
   two runs never repair the same subscriptions at once.
2. **Select and stream**: count the selection (for progress), then read it from the desired-state
   store in batches (keyset pagination, :meth:`~reconciler.store.DesiredStateStore.stream_selection`);
   at most ``max_batches_in_flight`` batches are held at once, so memory stays flat.
3. **Read the KMS**: each batch's cards (current devices and cards CRM no longer has) are read with
   ``query_clients`` in chunks of ``query_batch``, at most ``query_concurrency`` calls at once.
   Transient KMS errors are retried ``query_attempts`` times; then the batch's subscriptions count as
   ``failed`` and the run goes on. A chunk the KMS rejects (a terminal error, such as a card id XML
   cannot carry) is split in halves and each half queried again, down to the card it rejects: one bad
   card never fails the good ones, and the subscriptions holding a rejected card count as ``failed``
   (logged with the code). So does a subscription whose stored event fails the record limits (a row
   written before them, :attr:`~reconciler.model.StoredSubscription.invalid`); it is not queried.
   And so does one whose comparison meets a value no record can hold (a KMS answer about its cards).
4. **Compare** (:func:`reconciler.drift.compare`): desired state from the same planning code the
   translator uses, evaluated at the run's start time. A subscription whose stored state validation
   rejects is compared, and repaired, in the revoking direction only (its boxes cleared as planning
   clears them for a rejected event) and is reported with its rejection code, not as ``failed``.
5. **Repair** (not for previews): each drifted subscription's commands come from
   :func:`provisioning.repair.plan_repair` (``plan_reset`` plus cards CRM no longer has and missing
   PINs), with keys derived from the run id. A repair whose fingerprint matches an unexpired
   expectation of an earlier run is in flight already and is not published again
   (:mod:`reconciler.expectations`). Commands are published to ``kms.commands`` and flushed per
   batch; only then are the batch's expectations recorded. A single reset's commands are ``EXPRESS``
   and go to the express lane instead (:func:`reconciler.publish.run_priority`).
6. **Report**: counts (checked, in_sync, drifted, commands_published, failed, rejected), the
   explicitly named subscriptions the store does not hold (``unknown_subscriptions``), the rejection
   code of each rejected subscription (``rejections``, capped at ``item_cap``), drift items capped
   at ``item_cap`` with ``items_omitted``, duration. Metrics: ``kmsbridge_reconcile_drifted_total``
   by run type, and ``kmsbridge_reconcile_last_success_timestamp_seconds`` after a reset run with no
   failure.

"A second run right after a first publishes nothing": once the executor applied the first run's
commands the KMS matches CRM and the second run finds no drift; before that, the second run still
reports the drift, but its repairs equal the first run's expectations and are not published again.

Errors follow controller-runtime: a run that cannot go on (lock timeout, database or Kafka failure)
ends with ``error`` set in its report, which is recorded and not retried by the job; scheduling the
next run is the trigger's business. :class:`RunInterrupted` (shutdown) produces no report.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from kafka_edge.metrics import RECONCILE_DRIFTED, RECONCILE_LAST_SUCCESS
from kms_adapter.errors import KmsError, KmsRejected
from kms_adapter.port import ClientState, KmsPort
from provisioning.provider import ProviderConfig
from provisioning.repair import plan_repair
from reconciler.drift import DesiredStates, SubscriptionDrift, cards_to_query, compare
from reconciler.expectations import Expectations, fingerprint
from reconciler.lock import LeaseLost, LockTimeout, RunLock
from reconciler.model import Selection, StoredSubscription
from reconciler.progress import Progress
from reconciler.publish import CommandSink, run_priority, topic_for
from reconciler.store import DesiredStateStore
from schemas.errors import describe_validation_error
from schemas.records import DriftItem, KmsCommand, Priority, ReconcileReport, ReconcileRequest

__all__ = ["JobConfig", "ResetJob", "RunInterrupted", "RunStats", "report_error"]

log = logging.getLogger(__name__)
PROCESS = "reconciler"


class RunInterrupted(Exception):
    """The run was asked to stop (shutdown) before it finished; it published no report."""


@dataclass(frozen=True)
class JobConfig:
    batch_size: int = 500  # subscriptions per database batch
    query_batch: int = 100  # cards per QUERY_CLIENTS call
    query_concurrency: int = 4  # QUERY_CLIENTS calls in flight
    max_batches_in_flight: int = 4
    query_attempts: int = 3
    query_retry_seconds: float = 0.5
    item_cap: int = 500  # drift items carried in the report
    expectation_ttl: timedelta = timedelta(minutes=10)
    lock_wait_seconds: float = 300.0
    progress_log_seconds: float = 10.0
    commands_topic: str | None = None  # recorded in each command's source
    express_topic: str | None = None  # the express lane, recorded in a single reset's commands' source


@dataclass
class RunStats:
    """Counters of one run (the report's, plus what only the logs and benchmarks show)."""

    checked: int = 0
    in_sync: int = 0
    drifted: int = 0
    commands_published: int = 0
    failed: int = 0
    pending: int = 0  # drifted, repair already in flight (an earlier run's expectation)
    kms_queries: int = 0
    unknown_subscriptions: list[str] = field(default_factory=list)
    rejected: int = 0  # subscriptions validation rejects (also counted as in_sync or drifted)
    rejections: dict[str, str] = field(default_factory=dict)  # subscription → code, the first item_cap
    items: list[DriftItem] = field(default_factory=list)
    items_omitted: int = 0


@dataclass
class _Batch:
    subscriptions: list[StoredSubscription]
    drifts: list[SubscriptionDrift] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # subscription → why it cannot be compared


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ResetJob:
    """Runs reset runs and previews (see the module docstring)."""

    def __init__(self, store: DesiredStateStore, kms: KmsPort, sink: CommandSink, provider: ProviderConfig,
                 *, expectations: Expectations, lock: RunLock | None, config: JobConfig | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._kms = kms
        self._sink = sink
        self._provider = provider
        self._expectations = expectations
        self._lock = lock
        self.config = config or JobConfig()
        self._clock = clock
        self.last_stats: RunStats | None = None

    async def run(self, request: ReconcileRequest, stop: threading.Event | None = None) -> ReconcileReport:
        """Run ``request`` to the end and return its report (``error`` set if it could not finish)."""
        started = self._clock()
        t0 = time.monotonic()
        stats = RunStats()
        self.last_stats = stats
        error: str | None = None
        kind = "preview" if request.preview else "reset"
        log.info("reconcile started run_id=%s type=%s requested_by=%s", request.run_id, kind, request.requested_by)
        try:
            if request.preview or self._lock is None:
                await self._sweep(request, stats, started, None, stop)
            else:
                hold = self._lock.hold(request.run_id, wait_seconds=self.config.lock_wait_seconds, stop=stop)
                lease = await asyncio.to_thread(hold.__enter__)
                try:
                    await self._sweep(request, stats, started, lease.check, stop)
                finally:
                    await asyncio.to_thread(hold.__exit__, None, None, None)
        except RunInterrupted:
            log.warning("reconcile interrupted run_id=%s checked=%d", request.run_id, stats.checked)
            raise
        except Exception as exc:
            error = report_error(exc)
            log.error("reconcile failed run_id=%s error=%s: %s", request.run_id, type(exc).__name__, exc)
        duration = time.monotonic() - t0
        finished = started + timedelta(seconds=duration)
        RECONCILE_DRIFTED.labels(kind).inc(stats.drifted)
        if not request.preview and error is None and stats.failed == 0:
            RECONCILE_LAST_SUCCESS.set(finished.timestamp())
        log.info("reconcile finished run_id=%s type=%s checked=%d in_sync=%d drifted=%d commands_published=%d "
                 "failed=%d rejected=%d pending=%d kms_queries=%d duration=%.1fs%s", request.run_id, kind,
                 stats.checked, stats.in_sync, stats.drifted, stats.commands_published, stats.failed,
                 stats.rejected, stats.pending,
                 stats.kms_queries, duration, f" error={error}" if error else "")
        return ReconcileReport(
            run_id=request.run_id, preview=request.preview, checked=stats.checked, in_sync=stats.in_sync,
            drifted=stats.drifted, commands_published=stats.commands_published, failed=stats.failed,
            unknown_subscriptions=stats.unknown_subscriptions, rejected=stats.rejected, rejections=stats.rejections,
            items=stats.items, items_omitted=stats.items_omitted, started_at=started, finished_at=finished,
            duration_seconds=round(duration, 3), error=error,
        )

    # --- steps 2-5 -----------------------------------------------------------------------------------

    async def _sweep(self, request: ReconcileRequest, stats: RunStats, at: datetime,
                     check_lease: Callable[[], None] | None, stop: threading.Event | None) -> None:
        cfg = self.config
        selection = Selection.of(request)
        if request.subscription_ids:  # named explicitly: say which the store does not hold
            stats.unknown_subscriptions = await asyncio.to_thread(self._store.unknown, request.subscription_ids)
        total = await asyncio.to_thread(self._store.count, selection)  # step 2
        if not request.preview:
            await asyncio.to_thread(self._expectations.purge_expired, at)
        progress = Progress(total, request.run_id, preview=request.preview, log_every_seconds=cfg.progress_log_seconds)
        queries = asyncio.Semaphore(cfg.query_concurrency)
        desired = DesiredStates(self._provider, at)  # one per run: the rule is memoised for ``at``
        batches = iter(self._store.stream_selection(selection, cfg.batch_size))
        in_flight: deque[asyncio.Task[_Batch]] = deque()

        def stopping() -> None:
            if stop is not None and stop.is_set():
                raise RunInterrupted(request.run_id)

        async def finish_oldest() -> None:
            batch = await in_flight.popleft()
            stopping()  # between two batches: nothing of this one is published yet
            await self._finish(batch, request, stats, at, check_lease, progress)

        try:
            while True:
                stopping()
                subscriptions = await asyncio.to_thread(next, batches, None)
                if subscriptions is None:
                    break
                in_flight.append(asyncio.create_task(self._check(subscriptions, request, queries, desired, stats)))
                if len(in_flight) >= cfg.max_batches_in_flight:
                    await finish_oldest()
            while in_flight:
                await finish_oldest()
        finally:
            for task in in_flight:
                task.cancel()
            progress.close()

    async def _check(self, subscriptions: list[StoredSubscription], request: ReconcileRequest,
                     queries: asyncio.Semaphore, desired: DesiredStates, stats: RunStats) -> _Batch:
        """Steps 3-4 for one batch: read the KMS, compare."""
        batch = _Batch(subscriptions)
        batch.unreadable = {s.event.subscription_id: f"stored state invalid: {s.invalid}"
                            for s in subscriptions if s.invalid is not None}
        cards = list(dict.fromkeys(card for s in subscriptions if s.invalid is None for card in cards_to_query(s)))
        chunks = [cards[i:i + self.config.query_batch] for i in range(0, len(cards), self.config.query_batch)]
        rejected: dict[str, str] = {}
        try:
            answers = await asyncio.gather(*(self._query_apart(chunk, queries, stats, rejected) for chunk in chunks))
        except KmsError as exc:
            batch.error = f"{type(exc).__name__}: {exc}"
            return batch
        actual: dict[str, ClientState] = {}
        for answer in answers:
            actual.update(answer)
        for s in subscriptions:
            bad = next((card for card in cards_to_query(s) if card in rejected), None)
            if bad is not None:
                batch.unreadable[s.event.subscription_id] = f"card {bad!r} rejected: {rejected[bad]}"
        batch.drifts = [self._compare(s, actual, desired, batch) for s in subscriptions]
        if not request.preview:
            batch.pending = await asyncio.to_thread(
                self._expectations.pending, [s.event.subscription_id for s in subscriptions], self._clock())
        return batch

    def _compare(self, stored: StoredSubscription, actual: dict[str, ClientState], desired: DesiredStates,
                 batch: _Batch) -> SubscriptionDrift:
        """:func:`compare`; a subscription that cannot be compared (already unreadable, or a KMS answer
        about its cards that no record can hold) joins ``batch.unreadable`` instead of failing the batch."""
        sid = stored.event.subscription_id
        if sid not in batch.unreadable:
            try:
                return compare(stored, actual, self._provider, desired.at, desired_states=desired)
            except ValidationError as exc:
                batch.unreadable[sid] = f"a value no record can hold: {describe_validation_error(exc)}"
        return SubscriptionDrift(sid)

    async def _query_apart(self, chunk: Sequence[str], queries: asyncio.Semaphore, stats: RunStats,
                           rejected: dict[str, str]) -> dict[str, ClientState]:
        """:meth:`_query`; a chunk the KMS rejects is queried again in halves, down to the card it
        rejects, whose code goes to ``rejected`` (card → code), so the good cards are still read."""
        try:
            return await self._query(chunk, queries, stats)
        except KmsRejected as exc:
            if len(chunk) == 1:
                rejected[chunk[0]] = exc.code
                log.warning("QUERY_CLIENTS rejected secure_client_id=%r code=%s", chunk[0], exc.code)
                return {}
        half = len(chunk) // 2
        left, right = await asyncio.gather(self._query_apart(chunk[:half], queries, stats, rejected),
                                           self._query_apart(chunk[half:], queries, stats, rejected))
        return {**left, **right}

    async def _query(self, chunk: Sequence[str], queries: asyncio.Semaphore, stats: RunStats,
                     ) -> dict[str, ClientState]:
        attempt = 0
        while True:
            attempt += 1
            async with queries:
                stats.kms_queries += 1
                try:
                    return await self._kms.query_clients(chunk)
                except KmsError as exc:
                    if not exc.retryable or attempt >= self.config.query_attempts:
                        raise
                    log.warning("QUERY_CLIENTS failed (%s), attempt %d of %d", exc, attempt,
                                self.config.query_attempts)
            await asyncio.sleep(self.config.query_retry_seconds * attempt)

    async def _finish(self, batch: _Batch, request: ReconcileRequest, stats: RunStats, at: datetime,
                      check_lease: Callable[[], None] | None, progress: Progress) -> None:
        """Step 5 for one batch, in stream order: count, plan, publish, record expectations."""
        if batch.error is not None:
            stats.checked += len(batch.subscriptions)
            stats.failed += len(batch.subscriptions)
            log.error("reconcile batch failed run_id=%s subscriptions=%d error=%s", request.run_id,
                      len(batch.subscriptions), batch.error)
            progress.update(len(batch.subscriptions), 0)
            return
        commands: list[KmsCommand] = []
        expected: list[tuple[str, str, str]] = []
        settled: list[str] = []
        drifted_before = stats.drifted
        priority = run_priority(request)
        topic = (topic_for(priority, self.config.commands_topic, self.config.express_topic)
                 if self.config.commands_topic else None)
        for stored, drift in zip(batch.subscriptions, batch.drifts, strict=True):
            sid = stored.event.subscription_id
            stats.checked += 1
            if sid in batch.unreadable:  # its stored state is invalid, or the KMS rejected a card of it
                stats.failed += 1
                log.warning("reconcile cannot compare subscription_id=%r: %s", sid, batch.unreadable[sid])
                continue
            if drift.rejection is not None:
                stats.rejected += 1
                if len(stats.rejections) < self.config.item_cap:
                    stats.rejections[sid] = drift.rejection.code
                log.warning("reconcile rejects subscription_id=%s code=%s (revoking direction only)", sid,
                            drift.rejection.code)
            if not drift.drifted:
                stats.in_sync += 1
                if sid in batch.pending:
                    settled.append(sid)
                continue
            stats.drifted += 1
            self._keep_items(stats, drift.items)
            if request.preview:
                continue
            plan = plan_repair(stored.event, self._provider, run_id=request.run_id, at=at,
                               secure_client_ids=drift.resync, pair=drift.pair, default_pin=drift.default_pin,
                               retired=drift.retired, keep=drift.keep, process_name=PROCESS, topic=topic)
            digest = fingerprint(plan.commands)
            if batch.pending.get(sid) == digest:
                stats.pending += 1
                continue
            if priority is not Priority.REGULAR:
                commands.extend(c.model_copy(update={"priority": priority}) for c in plan.commands)
            else:
                commands.extend(plan.commands)
            expected.append((sid, request.run_id, digest))
        if commands:
            if check_lease is not None:
                check_lease()  # never publish after losing the lock
            for command in commands:
                self._sink.publish(command)
            await asyncio.to_thread(self._sink.flush)
            stats.commands_published += len(commands)
            await asyncio.to_thread(self._expectations.expect, expected, self._clock())
        if settled:
            await asyncio.to_thread(self._expectations.forget, settled)
        progress.update(len(batch.subscriptions), stats.drifted - drifted_before)

    def _keep_items(self, stats: RunStats, items: Sequence[DriftItem]) -> None:
        room = max(0, self.config.item_cap - len(stats.items))
        stats.items.extend(items[:room])
        stats.items_omitted += max(0, len(items) - room)


def report_error(exc: BaseException) -> str:
    """The ``error`` of a failed run's report, which the CLI, the Web API and CRM read: our own errors
    (the KMS's, the run lock's) carry texts we wrote (an error kind, a KMS code, the lock's holder); any
    other exception (a database driver's, a library's) is named by its class only, since its text may
    quote SQL, parameters or addresses. The reconciler's log keeps the whole text."""
    if isinstance(exc, KmsError | LockTimeout | LeaseLost):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (details in the reconciler's log)"
