"""Reset runs through the real broker, the real simulator and a real database (SQLite and PostgreSQL).

It shows that drift created on purpose through the simulator's admin state (a missing
product, an extra product, an unpaired box, a device CRM no longer has) is found exactly by a
preview, repaired by a reset run, and a second run publishes nothing; filters select exactly the
right subscriptions; replayed and reordered events leave the projector at the newest version;
concurrent runs do not interfere. Every process is built as ``kmsbridge run`` builds it and runs in
a thread; requests and reports travel through Kafka.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from kmsbridge.cli.reconcile import reconcile_cmd
from kmsbridge.db import upgrade
from kmsbridge.wiring import build_codec, engine_for
from kmsbridge.wiring_reconciler import build_projector, build_reconciler, build_reset_job
from reconciler.job import JobConfig
from reconciler.publish import KafkaCommandSink
from reconciler.store import DesiredStateStore
from schemas.records import (
    Device,
    DriftItem,
    EventType,
    KmsCommand,
    ReconcileReport,
    ReconcileRequest,
    Service,
    ServiceState,
    SubscriptionEvent,
)
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_in_thread, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

CREATED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


# --- processes ----------------------------------------------------------------------------------------


def start_projector(pipeline: Pipeline) -> RunningProcess:
    projector = build_projector(pipeline.settings)
    return start_in_thread("projector", projector.run, projector.request_stop, projector)


def start_reconciler(pipeline: Pipeline) -> RunningProcess:
    app = build_reconciler(pipeline.settings)
    return start_in_thread("reconciler", app.run, app.runner.request_stop, app)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
             database_url: str) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work",
                    database_url=database_url)
    engine = engine_for(pipe.settings)
    upgrade(engine)  # before any process starts: the executor still creates its tables on its own
    engine.dispose()
    yield pipe
    pipe.close()


@pytest.fixture
def store(pipeline: Pipeline) -> Iterator[DesiredStateStore]:
    engine = engine_for(pipeline.settings)
    yield DesiredStateStore(engine)
    engine.dispose()


@pytest.fixture
def processes(pipeline: Pipeline) -> Iterator[dict[str, RunningProcess]]:
    started: dict[str, RunningProcess] = {}

    def stop_all() -> None:
        for proc in reversed(list(started.values())):
            proc.stop()

    try:
        started["projector"] = start_projector(pipeline)
        started["reconciler"] = start_reconciler(pipeline)
        started["translator"] = start_translator(pipeline.settings)
        started["executor"] = start_executor(pipeline.settings)
    except BaseException:
        stop_all()
        raise
    yield started
    stop_all()


# --- helpers ------------------------------------------------------------------------------------------


def event(sub: str, version: int, devices: list[Device], services: tuple[str, ...] = ("BASIC",), *,
          event_type: EventType = EventType.UPDATED, removed: list[Device] | None = None,
          created: datetime = CREATED, kind: str = "RESIDENTIAL") -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=event_type, occurred_at=_now_ms(), subscription_id=sub,
        account_id=f"A-{sub}", subscription_type=kind, created_at=created, version=version, state="ACTIVE",
        services=[Service(service_code=s, state=ServiceState.ACTIVE) for s in services], devices=devices,
        removed_devices=removed or [],
    )


def _now_ms() -> datetime:
    """Now, to the millisecond: what survives Avro's timestamp-millis, so records compare equal after Kafka."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def run(pipeline: Pipeline, *, preview: bool = False, **fields: Any) -> ReconcileReport:
    """Publish a request on ``reconcile.requests`` and read its report from ``reconcile.reports``."""
    request = ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:10]}", preview=preview, requested_by="test",
                               **fields)
    pipeline.produce("reconcile_requests", [request])
    reports = pipeline.read("reconcile_reports",
                            lambda got: any(r.run_id == request.run_id for r in got), timeout=60)
    report: ReconcileReport = next(r for r in reports if r.run_id == request.run_id)
    return report


