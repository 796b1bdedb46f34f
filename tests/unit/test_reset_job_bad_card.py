"""One bad card never fails a reset run's batch of good ones (the QUERY_CLIENTS path of reconciler/job.py).

The bad card is a row of the desired-state tables written before the record limits existed
(written with SQL, as such a row sits in a database today), or a card the KMS itself rejects.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, update

from kms_adapter.errors import KmsRejected
from kms_adapter.fake import InMemoryKms
from kms_adapter.port import ClientState
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

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASIC = [{"product_id": "P100"}, {"product_id": "P101"}]
COUNT = 12


class KmsRejectingOneCard(InMemoryKms):
    """A KMS that rejects a whole batch query naming ``card`` (as a real one may, for one bad id)."""

    def __init__(self, card: str) -> None:
        super().__init__()
        self.card = card
        self.queries = 0

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        self.queries += 1
        if self.card in secure_client_ids:
            raise KmsRejected("UNKNOWN_CLIENT", "no such card", operation="QUERY_CLIENTS")
        return await super().query_clients(secure_client_ids)


def subscription(n: int) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.UPDATED, occurred_at=T0, subscription_id=f"S-{n:03d}",
        account_id="A", subscription_type="RESIDENTIAL", created_at=T0 + timedelta(minutes=n), version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=f"C{n:03d}", stb_serial=f"B{n:03d}")])


def seeded(tmp_path: Path, kms: InMemoryKms) -> tuple[ResetJob, DesiredStateStore, CollectingSink]:
    """``COUNT`` subscriptions in the store and the KMS in sync with them but for C005 (P101 missing)."""
    engine = engine_for(Settings(database_url=f"sqlite:///{tmp_path / 'kmsbridge.db'}"))
    upgrade(engine)
    store = DesiredStateStore(engine)
    store.upsert([subscription(n) for n in range(COUNT)])
    for n in range(COUNT):
        kms.seed(f"C{n:03d}", entitlements=BASIC[:1] if n == 5 else BASIC, paired_chipset=f"B{n:03d}", pin="1234")
    sink = CollectingSink()
    # One query for every card of the run: the bad card shares its batch with all the good ones.
    config = JobConfig(batch_size=100, query_batch=100, query_retry_seconds=0.01)
    job = ResetJob(store, kms, sink, PROVIDER, expectations=Expectations(engine, config.expectation_ttl),
                   lock=RunLock(engine), config=config)
    return job, store, sink


def run(job: ResetJob) -> ReconcileReport:
    return asyncio.run(job.run(ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:8]}")))


def assert_only_the_bad_subscription_failed(report: ReconcileReport, sink: CollectingSink) -> None:
    assert report.error is None
    assert (report.checked, report.failed, report.drifted, report.in_sync) == (COUNT, 1, 1, COUNT - 2)
    assert {item.secure_client_id for item in report.items} == {"C005"}
    assert {c.secure_client_id for c in sink.commands} == {"C005"}  # the good card's drift is repaired


def test_a_stored_card_id_xml_cannot_carry_fails_its_subscription_and_the_others_are_checked(
        tmp_path: Path) -> None:
    kms = InMemoryKms()
    job, store, sink = seeded(tmp_path, kms)
    with store.engine.begin() as conn:  # a card S-003 had once, stored before ids were checked
        conn.execute(insert(cards_table).values(subscription_id="S-003", secure_client_id="C\x0b3",
                                                distributor="MAIN", stb_serial=None, current=False, version=1))

    report = run(job)

    assert_only_the_bad_subscription_failed(report, sink)
    assert not report.succeeded
    answered = [set(c.secure_client_ids or ()) for c in kms.calls
                if c.method == "query_clients" and "C\x0b3" not in (c.secure_client_ids or ())]
    assert set().union(*answered) == {f"C{n:03d}" for n in range(COUNT)}  # every good card was read


def test_a_kms_that_rejects_the_batch_for_one_card_still_has_the_other_cards_checked(tmp_path: Path) -> None:
    kms = KmsRejectingOneCard("C007")
    job, _, sink = seeded(tmp_path, kms)

    report = run(job)

    assert_only_the_bad_subscription_failed(report, sink)


def test_the_split_asks_the_kms_a_number_of_times_logarithmic_in_the_batch(tmp_path: Path) -> None:
    kms = KmsRejectingOneCard("C007")
    job, _, _ = seeded(tmp_path, kms)

    run(job)

    # 12 cards, one bad: the batch, then two halves at each of the ceil(log2 12) = 4 levels at most.
    assert 1 < kms.queries <= 1 + 2 * 4


def test_a_stored_event_that_fails_the_limits_fails_its_subscription_and_the_others_are_checked(
        tmp_path: Path) -> None:
    kms = InMemoryKms()
    job, store, sink = seeded(tmp_path, kms)
    stored = store.get("S-003")
    assert stored is not None
    bad = stored.model_dump_json().replace('"C003"', '"C\\u000b3"')  # its device, as stored before the limits
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions_table).where(subscriptions_table.c.subscription_id == "S-003")
                     .values(event_json=bad))

    report = run(job)

    assert_only_the_bad_subscription_failed(report, sink)
    assert not any("C\x0b3" in (c.secure_client_ids or ()) for c in kms.calls if c.method == "query_clients")


def test_a_kms_answer_no_record_can_hold_fails_only_the_subscription_it_is_about(tmp_path: Path) -> None:
    kms = InMemoryKms()
    job, store, sink = seeded(tmp_path, kms)
    with store.engine.begin() as conn:  # a card S-003 once had, which the KMS still pairs with a strange box
        conn.execute(insert(cards_table).values(subscription_id="S-003", secure_client_id="C-OLD",
                                                distributor="MAIN", stb_serial=None, current=False, version=1))
    kms.seed("C-OLD", entitlements=BASIC, paired_chipset="X" * 200)

    report = run(job)

    assert_only_the_bad_subscription_failed(report, sink)
