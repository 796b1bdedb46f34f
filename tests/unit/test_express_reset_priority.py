"""Which lane a reset run's repairs take: a single reset's are EXPRESS (the express lane), every other
run's REGULAR; the reset job against the in-memory KMS and a SQLite store (docs/traffic.md)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kms_adapter.fake import InMemoryKms
from kmsbridge.db import upgrade
from kmsbridge.settings import SecretUrl, Settings
from kmsbridge.wiring import engine_for
from provisioning.provider import load_provider
from reconciler.expectations import Expectations
from reconciler.job import JobConfig, ResetJob
from reconciler.lock import RunLock
from reconciler.publish import CollectingSink, is_single, run_priority, topic_for
from reconciler.store import DesiredStateStore
from schemas.records import (
    Device,
    EventType,
    Priority,
    ReconcileReport,
    ReconcileRequest,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
COMMANDS, EXPRESS = "kms.commands", "kms.commands.express"


def _event(n: int) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.UPDATED, occurred_at=T0, subscription_id=f"S-{n}",
        account_id="A", subscription_type="RESIDENTIAL", created_at=T0 + timedelta(days=n), version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=f"C{n}", stb_serial=f"B{n}")],
    )


@pytest.fixture
def job(tmp_path: Path) -> tuple[ResetJob, CollectingSink]:
    engine = engine_for(Settings(database_url=SecretUrl(f"sqlite:///{tmp_path / 'kmsbridge.db'}")))
    upgrade(engine)
    DesiredStateStore(engine).upsert([_event(n) for n in range(1, 5)])  # an empty KMS: every one drifted
    sink = CollectingSink()
    config = JobConfig(commands_topic=COMMANDS, express_topic=EXPRESS, lock_wait_seconds=1)
    return ResetJob(DesiredStateStore(engine), InMemoryKms(), sink, PROVIDER,
                    expectations=Expectations(engine, config.expectation_ttl), lock=RunLock(engine),
                    config=config), sink


def _run(job: ResetJob, **fields: Any) -> ReconcileReport:
    return asyncio.run(job.run(ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:8]}", **fields)))


def test_a_single_resets_repairs_are_express_and_name_the_express_lane(job: tuple[ResetJob, CollectingSink]) -> None:
    reset, sink = job
    report = _run(reset, subscription_ids=["S-2"])
    assert report.commands_published == len(sink.commands) > 0
    assert {c.secure_client_id for c in sink.commands} == {"C2"}
    assert {c.priority for c in sink.commands} == {Priority.EXPRESS}
    assert {c.source.topic for c in sink.commands} == {EXPRESS}


@pytest.mark.parametrize("fields", [
    {"subscription_ids": ["S-1", "S-3"]},  # two subscriptions named
    {"created_from": T0 + timedelta(days=1), "created_to": T0 + timedelta(days=3)},  # a creation period
    {"subscription_types": ["RESIDENTIAL"]},
    {},  # everything
], ids=["two-subscriptions", "period", "type", "everything"])
def test_every_other_run_stays_regular_on_the_commands_topic(job: tuple[ResetJob, CollectingSink],
                                                             fields: dict[str, Any]) -> None:
    reset, sink = job
    report = _run(reset, **fields)
    assert report.commands_published == len(sink.commands) > 0
    assert {c.priority for c in sink.commands} == {Priority.REGULAR}
    assert {c.source.topic for c in sink.commands} == {COMMANDS}


def test_a_single_reset_in_flight_is_not_sent_again_by_a_period_run(job: tuple[ResetJob, CollectingSink]) -> None:
    # the lane is not part of what a repair establishes: the period run sees the single reset's repair
    # in flight (its expectation) and publishes only the others
    reset, sink = job
    _run(reset, subscription_ids=["S-2"])
    sink.commands.clear()
    period = _run(reset, created_from=T0, created_to=T0 + timedelta(days=3))
    assert {c.secure_client_id for c in sink.commands} == {"C1"}
    assert period.drifted == 2


def test_the_rule_of_a_single_reset_and_its_topic() -> None:
    assert is_single(ReconcileRequest(run_id="r", subscription_ids=["S-1"]))
    # one subscription named, with another filter too: still at most one subscription
    assert run_priority(ReconcileRequest(run_id="r", subscription_ids=["S-1"], subscription_types=["X"])) \
        is Priority.EXPRESS
    assert run_priority(ReconcileRequest(run_id="r", subscription_ids=["S-1", "S-2"])) is Priority.REGULAR
    assert run_priority(ReconcileRequest(run_id="r")) is Priority.REGULAR
    assert topic_for(Priority.EXPRESS, COMMANDS, EXPRESS) == EXPRESS
    assert topic_for(Priority.REGULAR, COMMANDS, EXPRESS) == COMMANDS
    assert topic_for(Priority.EXPRESS, COMMANDS, None) == COMMANDS  # the express lane off