def commands_of(pipeline: Pipeline, run_id: str, expected: int) -> list[KmsCommand]:
    """The commands of ``run_id`` on ``kms.commands`` once ``expected`` of them are there."""
    def mine(records: list[Any]) -> list[KmsCommand]:
        return [r for r in records if isinstance(r, KmsCommand) and r.source.run_id == run_id]

    return mine(pipeline.read("commands", lambda got: len(mine(got)) >= expected, timeout=30))


def products(sim: SimulatorHandle, card: str) -> set[str]:
    return {e["product_id"] for e in (sim.client_state(card) or {}).get("entitlements", [])}


def wait_projected(store: DesiredStateStore, versions: dict[str, int]) -> None:
    def done() -> bool:
        for sid, version in versions.items():
            stored = store.get(sid)
            if stored is None or stored.version != version:
                return False
        return True

    wait_until(f"the projector stored {versions}", done, timeout=30)


def item_key(item: DriftItem) -> tuple[Any, ...]:
    return (item.subscription_id, item.secure_client_id, tuple(item.missing_products), tuple(item.extra_products),
            tuple(item.wrong_dates), item.pairing, item.pin, item.unknown_to_crm)


# --- drift on purpose ---------------------------------------------------------------------------------

A_MAIN = Device(distributor="MAIN", secure_client_id="8000001", stb_serial="STB-A1")
A_TWIN = Device(distributor="TWIN1", secure_client_id="8000002", stb_serial="STB-A2")
B_MAIN = Device(distributor="MAIN", secure_client_id="8000011", stb_serial="STB-B1")
C_MAIN = Device(distributor="MAIN", secure_client_id="8000021", stb_serial="STB-C1")
C_TWIN = Device(distributor="TWIN1", secure_client_id="8000022", stb_serial="STB-C2")
D_MAIN = Device(distributor="MAIN", secure_client_id="8000031", stb_serial="STB-D1")
BASIC = [{"product_id": "P100"}, {"product_id": "P101"}]


