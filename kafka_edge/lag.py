"""Consumer lag, in messages and in seconds, read from the broker the way ``kafka-consumer-groups`` does.

Lag of one partition is ``high watermark - committed offset`` of a consumer group (docs/architecture.md §7);
time lag is the age of the oldest unprocessed message, i.e. ``now - timestamp`` of the message at the
committed offset. Both are broker facts: they are read with the group's *committed* offsets, not from
any consumer's in-memory position, so every process and the CLI see the same numbers.

How :meth:`LagReader.read` computes them, in steps (repeated in the code):

1. the partitions of the topics (cluster metadata); without a topic list, every non-internal topic, of
   which step 2 keeps those the group committed on;
2. the group's committed offsets, read by a consumer that carries the group's ``group.id`` but never
   subscribes, assigns or commits (``Consumer.committed`` is a read-only OffsetFetch; it joins nothing).
   A partition the group never committed counts from its low watermark, where
   ``auto.offset.reset=earliest`` starts. *Why not* ``AdminClient.list_consumer_group_offsets``: in
   librdkafka up to at least 2.16 its OffsetFetch handler dereferences the admin client's missing
   consumer-group object when the broker answers NOT_COORDINATOR (fresh broker, coordinator moving)
   and the whole process dies of SIGSEGV (librdkafka#5040, confluent-kafka-python#1982); the consumer
   path handles that error by looking the coordinator up again;
3. low and high watermarks of every partition in one batched ``list_offsets`` call (read-uncommitted:
   the high watermark, as ``kafka-consumer-groups`` shows as LOG-END-OFFSET);
4. for each partition with lag > 0, one message read at the committed offset by a second consumer that
   only ``assign``\\ s (its own throwaway ``group.id``, never committing, so it joins no group) for its
   timestamp. If the partition ends before any message, only transaction markers are left: nothing is
   to be processed, so lag and time lag are 0. (A consumer that stores ``offset + 1`` of its last record
   of a transactional topic, as the executor does on ``kms.commands``, stops right before the commit
   marker; counting that marker would show lag 1 forever on an idle, caught-up group and fire the stall
   alert.)

:class:`LagMonitor` runs that every ``interval`` seconds in a daemon thread with its *own* clients, for
each consumer group of a process (the executor has two: ``<prefix>-executor`` on ``kms.commands`` and
``<prefix>-executor-express`` on ``kms.commands.express``), and sets ``kmsbridge_consumer_lag`` /
``kmsbridge_consumer_lag_seconds`` / ``kmsbridge_consumer_committed_offset`` (labels ``process``,
``group``, ``topic``, ``partition``, as kminion and kafka-lag-exporter label theirs);
it never touches the process's consumer, so a slow broker answer never delays the poll loop. Every
replica of a process exports the lag of the whole group (not only its own partitions), so queries
aggregate with ``max by (process, topic, partition)`` before summing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import Gauge

from kafka_edge.errors import ConsumerError
from kafka_edge.metrics import CONSUMER_COMMITTED_OFFSET, CONSUMER_LAG, CONSUMER_LAG_SECONDS

__all__ = [
    "LagError",
    "LagMonitor",
    "LagReader",
    "PartitionLag",
    "compute_lag",
    "existing_groups",
    "partition_lag",
    "seconds_behind",
]

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


class LagError(ConsumerError):
    """The broker did not answer a lag query (retryable: the next round asks again)."""

    retryable = True


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one consumer group on one partition.

    ``committed`` is the group's committed offset, or the low watermark when the group has not committed
    on this partition yet. ``lag_seconds`` is ``None`` when it could not be measured (no timestamp on the
    message, or it was not read within the timeout), ``0.0`` when there is nothing left to process.
    """

    group: str
    topic: str
    partition: int
    committed: int
    high_watermark: int
    lag: int
    lag_seconds: float | None


def partition_lag(committed: int | None, low: int, high: int) -> tuple[int, int]:
    """``(committed, lag)`` of one partition from the group's committed offset and the watermarks.

    No commit (``None`` or a negative sentinel such as ``OFFSET_INVALID``) counts from ``low``. A
    committed offset below ``low`` (retention deleted unread messages) leaves only ``high - low`` to
    process; one above ``high`` (log truncated) means nothing is left. Lag is never negative.
    """
    effective = low if committed is None or committed < 0 else committed
    remaining = high - max(effective, low)
    return effective, max(0, remaining)


