"""The request-log writer (``kmsbridge run request-log``): seven topics → the provisioning request log.

It reads ``crm.subscriptions`` (the events that name a box), ``kms.requests``, ``kms.commands`` and
its express lane, ``kms.results``, ``reconcile.requests`` and ``reconcile.reports`` with its own consumer group and
writes :mod:`reconciler.request_log_store`. It is its own process, not a part of the projector: it
reads six topics the projector does not, it writes several rows per command where the projector
writes one per subscription, and a slow or unavailable log database must hold back neither the
desired state reset runs read nor the provisioning itself (it only observes: nothing waits on it but
the support tools). It also enforces the retention (:attr:`RequestLogConfig.retention_days`).

Commit protocol, at-least-once (correct because every write is idempotent, see the store):

1. Poll a batch (up to ``batch_size`` messages or ``batch_seconds``). A fatal consumer error (a
   static member fenced by another with the same ``group.instance.id``) ends the process non-zero
   (:mod:`kafka_edge.messages`); its supervisor starts a fresh one.
2. Decode each message with the record type of its topic. A tombstone is skipped; a message that
   does not decode is **skipped and counted** (outcome ``skipped``), not dead-lettered: the consumer
   that owns the topic dead-letters it already, and a second DLQ copy would be replayed twice.
3. Write the batch in one database transaction (:meth:`RequestLog.write`).
4. Commit the offsets after the batch synchronously. A crash before this step re-reads the batch,
   which changes nothing (step 3 is idempotent).

If step 3 fails (database unreachable) nothing is committed: every assigned partition is rewound to
its committed offset and the batch is tried again after ``retry_seconds``. If the database refuses the
batch for what a record holds (:func:`~kafka_edge.dlq.is_content_error`), the batch is written record
by record instead: the refused record is **skipped and counted** (as in step 2) and the others are
written, so no record can stop a partition of the log.

Every ``purge_interval_seconds`` the writer deletes the rows older than the retention (in chunks).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, Message
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from kafka_edge.assignment import Assignment
from kafka_edge.batch_commit import commit_batch, poll_batches, retry_batch
from kafka_edge.dlq import is_content_error
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import schema_id_header
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED, PROCESSING_SECONDS
from reconciler.request_log_store import LogBatch, RequestLog
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.records import (
    KmsCommand,
    KmsResult,
    ReconcileReport,
    ReconcileRequest,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = ["PROCESS", "RequestLogConfig", "RequestLogWriter"]

log = logging.getLogger(__name__)
PROCESS = "request-log"

_RECORDS: dict[str, type[BaseModel]] = {
    "subscriptions": SubscriptionEvent, "requests": ServiceRequest, "commands": KmsCommand,
    "commands_express": KmsCommand, "results": KmsResult, "reconcile_requests": ReconcileRequest,
    "reconcile_reports": ReconcileReport}


@dataclass(frozen=True)
class RequestLogConfig:
    #: logical name (a key of :data:`_RECORDS`) -> topic
    topics: dict[str, str]
    batch_size: int = 2000
    batch_seconds: float = 0.2
    retry_seconds: float = 1.0
    retention_days: float = 90.0
    purge_interval_seconds: float = 3600.0


class RequestLogWriter:
    """The consume loop of the commit protocol above. ``run()`` blocks until :meth:`request_stop`."""

    def __init__(self, consumer: Consumer, codec: Codec, store: RequestLog, config: RequestLogConfig,
                 health: HealthState | None = None) -> None:
        unknown = set(config.topics) - set(_RECORDS)
        if unknown:
            raise ValueError(f"unknown request-log inputs: {sorted(unknown)}")
        self._consumer = consumer
        self._codec = codec
        self._store = store
        self._cfg = config
        self._types: dict[str, type[BaseModel]] = {topic: _RECORDS[name] for name, topic in config.topics.items()}
        self._health = health or HealthState(ttl_seconds=30)
        self._stop = threading.Event()
        self._assignment = Assignment(self._health, PROCESS)
        self._next_purge = 0.0
        self.records_written = 0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            poll_batches(self._consumer, sorted(self._types), self._assignment, self._health, self._stop,  # step 1
                         batch_size=self._cfg.batch_size, batch_seconds=self._cfg.batch_seconds,
                         handle=self._process_batch, between=self._purge_when_due)
        finally:
            self._consumer.close()

    def _process_batch(self, msgs: list[Message]) -> None:
        t0 = time.monotonic()
        try:
            batch, outcomes, decoded = self._decode(msgs)  # step 2
            try:
                self._store.write(batch)  # step 3
            except SQLAlchemyError as exc:
                if not is_content_error(exc):
                    raise
                self._write_one_by_one(msgs, decoded, outcomes)
        except (SQLAlchemyError, SchemaRegistryUnavailable) as exc:
            retry_batch(self._consumer, self._assignment, self._stop, exc, self._cfg.retry_seconds)
            return
        commit_batch(self._consumer, msgs, self._assignment)  # step 4
        self.records_written += len(batch)
        elapsed = (time.monotonic() - t0) / len(msgs)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            topic = msg.topic() or ""
            MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
            MESSAGES_PROCESSED.labels(PROCESS, topic, outcome).inc()
            PROCESSING_SECONDS.labels(PROCESS, topic).observe(elapsed)

    def _write_one_by_one(self, msgs: list[Message], decoded: list[tuple[int, BaseModel]],
                          outcomes: list[str]) -> None:
        """Step 3 again, one record a transaction: the record the database refuses is skipped."""
        for index, record in decoded:
            single = LogBatch()
            _add(single, record, _timestamp(msgs[index]))
            try:
                self._store.write(single)
            except SQLAlchemyError as exc:
                if not is_content_error(exc):
                    raise
                msg = msgs[index]
                log.error("request-log skipped a record the database refused topic=%s partition=%s offset=%s "
                          "error=%s", msg.topic(), msg.partition(), msg.offset(), type(exc).__name__)
                outcomes[index] = "skipped"

    def _decode(self, msgs: list[Message]) -> tuple[LogBatch, list[str], list[tuple[int, BaseModel]]]:
        """The batch to write, each message's outcome, and the decoded records with their positions."""
        batch = LogBatch()
        outcomes: list[str] = []
        decoded: list[tuple[int, BaseModel]] = []
        for index, msg in enumerate(msgs):
            value = msg.value()
            record_type = self._types.get(msg.topic() or "")
            if value is None or record_type is None:
                outcomes.append("skipped")
                continue
            try:
                record: BaseModel = self._codec.decode(value, record_type, schema_id_header(msg))
            except PoisonMessage as exc:
                log.info("request-log skipped an undecodable record topic=%s partition=%s offset=%s reason=%s",
                         msg.topic(), msg.partition(), msg.offset(), exc.reason)
                outcomes.append("skipped")
                continue
            _add(batch, record, _timestamp(msg))
            decoded.append((index, record))
            outcomes.append("ok")
        return batch, outcomes, decoded

    def _purge_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self._cfg.purge_interval_seconds
        before = datetime.now(UTC) - timedelta(days=self._cfg.retention_days)
        try:
            deleted = self._store.purge(before)
        except SQLAlchemyError as exc:
            log.warning("request-log retention purge failed (%s); trying again later", type(exc).__name__)
            return
        if deleted:
            log.info("request-log retention deleted=%d older_than=%s", deleted, before.isoformat())


def _add(batch: LogBatch, record: object, seen_at: datetime) -> None:
    if isinstance(record, KmsCommand):
        batch.commands.append(record)
    elif isinstance(record, KmsResult):
        batch.results.append(record)
    elif isinstance(record, SubscriptionEvent):
        batch.events.append(record)
    elif isinstance(record, ServiceRequest):
        batch.requests.append(record)
    elif isinstance(record, ReconcileRequest):
        batch.runs.append((record, seen_at))
    elif isinstance(record, ReconcileReport):
        batch.reports.append(record)


def _timestamp(msg: Message) -> datetime:
    kind, millis = msg.timestamp()
    return datetime.fromtimestamp(millis / 1000, UTC) if kind and millis > 0 else datetime.now(UTC)
