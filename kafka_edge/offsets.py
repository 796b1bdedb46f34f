"""Which offset may be stored, per partition, while commands finish out of order.

The executor finishes messages of different secure clients in any order. An offset may be stored
only below the lowest unfinished message of its partition, so a crash re-delivers every unfinished
command (the ledger then keeps a finished one from running twice).

Each assignment of a partition starts a new *epoch*. :meth:`OffsetTracker.started` returns the epoch
the message belongs to; :meth:`OffsetTracker.finished` and :meth:`OffsetTracker.owns` take it back, so
work that was taken under an earlier assignment (the partition was revoked, or lost, and came back)
can neither finish a message of the new assignment nor be mistaken for current work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["OffsetTracker", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


@dataclass
class _PartitionState:
    epoch: int
    pending: set[int] = field(default_factory=set)
    next_offset: int = -1  # one past the newest offset taken from Kafka
    oldest_ts: dict[int, float] = field(default_factory=dict)


class OffsetTracker:
    """Thread-safe: the poll thread (rebalance callbacks) and the event loop both use it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TopicPartitionKey, _PartitionState] = {}
        self._epochs = 0

    def assigned(self, topic: str, partition: int) -> int:
        """Start a new epoch for a freshly assigned partition (forgetting any earlier one)."""
        with self._lock:
            self._epochs += 1
            self._parts[(topic, partition)] = _PartitionState(self._epochs)
            return self._epochs

    def started(self, topic: str, partition: int, offset: int, timestamp: float) -> int:
        """Register a message as pending before any work on it starts; returns its epoch."""
        with self._lock:
            state = self._parts.get((topic, partition))
            if state is None:  # a message of a partition we were not told about: give it an epoch
                self._epochs += 1
                state = self._parts[(topic, partition)] = _PartitionState(self._epochs)
            state.pending.add(offset)
            state.oldest_ts[offset] = timestamp
            state.next_offset = max(state.next_offset, offset + 1)
            return state.epoch

    def finished(self, topic: str, partition: int, offset: int, epoch: int | None = None) -> None:
        """Mark a message done. Ignored when the partition was revoked (or re-assigned) since."""
        with self._lock:
            state = self._parts.get((topic, partition))
            if state is None or (epoch is not None and epoch != state.epoch):
                return  # revoked meanwhile: its offset is the new owner's business
            state.pending.discard(offset)
            state.oldest_ts.pop(offset, None)

    def owns(self, topic: str, partition: int, epoch: int) -> bool:
        """True while the assignment that ``epoch`` names is still ours."""
        with self._lock:
            state = self._parts.get((topic, partition))
            return state is not None and state.epoch == epoch

    def committable(self, topic: str, partition: int) -> int | None:
        """Offset to store (next to read): the lowest unfinished one, else one past the newest."""
        with self._lock:
            state = self._parts.get((topic, partition))
            if state is None or state.next_offset < 0:
                return None
            return min(state.pending) if state.pending else state.next_offset

    def all_committable(self) -> dict[TopicPartitionKey, int]:
        with self._lock:
            out = {}
            for key, state in self._parts.items():
                if state.next_offset >= 0:
                    out[key] = min(state.pending) if state.pending else state.next_offset
            return out

    def oldest_pending_timestamp(self, topic: str, partition: int) -> float | None:
        with self._lock:
            state = self._parts.get((topic, partition))
            if state is None or not state.oldest_ts:
                return None
            return state.oldest_ts[min(state.oldest_ts)]

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(s.pending) for s in self._parts.values())

    def forget(self, topic: str, partition: int) -> None:
        with self._lock:
            self._parts.pop((topic, partition), None)

    def partitions(self) -> list[TopicPartitionKey]:
        with self._lock:
            return list(self._parts)
