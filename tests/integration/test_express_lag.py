"""The executor's lag gauges cover its express lane: the express group's lag on ``kms.commands.express``
is exported next to the regular group's, under the same metric names and labels, as the executor's
own wiring starts the monitor (real broker, offsets committed by the real groups)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from kmsbridge.settings import Settings
from kmsbridge.wiring import express_group, start_executor_lag_monitor
from tests.support.pipeline import Pipeline, wait_until

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Pipeline]:
    # no KMS is called: the simulator address is never used
    pipe = Pipeline(kafka_bootstrap, "http://127.0.0.1:9", "unused", tmp_path / "work", partitions=2)
    yield pipe
    pipe.close()


def _produce(settings: Settings, logical: str, count: int) -> None:
    producer = Producer(settings.kafka_config())
    for i in range(count):
        producer.produce(settings.topic(logical), key=f"k{i}".encode(), value=b"v", partition=0)
    assert producer.flush(DEADLINE_S) == 0


def _commit(settings: Settings, group: str, logical: str, offset: int) -> None:
    consumer = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": "false"})
    try:
        consumer.commit(offsets=[TopicPartition(settings.topic(logical), 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def _lag(group: str, topic: str, partition: int = 0, name: str = "kmsbridge_consumer_lag") -> float | None:
    labels = {"process": "executor", "group": group, "topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value(name, labels)


def test_the_executor_exports_the_lag_of_its_express_group_next_to_the_regular_one(pipeline: Pipeline) -> None:
    settings = pipeline.settings_with(metrics_port=9, lag_interval_seconds=0.2)  # the monitor binds no port
    express, regular = settings.topic("commands_express"), settings.topic("commands")
    _produce(settings, "commands_express", 5)
    _produce(settings, "commands", 3)
    _commit(settings, express_group(settings), "commands_express", 2)  # three agents' commands wait
    _commit(settings, settings.group_id("executor"), "commands", 1)

    monitor = start_executor_lag_monitor(settings)
    assert monitor is not None
    try:
        wait_until("the express group's lag", lambda: _lag(express_group(settings), express) is not None,
                   timeout=DEADLINE_S)
        wait_until("the regular group's lag", lambda: _lag(settings.group_id("executor"), regular) is not None,
                   timeout=DEADLINE_S)
        assert express_group(settings) == f"{settings.group_prefix}-executor-express"
        assert _lag(express_group(settings), express) == 3
        assert _lag(express_group(settings), express, 1) == 0  # the other, empty partition
        assert _lag(express_group(settings), express, name="kmsbridge_consumer_committed_offset") == 2
        assert (_lag(express_group(settings), express, name="kmsbridge_consumer_lag_seconds") or -1) >= 0
        assert _lag(settings.group_id("executor"), regular) == 2
        # each group is measured on its own topic only
        assert _lag(express_group(settings), regular) is None
        assert _lag(settings.group_id("executor"), express) is None

        # the express group catching up brings its gauge to 0
        _commit(settings, express_group(settings), "commands_express", 5)
        wait_until("the express lag back to 0", lambda: _lag(express_group(settings), express) == 0,
                   timeout=DEADLINE_S)
    finally:
        monitor.stop()


def test_without_the_express_lane_the_executor_measures_its_one_group(pipeline: Pipeline) -> None:
    settings = pipeline.settings_with(metrics_port=9, lag_interval_seconds=0.2, executor__express_lane=False)
    monitor = start_executor_lag_monitor(settings)
    assert monitor is not None
    try:
        assert list(monitor.groups) == [settings.group_id("executor")]
    finally:
        monitor.stop()
