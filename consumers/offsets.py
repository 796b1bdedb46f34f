"""Which offset may be stored, per partition, while commands finish out of order.

The executor finishes messages of different secure clients in any order. An offset may be stored
only below the lowest unfinished message of its partition, so a crash re-delivers every unfinished
command (the ledger then keeps a finished one from running twice).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["OffsetTracker"]

TopicPartitionKey = tuple[str, int]


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    next_offset: int = -1  # one past the newest offset taken from Kafka
    oldest_ts: dict[int, float] = field(default_factory=dict)


class OffsetTracker:
    """Thread-safe: the poll thread (rebalance callbacks) and the event loop both use it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TopicPartitionKey, _PartitionState] = {}

    def started(self, topic: str, partition: int, offset: int, timestamp: float) -> None:
        with self._lock:
            state = self._parts.setdefault((topic, partition), _PartitionState())
            state.pending.add(offset)
            state.oldest_ts[offset] = timestamp
            state.next_offset = max(state.next_offset, offset + 1)

    def finished(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            state = self._parts.get((topic, partition))
            if state is None:  # partition revoked meanwhile: its offset is the new owner's business
                return
            state.pending.discard(offset)
            state.oldest_ts.pop(offset, None)

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
