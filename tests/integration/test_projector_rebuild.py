"""``kmsbridge projector rebuild`` and ``kmsbridge topics create`` on a real broker.

The main test builds a desired-state database with the real projector (its in-process runner, as
``kmsbridge run projector`` builds it) from 20,000 events, four versions of each of 5,000
subscriptions, some of them out of order, with an aborted transaction, undecodable records and
tombstones among them; then rebuilds a second database from the topic with the CLI verb and compares
the two tables row by row. The projector is stopped with a backlog when the rebuild runs, so the test
also shows that the rebuild leaves the projector's committed offsets where they were.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from sqlalchemy import select

from kmsbridge.cli.io import topics_group
from kmsbridge.cli.projector import projector_group
from kmsbridge.db import upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import engine_for
from kmsbridge.wiring_rebuild import REBUILD_GROUP_SUFFIX, end_offsets, rebuild_consumer
from kmsbridge.wiring_reconciler import build_projector
from reconciler.rebuild import Rebuild, RebuildConfig
from reconciler.store import DesiredStateStore
from reconciler.tables import cards_table, subscriptions_table
from schemas.keys import record_key
from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent, SubscriptionState
from tests.support.pg import new_database
from tests.support.pipeline import Pipeline, wait_until

SUBSCRIPTIONS = 5_000
VERSIONS = 4  # 20,000 events
CREATED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
GARBAGE = 5
TOMBSTONES = 3
ABORTED = 50


@pytest.fixture
def new_database_url(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> str:
    """Another empty database of the same kind as ``database_url`` (the rebuild's ``--into``)."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'rebuilt.db'}"
    return new_database(request.getfixturevalue("postgres_url"), prefix="rebuilt")


@pytest.fixture
def pipeline(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             database_url: str) -> Iterator[Pipeline]:
    # the projector and the rebuild talk to no KMS: the simulator address is never called
    pipe = Pipeline(kafka_bootstrap, "http://127.0.0.1:9", "unused", tmp_path / "work", partitions=3,
                    database_url=database_url)
    for key, value in pipe.env().items():
        if key.startswith("KMSBRIDGE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(tmp_path / "no-stack"))
    yield pipe
    pipe.close()


# --- events -------------------------------------------------------------------------------------------


def _event(n: int, version: int) -> SubscriptionEvent:
    """Version ``version`` of subscription ``n``: its boxes and services change from version to version
    (a TWIN box added at 2, the MAIN box swapped at 3 with the old one in removed_devices, SPORTS at 4)."""
    sub = f"S-{n:05d}"
    main_old = Device(distributor="MAIN", secure_client_id=f"{n:05d}0", stb_serial=f"STB-{n}-0")
    main_new = Device(distributor="MAIN", secure_client_id=f"{n:05d}1", stb_serial=f"STB-{n}-1")
    twin = Device(distributor="TWIN1", secure_client_id=f"{n:05d}2", stb_serial=None)
    devices, removed, services = {
        1: ([main_old], [], ["BASIC"]),
        2: ([main_old, twin], [], ["BASIC"]),
        3: ([main_new, twin], [main_old], ["BASIC"]),
        4: ([main_new, twin], [], ["BASIC", "SPORTS"]),
    }.get(version, ([main_new], [twin], ["BASIC", "SPORTS", "MOVIES"]))
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED if version == 1 else EventType.UPDATED,
        occurred_at=CREATED + timedelta(minutes=version), subscription_id=sub, account_id=f"A-{n}",
        subscription_type="BUSINESS" if n % 7 == 0 else "RESIDENTIAL", created_at=CREATED + timedelta(seconds=n),
        version=version,
        state=SubscriptionState.SUSPENDED if n % 11 == 0 and version == VERSIONS else SubscriptionState.ACTIVE,
        services=[Service(service_code=s, state=ServiceState.ACTIVE) for s in services],
        devices=devices, removed_devices=removed,
    )


def _stream() -> tuple[list[SubscriptionEvent], list[SubscriptionEvent]]:
    """(15,000 events: versions 1-3 of every subscription; 5,385: version 4 of each, then a replay of
    version 2 of every 13th). Every 10th subscription has its version 3 before its version 2, so the
    order of the topic is not the order of the versions."""
    first: list[SubscriptionEvent] = []
    for n in range(SUBSCRIPTIONS):
        order = [1, 3, 2] if n % 10 == 0 else [1, 2, 3]
        first.extend(_event(n, v) for v in order)
    last = [_event(n, VERSIONS) for n in range(SUBSCRIPTIONS)]
    replays = [_event(n, 2) for n in range(0, SUBSCRIPTIONS, 13)]
    return first, last + replays


def _produce_aborted(pipe: Pipeline) -> None:
    """Version 9 of some subscriptions in a transaction that is aborted: no read_committed reader sees it."""
    producer = Producer({"bootstrap.servers": pipe.bootstrap, "transactional.id": f"aborted-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    topic = pipe.settings.topic("subscriptions")
    for n in range(ABORTED):
        event = _event(n, 9)
        producer.produce(topic, key=record_key(event).encode(), value=pipe.codec.encode(event, topic))
    producer.flush(30)
    producer.abort_transaction(30)


# --- database contents and offsets --------------------------------------------------------------------


def _tables(settings: Settings) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of desired_subscriptions (but its updated_at, the time of the write) and desired_cards."""
    engine = engine_for(settings)
    s, c = subscriptions_table.c, cards_table.c
    try:
        with engine.connect() as conn:
            subs = conn.execute(select(s.subscription_id, s.subscription_type, s.created_at, s.version, s.state,
                                       s.event_id, s.event_json).order_by(s.subscription_id)).all()
            cards = conn.execute(select(c.subscription_id, c.secure_client_id, c.distributor, c.stb_serial,
                                        c.current, c.version).order_by(c.subscription_id, c.secure_client_id)).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in subs], [tuple(r) for r in cards]


def _committed(settings: Settings, group: str) -> dict[int, int]:
    """The committed offset of each partition of the subscriptions topic for ``group`` (-1001: none)."""
    topic = settings.topic("subscriptions")
    consumer = Consumer({"bootstrap.servers": settings.kafka_config()["bootstrap.servers"], "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
    finally:
        consumer.close()


def _project_to_the_end(pipe: Pipeline) -> None:
    """Run the projector until its group has committed the end of every partition, then stop it."""
    projector = build_projector(pipe.settings)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            projector.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="projector", daemon=True)
    thread.start()
    try:
        ends = {p: end for p, (_begin, end) in end_offsets(pipe.settings.kafka_config(),
                                                           pipe.settings.topic("subscriptions")).items()}
        wait_until("the projector committed the end of every partition",
                   lambda: errors or _committed(pipe.settings, pipe.settings.group_id("projector")) == ends,
                   timeout=90, interval=0.5)
        assert not errors, errors
    finally:
        projector.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def _invoke(group: Any, args: list[str]) -> Any:
    return CliRunner().invoke(group, args, catch_exceptions=False)


# --- tests --------------------------------------------------------------------------------------------


def test_a_rebuilt_database_equals_the_projectors_after_20000_events_with_several_versions_each(
    pipeline: Pipeline, new_database_url: str,
) -> None:
    settings = pipeline.settings
    first, last = _stream()
    _produce_aborted(pipeline)
    pipeline.produce("subscriptions", first)
    for i in range(GARBAGE):
        pipeline.produce_raw("subscriptions", b"not avro " + bytes([i]), key=f"S-bad-{i}".encode())
    for i in range(TOMBSTONES):
        pipeline.produce_raw("subscriptions", None, key=f"S-gone-{i}".encode())
    _project_to_the_end(pipeline)

    # The projector is stopped with a backlog: the rest of the stream is written after it stopped.
    pipeline.produce("subscriptions", last)
    projector_group_id = settings.group_id("projector")
    committed_before = _committed(settings, projector_group_id)

    rebuilt_url = new_database_url
    result = _invoke(projector_group, ["rebuild", "--into", rebuilt_url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    total = len(first) + len(last)
    assert report["records"] == total + GARBAGE + TOMBSTONES  # the aborted transaction is not read
    assert (report["events"], report["tombstones"], report["bad"]) == (total, TOMBSTONES, GARBAGE)
    assert {bad["reason"] for bad in report["bad_records"]} == {"bad_magic"}
    assert len(report["bad_records"]) == GARBAGE and all(bad["offset"] >= 0 for bad in report["bad_records"])
    assert report["before"] == {"subscriptions": 0, "cards": 0}
    assert report["after"]["subscriptions"] == SUBSCRIPTIONS

    # No group's offsets moved: the projector's are where it stopped, the rebuild committed none.
    assert _committed(settings, projector_group_id) == committed_before
    assert set(_committed(settings, projector_group_id + REBUILD_GROUP_SUFFIX).values()) == {-1001}

    _project_to_the_end(pipeline)  # the projector catches up on its backlog
    original = _tables(settings)
    rebuilt = _tables(pipeline.settings_with(database_url=rebuilt_url))
    subscriptions, cards = original
    assert len(subscriptions) == SUBSCRIPTIONS
    assert {row[3] for row in subscriptions} == {VERSIONS}  # the aborted version 9 is nowhere
    assert len(cards) == 3 * SUBSCRIPTIONS  # the swapped MAIN box is remembered, not current
    assert sum(1 for row in cards if not row[4]) == SUBSCRIPTIONS
    assert rebuilt[0] == subscriptions
    assert rebuilt[1] == cards


def test_a_non_empty_database_is_refused_unless_forced(pipeline: Pipeline, new_database_url: str) -> None:
    pipeline.produce("subscriptions", [_event(n, v) for n in range(20) for v in (1, 2)])
    target = new_database_url
    first = _invoke(projector_group, ["rebuild", "--into", target])
    assert first.exit_code == 0, first.output
    assert "20 subscriptions, 40 cards (before: 0 subscriptions, 0 cards)" in first.output

    again = _invoke(projector_group, ["rebuild", "--into", target])
    assert again.exit_code == 1
    assert "not empty (20 subscriptions, 40 cards)" in again.output

    forced = _invoke(projector_group, ["rebuild", "--into", target, "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.output.strip().splitlines()[-1])
    assert report["before"] == report["after"] == {"subscriptions": 20, "cards": 40}
    assert (report["events"], report["applied"]) == (40, 0)  # nothing newer than what it held


def test_the_rebuild_stops_at_the_end_offsets_it_was_given_and_leaves_later_records(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    topic = settings.topic("subscriptions")
    pipeline.produce("subscriptions", [_event(n, v) for n in range(30) for v in (1, 2)])
    ends = end_offsets(settings.kafka_config(), topic)  # the end "at start"
    pipeline.produce("subscriptions", [_event(n, 3) for n in range(30)])  # written after the start
    engine = engine_for(settings)
    upgrade(engine)
    consumer = rebuild_consumer(settings)
    try:
        report = Rebuild(consumer, pipeline.codec, DesiredStateStore(engine), ends, RebuildConfig(topic=topic)).run()
    finally:
        consumer.close()
    try:
        assert (report.records, report.events, report.after.subscriptions) == (60, 60, 30)
        subscriptions, _cards = _tables(settings)
        assert {row[3] for row in subscriptions} == {2}
    finally:
        engine.dispose()


def test_topics_create_compacts_subscriptions_and_sets_the_plan_on_existing_topics(pipeline: Pipeline) -> None:
    settings = pipeline.settings  # the harness created every topic with the broker's defaults
    result = _invoke(topics_group, ["create"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"0 created, {len(settings.all_topics())} already present, " \
                                                     f"{len(settings.all_topics())} updated"
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    names = {"subscriptions": settings.topic("subscriptions"), "commands": settings.topic("commands"),
             "dlq": settings.dlq(settings.topic("commands"))}

    def described() -> dict[str, dict[str, str]]:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in names.values()])
        return {resource.name: {k: e.value for k, e in future.result(30).items()}
                for resource, future in futures.items()}

    # a config change reaches the broker that answers through the metadata log, a moment after it is acked
    def compacted() -> dict[str, dict[str, str]] | None:
        found = described()
        return found if found[names["subscriptions"]]["cleanup.policy"] == "compact" else None

    found = wait_until("the new topic configs are described", compacted)
    assert found is not None
    subscriptions = found[names["subscriptions"]]
    assert subscriptions["cleanup.policy"] == "compact"
    assert subscriptions["min.compaction.lag.ms"] == str(7 * 24 * 3_600_000)
    assert found[names["commands"]]["cleanup.policy"] == "delete"
    assert found[names["commands"]]["retention.ms"] == str(4 * 24 * 3_600_000)
    assert found[names["dlq"]]["retention.ms"] == str(30 * 24 * 3_600_000)
    assert {config["min.insync.replicas"] for config in found.values()} == {"1"}

    again = _invoke(topics_group, ["create"])
    assert again.output.strip().splitlines()[-1].endswith(" 0 updated")
