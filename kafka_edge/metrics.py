"""The product's Prometheus metrics, exactly as docs/architecture.md §7 names them.

One module holds every metric so names, types and labels live in one place; processes import the
objects they update. Label values never carry PINs, texts or ids of customers.
"""

from __future__ import annotations

import platform
from typing import Any

import confluent_kafka
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

from kafka_edge.build_info import kmsbridge_version

__all__ = [
    "BUILD_INFO",
    "COMMANDS_INFLIGHT",
    "CONSUMER_COMMITTED_OFFSET",
    "CONSUMER_LAG",
    "CONSUMER_LAG_SECONDS",
    "DLQ_MESSAGES",
    "KMS_BREAKER_OPEN",
    "KMS_RATE_LIMIT_PER_SECOND",
    "KMS_RATE_LIMIT_WAITS",
    "KMS_REQUESTS",
    "KMS_REQUEST_SECONDS",
    "KMS_RETRIES",
    "LOOKAHEAD_COALESCED",
    "LOOKAHEAD_ENTRIES",
    "MESSAGES_CONSUMED",
    "MESSAGES_PROCESSED",
    "PROCESSING_SECONDS",
    "RECONCILE_DRIFTED",
    "RECONCILE_LAST_SUCCESS",
]

class _CachedLabels:
    """``labels(*values)`` from a plain dict once a label set has been seen: prometheus_client
    converts every value with ``str`` and takes the metric's lock on each call, which the consume
    loops pay several times per message. The child is the one prometheus_client made and keeps, so
    exposition is unchanged; ``remove`` and ``clear`` drop the cache with the children."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cached_children: dict[tuple[object, ...], Any] = {}
        super().__init__(*args, **kwargs)

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Any:
        if labelkwargs or not labelvalues:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        try:
            return self._cached_children[labelvalues]
        except KeyError:
            child = self._cached_children[labelvalues] = super().labels(*labelvalues)  # type: ignore[misc]
            return child

    def remove(self, *labelvalues: Any) -> None:
        self._cached_children = {}
        super().remove(*labelvalues)  # type: ignore[misc]

    def clear(self) -> None:
        self._cached_children = {}
        super().clear()  # type: ignore[misc]


class Counter(_CachedLabels, _Counter):
    """``prometheus_client.Counter`` whose label look-ups are cached (:class:`_CachedLabels`)."""


class Gauge(_CachedLabels, _Gauge):
    """``prometheus_client.Gauge`` whose label look-ups are cached (:class:`_CachedLabels`)."""


class Histogram(_CachedLabels, _Histogram):
    """``prometheus_client.Histogram`` whose label look-ups are cached (:class:`_CachedLabels`)."""

    def observe_many(self, amount: float, count: int) -> None:
        """``count`` observations of ``amount`` in one step: the buckets and the count ``count`` calls
        of ``observe`` would give, the sum ``amount * count`` (a batch's share per message, counted
        once per batch). Falls back to ``observe`` calls if prometheus_client's internals differ."""
        if count <= 0:
            return
        buckets, total, bounds = (getattr(self, name, None) for name in ("_buckets", "_sum", "_upper_bounds"))
        if buckets is None or total is None or bounds is None:
            for _ in range(count):
                self.observe(amount)
            return
        self._raise_if_not_observable()
        total.inc(amount * count)
        for i, bound in enumerate(bounds):
            if amount <= bound:
                buckets[i].inc(count)
                break


MESSAGES_CONSUMED = Counter(
    "kmsbridge_messages_consumed_total", "Messages taken from Kafka", ["process", "topic"]
)
MESSAGES_PROCESSED = Counter(
    "kmsbridge_messages_processed_total",
    "Messages finished, by outcome (ok, rejected, dlq, skipped)",
    ["process", "topic", "outcome"],
)
PROCESSING_SECONDS = Histogram(
    "kmsbridge_processing_seconds",
    "Time to process one message (or one batch share)",
    ["process", "topic"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# The lag series carry the consumer group as kminion and kafka-lag-exporter do; the committed offset is
# what the STALL alert watches for progress (a stuck command pins it while other partitions move).
CONSUMER_LAG = Gauge(
    "kmsbridge_consumer_lag",
    "High watermark minus committed offset",
    ["process", "group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "kmsbridge_consumer_lag_seconds",
    "Age of the oldest unprocessed message",
    ["process", "group", "topic", "partition"],
)
CONSUMER_COMMITTED_OFFSET = Gauge(
    "kmsbridge_consumer_committed_offset",
    "The group's committed offset (the low watermark before its first commit)",
    ["process", "group", "topic", "partition"],
)
KMS_REQUESTS = Counter(
    "kmsbridge_kms_requests_total",
    "KMS calls by outcome (completed, rejected, transient)",
    ["operation", "outcome"],
)
KMS_REQUEST_SECONDS = Histogram(
    "kmsbridge_kms_request_seconds",
    "KMS call latency",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KMS_RETRIES = Counter("kmsbridge_kms_retries_total", "KMS call retries", ["operation"])
KMS_RATE_LIMIT_PER_SECOND = Gauge(
    "kmsbridge_kms_rate_limit_per_second",
    "This replica's share of the KMS calls-per-second limit, by operation class (all: every call)",
    ["class"],
)
KMS_RATE_LIMIT_WAITS = Counter(
    "kmsbridge_kms_rate_limit_waits_total",
    "KMS calls that waited for a token of the calls-per-second limit, by operation class",
    ["class"],
)
LOOKAHEAD_ENTRIES = Gauge(
    "kmsbridge_lookahead_entries",
    "Boxes and attributes the executor's look-ahead knows a newer command for, beyond what it holds",
)
LOOKAHEAD_COALESCED = Counter(
    "kmsbridge_lookahead_coalesced_total",
    "Commands not sent because the look-ahead saw a newer one of the same box and attribute ahead",
)
KMS_BREAKER_OPEN = Gauge("kmsbridge_kms_breaker_open", "1 while the KMS circuit breaker is open")
COMMANDS_INFLIGHT = Gauge("kmsbridge_commands_inflight", "Commands taken from Kafka and not yet finished")
DLQ_MESSAGES = Counter("kmsbridge_dlq_messages_total", "Messages sent to a DLQ", ["topic", "error"])
RECONCILE_DRIFTED = Counter(
    "kmsbridge_reconcile_drifted_total", "Drifted subscriptions found", ["run_type"]
)
RECONCILE_LAST_SUCCESS = Gauge(
    "kmsbridge_reconcile_last_success_timestamp_seconds", "Unix time of the last successful reset run"
)


BUILD_INFO = Gauge(
    "kmsbridge_build_info",
    "Always 1; the labels say which build runs",
    ["version", "python", "confluent_kafka", "librdkafka"],
)
BUILD_INFO.labels(kmsbridge_version(), platform.python_version(), confluent_kafka.version()[0],
                  confluent_kafka.libversion()[0]).set(1)
