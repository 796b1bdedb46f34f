"""Dead letters: read a ``<topic>.dlq`` to its end, choose what to replay, produce it to its origin.

What a dead letter shows (:class:`DeadLetter`) is what its headers say (``kafka_edge.dlq.dlq_headers``:
original topic, partition, offset, error class and reason) plus its own position and time, never the
payload: it may hold a PIN (sealed) or a message text.

**Replay** (:func:`plan_replay`, :func:`replay`) produces the original key and bytes again, to the
original topic only: the DLQ's name minus its suffix is the one topic a record may go back to, and a
record whose ``original.topic`` header names another topic (or none) is refused. Replaying is safe
because the consumers are idempotent by deterministic keys: the translator derives every command's
idempotency key from the record's own ids, so a record replayed twice (or replayed after it was
somehow processed) yields the same keys, which the executor's ledger and the KMS deduplicate.
The replay is also recorded per DLQ position (``dlq_replays``), so a second replay of the same records
produces nothing at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from kafka_edge.dlq import HEADER_PREFIX, REPLAYED_FROM

__all__ = ["DeadLetter", "ReplayPlan", "origin_of", "plan_replay", "read_dead_letters", "replay"]

@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def original_topic(self) -> str | None:
        return self.headers.get(f"{HEADER_PREFIX}original.topic") or None

    @property
    def error_class(self) -> str:
        return self.headers.get(f"{HEADER_PREFIX}error.class", "")

    def view(self) -> dict[str, Any]:
        """What ``dlq list`` shows: positions, error class and reason; never the payload."""
        h = self.headers
        return {
            "partition": self.partition, "offset": self.offset, "timestamp": self.timestamp.isoformat(),
            "original_topic": self.original_topic,
            "original_partition": _int(h.get(f"{HEADER_PREFIX}original.partition")),
            "original_offset": _int(h.get(f"{HEADER_PREFIX}original.offset")),
            "error_class": self.error_class, "reason": h.get(f"{HEADER_PREFIX}error.reason", ""),
            "message": h.get(f"{HEADER_PREFIX}error.message", ""), "bytes": len(self.value or b""),
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def origin_of(dlq_topic: str, suffix: str) -> str:
    """The one topic the records of ``dlq_topic`` may be replayed to; ``ValueError`` if it is no DLQ."""
    if not dlq_topic.endswith(suffix) or len(dlq_topic) == len(suffix):
        raise ValueError(f"{dlq_topic!r} is not a dead-letter topic (its name ends with {suffix!r})")
    return dlq_topic[: -len(suffix)]


def _headers(msg: Message) -> dict[str, str]:
    got = msg.headers() or []
    pairs: Iterable[tuple[str, Any]] = got.items() if isinstance(got, Mapping) else got
    return {k: v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in pairs if v is not None}


def read_dead_letters(kafka_config: Mapping[str, Any], topic: str, *, timeout: float = 30.0) -> list[DeadLetter]:
    """Every record of ``topic`` from its start to the end it has now (read_committed), in partition order."""
    consumer = Consumer({**kafka_config, "group.id": f"kmsbridge-dlq-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ValueError(f"topic {topic!r} does not exist")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if not starts:
            return []
        consumer.assign(starts)
        out: list[DeadLetter] = []
        deadline = datetime.now(UTC).timestamp() + timeout
        while ends:
            if datetime.now(UTC).timestamp() > deadline:
                raise TimeoutError(f"timed out reading {topic}: {len(out)} records so far")
            for msg in consumer.consume(500, 0.5):
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {err}")
                if err is None:
                    millis = msg.timestamp()[1]
                    out.append(DeadLetter(msg.partition() or 0, msg.offset() or 0,
                                          datetime.fromtimestamp(max(millis, 0) / 1000, UTC), msg.key(), msg.value(),
                                          _headers(msg)))
            for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:  # aborted records and markers count as read
                    del ends[tp.partition]
        return sorted(out, key=lambda d: (d.partition, d.offset))
    finally:
        consumer.close()


@dataclass
class ReplayPlan:
    origin: str
    replay: list[DeadLetter] = field(default_factory=list)
    already: list[DeadLetter] = field(default_factory=list)  # replayed before
    filtered: list[DeadLetter] = field(default_factory=list)  # --since / --error-class left them out
    refused: list[DeadLetter] = field(default_factory=list)  # from another topic, or a tombstone


def plan_replay(letters: Sequence[DeadLetter], origin: str, *, since: datetime | None = None,
                error_classes: Sequence[str] = (), replayed: Callable[[Sequence[DeadLetter]], set[tuple[int, int]]]
                ) -> ReplayPlan:
    """Sort ``letters`` into replay / already replayed / filtered out / refused (the allow-list)."""
    plan = ReplayPlan(origin)
    candidates: list[DeadLetter] = []
    for letter in letters:
        if letter.original_topic != origin or letter.value is None:
            plan.refused.append(letter)
        elif (since is not None and letter.timestamp < since) or (error_classes and
                                                                   letter.error_class not in error_classes):
            plan.filtered.append(letter)
        else:
            candidates.append(letter)
    done = replayed(candidates)
    for letter in candidates:
        (plan.already if (letter.partition, letter.offset) in done else plan.replay).append(letter)
    return plan


def replay(producer: Producer, plan: ReplayPlan, dlq_topic: str, *, timeout: float = 30.0) -> list[DeadLetter]:
    """Produce each record of ``plan.replay`` to ``plan.origin`` (original key and bytes, and a header naming
    the DLQ position it came from); the ones delivered (the rest failed and may be replayed again)."""
    delivered: list[DeadLetter] = []

    def on_delivery(letter: DeadLetter) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                delivered.append(letter)
        return done

    for letter in plan.replay:
        position = f"{dlq_topic}:{letter.partition}:{letter.offset}".encode()
        headers: list[tuple[str, str | bytes | None]] = [(REPLAYED_FROM, position)]
        while True:
            try:
                producer.produce(plan.origin, key=letter.key, value=letter.value, headers=headers,
                                 on_delivery=on_delivery(letter))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(timeout)
    return sorted(delivered, key=lambda d: (d.partition, d.offset))
