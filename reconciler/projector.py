"""The projector (``kmsbridge run projector``): ``crm.subscriptions`` → the desired-state store.

Commit protocol, at-least-once (correct because the upsert is idempotent by version: re-applying
an event, or applying an older one, changes nothing):

1. Poll a batch (up to ``batch_size`` messages or ``batch_seconds``). Rebalance callbacks run inside
   this call, between batches, when nothing is uncommitted, so a revoke needs no work. A fatal
   consumer error (a static member fenced by another with the same ``group.instance.id``) ends the
   loop with :class:`~kafka_edge.errors.FatalKafkaError` (:mod:`kafka_edge.messages`): the process
   exits non-zero and its supervisor starts a fresh one.
2. Screen and decode each message, as the translator does. A tombstone is skipped; an oversized,
   undecodable or invalid message and one dated too far in the future go to ``<topic>.dlq``
   (:class:`kafka_edge.dlq.DeadLetters`) and the loop goes on.
3. Upsert every decoded event in **one** database transaction
   (:meth:`~reconciler.store.DesiredStateStore.upsert`: newest per subscription, older versions are
   no-ops). When the database refuses the batch because of what a record holds
   (:func:`kafka_edge.dlq.is_content_error`), each event is upserted alone: the ones the database
   refuses are poison and go to the DLQ (``database_rejected``), never retried; the others apply.
4. Flush the producer, so the batch's DLQ copies are delivered before their offsets are committed.
5. Commit the offsets after the batch **synchronously**, only now that the database transaction
   and the DLQ copies are durable. A crash before this step redelivers the batch (harmless, step 3).

If step 3 or 4 fails otherwise (database or broker unreachable) nothing is committed: every assigned partition
is rewound to its committed offset and the batch is tried again after ``retry_seconds``. A failed
step 5 (e.g. the partition was revoked meanwhile) is logged; the new owner re-applies the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import Consumer, Message, Producer
from sqlalchemy.exc import SQLAlchemyError

from kafka_edge.assignment import Assignment
from kafka_edge.batch_commit import commit_batch, poll_batches, retry_batch
from kafka_edge.dlq import DatabaseRejected, DeadLetters, is_content_error, screen_size, screen_times
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import schema_id_header
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED, PROCESSING_SECONDS
from reconciler.publish import PublishFailed
from reconciler.store import DesiredStateStore, UpsertResult
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.records import SubscriptionEvent

__all__ = ["Projector", "ProjectorConfig", "decode_event"]

log = logging.getLogger(__name__)
PROCESS = "projector"
_TIME_FIELDS = ("occurred_at", "created_at")


@dataclass(frozen=True)
class ProjectorConfig:
    topic: str
    dlq_topic: str
    batch_size: int = 500
    batch_seconds: float = 0.2
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)
    retry_seconds: float = 1.0
    flush_timeout_seconds: float = 30.0


def decode_event(msg: Message, value: bytes, codec: Codec, *, max_message_bytes: int,
                 max_future_skew: timedelta) -> SubscriptionEvent:
    """One record's event, screened as every consumer screens (size, codec, time skew); a record that fails
    raises :class:`PoisonMessage`. The rebuild (:mod:`reconciler.rebuild`) reads the topic through it too."""
    screen_size(value, max_message_bytes)
    event = codec.decode(value, SubscriptionEvent, schema_id_header(msg))
    screen_times(event, _TIME_FIELDS, max_future_skew)
    return event


class Projector:
    """The consume loop of the commit protocol above. ``run()`` blocks until :meth:`request_stop`."""

    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec, store: DesiredStateStore,
                 config: ProjectorConfig, health: HealthState | None = None) -> None:
        self._consumer = consumer
        self._producer = producer
        self._codec = codec
        self._store = store
        self._cfg = config
        self._health = health or HealthState(ttl_seconds=30)
        self._stop = threading.Event()
        self._assignment = Assignment(self._health, PROCESS)
        self._dead_letters = DeadLetters(producer, PROCESS)
        self.batches_committed = 0
        self.events_applied = 0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            poll_batches(self._consumer, [self._cfg.topic], self._assignment, self._health, self._stop,  # step 1
                         batch_size=self._cfg.batch_size, batch_seconds=self._cfg.batch_seconds,
                         handle=self._process_batch)
        finally:
            try:
                self._producer.flush(self._cfg.flush_timeout_seconds)
            finally:
                # leaves the group at once; everything processed is committed. Also when the flush
                # raised (the producer's error_cb): a consumer left open crashes the process at exit()
                self._consumer.close()

    def _process_batch(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        try:
            decoded, outcomes = self._decode(msgs)  # step 2
            result = self._upsert(msgs, decoded, outcomes)  # step 3
            self._flush()  # step 4
        except (SQLAlchemyError, PublishFailed, SchemaRegistryUnavailable) as exc:
            retry_batch(self._consumer, self._assignment, self._stop, exc, self._cfg.retry_seconds)
            return
        commit_batch(self._consumer, msgs, self._assignment)  # step 5
        self.batches_committed += 1
        self.events_applied += result.applied
        elapsed = (time.monotonic() - t0) / len(msgs)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            topic = msg.topic() or ""
            MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
            MESSAGES_PROCESSED.labels(PROCESS, topic, outcome).inc()
            PROCESSING_SECONDS.labels(PROCESS, topic).observe(elapsed)
        log.debug("projector batch messages=%d applied=%d stale=%d", len(msgs), result.applied, result.stale)

    def _decode(self, msgs: list[Message]) -> tuple[list[tuple[int, SubscriptionEvent]], list[str]]:
        """The batch's events, each with its index in ``msgs``, and each message's outcome so far."""
        decoded: list[tuple[int, SubscriptionEvent]] = []
        outcomes: list[str] = []
        for index, msg in enumerate(msgs):
            value = msg.value()
            if value is None:
                outcomes.append("skipped")
                continue
            try:
                event = decode_event(msg, value, self._codec, max_message_bytes=self._cfg.max_message_bytes,
                                     max_future_skew=self._cfg.max_future_skew)
            except PoisonMessage as exc:
                self._dead_letters.send(self._cfg.dlq_topic, msg, exc)
                outcomes.append("dlq")
                continue
            decoded.append((index, event))
            outcomes.append("ok")
        return decoded, outcomes

    def _upsert(self, msgs: list[Message], decoded: list[tuple[int, SubscriptionEvent]],
                outcomes: list[str]) -> UpsertResult:
        """Step 3: the batch in one transaction; on a content error, event by event (poison to the DLQ)."""
        try:
            return self._store.upsert([event for _, event in decoded])
        except SQLAlchemyError as exc:
            if not is_content_error(exc):
                raise
            log.warning("the database refused a record of the batch (%s); applying its events one by one",
                        type(exc).__name__)
        applied = stale = 0
        for index, event in decoded:
            try:
                one = self._store.upsert([event])
            except SQLAlchemyError as exc:
                if not is_content_error(exc):
                    raise
                self._dead_letters.send(self._cfg.dlq_topic, msgs[index], DatabaseRejected(exc))
                outcomes[index] = "dlq"
                continue
            applied += one.applied
            stale += one.stale
        return UpsertResult(applied=applied, stale=stale)

    def _flush(self) -> None:
        remaining = self._producer.flush(self._cfg.flush_timeout_seconds)
        if remaining:
            raise PublishFailed(f"{remaining} DLQ message(s) not delivered to {self._cfg.dlq_topic}")
