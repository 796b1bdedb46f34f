"""The translator: CRM topics → ``kms.commands`` (and REJECTED results), exactly once.

Commit protocol, one Kafka transaction per polled batch:

1. Poll a batch (up to ``batch_size`` messages or ``batch_ms``); rebalance callbacks run here,
   between transactions, so a revoke never splits a transaction.
2. Begin the transaction.
3. For each message: screen it (tombstone → counted skip; oversized → DLQ), decode, hand it to the
   topic's handler, and produce its commands (key = secure client), REJECTED results or DLQ copy —
   all inside the transaction.
4. ``send_offsets_to_transaction`` with the position after the batch, so the input offsets commit
   atomically with the outputs.
5. Commit. If the commit (or any step) fails with an abortable error, abort and rewind every assigned
   partition to its committed offset: the batch is processed again and, because planning is
   deterministic, produces byte-identical commands. A fatal error (fenced) ends the process
   non-zero; its supervisor restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.dlq import dlq_headers
from consumers.errors import FatalKafkaError
from consumers.health import HealthState
from consumers.metrics import DLQ_MESSAGES, MESSAGES_CONSUMED, MESSAGES_PROCESSED, PROCESSING_SECONDS
from consumers.translation import Translation
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.records import KmsResult

__all__ = ["Oversized", "TooFarInFuture", "TransactionalTranslator", "TranslatorConfig"]

log = logging.getLogger(__name__)
PROCESS = "translator"

Handler = Callable[[object, str], Translation]


class Oversized(PoisonMessage):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__("oversized", f"message of {size} bytes exceeds the limit of {limit} bytes")


class TooFarInFuture(PoisonMessage):
    def __init__(self, field: str, value: datetime, limit: timedelta) -> None:
        super().__init__("future_timestamp", f"{field} {value.isoformat()} lies more than {limit} in the future")


@dataclass(frozen=True)
class TranslatorConfig:
    inputs: dict[str, str]  # topic -> logical name of the handler
    commands_topic: str
    results_topic: str
    reconcile_requests_topic: str = "reconcile.requests"
    dlq_suffix: str = ".dlq"
    batch_size: int = 500
    batch_seconds: float = 0.1
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)
    transaction_timeout_seconds: float = 30.0


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
        self._assigned: set[tuple[str, int]] = set()
        self.batches_committed = 0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, *, until_end: bool = False) -> None:
        """Run until stopped; with ``until_end``, stop once every assigned partition reached the end
        it had when the loop started (one-shot mail runs)."""
        self._producer.init_transactions(self._cfg.transaction_timeout_seconds)
        self._consumer.subscribe(list(self._cfg.inputs), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)
        ends: dict[tuple[str, int], int] | None = None
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(self._cfg.batch_size, self._cfg.batch_seconds)  # step 1
                self._health.polled()
                msgs = [m for m in msgs if not _is_eof_or_error(m)]
                if msgs:
                    self._process_batch(msgs)
                if until_end:
                    if ends is None and self._assigned:
                        ends = self._end_offsets()
                    if ends is not None and self._reached(ends):
                        break
        finally:
            self._consumer.close()

    # --- one transaction ---------------------------------------------------------------------------

    def _process_batch(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        try:
            self._producer.begin_transaction()  # step 2
            outcomes = [self._process_one(m) for m in msgs]  # step 3
            positions = _positions_after(msgs)
            self._producer.send_offsets_to_transaction(  # step 4
                positions, self._consumer.consumer_group_metadata(), self._cfg.transaction_timeout_seconds)
            self._producer.commit_transaction(self._cfg.transaction_timeout_seconds)  # step 5
        except KafkaException as exc:
            self._recover(exc)
            return
        except SchemaRegistryUnavailable as exc:
            # not the message's fault: abort, rewind and try the batch again after a pause
            log.warning("schema registry unavailable (%s); retrying the batch", exc)
            self._abort_quietly()
            self._rewind()
            self._stop.wait(1.0)
            return
        self.batches_committed += 1
        elapsed = (time.monotonic() - t0) / len(msgs)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            topic = msg.topic() or ""
            MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
            MESSAGES_PROCESSED.labels(PROCESS, topic, outcome).inc()
            PROCESSING_SECONDS.labels(PROCESS, topic).observe(elapsed)

    def _process_one(self, msg: Message) -> str:
        topic = msg.topic() or ""
        record_type, handler = self._handlers[self._cfg.inputs[topic]]
        value = msg.value()
        if value is None:
            log.info("tombstone skipped topic=%s partition=%s offset=%s", topic, msg.partition(), msg.offset())
            return "skipped"
        try:
            if len(value) > self._cfg.max_message_bytes:
                raise Oversized(len(value), self._cfg.max_message_bytes)
            record: object = self._codec.decode(value, record_type)
            self._check_future(record)
            translation = handler(record, topic)
        except PoisonMessage as exc:
            DLQ_MESSAGES.labels(topic, exc.reason).inc()
            self._produce(topic + self._cfg.dlq_suffix, msg.key(), value, dlq_headers(msg, exc))
            log.warning("dead-lettered topic=%s partition=%s offset=%s reason=%s", topic, msg.partition(),
                        msg.offset(), exc.reason)
            return "dlq"
        for cmd in translation.commands:
            self._produce(self._cfg.commands_topic, cmd.secure_client_id.encode(),
                          self._codec.encode(cmd, self._cfg.commands_topic))
        for result in translation.results:
            self._produce(self._cfg.results_topic, _result_key(result).encode(),
                          self._codec.encode(result, self._cfg.results_topic))
        for run in translation.reconcile:
            self._produce(self._cfg.reconcile_requests_topic, run.run_id.encode(),
                          self._codec.encode(run, self._cfg.reconcile_requests_topic))
        return translation.outcome

    def _check_future(self, record: object) -> None:
        limit = self._cfg.max_future_skew
        horizon = datetime.now(UTC) + limit
        for field in ("occurred_at", "created_at", "requested_at"):
            value = getattr(record, field, None)
            if isinstance(value, datetime) and value > horizon:
                raise TooFarInFuture(field, value, limit)

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _recover(self, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.fatal():
            raise FatalKafkaError(f"fatal producer error: {err}") from exc
        log.warning("transaction failed (%s); aborting and rewinding", err)
        self._abort_quietly()
        self._rewind()

    def _abort_quietly(self) -> None:
        try:
            self._producer.abort_transaction(self._cfg.transaction_timeout_seconds)
        except KafkaException as abort_exc:
            abort_err = abort_exc.args[0] if abort_exc.args else None
            if isinstance(abort_err, KafkaError) and abort_err.fatal():
                raise FatalKafkaError(f"fatal producer error on abort: {abort_err}") from abort_exc

    def _rewind(self) -> None:
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if not parts:
            return
        committed = self._consumer.committed(parts, timeout=10)
        for tp in committed:
            if tp.offset >= 0:
                self._consumer.seek(tp)
            else:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, -2))  # OFFSET_BEGINNING

    # --- rebalance ---------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in parts)
        self._health.assigned = bool(self._assigned)

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # nothing to commit: every processed batch was committed inside its transaction
        for tp in parts:
            self._assigned.discard((tp.topic, tp.partition))
        self._health.assigned = bool(self._assigned)

    # --- one-shot support --------------------------------------------------------------------------

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        ends = {}
        for topic, partition in self._assigned:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
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


def _is_eof_or_error(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return False
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error: %s", err)
    return True


def _positions_after(msgs: list[Message]) -> list[TopicPartition]:
    nxt: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic() or "", m.partition() or 0)
        nxt[key] = max(nxt.get(key, 0), (m.offset() or 0) + 1)
    return [TopicPartition(t, p, o) for (t, p), o in nxt.items()]


def _result_key(result: KmsResult) -> str:
    return (result.request_id or result.communication_id or result.event_id or result.run_id
            or result.idempotency_key)
