"""The desired-state store, its migrations, expectations and the run lock, on a real SQLite file."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from consumers.ledger import LEDGER_METADATA, Ledger
from kmsbridge.db import current_revision, head_revision, upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import engine_for
from reconciler.expectations import Expectations
from reconciler.lock import LockTimeout, RunLock
from reconciler.request_log_tables import LOG_METADATA
from reconciler.run_tables import RUNS_METADATA
from reconciler.store import DESIRED_METADATA, DesiredStateStore, Selection
from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MAIN = Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2")


def event(sub: str = "S-1", version: int = 1, *, created: datetime = T0, kind: str = "RESIDENTIAL",
          devices: list[Device] | None = None, removed: list[Device] | None = None, **fields: Any,
          ) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.UPDATED, occurred_at=T0 + timedelta(days=version),
        subscription_id=sub, account_id="A-1", subscription_type=kind, created_at=created, version=version,
        state="ACTIVE", services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[MAIN] if devices is None else devices, removed_devices=removed or [], **fields,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = engine_for(Settings(database_url=f"sqlite:///{tmp_path / 'kmsbridge.db'}"))
    upgrade(engine)
    return engine


@pytest.fixture
def store(engine: Engine) -> DesiredStateStore:
    return DesiredStateStore(engine)


def ids(store: DesiredStateStore, selection: Selection, batch: int = 500) -> list[str]:
    return [s.event.subscription_id for b in store.stream_selection(selection, batch) for s in b]


# --- migrations ----------------------------------------------------------------------------------------


def test_migrations_create_exactly_the_tables_the_code_uses_and_rerunning_changes_nothing(engine: Engine) -> None:
    upgrade(engine)  # a second process starting later

    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, [LEDGER_METADATA, DESIRED_METADATA, LOG_METADATA, RUNS_METADATA]) == []


def test_a_database_made_before_migrations_is_adopted_and_keeps_its_ledger(tmp_path: Path) -> None:
    engine = engine_for(Settings(database_url=f"sqlite:///{tmp_path / 'old.db'}"))
    LEDGER_METADATA.create_all(engine)  # what the executor did before migrations existed
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO kms_client_versions VALUES ('100', 'S-1', 4)")

    upgrade(engine)

    assert current_revision(engine) == head_revision()
    assert "desired_subscriptions" in inspect(engine).get_table_names()
    assert Ledger(engine).version("100") == ("S-1", 4)


# --- projection: newest version wins ------------------------------------------------------------------


def test_a_newer_version_replaces_the_stored_state_and_an_older_or_equal_one_does_not(
        store: DesiredStateStore) -> None:
    v2 = event(version=2, devices=[MAIN])
    assert store.upsert([v2]).applied == 1

    older = store.upsert([event(version=1, devices=[MAIN, TWIN1])])
    same = store.upsert([event(version=2, devices=[MAIN, TWIN1])])
    assert (older.applied, same.applied) == (0, 0)
    assert store.get("S-1") == v2

    v3 = event(version=3, devices=[MAIN, TWIN1])
    assert store.upsert([v3]).applied == 1
    assert store.get("S-1") == v3


def test_a_batch_of_replayed_and_reordered_events_leaves_each_subscription_at_its_newest_version(
        store: DesiredStateStore) -> None:
    events = {v: event("S-1", v) for v in range(1, 6)} | {10 + v: event("S-2", v) for v in range(1, 4)}
    batch = [events[3], events[5], events[1], events[13], events[11], events[5], events[4], events[12]]

    result = store.upsert(batch)
    store.upsert([events[2], events[11]])  # a late replay

    assert result.applied == 2
    assert result.stale == len(batch) - 2
    assert store.get("S-1") == events[5]
    assert store.get("S-2") == events[13]


def test_devices_of_gives_the_current_devices_and_none_for_an_unknown_subscription(
        store: DesiredStateStore) -> None:
    store.upsert([event(devices=[MAIN, TWIN1])])

    assert store.devices_of("S-1") == [MAIN, TWIN1]
    assert store.devices_of("S-404") is None


def test_cards_crm_no_longer_lists_are_remembered_as_retired_with_or_without_removed_devices(
        store: DesiredStateStore) -> None:
    old_twin = Device(distributor="TWIN1", secure_client_id="201", stb_serial="B-9")
    store.upsert([event(version=1, devices=[MAIN, TWIN1])])
    store.upsert([event(version=2, devices=[MAIN, old_twin], removed=[TWIN1])])
    store.upsert([event(version=3, devices=[MAIN])])  # 201 silently dropped: no removed_devices entry

    assert store.cards_of("S-1") == {"100": True, "200": False, "201": False}
    [[stored]] = list(store.stream_selection(Selection()))
    assert [(c.secure_client_id, c.distributor, c.stb_serial) for c in stored.retired] == [
        ("200", "TWIN1", "B-2"), ("201", "TWIN1", "B-9")]


def test_cards_named_only_by_events_older_than_the_stored_state_are_remembered_as_retired(
        store: DesiredStateStore) -> None:
    twin_v2 = Device(distributor="TWIN1", secure_client_id="202")
    store.upsert([event(version=3, devices=[MAIN]), event(version=2, devices=[MAIN, twin_v2])])  # one batch
    store.upsert([event(version=1, devices=[MAIN, TWIN1])])  # arrives late

    assert store.cards_of("S-1") == {"100": True, "200": False, "202": False}
    stored = store.get("S-1")
    assert stored is not None and stored.version == 3


def test_a_card_moved_to_another_subscription_is_not_retired_by_its_old_one(store: DesiredStateStore) -> None:
    store.upsert([event("S-1", 1, devices=[MAIN, TWIN1])])
    store.upsert([event("S-1", 2, devices=[MAIN], removed=[TWIN1])])
    store.upsert([event("S-2", 1, devices=[Device(distributor="MAIN", secure_client_id="200")])])

    retired = {s.event.subscription_id: s.retired for b in store.stream_selection(Selection()) for s in b}
    assert retired == {"S-1": (), "S-2": ()}


def test_a_card_put_back_on_its_subscription_is_current_again(store: DesiredStateStore) -> None:
    store.upsert([event(version=1, devices=[MAIN, TWIN1])])
    store.upsert([event(version=2, devices=[MAIN], removed=[TWIN1])])
    store.upsert([event(version=3, devices=[MAIN, TWIN1])])

    assert store.cards_of("S-1") == {"100": True, "200": True}


# --- selection and streaming -----------------------------------------------------------------------------


@pytest.fixture
def population(store: DesiredStateStore) -> DesiredStateStore:
    day = timedelta(days=1)
    store.upsert([
        event("S-a", created=T0, kind="RESIDENTIAL"),
        event("S-b", created=T0 + day, kind="BUSINESS"),
        event("S-c", created=T0 + day, kind="RESIDENTIAL"),
        event("S-d", created=T0 + 2 * day, kind="RESIDENTIAL"),
        event("S-e", created=T0 + 3 * day, kind="HOTEL"),
    ])
    return store


def test_the_creation_period_includes_its_start_and_excludes_its_end(population: DesiredStateStore) -> None:
    day = timedelta(days=1)

    assert ids(population, Selection(created_from=T0 + day, created_to=T0 + 3 * day)) == ["S-b", "S-c", "S-d"]
    assert ids(population, Selection(created_to=T0 + day)) == ["S-a"]
    assert ids(population, Selection(created_from=T0 + 3 * day)) == ["S-e"]


def test_types_ids_and_period_filters_must_all_hold(population: DesiredStateStore) -> None:
    assert ids(population, Selection(types=("RESIDENTIAL", "HOTEL"))) == ["S-a", "S-c", "S-d", "S-e"]
    assert ids(population, Selection(ids=("S-e", "S-b", "S-x"))) == ["S-b", "S-e"]
    assert ids(population, Selection(created_from=T0 + timedelta(days=1), types=("RESIDENTIAL",))) == ["S-c", "S-d"]
    assert population.count(Selection(types=("RESIDENTIAL",))) == 3


def test_streaming_pages_through_every_subscription_once_in_creation_order_even_across_equal_times(
        store: DesiredStateStore) -> None:
    created = [T0 + timedelta(hours=h // 4) for h in range(23)]  # runs of four equal creation times
    store.upsert([event(f"S-{i:02d}", created=c) for i, c in enumerate(reversed(created))])

    batches = [[s.event.subscription_id for s in b] for b in store.stream_selection(Selection(), batch=3)]

    assert [len(b) for b in batches] == [3] * 7 + [2]
    flat = [sid for b in batches for sid in b]
    assert sorted(flat) == sorted(f"S-{i:02d}" for i in range(23))
    stored = {s.event.subscription_id: s.event.created_at for b in store.stream_selection(Selection()) for s in b}
    assert flat == sorted(flat, key=lambda sid: (stored[sid], sid))


def test_times_come_back_as_the_same_utc_instants(store: DesiredStateStore) -> None:
    from zoneinfo import ZoneInfo

    paris = datetime(2026, 3, 1, 12, 30, tzinfo=ZoneInfo("Europe/Paris"))
    store.upsert([event(created=paris)])

    assert ids(store, Selection(created_from=paris, created_to=paris + timedelta(seconds=1))) == ["S-1"]
    assert ids(store, Selection(created_to=paris)) == []


# --- expectations ---------------------------------------------------------------------------------------


def test_an_expectation_is_pending_until_it_expires_or_is_forgotten(engine: Engine) -> None:
    expectations = Expectations(engine, ttl=timedelta(minutes=10))
    expectations.expect([("S-1", "run-1", "f1"), ("S-2", "run-1", "f2")], now=T0)

    assert expectations.pending(["S-1", "S-2", "S-3"], now=T0 + timedelta(minutes=9)) == {"S-1": "f1", "S-2": "f2"}
    assert expectations.pending(["S-1"], now=T0 + timedelta(minutes=10)) == {}

    expectations.forget(["S-1"])
    expectations.expect([("S-2", "run-2", "f3")], now=T0 + timedelta(minutes=5))
    assert expectations.pending(["S-1", "S-2"], now=T0 + timedelta(minutes=12)) == {"S-2": "f3"}
    assert expectations.purge_expired(T0 + timedelta(hours=1)) == 1


# --- the run lock ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_the_run_lock_is_held_by_one_owner_until_released_or_its_lease_expires(engine: Engine) -> None:
    clock = Clock()
    first = RunLock(engine, owner="a", ttl=timedelta(seconds=60), clock=clock)
    second = RunLock(engine, owner="b", ttl=timedelta(seconds=60), clock=clock)

    assert first.try_acquire("run-1")
    assert not second.try_acquire("run-2")
    assert first.try_acquire("run-1")  # re-entrant for its owner
    first.release()
    assert second.try_acquire("run-2")

    clock.now += timedelta(seconds=61)  # b stalled past its lease
    assert first.try_acquire("run-3")
    assert not second.renew()
    assert first.holder() == ("a", "run-3", clock.now + timedelta(seconds=60))


def test_waiting_for_a_held_lock_times_out_naming_the_holder(engine: Engine) -> None:
    RunLock(engine, owner="host-1:42").try_acquire("run-1")

    with pytest.raises(LockTimeout, match="run run-1 \\(host-1:42\\)"), \
            RunLock(engine, owner="b").hold("run-2", wait_seconds=0.2):
        pass


def test_a_held_lock_is_released_when_its_block_ends(engine: Engine) -> None:
    lock = RunLock(engine, owner="a")
    with lock.hold("run-1", wait_seconds=1) as lease:
        assert lock.holder() is not None
        assert not lease.lost

    assert lock.holder() is None
