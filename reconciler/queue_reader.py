"""The queue reader (part of ``kmsbridge run reconciler``): fills and settles the communication queue
(:mod:`reconciler.communications_queue`) and withdraws the expectations of rejected repairs.

It reads ``kms.results`` and, in ``queue`` delivery, ``crm.communications`` in its own consumer group
(``<prefix>-communication-queue``). A REJECTED result of a reset run's command withdraws that run's
expectation for the subscription (:meth:`~reconciler.expectations.Expectations.withdraw`), so a
reset repeated after a failed repair publishes it again. At-least-once, correct because every write
is idempotent (a communication stored already is left as it is; a result settles its command once;
a withdrawn expectation stays withdrawn):

1. Poll a batch (up to ``batch_size`` messages or ``batch_seconds``). A fatal consumer error (a
   static member fenced by another with the same ``group.instance.id``) ends the loop: the reader runs
   in a thread of the reconciler, so it hands the error to :attr:`QueueReader.on_fatal` (the runner's
   :meth:`~reconciler.runner.ReconcileRunner.fail`), which ends the whole process non-zero.
2. Decode each message. A communication that is oversized, undecodable, invalid or dated too far in
   the future goes to ``crm.communications.dlq`` (the one DLQ path, flushed before the commit): in
   ``queue`` delivery this reader owns the topic. A result that does not decode is skipped (the
   executor, which owns ``kms.results``, never publishes one). A tombstone is skipped.
3. Write the batch in the database: :meth:`~CommunicationQueue.enqueue`, then
   :meth:`~CommunicationQueue.settle`, then the withdrawals.
4. Commit the offsets after the batch synchronously.

If step 2 or 3 fails (the schema registry or the database is unreachable) nothing is committed: the
assigned partitions are rewound to their committed offsets and the batch is read again after
``retry_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import Consumer, Message, Producer
from sqlalchemy.exc import SQLAlchemyError

from kafka_edge.assignment import Assignment
from kafka_edge.batch_commit import commit_batch, poll_batches, retry_batch
from kafka_edge.dlq import DeadLetters, screen_size, screen_times
from kafka_edge.errors import FatalKafkaError
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import schema_id_header
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED
from reconciler.communications_queue import CommunicationQueue
from reconciler.expectations import Expectations
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.records import CommunicationEvent, KmsResult, ResultState

__all__ = ["PROCESS", "QueueReader", "QueueReaderConfig"]

log = logging.getLogger(__name__)
PROCESS = "communication-queue"


@dataclass(frozen=True)
class QueueReaderConfig:
    communications_topic: str | None  # None: immediate delivery, the translator reads it
    results_topic: str
    dlq_topic: str
    batch_size: int = 500
    batch_seconds: float = 0.2
    retry_seconds: float = 1.0
    flush_timeout_seconds: float = 30.0
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)


class QueueReader:
    """The loop of the protocol above; ``run()`` blocks until :meth:`request_stop`."""

    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec, queue: CommunicationQueue,
                 config: QueueReaderConfig, health: HealthState | None = None,
                 expectations: Expectations | None = None) -> None:
        self._consumer = consumer
        self._expectations = expectations
        self._producer = producer
        self._codec = codec
        self._queue = queue
        self._cfg = config
        self._health = health or HealthState(ttl_seconds=30)
        self._dead_letters = DeadLetters(producer, PROCESS)
        self._stop = threading.Event()
        self._assignment = Assignment(self._health, PROCESS)
        #: Told of a fatal Kafka error that ended the loop (the process around the reader ends);
        #: when None, :meth:`run` raises it.
        self.on_fatal: Callable[[FatalKafkaError], None] | None = None
        self.failure: FatalKafkaError | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        topics = [t for t in (self._cfg.communications_topic, self._cfg.results_topic) if t]
        try:
            try:
                poll_batches(self._consumer, topics, self._assignment, self._health, self._stop,  # step 1
                             batch_size=self._cfg.batch_size, batch_seconds=self._cfg.batch_seconds,
                             handle=self._process)
            finally:
                try:
                    self._producer.flush(self._cfg.flush_timeout_seconds)
                finally:
                    # also when the flush raised (the shared producer's error_cb): a consumer left
                    # open outlives the process into exit(), where it crashes it (SIGSEGV)
                    self._consumer.close()
        except FatalKafkaError as exc:  # the consumer's, or the shared producer's raised by that flush
            self.failure = exc
            if self.on_fatal is None:
                raise
            self.on_fatal(exc)

    def _process(self, msgs: list[Message]) -> None:
        comms: list[CommunicationEvent] = []
        results: list[KmsResult] = []
        outcomes: list[tuple[str, str]] = []
        try:
            for msg in msgs:  # step 2
                outcomes.append((msg.topic() or "", self._decode(msg, comms, results)))
            if self._producer.flush(self._cfg.flush_timeout_seconds):
                log.error("DLQ copies not delivered; the batch is read again")
                self._assignment.rewind(self._consumer)
                return
            self._queue.enqueue(comms)  # step 3
            self._queue.settle(results)
            if self._expectations is not None:
                self._expectations.withdraw((r.subscription_id, r.run_id) for r in results
                                            if r.state is ResultState.REJECTED and r.run_id and r.subscription_id)
        except (SQLAlchemyError, SchemaRegistryUnavailable) as exc:
            retry_batch(self._consumer, self._assignment, self._stop, exc, self._cfg.retry_seconds)
            return
        commit_batch(self._consumer, msgs, self._assignment)  # step 4
        for topic, outcome in outcomes:
            MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
            MESSAGES_PROCESSED.labels(PROCESS, topic, outcome).inc()

    def _decode(self, msg: Message, comms: list[CommunicationEvent], results: list[KmsResult]) -> str:
        value = msg.value()
        if value is None:
            return "skipped"
        if msg.topic() == self._cfg.results_topic:
            try:
                results.append(self._codec.decode(value, KmsResult, schema_id_header(msg)))
            except PoisonMessage:
                return "skipped"
            return "ok"
        try:
            screen_size(value, self._cfg.max_message_bytes)
            comm = self._codec.decode(value, CommunicationEvent, schema_id_header(msg))
            screen_times(comm, ("created_at",), self._cfg.max_future_skew)
        except PoisonMessage as exc:
            self._dead_letters.send(self._cfg.dlq_topic, msg, exc)
            return "dlq"
        comms.append(comm)
        return "ok"
