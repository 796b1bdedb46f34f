"""A background reader that feeds an :class:`~producers.outcomes.OutcomeStore` from Kafka.

It reads ``kms.results`` and ``reconcile.reports`` (and, in the Web API, ``kms.requests`` and
``reconcile.requests`` too, so every replica knows every request) without a consumer group: each
partition is *assigned* at an offset fixed when :meth:`OutcomeFeed.start` returns, so

1. a caller that starts the feed, *then* publishes a request, cannot miss its result (the start
   offsets were captured before the request existed: no race);
2. with ``history_seconds`` the feed starts that far back (``offsets_for_times``), so a restarted Web
   API knows the requests of the last period again; it counts as caught up (``ready()``) once it
   reached the end offsets it saw at start;
3. nothing is committed: the feed is a view, it never moves a group's offsets.

Partitions added to a topic after start are not read (restart the process after adding some).
Each polled item goes through :func:`kafka_edge.messages.is_record`: a fatal consumer error ends the
reading loop (:attr:`OutcomeFeed.failure`), so the API's ``/healthz`` answers 503 and the pod is
restarted; any other consumer error is logged (rate-limited) and skipped.
A record that is oversized, cannot be decoded, or that the store cannot take, is logged (topic, partition, offset,
reason) and skipped, counted in ``kmsbridge_messages_processed_total{outcome="skipped"}`` and
:attr:`OutcomeFeed.skipped`: this reader does not own the topic, so it does not dead-letter, and no
record can stop it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from kafka_edge.dlq import screen_size
from kafka_edge.kafka_clients import KafkaErrorHandler, consume_available
from kafka_edge.messages import is_record
from kafka_edge.metrics import MESSAGES_CONSUMED, MESSAGES_PROCESSED
from producers.errors import ProducerError
from producers.outcomes import OutcomeStore
from schemas.codec import Codec
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.records import KmsResult, ReconcileReport, ReconcileRequest, ServiceRequest

__all__ = ["OutcomeFeed", "OutcomeFeedError"]

log = logging.getLogger(__name__)
PROCESS = "outcome-feed"

_OFFSET_END = -1  # what offsets_for_times answers when no record is that recent


class OutcomeFeedError(ProducerError):
    """The feed could not start (a topic is missing, the broker did not answer)."""


class OutcomeFeed:
    """Reads ``topics`` into ``store`` in a daemon thread (see the module docstring)."""

    def __init__(self, kafka_config: dict[str, str], codec: Codec, store: OutcomeStore, topics: Sequence[str],
                 *, history_seconds: float = 0.0, timeout: float = 10.0, name: str = "outcomes",
                 max_message_bytes: int = 1_000_000) -> None:
        self._config = {**kafka_config, "group.id": f"kmsbridge-{name}-{uuid.uuid4().hex[:12]}",
                        "enable.auto.commit": False, "isolation.level": "read_committed",
                        "auto.offset.reset": "latest", "enable.partition.eof": False,
                        "error_cb": KafkaErrorHandler(f"outcome feed ({name})")}
        self._codec = codec
        self._store = store
        self._topics = list(topics)
        self._history = history_seconds
        self._timeout = timeout
        self._name = name
        self._max_bytes = max_message_bytes
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._targets: dict[tuple[str, int], int] = {}
        self._caught_up = threading.Event()
        self._last_poll = time.monotonic()
        self.failure: BaseException | None = None
        self.skipped = 0

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> OutcomeFeed:
        """Fix the start offsets (they are fixed when this returns), then read in the background."""
        consumer = Consumer(self._config)
        try:
            parts = self._partitions(consumer)
            starts = self._start_offsets(consumer, parts)
            consumer.assign(starts)
        except KafkaException as exc:
            consumer.close()  # serves the error callback: refused credentials or an untrusted broker raise here
            raise OutcomeFeedError(f"starting the outcome feed on {self._topics}: {exc}") from exc
        except OutcomeFeedError:
            consumer.close()
            raise
        self._consumer = consumer
        if all(tp.offset >= self._targets[(tp.topic, tp.partition)] for tp in starts):
            self._caught_up.set()
        self._thread = threading.Thread(target=self._run, name=f"feed-{self._name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def healthy(self, ttl_seconds: float = 30.0) -> bool:
        """The reading loop ran within ``ttl_seconds`` and has not died."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and time.monotonic() - self._last_poll <= ttl_seconds

    def ready(self) -> bool:
        """Healthy and caught up with the end offsets seen at start (history replayed)."""
        return self.healthy() and self._caught_up.is_set()

    def wait_caught_up(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    # --- start offsets -------------------------------------------------------------------------------

    def _partitions(self, consumer: Consumer) -> list[TopicPartition]:
        parts: list[TopicPartition] = []
        for topic in self._topics:
            meta = consumer.list_topics(topic, timeout=self._timeout).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                reason = meta.error if meta is not None and meta.error is not None else "no partitions"
                raise OutcomeFeedError(f"topic {topic!r} is not available ({reason}); create the topics first "
                                       "(kmsbridge topics create)")
            parts += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        return parts

    def _start_offsets(self, consumer: Consumer, parts: list[TopicPartition]) -> list[TopicPartition]:
        for tp in parts:
            _low, high = consumer.get_watermark_offsets(tp, timeout=self._timeout)
            self._targets[(tp.topic, tp.partition)] = high
        if self._history <= 0:
            return [TopicPartition(tp.topic, tp.partition, self._targets[(tp.topic, tp.partition)]) for tp in parts]
        since_ms = int((time.time() - self._history) * 1000)
        found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, since_ms) for tp in parts],
                                           timeout=self._timeout)
        return [TopicPartition(tp.topic, tp.partition,
                               self._targets[(tp.topic, tp.partition)] if tp.offset == _OFFSET_END else tp.offset)
                for tp in found]

    # --- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                msgs = consume_available(consumer, 500, 0.2)  # a waiting request hears at once
                self._last_poll = time.monotonic()
                for msg in msgs:
                    self._dispatch(msg)
                if not msgs and not self._caught_up.is_set() and self._reached_targets(consumer):
                    self._caught_up.set()
                    log.info("outcome feed caught up topics=%s tracked=%d", self._topics, len(self._store))
        except BaseException as exc:  # the API's /healthz turns 503 and the pod is restarted
            self.failure = exc
            log.exception("outcome feed stopped")
        finally:
            consumer.close()

    def _reached_targets(self, consumer: Consumer) -> bool:
        parts = [TopicPartition(t, p) for t, p in self._targets]
        for tp in consumer.position(parts):
            target = self._targets[(tp.topic, tp.partition)]
            if target > 0 and tp.offset < target:
                return False
        return True

    def _dispatch(self, msg: Message) -> None:
        if not is_record(msg, f"{PROCESS} ({self._name})"):  # a fatal error raises: the feed stops (healthz 503)
            return
        topic = msg.topic() or ""
        MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
        while not self._stop.is_set():
            try:
                value = msg.value()
                if value is not None:
                    screen_size(value, self._max_bytes)
                record = self._codec.decode_any(value)
                break
            except SchemaRegistryUnavailable as exc:  # the message may be fine: try again shortly
                log.warning("schema registry unavailable (%s); retrying", exc)
                self._stop.wait(1.0)
            except PoisonMessage as exc:
                self._skip(msg, exc.reason)
                return
        else:
            return
        try:
            self._apply(record)
        except Exception as exc:  # a record the store cannot take: skipped, the feed goes on
            self._skip(msg, f"store_{type(exc).__name__}")
            return
        MESSAGES_PROCESSED.labels(PROCESS, topic, "ok").inc()

    def _skip(self, msg: Message, reason: str) -> None:
        self.skipped += 1
        MESSAGES_PROCESSED.labels(PROCESS, msg.topic() or "", "skipped").inc()
        log.warning("outcome feed skipped a record topic=%s partition=%s offset=%s reason=%s", msg.topic(),
                    msg.partition(), msg.offset(), reason)

    def _apply(self, record: object) -> None:
        if isinstance(record, KmsResult):
            self._store.add_result(record)
        elif isinstance(record, ServiceRequest):
            self._store.track(record)
        elif isinstance(record, ReconcileReport):
            self._store.add_report(record)
        elif isinstance(record, ReconcileRequest):
            self._store.track_run(record)