def test_drift_made_on_purpose_is_previewed_exactly_repaired_and_a_second_run_publishes_nothing(
        pipeline: Pipeline, processes: dict[str, RunningProcess], store: DesiredStateStore,
        kms_simulator: SimulatorHandle) -> None:
    sim = kms_simulator
    pipeline.produce("subscriptions", [
        event("S-A", 1, [A_MAIN, A_TWIN], ("BASIC", "SPORTS"), event_type=EventType.ACTIVATED),
        event("S-B", 1, [B_MAIN], event_type=EventType.ACTIVATED),
        event("S-C", 1, [C_MAIN, C_TWIN], event_type=EventType.ACTIVATED),
        event("S-D", 1, [D_MAIN], event_type=EventType.ACTIVATED),
    ])
    wait_until("S-C's TWIN1 installed", lambda: products(sim, C_TWIN.secure_client_id) == {"P100", "P101"})
    pipeline.produce("subscriptions", [
        event("S-C", 2, [C_MAIN], event_type=EventType.DEVICES_CHANGED, removed=[C_TWIN])])
    wait_until("real-time provisioning done", lambda: any(
        a["operation"] == "UNPAIR" and a["secure_client_id"] == C_TWIN.secure_client_id for a in sim.audit())
        and products(sim, A_MAIN.secure_client_id) == {"P100", "P101", "P200"}
        and products(sim, D_MAIN.secure_client_id) == {"P100", "P101"}
        and products(sim, B_MAIN.secure_client_id) == {"P100", "P101"}
        and (sim.client_state(A_TWIN.secure_client_id) or {}).get("paired_chipset") == "STB-A2")
    wait_projected(store, {"S-A": 1, "S-B": 1, "S-C": 2, "S-D": 1})

    sim.set_state({"secure_clients": {
        A_MAIN.secure_client_id: {"entitlements": BASIC},  # SPORTS lost: a missing product
        A_TWIN.secure_client_id: {"paired_chipset": None},  # an unpaired box
        B_MAIN.secure_client_id: {"entitlements": [*BASIC, {"product_id": "P300"}]},  # an extra product
        C_TWIN.secure_client_id: {"entitlements": BASIC, "paired_chipset": "STB-C2"},  # a device CRM no longer has
    }})
    audit_before = len(sim.audit())

    env = {**pipeline.env(), "KMSBRIDGE_STACK_DIR": str(pipeline.workdir / "no-stack")}
    cli = CliRunner().invoke(reconcile_cmd, ["--preview", "--json", "--wait", "--timeout", "60"], env=env)
    assert cli.exit_code == 0, cli.output
    preview = ReconcileReport.model_validate(json.loads(cli.output))

    expected_items = {
        ("S-A", "8000001", ("P200",), (), (), None, None, False),
        ("S-A", "8000002", (), (), (), "expected STB-A2, found none", None, False),
        ("S-B", "8000011", (), ("P300",), (), None, None, False),
        ("S-C", "8000022", (), ("P100", "P101"), (), "expected none, found STB-C2", None, True),
    }
    assert {item_key(i) for i in preview.items} == expected_items
    assert (preview.preview, preview.checked, preview.in_sync, preview.drifted, preview.commands_published,
            preview.failed, preview.error) == (True, 4, 1, 3, 0, 0, None)

    reset = run(pipeline)
    assert {item_key(i) for i in reset.items} == expected_items
    assert (reset.drifted, reset.commands_published, reset.failed) == (3, 6, 0)
    published = commands_of(pipeline, reset.run_id, 6)
    assert sorted((c.operation.value, c.secure_client_id) for c in published) == [
        ("CLEAR_ENTITLEMENTS", "8000022"), ("PAIR", "8000002"), ("SYNC_ENTITLEMENTS", "8000001"),
        ("SYNC_ENTITLEMENTS", "8000002"), ("SYNC_ENTITLEMENTS", "8000011"), ("UNPAIR", "8000022")]
    assert not commands_of(pipeline, preview.run_id, 0)
    assert all(a["idempotency_key"].startswith(f"run:{reset.run_id}:") for a in sim.audit()[audit_before:])

    wait_until("the KMS repaired", lambda: products(sim, A_MAIN.secure_client_id) == {"P100", "P101", "P200"}
               and (sim.client_state(A_TWIN.secure_client_id) or {}).get("paired_chipset") == "STB-A2"
               and products(sim, B_MAIN.secure_client_id) == {"P100", "P101"}
               and products(sim, C_TWIN.secure_client_id) == set()
               and (sim.client_state(C_TWIN.secure_client_id) or {}).get("paired_chipset") is None)

    second = run(pipeline)
    assert (second.checked, second.in_sync, second.drifted, second.commands_published, second.items) == (
        4, 4, 0, 0, [])
    assert not commands_of(pipeline, second.run_id, 0)


# --- filters ------------------------------------------------------------------------------------------


def test_filters_by_creation_period_and_type_select_exactly_the_right_subscriptions(
        pipeline: Pipeline, store: DesiredStateStore, kms_simulator: SimulatorHandle) -> None:
    projector, reconciler = start_projector(pipeline), start_reconciler(pipeline)
    try:
        # Nothing provisions these (no translator, no executor): the empty KMS makes every one drift.
        day = timedelta(days=1)
        population = [("S-1", CREATED, "RESIDENTIAL"), ("S-2", CREATED + day, "BUSINESS"),
                      ("S-3", CREATED + day, "RESIDENTIAL"), ("S-4", CREATED + 2 * day, "RESIDENTIAL"),
                      ("S-5", CREATED + 3 * day, "HOTEL")]
        pipeline.produce("subscriptions", [
            event(sid, 1, [Device(distributor="MAIN", secure_client_id=f"9{n}", stb_serial=f"B{n}")],
                  created=created, kind=kind) for n, (sid, created, kind) in enumerate(population)])
        wait_projected(store, {sid: 1 for sid, _, _ in population})

        def chosen(report: ReconcileReport) -> list[str]:
            assert report.checked == report.drifted
            return sorted({i.subscription_id for i in report.items})

        assert chosen(run(pipeline, preview=True, created_from=CREATED + day, created_to=CREATED + 3 * day)) == [
            "S-2", "S-3", "S-4"]
        assert chosen(run(pipeline, preview=True, subscription_types=["RESIDENTIAL"])) == ["S-1", "S-3", "S-4"]
        assert chosen(run(pipeline, preview=True, created_from=CREATED + day, subscription_types=[
            "RESIDENTIAL", "HOTEL"])) == ["S-3", "S-4", "S-5"]
        assert chosen(run(pipeline, preview=True, subscription_ids=["S-5", "S-1"])) == ["S-1", "S-5"]

        env = {**pipeline.env(), "KMSBRIDGE_STACK_DIR": str(pipeline.workdir / "no-stack")}
        cli = CliRunner().invoke(reconcile_cmd, ["--preview", "--wait", "--created-from", "2026-01-11",
                                                 "--created-to", "2026-01-12", "--type", "BUSINESS"], env=env)
        assert cli.exit_code == 0, cli.output
        assert "checked 1, in sync 0, drifted 1" in cli.output
        assert "S-2" in cli.output and "S-3" not in cli.output

        # a subscription named explicitly that CRM never sent is an error the operator must see
        unknown = CliRunner().invoke(reconcile_cmd, ["--wait", "--subscription", "S-404", "--subscription", "S-1"],
                                     env=env)
        assert unknown.exit_code == 1, unknown.output
        assert "UNKNOWN_SUBSCRIPTION" in unknown.output and "S-404" in unknown.output
        assert "checked 1" in unknown.output
    finally:
        reconciler.stop()
        projector.stop()


