"""The poll loop of a consumer that commits after each batch (the projector, the queue reader, the
request-log writer): :func:`poll_batches`.

It subscribes with an :class:`~kafka_edge.assignment.Assignment`'s callbacks, polls, keeps the records
of each poll (:func:`~kafka_edge.messages.records`: a fatal error such as a fenced static member ends
the loop with :class:`~kafka_edge.errors.FatalKafkaError`) and hands each non-empty batch over. The
caller commits :func:`~kafka_edge.messages.positions_after` the batch once it is applied, or rewinds
(:meth:`~kafka_edge.assignment.Assignment.rewind`) when it could not be.

Nothing is committed in a revoke: such a consumer commits synchronously after every batch it applied,
so between two batches nothing is uncommitted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, Message

from kafka_edge.assignment import Assignment
from kafka_edge.health import HealthState
from kafka_edge.messages import records

__all__ = ["poll_batches"]


def poll_batches(consumer: Consumer, topics: Sequence[str], assignment: Assignment, health: HealthState,
                 stop: threading.Event, *, batch_size: int, batch_seconds: float,
                 handle: Callable[[list[Message]], None], between: Callable[[], None] | None = None) -> None:
    """Step 1 of a batch-committing consumer: subscribe to ``topics`` with ``assignment``'s callbacks,
    then poll up to ``batch_size`` messages or ``batch_seconds``, mark the poll in ``health``, and hand
    each non-empty batch of records to ``handle``; ``between`` runs after every poll. Returns once
    ``stop`` is set; raises :class:`~kafka_edge.errors.FatalKafkaError` for a fatal consumer error
    (named after ``assignment.process``). Closing the consumer is the caller's."""
    assignment.subscribe(consumer, topics)
    while not stop.is_set():
        msgs = consumer.consume(batch_size, batch_seconds)
        health.polled()
        msgs = records(msgs, assignment.process)
        if msgs:
            handle(msgs)
        if between is not None:
            between()
