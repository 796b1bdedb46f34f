"""The product's metrics cache their labelled children: the same child each time, counted and
exposed as prometheus_client counts it, and forgotten with the label set."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from kafka_edge.metrics import KMS_REQUEST_SECONDS, MESSAGES_PROCESSED


def processed(outcome: str) -> float:
    return REGISTRY.get_sample_value("kmsbridge_messages_processed_total",
                                     {"process": "children-test", "topic": "t", "outcome": outcome}) or 0.0


def test_a_label_set_gives_the_same_child_every_time_and_counts_where_prometheus_reads() -> None:
    first = MESSAGES_PROCESSED.labels("children-test", "t", "ok")

    assert MESSAGES_PROCESSED.labels("children-test", "t", "ok") is first
    before = processed("ok")
    first.inc(2)
    MESSAGES_PROCESSED.labels(process="children-test", topic="t", outcome="ok").inc()
    assert processed("ok") == before + 3


def test_a_removed_label_set_starts_again_from_zero() -> None:
    MESSAGES_PROCESSED.labels("children-test", "t", "dlq").inc(5)

    MESSAGES_PROCESSED.remove("children-test", "t", "dlq")
    MESSAGES_PROCESSED.labels("children-test", "t", "dlq").inc()

    assert processed("dlq") == 1.0


def test_a_cached_histogram_child_observes_into_the_exposed_series() -> None:
    KMS_REQUEST_SECONDS.labels("CHILDREN_TEST").observe(0.002)
    KMS_REQUEST_SECONDS.labels("CHILDREN_TEST").observe(0.003)

    assert REGISTRY.get_sample_value("kmsbridge_kms_request_seconds_count", {"operation": "CHILDREN_TEST"}) == 2.0


def test_many_observations_at_once_count_as_that_many_single_ones() -> None:
    from prometheus_client import CollectorRegistry

    from kafka_edge.metrics import Histogram

    registry = CollectorRegistry()
    many = Histogram("many_seconds", "x", ["p"], buckets=(0.001, 0.01, 0.1), registry=registry)
    single = Histogram("single_seconds", "x", ["p"], buckets=(0.001, 0.01, 0.1), registry=registry)

    many.labels("a").observe_many(0.005, 7)
    for _ in range(7):
        single.labels("a").observe(0.005)

    for bound in ("0.001", "0.01", "0.1", "+Inf"):
        labels = {"p": "a", "le": bound}
        assert registry.get_sample_value("many_seconds_bucket", labels) == \
            registry.get_sample_value("single_seconds_bucket", labels)
    assert registry.get_sample_value("many_seconds_count", {"p": "a"}) == 7.0
    assert registry.get_sample_value("many_seconds_sum", {"p": "a"}) == pytest.approx(0.035)
