"""A reset run with bad card ids among good ones, against the real KMS simulator over SOAP.

Two rows of the desired-state database were written before the record limits (with SQL, as they sit
in a database today): a card S-0007 once had whose id holds ``\\x0b``, and S-0011's stored event
whose device id holds ``\\x0b``. lxml cannot write either into a SOAP envelope. The run checks every
other subscription, repairs the one that drifted, and counts just those two as failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine

from kms_adapter.soap_client import SoapKmsClient
from kmsbridge.db import upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import engine_for
from provisioning.provider import load_provider
from reconciler.expectations import Expectations
from reconciler.job import JobConfig, ResetJob
from reconciler.lock import RunLock
from reconciler.publish import CollectingSink
from reconciler.store import DesiredStateStore
from reconciler.tables import cards_table, subscriptions_table
from schemas.records import (
    Device,
    EventType,
    ReconcileReport,
    ReconcileRequest,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
COUNT = 20
BASIC = [{"product_id": "P100", "valid_from": None, "valid_until": None},
         {"product_id": "P101", "valid_from": None, "valid_until": None}]


def card(n: int) -> str:
    return f"C-{n:04d}"


def subscription(n: int) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.UPDATED, occurred_at=T0, subscription_id=f"S-{n:04d}",
        account_id="A", subscription_type="RESIDENTIAL", created_at=T0 + timedelta(minutes=n), version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card(n), stb_serial=f"B-{n:04d}")])


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = engine_for(Settings(database_url=f"sqlite:///{tmp_path / 'kmsbridge.db'}"))
    upgrade(engine)
    yield engine
    engine.dispose()


def seed(engine: Engine, sim: SimulatorHandle) -> None:
    """``COUNT`` subscriptions, the KMS in sync but for card 5 (P101 missing), and the two bad rows."""
    store = DesiredStateStore(engine)
    store.upsert([subscription(n) for n in range(COUNT)])
    sim.set_state({"secure_clients": {
        card(n): {"entitlements": BASIC[:1] if n == 5 else BASIC, "paired_chipset": f"B-{n:04d}", "pin": "1234"}
        for n in range(COUNT)}})
    eleven = store.get("S-0011")
    assert eleven is not None
    with engine.begin() as conn:
        conn.execute(insert(cards_table).values(subscription_id="S-0007", secure_client_id="C\x0b7",
                                                distributor="MAIN", stb_serial=None, current=False, version=1))
        conn.execute(update(subscriptions_table).where(subscriptions_table.c.subscription_id == "S-0011")
                     .values(event_json=eleven.model_dump_json().replace(card(11), "C\\u000b11")))


async def reset(engine: Engine, client: SoapKmsClient, sink: CollectingSink) -> ReconcileReport:
    config = JobConfig(batch_size=100, query_batch=100)  # every card of the run in one query
    job = ResetJob(DesiredStateStore(engine), client, sink, PROVIDER,
                   expectations=Expectations(engine, config.expectation_ttl), lock=RunLock(engine), config=config)
    return await job.run(ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:8]}", requested_by="test"))


def test_a_reset_run_with_bad_card_ids_checks_and_repairs_the_good_subscriptions(
        engine: Engine, kms_simulator: SimulatorHandle) -> None:
    seed(engine, kms_simulator)
    sink = CollectingSink()

    async def twice() -> tuple[ReconcileReport, ReconcileReport]:
        async with kms_simulator.soap_client() as client:
            first = await reset(engine, client, sink)
            for command in sink.commands:  # what the executor would do with the repair
                await client.execute(command)
            sink.commands.clear()
            return first, await reset(engine, client, sink)

    first, second = asyncio.run(twice())

    assert first.error is None and second.error is None
    assert (first.checked, first.failed, first.drifted, first.in_sync) == (COUNT, 2, 1, COUNT - 3)
    assert {item.secure_client_id for item in first.items} == {card(5)}
    repaired = kms_simulator.client_state(card(5))
    assert repaired is not None and {p["product_id"] for p in repaired["entitlements"]} == {"P100", "P101"}
    assert (second.checked, second.failed, second.drifted, second.in_sync) == (COUNT, 2, 0, COUNT - 2)
    assert not first.succeeded and not second.succeeded  # the two bad rows keep the run from succeeding
