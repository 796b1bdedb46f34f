"""The translator: CRM topics → ``kms.commands`` (and REJECTED results), exactly once.

Commit protocol, one Kafka transaction per polled batch:

1. Poll a batch (up to ``batch_size`` messages or ``batch_seconds``: 500 or 20 ms by default, the
   settings `KMSBRIDGE_TRANSLATOR__BATCH_*`); rebalance callbacks run here, between transactions, so a
   revoke never splits a transaction and needs no work. A fatal consumer error (a static member fenced
   by another with the same ``group.instance.id``, :mod:`kafka_edge.messages`) ends the process.
2. Begin the transaction.
3. For each message: screen it (tombstone → counted skip; oversized → DLQ), decode, hand it to the
   topic's handler, and produce its commands (key = secure client), REJECTED results or DLQ copy —
   all inside the transaction.
4. ``send_offsets_to_transaction`` with the position after the batch, so the input offsets commit
   atomically with the outputs.
5. Commit. A commit that timed out (retriable, e.g. the broker is restarting) is tried again; if it
   (or any step) fails otherwise, abort and rewind every assigned partition to its committed offset:
   the batch is processed again and, because planning is deterministic, produces byte-identical
   commands. Abort and rewind themselves are retried until the broker answers, so a broker outage
   only pauses the loop. A fatal error (fenced) ends the process non-zero; its supervisor restarts it.

Every blocking librdkafka call runs under a :class:`~kafka_edge.kafka_clients.HangWatchdog`: if it is
still blocked well past its own timeout (a known librdkafka hang after a coordinator failover), the
process exits and its supervisor starts a fresh one, which fences this one's transaction.

Before the loop, ``init_transactions`` is retried in short slices while the producer is polled, so a
broker that is not up yet is waited for, and refused credentials end the process with a clear error
(:class:`~kafka_edge.kafka_clients.KafkaErrorHandler`) instead of a silent hang.

Input screening (step 3): a tombstone is a counted skip; an oversized value, bytes that do not decode
(bad magic, unknown fingerprint or schema id, invalid record) and a record dated too far in the future
go to the DLQ with reason headers; so does a record whose handler fails unexpectedly (a bug) and one
whose output would exceed the producer's message limit, so one record cannot stop its partition.
Nothing of a screened record reaches ``kms.commands``. DLQ copies go through
:class:`~kafka_edge.dlq.DeadLetters`: a copy too large for the producer is truncated, and one the broker
refuses on delivery fails the commit, so the rewound batch produces it truncated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.translation import Translation
from kafka_edge import tracing
from kafka_edge.assignment import Assignment
from kafka_edge.dlq import (
    DeadLetters,
    OutputTooLarge,
    Oversized,
    TooFarInFuture,
    UnexpectedError,
    screen_output,
    screen_size,
    screen_times,
)
from kafka_edge.errors import FatalKafkaError
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import HangWatchdog, kafka_error, produce, schema_id_header
from kafka_edge.messages import positions_after, records
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED, PROCESSING_SECONDS
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryRefused, SchemaRegistryUnavailable
from schemas.keys import result_key
from schemas.records import KmsCommand, Priority

__all__ = ["Oversized", "TooFarInFuture", "TransactionalTranslator", "TranslatorConfig"]

log = logging.getLogger(__name__)
PROCESS = "translator"

Handler = Callable[[object, str], Translation]


@dataclass(frozen=True)
class TranslatorConfig:
    inputs: dict[str, str]  # topic -> logical name of the handler
    commands_topic: str
    results_topic: str
    reconcile_requests_topic: str = "reconcile.requests"
    dlq_suffix: str = ".dlq"
    batch_size: int = 500
    batch_seconds: float = 0.02
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)
    transaction_timeout_seconds: float = 30.0
    #: the express lane: EXPRESS commands (agents' requests) go here; None: every command to commands_topic
    express_commands_topic: str | None = None


class TransactionalTranslator:
    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec,
                 handlers: dict[str, tuple[type, Handler]], config: TranslatorConfig,
                 health: HealthState | None = None) -> None:
        self._consumer = consumer
        self._producer = producer
        self._codec = codec
        self._handlers = handlers
        self._cfg = config
        self._health = health or HealthState(ttl_seconds=30)
        self._stop = threading.Event()
        # no revoke hook: every processed batch was committed inside its transaction
        self._assignment = Assignment(self._health, PROCESS)
        self._watchdog = HangWatchdog("translator")
        self._dead_letters = DeadLetters(producer, PROCESS, transactional=True)
        self.batches_committed = 0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, *, until_end: bool = False) -> None:
        """Run until stopped; with ``until_end``, stop once every assigned partition reached the end
        it had when the loop started (one-shot mail runs)."""
        try:
            initialised = self._init_transactions()
        except BaseException:
            self._close()  # a fatal error (an untrusted broker, refused credentials) closes the consumer too
            raise
        if not initialised:
            self._close()
            return
        self._assignment.subscribe(self._consumer, list(self._cfg.inputs))
        ends: dict[tuple[str, int], int] | None = None
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(self._cfg.batch_size, self._cfg.batch_seconds)  # step 1
                self._health.polled()
                msgs = records(msgs, PROCESS)  # a fatal error raises: the process ends
                if msgs:
                    self._process_batch(msgs)
                if until_end:
                    if ends is None and self._assignment:
                        ends = self._end_offsets()
                    if ends is not None and self._reached(ends):
                        break
        finally:
            self._close()

    def _close(self) -> None:
        with self._guard("consumer close"):
            self._consumer.close()

    # --- one transaction ---------------------------------------------------------------------------

    def _process_batch(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        try:
            self._producer.begin_transaction()  # step 2
            process_one = tracing.wrap("translate", self._process_one)  # a span per input when tracing
            outcomes = [process_one(m) for m in msgs]  # step 3
            positions = positions_after(msgs)
            # step 4; a short timeout: it normally takes milliseconds, and it is the call that can hang
            offsets_timeout = min(_SEND_OFFSETS_TIMEOUT_SECONDS, self._cfg.transaction_timeout_seconds)
            with self._guard("send_offsets_to_transaction", offsets_timeout):
                self._producer.send_offsets_to_transaction(
                    positions, self._consumer.consumer_group_metadata(), offsets_timeout)
            self._commit()  # step 5
        except KafkaException as exc:
            self._recover(exc)
            return
        except SchemaRegistryUnavailable as exc:
            # not the message's fault: abort, rewind and try the batch again after a pause
            log.warning("schema registry unavailable (%s); retrying the batch", exc)
            self._abort()
            self._rewind()
            self._stop.wait(1.0)
            return
        self.batches_committed += 1
        self._count(msgs, outcomes, (time.monotonic() - t0) / len(msgs))

    @staticmethod
    def _count(msgs: list[Message], outcomes: list[str], elapsed: float) -> None:
        """Metrics once per batch: one label look-up per (topic, outcome), not three per message."""
        tally = Counter(zip((m.topic() or "" for m in msgs), outcomes, strict=True))
        per_topic: Counter[str] = Counter()
        for (topic, outcome), n in tally.items():
            MESSAGES_PROCESSED.labels(PROCESS, topic, outcome).inc(n)
            per_topic[topic] += n
        for topic, n in per_topic.items():
            MESSAGES_CONSUMED.labels(PROCESS, topic).inc(n)
            PROCESSING_SECONDS.labels(PROCESS, topic).observe_many(elapsed, n)  # one observation per message

    def _process_one(self, msg: Message) -> str:
        topic = msg.topic() or ""
        record_type, handler = self._handlers[self._cfg.inputs[topic]]
        value = msg.value()
        if value is None:
            log.info("tombstone skipped topic=%s partition=%s offset=%s", topic, msg.partition(), msg.offset())
            return "skipped"
        try:
            screen_size(value, self._cfg.max_message_bytes)
            record: object = self._codec.decode(value, record_type, schema_id_header(msg))
            screen_times(record, _TIME_FIELDS, self._cfg.max_future_skew)
            try:
                translation = handler(record, topic)
                outputs = self._outputs(translation)
            except (PoisonMessage, OutputTooLarge, SchemaRegistryUnavailable, SchemaRegistryRefused,
                    KafkaException):
                raise  # SchemaRegistryRefused is fatal: the process ends naming the setting
            except Exception as exc:  # a bug in planning: dead-letter this record, keep the loop going
                log.error("handler failed topic=%s partition=%s offset=%s error=%s", topic, msg.partition(),
                          msg.offset(), type(exc).__name__)
                raise UnexpectedError(exc) from None
        except (PoisonMessage, OutputTooLarge, UnexpectedError) as exc:
            self._dead_letters.send(topic + self._cfg.dlq_suffix, msg, exc)
            return "dlq"
        headers = tracing.propagation_headers()  # None unless tracing: the outputs continue the trace
        for out_topic, key, encoded in outputs:
            produce(self._producer, out_topic, key, encoded, headers)
        return translation.outcome

    def _outputs(self, translation: Translation) -> list[tuple[str, bytes, bytes]]:
        """Every output of ``translation`` encoded, each checked against the producer's limit first, so
        the record is dead-lettered whole rather than half published (:class:`OutputTooLarge`)."""
        cfg = self._cfg
        outputs = [(topic, cmd.secure_client_id.encode(), self._codec.encode(cmd, topic))
                   for cmd in translation.commands for topic in (self._commands_topic_of(cmd),)]
        outputs += [(cfg.results_topic, result_key(result).encode(), self._codec.encode(result, cfg.results_topic))
                    for result in translation.results]
        outputs += [(cfg.reconcile_requests_topic, run.run_id.encode(),
                     self._codec.encode(run, cfg.reconcile_requests_topic)) for run in translation.reconcile]
        for _topic, key, encoded in outputs:
            screen_output(key, encoded)
        return outputs

    def _commands_topic_of(self, cmd: KmsCommand) -> str:
        """The express lane for an EXPRESS command (same key: the secure client), else the commands topic."""
        express = self._cfg.express_commands_topic
        return express if express and cmd.priority is Priority.EXPRESS else self._cfg.commands_topic

    def _init_transactions(self) -> bool:
        """Register the transactional id (fencing any zombie with the same id); False when stopped first."""
        while not self._stop.is_set():
            try:
                with self._guard("init_transactions"):
                    self._producer.init_transactions(_INIT_SLICE_SECONDS)
                return True
            except KafkaException as exc:
                err = kafka_error(exc)
                self._producer.poll(0)  # serves error_cb: refused credentials raise here
                if err is None or err.fatal() or not err.retriable():
                    raise FatalKafkaError(f"cannot initialise Kafka transactions: {err or exc}") from exc
                log.warning("waiting for the transaction coordinator (%s)", err.name())
        return False

    def _guard(self, what: str, timeout: float | None = None) -> AbstractContextManager[None]:
        """Bound a blocking librdkafka call: its own timeout plus a margin, else the watchdog ends us."""
        own = self._cfg.transaction_timeout_seconds if timeout is None else timeout
        return self._watchdog.guard(what, own + _WATCHDOG_MARGIN_SECONDS)

    def _commit(self) -> None:
        while True:
            try:
                with self._guard("commit_transaction"):
                    self._producer.commit_transaction(self._cfg.transaction_timeout_seconds)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if (err is not None and err.retriable() and not err.fatal()
                        and not err.txn_requires_abort() and not self._stop.is_set()):
                    log.warning("transaction commit not confirmed (%s); committing again", err.name())
                    self._producer.poll(0)
                    continue
                raise

    def _recover(self, exc: KafkaException) -> None:
        err = kafka_error(exc)
        if err is not None and err.fatal():
            raise FatalKafkaError(f"fatal producer error: {err}") from exc
        log.warning("transaction failed (%s); aborting and rewinding", err or exc)
        self._abort()
        self._rewind()

    def _abort(self) -> None:
        """Abort the open transaction, retrying while the broker does not answer."""
        while True:
            try:
                with self._guard("abort_transaction"):
                    self._producer.abort_transaction(self._cfg.transaction_timeout_seconds)
                return
            except KafkaException as abort_exc:
                err = kafka_error(abort_exc)
                if err is not None and err.fatal():
                    raise FatalKafkaError(f"fatal producer error on abort: {err}") from abort_exc
                if err is not None and err.code() == KafkaError._STATE:
                    return  # no transaction in progress
                log.warning("abort not confirmed (%s); trying again", err or abort_exc)
                self._producer.poll(0)
                if self._stop.wait(1.0):
                    return  # stopping: the coordinator aborts it on timeout or when our id is reused

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset, retrying while the broker is away."""
        while not self._stop.is_set():
            try:
                with self._guard("committed"):
                    self._assignment.rewind(self._consumer)
                return
            except KafkaException as exc:
                log.warning("rewind failed (%s); trying again", exc)
                self._stop.wait(1.0)

    # --- one-shot support --------------------------------------------------------------------------

    def _end_offsets(self) -> dict[tuple[str, int], int] | None:
        """Each assigned partition's end, or None when the broker cannot say yet (a retriable error,
        e.g. NOT_LEADER on a topic created a moment ago): the loop polls and asks again."""
        ends = {}
        for topic, partition in self._assignment.parts:
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            except KafkaException as exc:
                error = kafka_error(exc)
                if error is None or not error.retriable():
                    raise
                log.info("end offset of %s[%d] not available yet (%s); asking again", topic, partition,
                         error.name())
                return None
            ends[(topic, partition)] = high
        return ends

    def _reached(self, ends: dict[tuple[str, int], int]) -> bool:
        parts = [TopicPartition(t, p) for t, p in ends]
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(parts)}
        committed = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.committed(parts, timeout=10)}
        for key, end in ends.items():
            pos = max(positions.get(key, -1), committed.get(key, -1))
            if end > 0 and pos < end:
                return False
        return True


_INIT_SLICE_SECONDS = 5.0
_WATCHDOG_MARGIN_SECONDS = 15.0
_SEND_OFFSETS_TIMEOUT_SECONDS = 10.0
_TIME_FIELDS = ("occurred_at", "created_at", "requested_at")
