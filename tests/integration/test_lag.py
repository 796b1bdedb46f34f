"""Consumer lag against a real broker: the numbers ``kmsbridge lag`` and the lag gauges show.

Offsets are committed by a real consumer group (``Consumer.commit``), so the lag is what Kafka's group
coordinator holds, exactly as ``kafka-consumer-groups --describe`` would report it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import REGISTRY

from kafka_edge.lag import LagMonitor, LagReader, PartitionLag, compute_lag, existing_groups
from kmsbridge.cli.lag import lag_cmd

pytestmark = pytest.mark.integration

MakeTopics = Callable[..., list[str]]
DEADLINE_S = 30.0


def _group() -> str:
    return f"test-lag-{uuid.uuid4().hex[:12]}"


def _produce(config: dict[str, str], topic: str, per_partition: dict[int, int],
             *, timestamp_ms: int | None = None) -> None:
    producer = Producer({**config, "enable.idempotence": "true", "acks": "all"})
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, key=f"k{i}".encode(), value=b"v", partition=partition,
                             timestamp=timestamp_ms or 0, on_delivery=on_delivery)
    assert producer.flush(DEADLINE_S) == 0
    assert not failures, failures


def _commit(config: dict[str, str], group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit ``offsets`` for ``group`` synchronously, as a consumer of that group would."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": "false"})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def _by_partition(rows: list[PartitionLag]) -> dict[int, PartitionLag]:
    return {row.partition: row for row in rows}


def test_lag_is_end_minus_committed_per_partition_and_zero_after_committing_all(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    (topic,) = fresh_topics(partitions=3)
    produced = {0: 10, 1: 7, 2: 4}
    committed = {0: 3, 1: 7, 2: 0}
    # producer timestamps 5 s in the past: the time lag must show at least that much
    old_ms = int((time.time() - 5) * 1000)
    _produce(kafka_config, topic, produced, timestamp_ms=old_ms)
    group = _group()
    _commit(kafka_config, group, {(topic, p): k for p, k in committed.items() if k > 0})

    rows = _by_partition(compute_lag(kafka_config, group, [topic]))
    assert set(rows) == {0, 1, 2}
    for partition, n in produced.items():
        row = rows[partition]
        assert row.group == group and row.topic == topic
        assert row.high_watermark == n
        assert row.committed == committed[partition]
        assert row.lag == n - committed[partition]
        assert row.lag_seconds is not None and row.lag_seconds >= 0
    assert (rows[0].lag_seconds or 0) >= 4.0
    assert rows[1].lag_seconds == 0.0

    # default topics: those the group committed on, with every partition of them
    assert {r.partition for r in compute_lag(kafka_config, group)} == {0, 1, 2}

    _commit(kafka_config, group, {(topic, p): n for p, n in produced.items()})
    after = compute_lag(kafka_config, group, [topic])
    assert [(r.partition, r.lag, r.lag_seconds) for r in sorted(after, key=lambda r: r.partition)] == [
        (0, 0, 0.0), (1, 0, 0.0), (2, 0, 0.0)
    ]


def test_lag_after_transactional_input_is_zero_once_everything_is_consumed(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    """A transaction's commit marker takes an offset; a read_committed consumer that consumed every
    record must still show lag 0 (or the stall alert would fire forever on kms.commands)."""
    (topic,) = fresh_topics(partitions=1)
    producer = Producer({**kafka_config, "transactional.id": f"lag-test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(DEADLINE_S)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, key=b"k", value=str(i).encode(), partition=0)
    producer.commit_transaction(DEADLINE_S)

    group = _group()
    consumer = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": "false",
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.partition.eof": "true"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                break
            assert err is None, err
            seen += 1
        assert seen == 5
        consumer.commit(asynchronous=False)  # the consumer's position, as the loops commit
    finally:
        consumer.close()
    (row,) = compute_lag(kafka_config, group, [topic])
    assert row.high_watermark == 6  # five records and the commit marker
    # librdkafka's position moves past the marker, so the committed offset is the high watermark
    assert (row.committed, row.lag, row.lag_seconds) == (6, 0, 0.0)
    # a group that stored offset + 1 of the last record stops just before the marker: nothing is left
    # to process, so no lag (or an idle, caught-up executor would look stalled forever)
    marker_group = _group()
    _commit(kafka_config, marker_group, {(topic, 0): 5})
    (at_marker,) = compute_lag(kafka_config, marker_group, [topic], timeout=DEADLINE_S)
    assert (at_marker.committed, at_marker.high_watermark) == (5, 6)
    assert (at_marker.lag, at_marker.lag_seconds) == (0, 0.0)
    # one record before the marker is still one record to process
    _commit(kafka_config, marker_group, {(topic, 0): 4})
    (one_left,) = compute_lag(kafka_config, marker_group, [topic], timeout=DEADLINE_S)
    assert one_left.lag == 2 and one_left.lag_seconds is not None and one_left.lag_seconds >= 0


def test_a_reader_kept_open_measures_the_same_partitions_again_and_again(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    """LagMonitor reuses its clients every round: a partition read (and paused) in one round must be
    read again in the next, both where messages wait and where only a transaction marker is left."""
    waiting, marker = fresh_topics(partitions=1, count=2)
    _produce(kafka_config, waiting, {0: 3})
    producer = Producer({**kafka_config, "transactional.id": f"lag-test-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(DEADLINE_S)
    producer.begin_transaction()
    producer.produce(marker, key=b"k", value=b"v", partition=0)
    producer.commit_transaction(DEADLINE_S)
    group = _group()
    _commit(kafka_config, group, {(waiting, 0): 1, (marker, 0): 1})  # 2 waiting; only the marker left
    reader = LagReader(kafka_config)
    try:
        for _round in range(3):
            rows = {r.topic: r for r in reader.read(group, [waiting, marker], timeout=DEADLINE_S)}
            assert (rows[waiting].lag, rows[marker].lag) == (2, 0)
            assert rows[waiting].lag_seconds is not None and rows[marker].lag_seconds == 0.0
    finally:
        reader.close()


def test_group_without_commits_counts_from_the_low_watermark(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    (topic,) = fresh_topics(partitions=2)
    _produce(kafka_config, topic, {0: 2, 1: 3})
    group = _group()
    rows = _by_partition(compute_lag(kafka_config, group, [topic]))
    assert {p: (r.committed, r.lag) for p, r in rows.items()} == {0: (0, 2), 1: (0, 3)}
    # reading a group's offsets is read-only: it does not create the group
    assert existing_groups(kafka_config, [group]) == []
    # an unknown group with no topics named has nothing to show
    assert compute_lag(kafka_config, _group()) == []


def test_lag_monitor_sets_the_gauges_from_its_own_clients(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    (topic,) = fresh_topics(partitions=2)
    _produce(kafka_config, topic, {0: 6, 1: 2})
    group = _group()
    _commit(kafka_config, group, {(topic, 0): 1})
    process = f"proc-{uuid.uuid4().hex[:6]}"
    monitor = LagMonitor(kafka_config, process, group, [topic], interval=0.2, timeout=10).start()

    def sample(name: str, partition: int) -> float | None:
        labels = {"process": process, "group": group, "topic": topic, "partition": str(partition)}
        return REGISTRY.get_sample_value(name, labels)

    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and sample("kmsbridge_consumer_lag", 1) is None:
            time.sleep(0.05)
        assert sample("kmsbridge_consumer_lag", 0) == 5
        assert sample("kmsbridge_consumer_committed_offset", 0) == 1
        assert sample("kmsbridge_consumer_lag", 1) == 2
        assert (sample("kmsbridge_consumer_lag_seconds", 0) or -1) >= 0
        # committing everything brings the gauges to 0 within a few rounds
        _commit(kafka_config, group, {(topic, 0): 6, (topic, 1): 2})
        while time.monotonic() < deadline and (sample("kmsbridge_consumer_lag", 0), sample(
                "kmsbridge_consumer_lag", 1)) != (0, 0):
            time.sleep(0.05)
        assert sample("kmsbridge_consumer_lag", 0) == 0 and sample("kmsbridge_consumer_lag", 1) == 0
        assert sample("kmsbridge_consumer_lag_seconds", 0) == 0
    finally:
        monitor.stop()
    assert monitor.rounds >= 2
    # the monitor's reader never created a consumer group of its own
    assert existing_groups(kafka_config, [group, f"{group}-lag-reader"]) == [group]


def test_lag_cli_prints_a_table_and_json_lines(
    kafka_config: dict[str, str], fresh_topics: MakeTopics, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (topic,) = fresh_topics(partitions=2)
    _produce(kafka_config, topic, {0: 4, 1: 1})
    group = _group()
    _commit(kafka_config, group, {(topic, 0): 1, (topic, 1): 1})
    for key, value in kafka_config.items():
        monkeypatch.setenv("KMSBRIDGE_KAFKA__" + key.upper().replace(".", "_"), value)
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(tmp_path))  # no local stack defaults leak in
    runner = CliRunner()

    result = runner.invoke(lag_cmd, ["--group", group, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["group"], r["topic"], r["partition"], r["committed"], r["high_watermark"], r["lag"])
            for r in rows] == [(group, topic, 0, 1, 4, 3), (group, topic, 1, 1, 1, 0)]
    assert rows[1]["lag_seconds"] == 0.0 and rows[0]["lag_seconds"] >= 0

    table = runner.invoke(lag_cmd, ["--group", group], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG-SECONDS"]
    assert [line.split()[:6] for line in lines] == [
        [group, topic, "0", "1", "4", "3"], [group, topic, "1", "1", "1", "0"]
    ]

    missing = runner.invoke(lag_cmd, ["--group", _group()], catch_exceptions=False)
    assert missing.exit_code == 0
    assert "no committed offsets" in missing.stderr


def test_lag_cli_defaults_to_the_product_groups_that_exist(
    kafka_config: dict[str, str], fresh_topics: MakeTopics, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (topic,) = fresh_topics(partitions=1)
    _produce(kafka_config, topic, {0: 3})
    prefix = f"lagcli{uuid.uuid4().hex[:8]}"
    for key, value in kafka_config.items():
        monkeypatch.setenv("KMSBRIDGE_KAFKA__" + key.upper().replace(".", "_"), value)
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("KMSBRIDGE_GROUP_PREFIX", prefix)
    runner = CliRunner()

    none_yet = runner.invoke(lag_cmd, ["--json"], catch_exceptions=False)
    assert none_yet.exit_code == 0 and none_yet.stdout == ""
    assert "no kmsbridge consumer groups" in none_yet.stderr

    _commit(kafka_config, f"{prefix}-executor", {(topic, 0): 1})
    _commit(kafka_config, f"{prefix}-somebody-else", {(topic, 0): 2})  # not a product group: not shown
    result = runner.invoke(lag_cmd, ["--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["group"], r["topic"], r["lag"]) for r in rows] == [(f"{prefix}-executor", topic, 2)]
