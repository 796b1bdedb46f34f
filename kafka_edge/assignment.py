"""The partitions a consumer holds, kept by its rebalance callbacks: one class for every process.

:class:`Assignment` subscribes the consumer with its ``on_assign``, ``on_revoke`` and ``on_lost``
callbacks (they run inside ``poll``/``consume``, on the polling thread), mirrors "anything assigned"
into the process's health (``/readyz``), logs each change, and rewinds the assigned partitions to their
committed offsets after a batch that could not be applied. What a process must do besides is a hook:

- ``assigned(consumer, parts)`` runs after ``parts`` were added (the executor starts a new epoch per
  partition and pauses them while it is paused; the reconciler runner pauses them during a run);
- ``revoked(consumer, parts)`` runs before ``parts`` are dropped, so it still sees them (the executor
  commits what is finished for them, then forgets them);
- ``lost(consumer, parts)`` runs before lost partitions are dropped; committing is no longer ours, so
  a lost partition never gets the ``revoked`` hook. Without a ``lost`` hook nothing else runs for it.

A consumer that commits inside a transaction (the translator) or after every batch (the projector,
the queue reader, the request-log writer, the reconciler runner) has nothing uncommitted when a
rebalance callback runs, so it needs no ``revoked`` hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, TopicPartition

from kafka_edge.health import HealthState

__all__ = ["Assignment", "PartitionsHook"]

log = logging.getLogger(__name__)

PartitionsHook = Callable[[Consumer, list[TopicPartition]], None]
OFFSET_BEGINNING = -2


class Assignment:
    """Thread-safe: the callbacks run on the polling thread, readers may be elsewhere (an event loop)."""

    def __init__(self, health: HealthState, process: str, *, assigned: PartitionsHook | None = None,
                 revoked: PartitionsHook | None = None, lost: PartitionsHook | None = None) -> None:
        self._health = health
        self.process = process
        self._assigned_hook = assigned
        self._revoked_hook = revoked
        self._lost_hook = lost
        self._lock = threading.Lock()
        self._parts: set[tuple[str, int]] = set()

    # --- the callbacks -----------------------------------------------------------------------------

    def subscribe(self, consumer: Consumer, topics: Sequence[str]) -> None:
        consumer.subscribe(list(topics), on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost)

    def on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._add(parts)
        if self._assigned_hook is not None:
            self._assigned_hook(consumer, parts)
        log.info("%s assigned %s", self.process, _names(parts))

    def on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        if self._revoked_hook is not None:
            self._revoked_hook(consumer, parts)
        self._drop(parts)
        log.info("%s revoked %s", self.process, _names(parts))

    def on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        if self._lost_hook is not None:
            self._lost_hook(consumer, parts)
        self._drop(parts)
        log.warning("%s lost %s", self.process, _names(parts))

    # --- what is held ------------------------------------------------------------------------------

    @property
    def parts(self) -> frozenset[tuple[str, int]]:
        """The ``(topic, partition)`` pairs assigned now."""
        with self._lock:
            return frozenset(self._parts)

    def partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.parts)]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._parts

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._parts)

    def rewind(self, consumer: Consumer, timeout: float = 10.0) -> None:
        """Seek every assigned partition back to its committed offset (the start when none is).
        A :class:`~confluent_kafka.KafkaException` (the broker away) is the caller's to retry."""
        parts = self.partitions()
        if not parts:
            return
        for tp in consumer.committed(parts, timeout=timeout):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))

    def _add(self, parts: list[TopicPartition]) -> None:
        with self._lock:
            self._parts.update((tp.topic, tp.partition) for tp in parts)
            self._health.assigned = bool(self._parts)

    def _drop(self, parts: list[TopicPartition]) -> None:
        with self._lock:
            for tp in parts:
                self._parts.discard((tp.topic, tp.partition))
            self._health.assigned = bool(self._parts)


def _names(parts: list[TopicPartition]) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in parts]