def seconds_behind(lag: int, timestamp_ms: int | None, now: float, *, partition_ended: bool = False) -> float | None:
    """Time lag of a partition: 0 without lag (or when only markers remain), else ``now`` minus the
    timestamp of the oldest unprocessed message, never negative (producer clocks may run ahead);
    ``None`` when that timestamp is unknown."""
    if lag <= 0 or partition_ended:
        return 0.0
    if timestamp_ms is None:
        return None
    return max(0.0, now - timestamp_ms / 1000.0)


def _wrap(what: str, exc: BaseException) -> LagError:
    return LagError(f"{what}: {exc}")


class LagReader:
    """Kafka clients for lag queries, kept open across reads (for :class:`LagMonitor`): an AdminClient
    (metadata, watermarks, group listing), one offsets consumer per group asked about, and one
    assign-only consumer for timestamps. Not thread-safe: one thread uses a reader; :meth:`close` it.
    """

    def __init__(self, kafka_config: Mapping[str, str], *, client_id: str = "kmsbridge-lag") -> None:
        self._base = {**kafka_config, "client.id": client_id}
        self._client_id = client_id
        self._admin = AdminClient(dict(self._base))
        self._offsets: dict[str, Consumer] = {}
        self._reader = Consumer(
            {
                **self._base,
                # librdkafka wants a group.id; this consumer only assigns and never commits, so the
                # group is never created on the broker.
                "group.id": f"{client_id}-reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_uncommitted",
                # one message per partition is all we need: keep the prefetch small
                "queued.max.messages.kbytes": 1024,
                "fetch.max.bytes": 1048576,
            }
        )
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for consumer in (*self._offsets.values(), self._reader):
                consumer.close()

    def groups(self, timeout: float = 10) -> list[str]:
        """Every consumer group the broker knows (members or committed offsets)."""
        try:
            result = self._admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            raise _wrap("listing consumer groups", exc) from exc
        return sorted(listing.group_id for listing in result.valid)

    def read(self, group: str, topics: Sequence[str] | None = None, timeout: float = 10) -> list[PartitionLag]:
        """Lag of ``group`` on ``topics`` (default: every topic the group has committed on)."""
        deadline = time.monotonic() + timeout
        # 1. every partition of the topics (missing topics are skipped: nothing to lag behind)
        partitions = self._partitions(topics, timeout)
        if not partitions:
            return []
        # 2. the group's committed offsets; without a topic list only topics it committed on count
        committed = self._committed(group, partitions, _left(deadline))
        if topics is None:
            kept = {t for t, _p in committed}
            partitions = [key for key in partitions if key[0] in kept]
            if not partitions:
                return []
        # 3. low and high watermarks, batched
        low = self._watermarks(partitions, OffsetSpec.earliest(), _left(deadline))
        high = self._watermarks(partitions, OffsetSpec.latest(), _left(deadline))
        rows: list[tuple[TopicPartitionKey, int, int, int]] = []
        for key in partitions:
            effective, lag = partition_lag(committed.get(key), low[key], high[key])
            rows.append((key, effective, high[key], lag))
        # 4. timestamp of the message at the committed offset, for the partitions with lag
        behind = {key: effective for key, effective, _high, lag in rows if lag > 0}
        stamps, ended = self._head_timestamps(behind, _left(deadline)) if behind else ({}, set())
        now = time.time()
        return [
            PartitionLag(
                group=group, topic=key[0], partition=key[1], committed=effective, high_watermark=hw,
                # only transaction markers left: nothing to process (see the module docstring)
                lag=0 if key in ended else lag,
                lag_seconds=seconds_behind(lag, stamps.get(key), now, partition_ended=key in ended),
            )
            for key, effective, hw, lag in rows
        ]

    def _partitions(self, topics: Sequence[str] | None, timeout: float) -> list[TopicPartitionKey]:
        try:
            metadata = self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise _wrap("reading cluster metadata", exc) from exc
        names = list(dict.fromkeys(topics)) if topics is not None else sorted(
            name for name in metadata.topics if not name.startswith("__"))
        out: list[TopicPartitionKey] = []
        for name in names:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                log.debug("lag: topic %s not found, skipped", name)
                continue
            out.extend((name, p) for p in sorted(topic.partitions))
        return out

    def _committed(self, group: str, partitions: Sequence[TopicPartitionKey],
                   timeout: float) -> dict[TopicPartitionKey, int]:
        consumer = self._offsets.get(group)
        if consumer is None:
            consumer = self._offsets[group] = Consumer({
                **self._base,
                "group.id": group,
                # read-only: this consumer never subscribes, assigns or commits
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            })
        try:
            answer = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout)
        except KafkaException as exc:
            raise _wrap(f"reading committed offsets of group {group!r}", exc) from exc
        out: dict[TopicPartitionKey, int] = {}
        for tp in answer:
            if tp.error is not None:
                raise LagError(f"committed offset of group {group!r} on {tp.topic}[{tp.partition}]: {tp.error}")
            if tp.offset >= 0:
                out[(tp.topic, tp.partition)] = tp.offset
        return out

    def _watermarks(self, partitions: Iterable[TopicPartitionKey], spec: OffsetSpec,
                    timeout: float) -> dict[TopicPartitionKey, int]:
        request = {TopicPartition(t, p): spec for t, p in partitions}
        try:
            futures = self._admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=timeout
            )
            return {(tp.topic, tp.partition): fut.result(timeout=timeout).offset for tp, fut in futures.items()}
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            raise _wrap("reading watermarks", exc) from exc

    def _head_timestamps(self, offsets: Mapping[TopicPartitionKey, int],
                         timeout: float) -> tuple[dict[TopicPartitionKey, int], set[TopicPartitionKey]]:
        """Timestamp (ms) of the first message at or after each offset, and the partitions that ended
        before any message. A partition with no answer within ``timeout`` is in neither."""
        stamps: dict[TopicPartitionKey, int] = {}
        ended: set[TopicPartitionKey] = set()
        pending = set(offsets)
        assigned = [TopicPartition(t, p, max(o, OFFSET_BEGINNING)) for (t, p), o in offsets.items()]
        self._reader.assign(assigned)
        deadline = time.monotonic() + timeout
        try:
            while pending and time.monotonic() < deadline:
                msg = self._reader.poll(min(0.5, _left(deadline)))
                if msg is None:
                    continue
                topic, partition = msg.topic(), msg.partition()
                if topic is None or partition is None or (topic, partition) not in pending:
                    continue
                key = (topic, partition)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ended.add(key)
                    else:
                        log.debug("lag: reading %s[%d]: %s", topic, partition, err)
                        continue
                else:
                    ts_type, ts = msg.timestamp()
                    if ts_type != TIMESTAMP_NOT_AVAILABLE:
                        stamps[key] = ts
                pending.discard(key)
                # enough of this partition: stop fetching it while the others answer
                self._reader.pause([TopicPartition(topic, partition)])
        except KafkaException as exc:
            raise _wrap("reading the oldest unprocessed messages", exc) from exc
        finally:
            # librdkafka keeps a partition's pause flag across unassign/assign: resume first, or the next
            # read of the same partition (the monitor's next round) would never fetch it
            self._reader.resume(assigned)
            self._reader.unassign()
        return stamps, ended


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def compute_lag(kafka_config: Mapping[str, str], group: str, topics: list[str] | None = None,
                timeout: float = 10) -> list[PartitionLag]:
    """Lag of ``group`` on ``topics`` (default: the topics it committed on), with fresh clients."""
    reader = LagReader(kafka_config)
    try:
        return reader.read(group, topics, timeout)
    finally:
        reader.close()


