"""What a consumer that commits after each batch (the projector, the request-log writer) keeps of Kafka.

- :class:`Assignment`: the partitions assigned now, mirrored into the process's health (``/readyz``),
  and :meth:`Assignment.rewind` to their committed offsets after a batch that could not be applied;
- :func:`positions_after`: the offsets to commit after a batch (one past the newest of each partition);
- :func:`is_eof_or_error`: a polled item that is no record (end of partition, a consumer error: logged);
- :func:`poll_batches`: the poll loop itself (subscribe with the assignment's callbacks, poll, drop what
  is no record, hand each non-empty batch over) until a stop is requested.

Nothing is committed in a revoke: such a consumer commits synchronously after every batch it applied,
so between two batches nothing is uncommitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from kafka_edge.health import HealthState

__all__ = ["Assignment", "is_eof_or_error", "poll_batches", "positions_after"]

log = logging.getLogger(__name__)


class Assignment:
    """The rebalance callbacks (``on_assign`` / ``on_revoke``, also for ``on_lost``) and the rewind."""

    def __init__(self, health: HealthState) -> None:
        self._health = health
        self.parts: set[tuple[str, int]] = set()

    def on_assign(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.parts.update((tp.topic, tp.partition) for tp in parts)
        self._health.assigned = bool(self.parts)

    def on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            self.parts.discard((tp.topic, tp.partition))
        self._health.assigned = bool(self.parts)

    def rewind(self, consumer: Consumer) -> None:
        """Seek every assigned partition back to its committed offset (the start when none is)."""
        parts = [TopicPartition(t, p) for t, p in self.parts]
        if not parts:
            return
        for tp in consumer.committed(parts, timeout=10):
            consumer.seek(tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, -2))


def is_eof_or_error(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error: %s", err)
    return True


def positions_after(msgs: list[Message]) -> list[TopicPartition]:
    nxt: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic() or "", m.partition() or 0)
        nxt[key] = max(nxt.get(key, 0), (m.offset() or 0) + 1)
    return [TopicPartition(t, p, o) for (t, p), o in nxt.items()]


def poll_batches(consumer: Consumer, topics: Sequence[str], assignment: Assignment, health: HealthState,
                 stop: threading.Event, *, batch_size: int, batch_seconds: float,
                 handle: Callable[[list[Message]], None], between: Callable[[], None] | None = None) -> None:
    """Step 1 of a batch-committing consumer: subscribe to ``topics`` with ``assignment``'s callbacks
    (``on_lost`` as a revoke), then poll up to ``batch_size`` messages or ``batch_seconds``, mark the poll
    in ``health``, and hand each non-empty batch of records to ``handle``; ``between`` runs after every
    poll. Returns once ``stop`` is set; closing the consumer is the caller's."""
    consumer.subscribe(list(topics), on_assign=assignment.on_assign, on_revoke=assignment.on_revoke,
                       on_lost=assignment.on_revoke)
    while not stop.is_set():
        msgs = consumer.consume(batch_size, batch_seconds)
        health.polled()
        msgs = [m for m in msgs if not is_eof_or_error(m)]
        if msgs:
            handle(msgs)
        if between is not None:
            between()