# --- the projector --------------------------------------------------------------------------------------


def test_replayed_and_reordered_events_leave_the_projector_at_the_newest_version(
        pipeline: Pipeline, store: DesiredStateStore) -> None:
    versions = {v: event("S-R", v, [Device(distributor="MAIN", secure_client_id=f"7{v}")]) for v in range(1, 6)}
    others = {v: event("S-Q", v, [Device(distributor="MAIN", secure_client_id=f"6{v}")]) for v in range(1, 4)}
    pipeline.produce("subscriptions", [versions[3], others[2], versions[5], versions[1], others[3], versions[5]])
    pipeline.produce_raw("subscriptions", b"\x00not avro", key=b"S-R")  # a poison message among them
    pipeline.produce("subscriptions", [versions[2], versions[4], others[1]])

    projector = start_projector(pipeline)
    try:
        wait_projected(store, {"S-R": 5, "S-Q": 3})
        pipeline.produce("subscriptions", [*versions.values(), *others.values(), event("S-END", 1, [])])  # replay
        wait_projected(store, {"S-END": 1})
    finally:
        projector.stop()

    assert store.get("S-R") == versions[5]
    assert store.get("S-Q") == others[3]
    assert store.cards_of("S-R") == {"75": True, "71": False, "72": False, "73": False, "74": False}
    dead = pipeline.read(pipeline.settings.dlq(pipeline.settings.topic("subscriptions")), lambda got: len(got) >= 1,
                         decode=False)
    assert [m.value() for m in dead] == [b"\x00not avro"]
    headers = dict(dead[0].headers() or [])
    assert headers["kmsbridge.original.topic"] == pipeline.settings.topic("subscriptions").encode()


# --- concurrent runs ------------------------------------------------------------------------------------


