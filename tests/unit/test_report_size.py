"""A reset run's report always fits the producer's message limit (reconciler.runner.encode_within_limit)."""

from __future__ import annotations

from datetime import UTC, datetime

from kafka_edge.kafka_clients import PRODUCER_MAX_MESSAGE_BYTES
from reconciler.runner import encode_within_limit
from schemas.codec import Codec
from schemas.records import DriftItem, ReconcileReport


def report(items: int) -> ReconcileReport:
    now = datetime.now(UTC)
    drift = [DriftItem(subscription_id=f"S-{i:06d}", secure_client_id=f"{i:010d}",
                       missing_products=[f"PRODUCT-{i:06d}-{p:03d}-" + "x" * 40 for p in range(100)])
             for i in range(items)]
    return ReconcileReport(run_id="run-1", preview=True, checked=items, drifted=items, items=drift,
                           started_at=now, finished_at=now)


def test_a_report_too_large_for_the_producer_carries_fewer_items_and_counts_the_rest() -> None:
    codec = Codec()
    big = report(200)
    assert len(codec.encode(big, "reconcile.reports")) > PRODUCER_MAX_MESSAGE_BYTES

    value = encode_within_limit(big, b"run-1", lambda r: codec.encode(r, "reconcile.reports"))

    assert len(value) < PRODUCER_MAX_MESSAGE_BYTES
    sent = codec.decode(value, ReconcileReport)
    assert 0 < len(sent.items) < 200
    assert sent.items_omitted == 200 - len(sent.items)
    assert sent.drifted == 200 and sent.items == big.items[:len(sent.items)]


def test_a_report_that_fits_is_sent_as_it_is() -> None:
    codec = Codec()
    small = report(3)

    value = encode_within_limit(small, b"run-1", lambda r: codec.encode(r, "reconcile.reports"))

    assert value == codec.encode(small, "reconcile.reports")
