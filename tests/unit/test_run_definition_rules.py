"""Run definitions: validation naming the field, due times in a time zone, catch-up at most once,
the store's Draft rule and the claim of a due time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from kmsbridge.db import upgrade
from reconciler.run_definitions import (
    DefinitionExists,
    DefinitionInUse,
    ExecutionState,
    RunDefinition,
    RunDefinitionStore,
    RunKind,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    upgrade(engine)
    return engine


def nightly(**extra: object) -> RunDefinition:
    return RunDefinition.model_validate({"name": "nightly", "kind": "reset", "schedule": "0 2 * * *",
                                         "time_zone": "Asia/Nicosia", **extra})


@pytest.mark.parametrize(("fields", "named"), [
    ({"schedule": "every night"}, "schedule"),
    ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ({"created_within_days": 0}, "created_within_days"),
    ({"kind": "mail"}, "external_systems"),
    ({"kind": "mail", "external_systems": [""]}, "external_systems"),
    ({"created_within_days": 30, "created_from": "2026-01-01T00:00:00Z"}, "created_within_days"),
])
def test_a_bad_definition_is_refused_naming_its_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError) as info:
        nightly(**fields)
    assert named in str(info.value)


def test_a_cron_schedule_is_read_in_its_time_zone() -> None:
    # 02:00 in Nicosia (UTC+2 in March) is 00:00 UTC
    assert nightly().latest_due(T0, T0 - timedelta(days=1)) == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    assert nightly().next_due(T0) == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def test_due_times_missed_while_down_are_caught_up_once_the_newest_only() -> None:
    down_since = T0 - timedelta(days=3)  # three 02:00 due times passed meanwhile
    assert nightly().latest_due(T0, down_since) == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    # once that one ran (it is the newest executed), nothing is due until the next night
    assert nightly().latest_due(T0, datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) is None


def test_a_one_off_time_is_due_once_and_a_definition_without_schedule_never() -> None:
    once = RunDefinition(name="once", kind=RunKind.RESET, once_at=T0)
    assert once.latest_due(T0 + timedelta(seconds=1), T0 - timedelta(days=1)) == T0
    assert once.latest_due(T0 + timedelta(seconds=1), T0) is None
    assert RunDefinition(name="hand", kind=RunKind.RESET).latest_due(T0, T0 - timedelta(days=9)) is None


def test_a_rolling_period_ends_at_the_moment_the_execution_acts_for() -> None:
    assert nightly(created_within_days=30).period(T0) == (T0 - timedelta(days=30), T0)


def test_a_due_time_is_claimed_by_one_replica_only(engine: Engine) -> None:
    store = RunDefinitionStore(engine)
    store.define(nightly())
    assert store.claim_due(nightly(), T0, "replica-a") is not None
    assert store.claim_due(nightly(), T0, "replica-b") is None
    assert store.claim_due(nightly(), T0 + timedelta(days=1), "replica-b") is not None
    assert sorted(e.due_at for e in store.executions("nightly") if e.due_at) == [T0, T0 + timedelta(days=1)]


def test_a_requested_execution_is_claimed_once(engine: Engine) -> None:
    store = RunDefinitionStore(engine)
    store.define(nightly())
    requested = store.request("nightly", preview=True)
    assert requested.state is ExecutionState.REQUESTED
    assert [e.execution_id for e in store.claim_requested("a")] == [requested.execution_id]
    assert store.claim_requested("b") == []


def test_a_definition_is_deletable_only_while_it_never_executed(engine: Engine) -> None:
    store = RunDefinitionStore(engine)
    store.define(nightly())
    with pytest.raises(DefinitionExists):
        store.define(nightly())
    store.define(nightly(name="draft"))
    store.delete("draft")
    store.request("nightly")
    with pytest.raises(DefinitionInUse):
        store.delete("nightly")
    assert [d.name for d in store.all()] == ["nightly"]