def test_concurrent_reset_runs_over_the_same_subscriptions_publish_each_repair_once(
        pipeline: Pipeline, store: DesiredStateStore, kms_simulator: SimulatorHandle) -> None:
    cards = {f"S-{n:02d}": Device(distributor="MAIN", secure_client_id=f"5{n:03d}", stb_serial=f"B{n}")
             for n in range(40)}
    store.upsert([event(sid, 1, [device]) for sid, device in cards.items()])
    # The KMS holds every card with BASIC, except that every fourth one lost it.
    kms_simulator.set_state({"secure_clients": {
        d.secure_client_id: {"entitlements": [] if n % 4 == 0 else BASIC, "paired_chipset": d.stb_serial,
                             "pin": "0001"} for n, d in enumerate(cards.values())}})

    producer = Producer(pipeline.settings.kafka_config())
    sink = KafkaCommandSink(producer, build_codec(pipeline.settings), pipeline.settings.topic("commands"))
    engine = engine_for(pipeline.settings)
    kms = kms_simulator.soap_client()
    config = JobConfig(batch_size=5, query_batch=3, commands_topic=pipeline.settings.topic("commands"))
    # two replicas: separate jobs, each with its own lock owner, over one database
    first, second = (build_reset_job(pipeline.settings, kms, sink, engine=engine, config=config) for _ in range(2))

    async def both() -> list[ReconcileReport]:
        try:
            return list(await asyncio.gather(first.run(ReconcileRequest(run_id="run-one")),
                                             second.run(ReconcileRequest(run_id="run-two"))))
        finally:
            await kms.aclose()

    reports = asyncio.run(both())
    engine.dispose()

    assert [(r.checked, r.drifted, r.error) for r in reports] == [(40, 10, None), (40, 10, None)]
    assert sorted(r.commands_published for r in reports) == [0, 10]  # one run repaired, the other saw it in flight
    winner = next(r for r in reports if r.commands_published)
    published = commands_of(pipeline, winner.run_id, 10)
    assert sorted(c.secure_client_id for c in published) == sorted(
        d.secure_client_id for n, d in enumerate(cards.values()) if n % 4 == 0)
    loser = next(r for r in reports if not r.commands_published)
    assert not commands_of(pipeline, loser.run_id, 0)


# --- the processes ------------------------------------------------------------------------------------


def test_a_reconciler_stopped_mid_run_leaves_the_request_to_run_again_with_the_same_run_id(
        pipeline: Pipeline, store: DesiredStateStore, kms_simulator: SimulatorHandle) -> None:
    from reconciler.lock import RunLock

    subscriptions = {f"S-{n:04d}": Device(distributor="MAIN", secure_client_id=f"3{n:05d}", stb_serial=f"B{n}")
                     for n in range(3000)}
    store.upsert([event(sid, 1, [device]) for sid, device in subscriptions.items()])  # an empty KMS: all drift
    kms_simulator.set_faults(latency_ms=1000)  # a slow KMS: six batches take about eight seconds
    lock = RunLock(store.engine)

    first = start_reconciler(pipeline)
    pipeline.produce("reconcile_requests", [ReconcileRequest(run_id="run-interrupted")])
    wait_until("the run started (it holds the run lock)", lambda: lock.holder() is not None, timeout=30)
    commands_of(pipeline, "run-interrupted", 1)  # a first batch is repaired
    first.stop(timeout=60)  # as on SIGTERM: stops between two batches
    assert lock.holder() is None

    kms_simulator.clear_faults()
    second = start_reconciler(pipeline)
    try:
        reports = pipeline.read("reconcile_reports", lambda got: any(r.run_id == "run-interrupted" for r in got),
                                timeout=90)
    finally:
        second.stop()

    [report] = [r for r in reports if r.run_id == "run-interrupted"]  # the stopped run published none
    assert (report.checked, report.drifted, report.error) == (3000, 3000, None)
    published = commands_of(pipeline, "run-interrupted", 3 * 3000)  # PAIR, SYNC, SET_PIN per new card
    assert len({c.idempotency_key for c in published}) == 3 * 3000  # nothing published twice
    before_stop = [c for c in published if c.created_at < report.started_at]
    assert 0 < len(before_stop) < 3 * 3000
    assert report.commands_published == 3 * 3000 - len(before_stop)  # the re-run skipped what was in flight


def test_projector_and_reconciler_run_as_kmsbridge_run_and_stop_cleanly_on_sigterm(
        pipeline: Pipeline, store: DesiredStateStore) -> None:
    import signal

    projector, reconciler = pipeline.spawn("projector"), pipeline.spawn("reconciler")
    pipeline.produce("subscriptions", [event("S-P", 1, [Device(distributor="MAIN", secure_client_id="4001")])])
    wait_projected(store, {"S-P": 1})
    report = run(pipeline, preview=True, subscription_ids=["S-P"])
    assert (report.checked, report.drifted) == (1, 1)

    for proc in (projector, reconciler):
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in (projector, reconciler)] == [0, 0]
