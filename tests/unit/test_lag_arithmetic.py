"""The pure parts of consumer lag: offset arithmetic, time lag, gauge publishing and the CLI table."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from kafka_edge.lag import LagMonitor, PartitionLag, partition_lag, seconds_behind
from kmsbridge.cli.lag import format_table


@pytest.mark.parametrize(
    ("committed", "low", "high", "expected"),
    [
        (3, 0, 10, (3, 7)),  # the usual case: end minus committed
        (10, 0, 10, (10, 0)),  # caught up
        (None, 4, 10, (4, 6)),  # never committed: counts from the low watermark
        (-1001, 0, 5, (0, 5)),  # OFFSET_INVALID sentinel means no commit
        (2, 5, 10, (2, 5)),  # retention deleted unread messages: only what is left counts
        (12, 0, 10, (12, 0)),  # log truncated below the commit: never negative
    ],
)
def test_partition_lag_is_end_minus_what_the_group_will_read_next(
    committed: int | None, low: int, high: int, expected: tuple[int, int]
) -> None:
    assert partition_lag(committed, low, high) == expected


def test_time_lag_is_zero_without_lag_and_the_age_of_the_oldest_message_otherwise() -> None:
    now = 1_000.0
    assert seconds_behind(0, None, now) == 0.0
    assert seconds_behind(0, 1_000, now) == 0.0
    assert seconds_behind(3, 990_000, now) == pytest.approx(10.0)
    assert seconds_behind(3, 1_005_000, now) == 0.0  # producer clock ahead: not negative
    assert seconds_behind(3, None, now) is None  # unknown stays unknown
    assert seconds_behind(1, None, now, partition_ended=True) == 0.0  # only a transaction marker left


def _row(topic: str, partition: int, lag: int, seconds: float | None) -> PartitionLag:
    return PartitionLag("g", topic, partition, committed=3, high_watermark=3 + lag, lag=lag, lag_seconds=seconds)


def test_monitor_publishes_gauges_and_drops_partitions_that_disappeared() -> None:
    process = f"unit-{uuid.uuid4().hex[:6]}"
    monitor = LagMonitor({"bootstrap.servers": "127.0.0.1:1"}, process, "g", ["t"], interval=60)

    def value(name: str, topic: str, partition: int) -> float | None:
        labels = {"process": process, "group": "g", "topic": topic, "partition": str(partition)}
        return REGISTRY.get_sample_value(name, labels)

    monitor.publish([_row("t", 0, 5, 12.5), _row("t", 1, 0, 0.0), _row("u", 0, 2, None)])
    assert value("kmsbridge_consumer_committed_offset", "t", 0) == 3
    assert value("kmsbridge_consumer_lag", "t", 0) == 5
    assert value("kmsbridge_consumer_lag_seconds", "t", 0) == 12.5
    assert value("kmsbridge_consumer_lag", "t", 1) == 0
    assert value("kmsbridge_consumer_lag", "u", 0) == 2
    assert value("kmsbridge_consumer_lag_seconds", "u", 0) is None  # unknown is absent, not 0

    monitor.publish([_row("t", 0, 1, 1.0)])
    assert value("kmsbridge_consumer_lag", "t", 0) == 1
    assert value("kmsbridge_consumer_lag", "t", 1) is None
    assert value("kmsbridge_consumer_lag_seconds", "t", 1) is None
    assert value("kmsbridge_consumer_lag", "u", 0) is None
    assert value("kmsbridge_consumer_committed_offset", "u", 0) is None
    assert monitor.rounds == 2


def test_monitor_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        LagMonitor({}, "p", "g", interval=0)


def test_lag_table_has_the_kafka_consumer_groups_columns_aligned() -> None:
    lines = format_table([
        PartitionLag("kmsbridge-executor", "kms.commands", 0, 10, 12, 2, 3.44),
        PartitionLag("kmsbridge-executor", "kms.commands", 11, 7, 7, 0, None),
    ])
    assert lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG-SECONDS"]
    assert lines[1].split() == ["kmsbridge-executor", "kms.commands", "0", "10", "12", "2", "3.4"]
    assert lines[2].split() == ["kmsbridge-executor", "kms.commands", "11", "7", "7", "0", "-"]
    # columns line up: every value starts where its header starts
    starts = [lines[0].index(h) for h in ("TOPIC", "PARTITION", "LAG-SECONDS")]
    assert [lines[1].index("kms.commands"), lines[2].index("11"), lines[2].rindex("-")] == starts
