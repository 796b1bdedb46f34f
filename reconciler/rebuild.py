"""Rebuild the desired-state store from ``crm.subscriptions`` (``kmsbridge projector rebuild``).

Every ``SubscriptionEvent`` carries the subscription's whole state and the topic is compacted by
subscription id, so the topic read from its beginning holds the newest version of every subscription:
the store can be rebuilt from it alone. The steps:

1. The store must be empty (no desired subscription, no card): a rebuild into a store that holds state is
   refused unless forced. Forced, it applies on top: the upsert keeps the newest version of each
   subscription, so what the store held and is newer stays.
2. The end of each partition is read once, at start, as a ``read_committed`` reader sees it (the last
   stable offset: an open or aborted transaction is not part of the desired state). Records written after
   the start are left to the projector.
3. Each partition is **assigned** from its beginning on a consumer that never joins a group and never
   commits (``assign``, ``enable.auto.commit`` off, no ``commit`` call), so no group's offsets move: the
   projector's group, running or stopped, keeps the offsets it committed.
4. Each batch is screened and decoded as the projector does it (size, codec, time skew) and upserted in
   one transaction through :meth:`~reconciler.store.DesiredStateStore.upsert`, the projector's own write
   path: newest version wins, equal versions keep the first one read. When the database refuses the batch
   for what a record holds, its events are upserted one by one. A tombstone is skipped, as the projector
   skips it.
5. A record that cannot be decoded or that the database refuses is **counted and named** (partition,
   offset, reason), never sent anywhere and never a reason to stop: the projector dead-lettered each of
   them when it read it, and a second copy in ``<topic>.dlq`` would be redriven twice.
6. A partition is done when its position reaches its end from step 2 (the offset of a record, the end of
   the partition, or the position past transaction markers). A rebuild that reads nothing for
   ``idle_timeout_seconds`` while partitions are pending fails naming them.

A database or broker failure ends the rebuild with the error; running it again (forced, since the store
now holds what was applied) is safe for the reason of step 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from kafka_edge.dlq import DatabaseRejected, is_content_error
from kafka_edge.messages import is_record
from reconciler.projector import decode_event
from reconciler.store import DesiredStateStore
from reconciler.tables import cards_table, subscriptions_table
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.records import SubscriptionEvent

__all__ = [
    "BadRecord",
    "Rebuild",
    "RebuildConfig",
    "RebuildError",
    "RebuildRefused",
    "RebuildReport",
    "StoreCounts",
    "store_counts",
]

log = logging.getLogger(__name__)
PROCESS = "projector-rebuild"


class RebuildError(Exception):
    """The rebuild could not finish (step 6, or the topic is missing)."""


class RebuildRefused(RebuildError):
    """Step 1: the store already holds desired state and the rebuild was not forced."""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    subscriptions: int
    cards: int

    @property
    def empty(self) -> bool:
        return self.subscriptions == 0 and self.cards == 0


def store_counts(store: DesiredStateStore) -> StoreCounts:
    """How many desired subscriptions and cards ``store`` holds."""
    with store.engine.connect() as conn:
        subs = conn.execute(select(func.count()).select_from(subscriptions_table)).scalar_one()
        cards = conn.execute(select(func.count()).select_from(cards_table)).scalar_one()
    return StoreCounts(int(subs), int(cards))


@dataclass(frozen=True)
class RebuildConfig:
    topic: str
    batch_size: int = 1000
    poll_seconds: float = 0.5
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)
    #: step 6: how long the rebuild may read nothing while partitions are pending
    idle_timeout_seconds: float = 60.0
    #: how many bad records the report names (every one is counted)
    named_bad_records: int = 20
    force: bool = False


@dataclass(frozen=True, slots=True)
class BadRecord:
    partition: int
    offset: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"partition {self.partition} offset {self.offset}: {self.reason} ({self.detail})"


@dataclass
class RebuildReport:
    topic: str
    partitions: int
    #: records read below the end offsets of step 2 (tombstones and bad records included)
    records: int = 0
    events: int = 0
    tombstones: int = 0
    bad: int = 0
    #: the first ``named_bad_records`` bad records
    bad_records: list[BadRecord] = field(default_factory=list)
    #: events that were their subscription's newest when their batch was stored
    applied: int = 0
    stale: int = 0
    before: StoreCounts = StoreCounts(0, 0)
    after: StoreCounts = StoreCounts(0, 0)
    seconds: float = 0.0


class Rebuild:
    """Steps 3 to 6 over an unsubscribed ``consumer``; ``ends`` maps each partition of the topic to its
    (beginning, end) offsets of step 2. :meth:`run` checks step 1 first."""

    def __init__(self, consumer: Consumer, codec: Codec, store: DesiredStateStore,
                 ends: Mapping[int, tuple[int, int]], config: RebuildConfig,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._consumer = consumer
        self._codec = codec
        self._store = store
        self._ends = {p: end for p, (_begin, end) in ends.items()}
        self._begins = {p: begin for p, (begin, _end) in ends.items()}
        self._cfg = config
        self._clock = clock

    def run(self) -> RebuildReport:
        t0 = self._clock()
        report = RebuildReport(topic=self._cfg.topic, partitions=len(self._ends), before=store_counts(self._store))
        if not report.before.empty and not self._cfg.force:  # step 1
            raise RebuildRefused(
                f"the desired-state store is not empty ({report.before.subscriptions} subscriptions, "
                f"{report.before.cards} cards); rebuild into a new database, or force it (newest version wins)")
        pending = {p for p, end in self._ends.items() if self._begins[p] < end}
        if pending:  # step 3
            self._consumer.assign([TopicPartition(self._cfg.topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        last_progress = self._clock()
        while pending:
            msgs = self._consumer.consume(self._cfg.batch_size, self._cfg.poll_seconds)
            batch = self._select(msgs, pending)
            if batch:
                self._apply(batch, report)  # steps 4 and 5
            done = self._reached_end(pending)  # step 6
            if batch or done:
                last_progress = self._clock()
            pending -= done
            if done:
                self._consumer.pause([TopicPartition(self._cfg.topic, p) for p in sorted(done)])
            if pending and self._clock() - last_progress > self._cfg.idle_timeout_seconds:
                raise RebuildError(
                    f"nothing read from {self._cfg.topic} for {self._cfg.idle_timeout_seconds:.0f}s; partitions "
                    f"{sorted(pending)} did not reach their end offsets "
                    f"{ {p: self._ends[p] for p in sorted(pending)} }")
        report.after = store_counts(self._store)
        report.seconds = self._clock() - t0
        return report

    def _select(self, msgs: Sequence[Message], pending: set[int]) -> list[Message]:
        """The records of ``msgs`` below their partition's end; a partition whose end was read is done."""
        out: list[Message] = []
        for msg in msgs:
            error = msg.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                continue  # step 6 looks at the position
            if not is_record(msg, PROCESS):
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None or partition not in pending or offset >= self._ends[partition]:
                continue  # written after the start: the projector's
            out.append(msg)
        return out

    def _reached_end(self, pending: set[int]) -> set[int]:
        positions = self._consumer.position([TopicPartition(self._cfg.topic, p) for p in sorted(pending)])
        return {tp.partition for tp in positions if tp.offset >= 0 and tp.offset >= self._ends[tp.partition]}

    def _apply(self, msgs: list[Message], report: RebuildReport) -> None:
        report.records += len(msgs)
        decoded: list[tuple[Message, SubscriptionEvent]] = []
        for msg in msgs:
            value = msg.value()
            if value is None:
                report.tombstones += 1
                continue
            try:
                event = decode_event(msg, value, self._codec, max_message_bytes=self._cfg.max_message_bytes,
                                     max_future_skew=self._cfg.max_future_skew)
            except PoisonMessage as exc:
                self._bad(report, msg, exc.reason, str(exc))
                continue
            decoded.append((msg, event))
        report.events += len(decoded)
        try:
            result = self._store.upsert([event for _msg, event in decoded])
        except SQLAlchemyError as exc:
            if not is_content_error(exc):
                raise
            log.warning("the database refused a record of the batch (%s); applying its events one by one",
                        type(exc).__name__)
        else:
            report.applied += result.applied
            report.stale += result.stale
            return
        for msg, event in decoded:
            try:
                one = self._store.upsert([event])
            except SQLAlchemyError as exc:
                if not is_content_error(exc):
                    raise
                rejected = DatabaseRejected(exc)
                self._bad(report, msg, rejected.reason, str(rejected))
                continue
            report.applied += one.applied
            report.stale += one.stale

    def _bad(self, report: RebuildReport, msg: Message, reason: str, detail: str) -> None:
        report.bad += 1
        bad = BadRecord(msg.partition() or 0, msg.offset() or 0, reason, detail)
        if len(report.bad_records) < self._cfg.named_bad_records:
            report.bad_records.append(bad)
        log.warning("rebuild: skipped a bad record of %s: %s", self._cfg.topic, bad)
