"""``kmsbridge run reconciler``: runs each ``ReconcileRequest`` from ``reconcile.requests``.

Commit protocol, one request at a time (group ``<prefix>-reconciler``):

1. Poll one request. A tombstone is a counted skip; an oversized, undecodable or invalid request and
   one dated too far in the future go to ``<topic>.dlq`` (:class:`kafka_edge.dlq.DeadLetters`,
   flushed), its offset is committed, and the loop goes on.
2. Pause every assigned partition and run the request on the job's event loop (a worker thread),
   while this thread keeps polling: the group membership stays alive however long the run takes
   (no ``max.poll.interval.ms`` to tune) and, paused, nothing else is fetched. Partitions assigned
   during the run are paused as they arrive (the :class:`~kafka_edge.assignment.Assignment` hook).
3. Publish the run's report to ``reconcile.reports`` (key = run id) and flush it: delivered. A report
   too large for the producer carries fewer drift items (halved until it fits, the rest counted in
   ``items_omitted``), so no run's size can stop the partition.
4. Commit the request's offset synchronously, then resume.

A crash or shutdown between 2 and 4 leaves the request uncommitted, so it runs again (here or on
another replica) with the **same run id**: its commands carry the same idempotency keys (the
executor's ledger drops those already applied) and its repairs match the expectations recorded the
first time. A shutdown (SIGTERM) stops the run between batches, publishes no report and commits
nothing, for that reason.

A fatal consumer error, polled in step 1 or while a run goes on in step 2 (a static member fenced by
another with the same ``group.instance.id``, :mod:`kafka_edge.messages`), ends the loop the same way
and then the process, non-zero, so its supervisor starts a fresh one; so does one that another part of
the process reports through :meth:`ReconcileRunner.fail` (the queue reader's consumer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from kafka_edge.assignment import Assignment
from kafka_edge.dlq import DeadLetters, OutputTooLarge, screen_output, screen_size, screen_times
from kafka_edge.errors import FatalKafkaError
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import produce, schema_id_header
from kafka_edge.messages import is_record
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED
from reconciler.job import ResetJob, RunInterrupted
from reconciler.publish import PublishFailed
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.records import ReconcileReport, ReconcileRequest

__all__ = ["ReconcileRunner", "RunnerConfig", "encode_within_limit", "run_on_loop"]

log = logging.getLogger(__name__)
PROCESS = "reconciler"
_TIME_FIELDS = ("requested_at",)


@dataclass(frozen=True)
class RunnerConfig:
    requests_topic: str
    reports_topic: str
    dlq_topic: str
    poll_seconds: float = 0.5
    flush_timeout_seconds: float = 30.0
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)


class ReconcileRunner:
    """The loop of the commit protocol above; ``submit`` runs a coroutine on the job's event loop."""

    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec, job: ResetJob, config: RunnerConfig,
                 submit: Callable[[Coroutine[Any, Any, ReconcileReport]], concurrent.futures.Future[ReconcileReport]],
                 health: HealthState | None = None) -> None:
        self._consumer = consumer
        self._producer = producer
        self._codec = codec
        self._job = job
        self._cfg = config
        self._submit = submit
        self._health = health or HealthState(ttl_seconds=30)
        self._stop = threading.Event()
        self._busy = False
        self._assignment = Assignment(self._health, PROCESS, assigned=self._pause_if_busy)
        self._dead_letters = DeadLetters(producer, PROCESS)
        self._failure: FatalKafkaError | None = None
        self.runs_completed = 0

    def request_stop(self) -> None:
        self._stop.set()

    def fail(self, exc: FatalKafkaError) -> None:
        """Another part of the process cannot go on: stop as on SIGTERM, then :meth:`run` raises ``exc``."""
        if self._failure is None:
            self._failure = exc
        self._stop.set()

    def run(self) -> None:
        self._assignment.subscribe(self._consumer, [self._cfg.requests_topic])
        try:
            while not self._stop.is_set():
                msg = self._consumer.poll(self._cfg.poll_seconds)  # step 1
                self._health.polled()
                if not is_record(msg, PROCESS):  # a fatal error raises: the process ends
                    continue
                self._handle(msg)
        finally:
            self._stop.set()  # a run still going on the job's loop stops between two batches
            try:
                self._producer.flush(self._cfg.flush_timeout_seconds)
            finally:
                # also when the flush raised (the producer's error_cb, e.g. an untrusted broker): a
                # consumer left open outlives the process into exit(), where it crashes it (SIGSEGV)
                self._consumer.close()
        if self._failure is not None:
            raise self._failure

    def _handle(self, msg: Message) -> None:
        topic = msg.topic() or ""
        MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
        value = msg.value()
        if value is None:
            MESSAGES_PROCESSED.labels(PROCESS, topic, "skipped").inc()
            self._commit(msg)
            return
        try:
            screen_size(value, self._cfg.max_message_bytes)
            request = self._codec.decode(value, ReconcileRequest, schema_id_header(msg))
            screen_times(request, _TIME_FIELDS, self._cfg.max_future_skew)
        except PoisonMessage as exc:
            self._dead_letters.send(self._cfg.dlq_topic, msg, exc)
            if self._producer.flush(self._cfg.flush_timeout_seconds):
                log.error("DLQ copy not delivered; the request stays uncommitted and is read again")
                self._rewind(msg)
                return
            MESSAGES_PROCESSED.labels(PROCESS, topic, "dlq").inc()
            self._commit(msg)
            return
        report = self._execute(request)  # step 2
        if report is None:
            self._rewind(msg)
            return
        try:
            self._publish_report(report)  # step 3
        except PublishFailed as exc:
            log.error("report of run %s not delivered (%s); the request will run again", request.run_id, exc)
            self._rewind(msg)
            return
        self._commit(msg)  # step 4
        self.runs_completed += 1
        MESSAGES_PROCESSED.labels(PROCESS, topic, "ok" if report.error is None else "rejected").inc()

    def _execute(self, request: ReconcileRequest) -> ReconcileReport | None:
        """Run the job while polling with every partition paused; ``None`` if it was interrupted."""
        self._busy = True
        self._consumer.pause(self._consumer.assignment())
        future = self._submit(self._job.run(request, self._stop))
        try:
            while True:
                try:
                    return future.result(timeout=self._cfg.poll_seconds)
                except concurrent.futures.TimeoutError:
                    stray = self._consumer.poll(0)  # keeps the membership alive; paused: no messages
                    self._health.polled()
                    if is_record(stray, PROCESS):  # a fatal error (fenced) raises here too
                        # a partition assigned between pause() and its callback: read it again later
                        self._consumer.seek(TopicPartition(stray.topic() or "", stray.partition() or 0,
                                                           stray.offset() or 0))
        except RunInterrupted:
            return None
        finally:
            self._busy = False
            self._consumer.resume(self._consumer.assignment())

    def _publish_report(self, report: ReconcileReport) -> None:
        key = report.run_id.encode()
        value = encode_within_limit(report, key, lambda r: self._codec.encode(r, self._cfg.reports_topic))
        produce(self._producer, self._cfg.reports_topic, key, value)
        if self._producer.flush(self._cfg.flush_timeout_seconds):
            raise PublishFailed(f"report not delivered to {self._cfg.reports_topic}")

    def _commit(self, msg: Message) -> None:
        try:
            self._consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit of %s[%s]@%s failed (%s); the request may run again (same run id)",
                        msg.topic(), msg.partition(), msg.offset(), exc)

    def _rewind(self, msg: Message) -> None:
        """Read ``msg`` again: it was not finished (shutdown, or its outputs were not delivered)."""
        if self._stop.is_set():
            return  # closing: the uncommitted offset is where the next owner starts
        self._consumer.seek(TopicPartition(msg.topic() or "", msg.partition() or 0, msg.offset() or 0))
        self._stop.wait(1.0)

    def _pause_if_busy(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # the assignment's hook; a revoke needs none: a request is committed once its report is delivered
        if self._busy:
            consumer.pause(parts)


def encode_within_limit(report: ReconcileReport, key: bytes,
                        encode: Callable[[ReconcileReport], bytes]) -> bytes:
    """``report`` encoded; while it is too large for the producer, with half its drift items (the rest
    counted in ``items_omitted``), and at last without the per-subscription rejection codes."""
    while True:
        value = encode(report)
        try:
            screen_output(key, value)
            return value
        except OutputTooLarge:
            items = report.items
            if items:
                keep = len(items) // 2
                report = report.model_copy(update={"items": items[:keep],
                                                   "items_omitted": report.items_omitted + len(items) - keep})
            elif report.rejections:
                report = report.model_copy(update={"rejections": {}})
            else:
                raise


def run_on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, ReconcileReport]],
                                                            concurrent.futures.Future[ReconcileReport]]:
    """A ``submit`` for :class:`ReconcileRunner` that runs coroutines on ``loop`` (in another thread)."""
    def submit(coro: Coroutine[Any, Any, ReconcileReport]) -> concurrent.futures.Future[ReconcileReport]:
        return asyncio.run_coroutine_threadsafe(coro, loop)
    return submit
