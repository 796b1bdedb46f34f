"""The executor's look-ahead on the real broker and the real simulator (docs/traffic.md, Coalescing): a
catch-up whose backlog is far larger than ``max_buffered`` costs about one KMS call per box, and the
reader takes committed records only (an aborted or still open transaction never enters its index).
Counts come from the simulator's audit log and the results topic."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY

from consumers.lookahead import LookAhead, reader_config
from kafka_edge.assignment import Assignment
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import close_producer, make_consumer, make_producer, producer_config
from kmsbridge.settings import ExecutorSettings
from schemas.records import KmsCommand, Operation, Product, ResultState, Source
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import start_executor
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
BOXES, VERSIONS = 3000, 5
MAX_BUFFERED = ExecutorSettings().max_buffered  # the default, which the backlog far exceeds


def sync(card: str, version: int) -> KmsCommand:
    return KmsCommand(
        idempotency_key=f"la:{card}:v{version}", operation=Operation.SYNC_ENTITLEMENTS, secure_client_id=card,
        subscription_id=f"S-{card}", subscription_version=version, products=[Product(product_id=f"P{version}")],
        source=Source(process_name="test", event_id=f"E-{card}-{version}"),
        created_at=NOW - timedelta(minutes=60) + timedelta(seconds=version))


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    yield pipe
    pipe.close()


def entries() -> float:
    return REGISTRY.get_sample_value("kmsbridge_lookahead_entries") or 0.0


def test_a_catch_up_far_larger_than_the_buffer_costs_about_one_kms_call_per_box(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    assert BOXES * VERSIONS > 7 * MAX_BUFFERED
    boxes = [f"5{i:06d}" for i in range(BOXES)]
    # the KMS is away while every box gets five versions (every box's v1 before any box's v2)
    kms_simulator.set_faults(outage_seconds=900)
    commands = [sync(card, version) for version in range(1, VERSIONS + 1) for card in boxes]
    pipeline.produce("commands", commands)
    proc = start_executor(pipeline.settings)
    try:
        # during the outage the executor holds max_buffered commands and the look-ahead reads the rest:
        # every box has a newer version beyond what is held
        wait_until("the look-ahead has seen every box", lambda: entries() == BOXES, timeout=180)
        assert proc.handle.executor.paused
        assert not kms_simulator.audit()
        kms_simulator.clear_faults()  # the KMS is back: the catch-up
        results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= len(commands), timeout=300)
    finally:
        proc.stop(60)
    by_key = {r.idempotency_key: r for r in results}
    state = kms_simulator.state()  # once: the whole state is one answer
    audited = Counter(entry["idempotency_key"] for entry in state["audit"])
    clients = state["secure_clients"]
    calls = sum(audited[c.idempotency_key] for c in commands)
    assert calls / BOXES <= 1.05, f"{calls} KMS calls for {BOXES} boxes"
    for card in boxes:  # every box in its newest state, its newest version sent once
        assert audited[f"la:{card}:v{VERSIONS}"] == 1
        assert [e["product_id"] for e in clients[card]["entitlements"]] == [f"P{VERSIONS}"]
    superseded = [r for r in by_key.values() if r.superseded_by is not None]
    assert len(superseded) >= len(commands) - calls - sum(1 for r in by_key.values()
                                                          if r.error_code == "STALE_COMMAND")
    for result in superseded:
        assert result.state is ResultState.COMPLETED and result.attempts == 0
        assert audited[result.idempotency_key] == 0
        assert result.superseded_by is not None and result.superseded_by.startswith(f"la:{result.secure_client_id}:")
    assert entries() == 0  # the backlog is drained: the look-ahead is off and empty


def test_the_reader_never_indexes_an_aborted_or_an_open_transaction(
        pipeline: Pipeline, kafka_config: dict[str, str]) -> None:
    topic = pipeline.settings.topic("commands")
    producer = make_producer(producer_config(kafka_config, transactional_id=f"{pipeline.prefix}la-test"))
    producer.init_transactions(30)

    def transaction(cmds: list[KmsCommand], *, commit: bool = True) -> None:
        producer.begin_transaction()
        for cmd in cmds:
            producer.produce(topic, value=pipeline.codec.encode(cmd, topic), key=cmd.secure_client_id, partition=0)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)

    held = [sync("A", 1), sync("B", 1)]
    transaction(held)  # offsets 0, 1 (and the commit marker): what the executor holds
    transaction([sync("A", 2)])
    transaction([sync("A", 9)], commit=False)
    producer.abort_transaction(30)
    transaction([sync("C", 2)])
    transaction([sync("B", 8)], commit=False)  # left open while the reader reads
    la = LookAhead(make_consumer(reader_config(kafka_config, pipeline.settings.group_id("executor"))),
                   pipeline.codec, topic, max_entries=ExecutorSettings().lookahead_max_entries,
                   backlog_threshold=MAX_BUFFERED, background=False)
    assignment = Assignment(HealthState(ttl_seconds=30), "executor")
    assignment.on_assign(None, [TopicPartition(topic, 0)])  # type: ignore[arg-type]

    class ExecutorPosition:  # the executor's consumer: it has taken offsets 0 and 1
        def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition(tp.topic, tp.partition, 2) for tp in parts]

    try:
        la.tick(True, ExecutorPosition(), assignment)  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while la.newer_than(sync("C", 1), topic, 0, 0) is None:  # C's committed v2 lies past the aborted A:v9
            assert time.monotonic() < deadline, "the reader did not reach the committed C:v2"
            la.read_once(0.5)
        for _ in range(3):
            la.read_once(0.5)
        assert la.newer_than(held[0], topic, 0, 0) == "la:A:v2"  # not the aborted A:v9
        assert la.newer_than(held[1], topic, 0, 1) is None  # B:v8 is not committed
        assert len(la) == 2
    finally:
        producer.abort_transaction(30)
        close_producer(producer, 5)
        la.close()