def existing_groups(kafka_config: Mapping[str, str], candidates: Iterable[str], timeout: float = 10) -> list[str]:
    """The ``candidates`` that exist on the broker, in the order given."""
    reader = LagReader(kafka_config)
    try:
        known = set(reader.groups(timeout))
    finally:
        reader.close()
    return [g for g in candidates if g in known]


class LagMonitor:
    """Sets the lag gauges of one process's consumer groups every ``interval`` seconds.

    ``group`` reads ``topics``; ``extra_groups`` are the process's other groups and their topics (the
    executor's express lane is read by a group of its own), labelled with the same ``process``. It
    runs in a daemon thread with its own Kafka clients, never the process's consumers. A group whose
    round failed is logged, keeps its gauges and is asked again at the next interval; gauges of
    partitions that disappeared are removed, and a time lag that could not be measured removes its
    series (unknown is absent, not 0).
    """

    def __init__(self, kafka_config: Mapping[str, str], process: str, group: str,
                 topics: Sequence[str] | None = None, *, extra_groups: Mapping[str, Sequence[str] | None] | None = None,
                 interval: float = 15.0, timeout: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0 seconds")
        self.process = process
        self.group = group
        self.topics = list(topics) if topics is not None else None
        #: every group measured, with its topics (None: the topics it committed on)
        self.groups: dict[str, list[str] | None] = {group: self.topics}
        for name, names in (extra_groups or {}).items():
            self.groups[name] = list(names) if names is not None else None
        self.interval = interval
        self.timeout = timeout
        self._kafka_config = dict(kafka_config)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: dict[str, set[TopicPartitionKey]] = {}
        self._lock = threading.Lock()
        self.rounds = 0  # completed rounds, for tests and debugging

    def start(self) -> LagMonitor:
        if self._thread is not None:
            raise RuntimeError("LagMonitor already started")
        self._thread = threading.Thread(target=self._run, name=f"lag-{self.process}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; waits for a round in progress (bounded by ``timeout``, default the round's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * len(self.groups) + 5 if timeout is None else timeout)

    def _run(self) -> None:
        reader: LagReader | None = None
        try:
            while not self._stop.is_set():
                try:
                    reader = reader or LagReader(self._kafka_config, client_id=f"{self.group}-lag")
                    self._round(reader)
                except KafkaException as exc:
                    log.warning("lag of process %s not measured: %s", self.process, exc)
                except Exception:  # never let the monitor die silently; the next round tries again
                    log.exception("lag monitor of process %s failed", self.process)
                # Event.wait is the schedule (and wakes at once on stop), not a synchronisation stand-in.
                self._stop.wait(self.interval)
        finally:
            if reader is not None:
                reader.close()

    def _round(self, reader: LagReader) -> None:
        rows: list[PartitionLag] = []
        failed: list[str] = []
        for group, topics in self.groups.items():
            try:
                rows.extend(reader.read(group, topics, self.timeout))
            except (LagError, KafkaException) as exc:
                log.warning("lag of group %s not measured: %s", group, exc)
                failed.append(group)
        self.publish(rows, failed=failed)

    def publish(self, lags: Iterable[PartitionLag], *, failed: Collection[str] = ()) -> None:
        """Set the gauges from one round of lags (labelled with each row's group) and forget the
        partitions that are gone, except of the ``failed`` groups, whose gauges stay as they were."""
        with self._lock:
            seen: dict[str, set[TopicPartitionKey]] = {}
            for row in lags:
                labels = (self.process, row.group, row.topic, str(row.partition))
                CONSUMER_LAG.labels(*labels).set(row.lag)
                CONSUMER_COMMITTED_OFFSET.labels(*labels).set(row.committed)
                if row.lag_seconds is None:
                    _remove(CONSUMER_LAG_SECONDS, labels)
                else:
                    CONSUMER_LAG_SECONDS.labels(*labels).set(row.lag_seconds)
                seen.setdefault(row.group, set()).add((row.topic, row.partition))
            for group in set(self._published) | set(seen):
                if group in failed:
                    seen[group] = self._published.get(group, set()) | seen.get(group, set())
                    continue
                for topic, partition in self._published.get(group, set()) - seen.get(group, set()):
                    labels = (self.process, group, topic, str(partition))
                    for gauge in (CONSUMER_LAG, CONSUMER_LAG_SECONDS, CONSUMER_COMMITTED_OFFSET):
                        _remove(gauge, labels)
            self._published = seen
            self.rounds += 1


def _remove(metric: Gauge, labels: tuple[str, str, str, str]) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        metric.remove(*labels)
