"""A consumer that commits after each batch (the projector, the queue reader, the request-log writer):
its poll loop, its commit and its retry.

- :func:`poll_batches` subscribes with an :class:`~kafka_edge.assignment.Assignment`'s callbacks,
  polls, keeps the records of each poll (:func:`~kafka_edge.messages.records`: a fatal error such as a
  fenced static member ends the loop with :class:`~kafka_edge.errors.FatalKafkaError`) and hands each
  non-empty batch over;
- :func:`commit_batch` commits :func:`~kafka_edge.messages.positions_after` the batch, synchronously,
  once it is applied;
- :func:`retry_batch` rewinds every assigned partition to its committed offset and waits, when the
  batch could not be applied, so the same batch is read again.

Nothing is committed in a revoke: such a consumer commits synchronously after every batch it applied,
so between two batches nothing is uncommitted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, Message

from kafka_edge.assignment import Assignment
from kafka_edge.health import HealthState
from kafka_edge.messages import positions_after, records

__all__ = ["commit_batch", "poll_batches", "retry_batch"]

log = logging.getLogger(__name__)


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


def commit_batch(consumer: Consumer, msgs: list[Message], assignment: Assignment) -> bool:
    """Commit the offsets after ``msgs`` synchronously; False when the commit failed (e.g. the partition
    was revoked meanwhile), which is logged: the batch is applied again, harmless for idempotent writes."""
    try:
        consumer.commit(offsets=positions_after(msgs), asynchronous=False)
    except KafkaException as exc:
        log.warning("%s offset commit failed (%s); the batch will be applied again (harmless)", assignment.process,
                    exc)
        return False
    return True


def retry_batch(consumer: Consumer, assignment: Assignment, stop: threading.Event, exc: BaseException,
                retry_seconds: float) -> None:
    """The batch was not applied (``exc``: the database or the broker away): rewind every assigned
    partition to its committed offset and wait ``retry_seconds`` (less when stopping). Only the error's
    class is logged: a database error's text quotes the statement's parameters."""
    log.warning("%s batch failed (%s); rewinding and retrying in %.1fs", assignment.process, type(exc).__name__,
                retry_seconds)
    assignment.rewind(consumer)
    stop.wait(retry_seconds)
