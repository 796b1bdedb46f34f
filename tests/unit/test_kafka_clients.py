"""``consume_available``: the poll helper of the executor and the outcome feed."""

from __future__ import annotations

from kafka_edge.kafka_clients import consume_available


class QueueConsumer:
    """``poll`` and ``consume`` over a list of already fetched messages, recording the waits asked for."""

    def __init__(self, queued: list[str]) -> None:
        self.queued = queued
        self.waits: list[float] = []

    def poll(self, timeout: float) -> str | None:
        self.waits.append(timeout)
        return self.queued.pop(0) if self.queued else None

    def consume(self, num: int, timeout: float) -> list[str]:
        self.waits.append(timeout)
        taken, self.queued = self.queued[:num], self.queued[num:]
        return taken


def test_consume_available_waits_for_the_first_message_only_and_takes_what_is_queued() -> None:
    consumer = QueueConsumer(["a", "b", "c", "d"])
    assert consume_available(consumer, 3, 0.05) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert consumer.waits == [0.05, 0]  # never waits to fill the batch
    assert consume_available(consumer, 3, 0.05) == ["d"]  # type: ignore[arg-type]
    assert consume_available(consumer, 3, 0.05) == []  # type: ignore[arg-type]
