"""The product's Prometheus metrics, exactly as DESIGN.md §7 names them.

One module holds every metric so names, types and labels live in one place; processes import the
objects they update. Label values never carry PINs, texts or ids of customers.
"""

from __future__ import annotations

import platform

import confluent_kafka
from prometheus_client import Counter, Gauge, Histogram

from kafka_edge.build_info import kmsbridge_version

__all__ = [
    "BUILD_INFO",
    "COMMANDS_INFLIGHT",
    "CONSUMER_COMMITTED_OFFSET",
    "CONSUMER_LAG",
    "CONSUMER_LAG_SECONDS",
    "DLQ_MESSAGES",
    "KMS_BREAKER_OPEN",
    "KMS_REQUESTS",
    "KMS_REQUEST_SECONDS",
    "KMS_RETRIES",
    "MESSAGES_CONSUMED",
    "MESSAGES_PROCESSED",
    "PROCESSING_SECONDS",
    "RECONCILE_DRIFTED",
    "RECONCILE_LAST_SUCCESS",
]

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
