"""The reset job against the in-memory KMS and a SQLite store: counts, previews, repeats, failures."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from kms_adapter.errors import KmsUnavailable
from kms_adapter.fake import InMemoryKms
from kms_adapter.port import ClientState
from kmsbridge.db import upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import engine_for
from provisioning.provider import load_provider
from reconciler.expectations import Expectations
from reconciler.job import JobConfig, ResetJob, RunInterrupted
from reconciler.lock import RunLock
from reconciler.publish import CollectingSink
from reconciler.store import DesiredStateStore
from schemas.records import (
    Device,
    EventType,
    ReconcileReport,
    ReconcileRequest,
    Service,
    ServiceState,
    SubscriptionEvent,
)

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASIC = [{"product_id": "P100"}, {"product_id": "P101"}]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def event(n: int, *, version: int = 1, services: tuple[str, ...] = ("BASIC",), **fields: Any) -> SubscriptionEvent:
    fields.setdefault("devices", [Device(distributor="MAIN", secure_client_id=f"C{n:03d}", stb_serial=f"B{n:03d}")])
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.UPDATED, occurred_at=T0, subscription_id=f"S-{n:03d}",
        account_id="A", subscription_type="RESIDENTIAL", created_at=T0 + timedelta(minutes=n), version=version,
        state="ACTIVE", services=[Service(service_code=s, state=ServiceState.ACTIVE) for s in services], **fields,
    )


class World:
    def __init__(self, engine: Engine, config: JobConfig) -> None:
        self.engine = engine
        self.store = DesiredStateStore(engine)
        self.kms = InMemoryKms()
        self.sink = CollectingSink()
        self.clock = Clock()
        self.config = config
        self.job = self.make_job()

    def make_job(self, owner: str | None = None) -> ResetJob:
        return ResetJob(self.store, self.kms, self.sink, PROVIDER,
                        expectations=Expectations(self.engine, self.config.expectation_ttl),
                        lock=RunLock(self.engine, owner=owner), config=self.config, clock=self.clock)

    def seed(self, count: int) -> None:
        """``count`` subscriptions with BASIC on one box, and a KMS that matches them."""
        self.store.upsert([event(n) for n in range(count)])
        for n in range(count):
            self.kms.seed(f"C{n:03d}", entitlements=BASIC, paired_chipset=f"B{n:03d}", pin="1234")

    def run(self, preview: bool = False, **fields: Any) -> ReconcileReport:
        request = ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:8]}", preview=preview, **fields)
        return asyncio.run(self.job.run(request))

    def apply_published(self) -> None:
        async def apply() -> None:
            for command in self.sink.commands:
                await self.kms.execute(command)
        asyncio.run(apply())
        self.sink.commands.clear()


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = engine_for(Settings(database_url=f"sqlite:///{tmp_path / 'kmsbridge.db'}"))
    upgrade(engine)
    return World(engine, JobConfig(batch_size=7, query_batch=5, query_concurrency=2, max_batches_in_flight=3,
                                   query_retry_seconds=0.01, lock_wait_seconds=0.3))


def drift_ids(report: ReconcileReport) -> set[str]:
    return {item.subscription_id for item in report.items}


def test_a_preview_reports_exactly_the_drifted_subscriptions_and_publishes_nothing(world: World) -> None:
    world.seed(30)
    world.kms.seed("C004", entitlements=BASIC[:1])
    world.kms.seed("C017", paired_chipset=None)

    report = world.run(preview=True)

    assert (report.checked, report.in_sync, report.drifted, report.commands_published, report.failed) == (
        30, 28, 2, 0, 0)
    assert drift_ids(report) == {"S-004", "S-017"}
    assert world.sink.commands == []
    assert not any(c.method == "execute" for c in world.kms.calls)


def test_a_reset_repairs_the_drift_and_a_second_run_finds_nothing(world: World) -> None:
    world.seed(30)
    world.kms.seed("C004", entitlements=BASIC[:1])
    world.kms.seed("C017", paired_chipset=None)

    first = world.run()
    published = [(c.operation.value, c.secure_client_id) for c in world.sink.commands]
    world.apply_published()
    second = world.run()

    assert (first.drifted, first.commands_published) == (2, 3)
    assert published == [("SYNC_ENTITLEMENTS", "C004"), ("PAIR", "C017"), ("SYNC_ENTITLEMENTS", "C017")]
    assert all(c.command is None or c.command.idempotency_key.startswith(f"run:{first.run_id}:")
               for c in world.kms.calls)
    assert (second.checked, second.drifted, second.commands_published) == (30, 0, 0)
    assert world.sink.commands == []


def test_a_run_before_the_first_runs_repairs_are_applied_reports_the_drift_but_does_not_publish_it_again(
        world: World) -> None:
    world.seed(10)
    world.kms.seed("C003", entitlements=[])

    first = world.run()
    first_commands = list(world.sink.commands)
    second = world.run()

    assert first.commands_published == 1
    assert (second.drifted, second.commands_published) == (1, 0)
    assert world.sink.commands == first_commands

    world.clock.now += world.config.expectation_ttl  # the repair never arrived: try again
    third = world.run()
    assert (third.drifted, third.commands_published) == (1, 1)


def test_a_repair_in_flight_does_not_hide_a_new_change_of_the_same_subscription(world: World) -> None:
    world.seed(10)
    world.kms.seed("C003", entitlements=[])
    world.run()

    world.store.upsert([event(3, version=2, services=("BASIC", "SPORTS"))])
    again = world.run()

    assert again.commands_published == 1
    assert [p.product_id for p in world.sink.commands[-1].products] == ["P100", "P101", "P200"]


def test_filters_select_the_subscriptions_checked(world: World) -> None:
    world.seed(20)

    by_period = world.run(preview=True, created_from=T0 + timedelta(minutes=5), created_to=T0 + timedelta(minutes=9))
    by_id = world.run(preview=True, subscription_ids=["S-002", "S-019"])
    by_type = world.run(preview=True, subscription_types=["HOTEL"])

    assert (by_period.checked, by_id.checked, by_type.checked) == (4, 2, 0)
    queried = {card for c in world.kms.calls if c.method == "query_clients" for card in c.secure_client_ids}
    assert queried == {"C005", "C006", "C007", "C008", "C002", "C019"}


def test_subscriptions_named_explicitly_that_the_store_does_not_hold_are_reported_unknown(world: World) -> None:
    world.seed(3)

    report = world.run(preview=False, subscription_ids=["S-404", "S-001", "S-405"])

    assert report.checked == 1
    assert report.unknown_subscriptions == ["S-404", "S-405"]
    assert world.run(preview=True, subscription_ids=["S-001"]).unknown_subscriptions == []


class UnreachableFor(InMemoryKms):
    """The fake KMS, except that a batch query naming ``card`` always times out."""

    def __init__(self, card: str) -> None:
        super().__init__()
        self.card = card
        self.failed_queries = 0

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        if self.card in secure_client_ids:
            self.failed_queries += 1
            raise KmsUnavailable("timeout")
        return await super().query_clients(secure_client_ids)


def test_a_kms_that_stays_unavailable_fails_the_batch_and_the_run_goes_on(world: World) -> None:
    world.kms = UnreachableFor("C003")  # in the first batch of seven
    world.job = world.make_job()
    world.seed(14)

    before = REGISTRY.get_sample_value("kmsbridge_reconcile_last_success_timestamp_seconds")
    report = world.run()

    assert (report.checked, report.failed, report.in_sync) == (14, 7, 7)
    assert world.kms.failed_queries == world.config.query_attempts
    assert report.error is None
    assert REGISTRY.get_sample_value("kmsbridge_reconcile_last_success_timestamp_seconds") == before


def test_a_transient_kms_error_is_retried_and_a_successful_reset_marks_the_last_success(world: World) -> None:
    world.seed(5)
    world.kms.fail_next(2, KmsUnavailable("http_503"))

    report = world.run()

    assert (report.checked, report.in_sync, report.failed) == (5, 5, 0)
    last = REGISTRY.get_sample_value("kmsbridge_reconcile_last_success_timestamp_seconds")
    assert last == pytest.approx(report.finished_at.timestamp())


def test_drift_items_are_capped_and_the_rest_counted(world: World) -> None:
    world.config = JobConfig(batch_size=7, query_batch=5, item_cap=4)
    world.job = world.make_job()
    world.seed(10)
    for n in range(10):
        world.kms.seed(f"C{n:03d}", entitlements=[])

    before = REGISTRY.get_sample_value("kmsbridge_reconcile_drifted_total", {"run_type": "preview"}) or 0.0
    report = world.run(preview=True)

    assert (report.drifted, len(report.items), report.items_omitted) == (10, 4, 6)
    assert REGISTRY.get_sample_value("kmsbridge_reconcile_drifted_total", {"run_type": "preview"}) == before + 10


def test_a_subscription_that_fails_validation_is_cleared_and_reported_with_its_code(world: World) -> None:
    world.seed(3)  # C001 holds BASIC; S-001 now lists it as a TWIN1 box without a MAIN
    world.store.upsert([event(1, version=2, devices=[Device(distributor="TWIN1", secure_client_id="C001")])])

    report = world.run()
    published = [(c.operation.value, c.secure_client_id) for c in world.sink.commands]
    world.apply_published()
    second = world.run()

    assert (report.checked, report.in_sync, report.failed, report.drifted) == (3, 2, 0, 1)
    assert (report.rejected, report.rejections) == (1, {"S-001": "REQUIRED_DISTRIBUTOR_MISSING"})
    assert report.succeeded
    assert published == [("CLEAR_ENTITLEMENTS", "C001")]
    assert (second.in_sync, second.drifted, second.rejected, second.commands_published) == (3, 0, 1, 0)


def test_a_reset_run_waits_for_the_lock_and_fails_when_another_run_keeps_it(world: World) -> None:
    world.seed(3)
    RunLock(world.engine, owner="elsewhere").try_acquire("run-other")

    blocked = world.run()
    preview = world.run(preview=True)

    assert blocked.error is not None and "run-other" in blocked.error
    assert blocked.checked == 0
    assert preview.error is None and preview.checked == 3  # previews take no lock


class StopsAfter(InMemoryKms):
    """The fake KMS; asks the run to stop (as SIGTERM does) once ``calls`` batch queries were answered."""

    def __init__(self, calls: int, stop: threading.Event) -> None:
        super().__init__()
        self.remaining = calls
        self.stop = stop

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        self.remaining -= 1
        if self.remaining == 0:
            self.stop.set()
        return await super().query_clients(secure_client_ids)


def test_a_stop_request_ends_the_run_between_batches_without_a_report(world: World) -> None:
    stop = threading.Event()
    world.config = JobConfig(batch_size=5, query_batch=5, query_concurrency=1, max_batches_in_flight=1)
    world.kms = StopsAfter(2, stop)
    world.job = world.make_job()
    world.store.upsert([event(n) for n in range(20)])  # an empty KMS: every card drifts

    with pytest.raises(RunInterrupted):
        asyncio.run(world.job.run(ReconcileRequest(run_id="run-stopped"), stop))

    assert {c.secure_client_id for c in world.sink.commands} == {f"C{n:03d}" for n in range(5)}  # the first batch
    assert RunLock(world.engine).holder() is None


class BrokenStore(DesiredStateStore):
    """The store, failing the way a database driver does: its text quotes the statement and a parameter."""

    def count(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("SELECT * FROM desired_subscriptions WHERE password='hunter2' at db.internal:5432")


def test_a_run_that_fails_outside_our_own_errors_reports_the_error_class_and_quotes_no_internals(
        world: World) -> None:
    world.store = BrokenStore(world.engine)
    world.job = world.make_job()

    report = world.run()

    assert not report.succeeded
    assert report.error == "RuntimeError (details in the reconciler's log)"
