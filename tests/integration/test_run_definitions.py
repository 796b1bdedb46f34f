"""Run definitions and the communication queue on the real broker, simulator and both databases.

It shows that two reconciler replicas (each built as ``kmsbridge run reconciler`` builds
it, with its scheduler and queue reader) execute a recurring definition once per due time; a Not
Effective one never runs; a rolling period selects exactly the subscriptions created in it; a preview
changes nothing; communications stay PENDING until the matching mail run and each ends with its own
outcome; one for an unhandled system stays PENDING; ``scheduled_at`` in the future holds one back; a
reset whose repair the KMS rejects is REJECTED and, repeated at once, repairs.
The translator runs in the default ``queue`` delivery throughout.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from test_reconciler import event, run, start_projector, start_reconciler, wait_projected

from kmsbridge.db import upgrade
from kmsbridge.wiring import engine_for
from producers.outcomes import Outcome, OutcomeStore, RequestState
from reconciler.communications_queue import CommunicationQueue, CommunicationState
from reconciler.expectations import Expectations
from reconciler.run_definitions import Execution, ExecutionState, RunDefinition, RunDefinitionStore, RunKind
from reconciler.store import DesiredStateStore
from schemas.records import CommunicationEvent, Device, KmsCommand, MessageKind, ReconcileReport, TextMode
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
             database_url: str) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work",
                    database_url=database_url)
    assert pipe.settings.communications.delivery == "queue"  # the default under test
    engine = engine_for(pipe.settings)
    upgrade(engine)
    engine.dispose()
    yield pipe
    pipe.close()


@pytest.fixture
def product(pipeline: Pipeline) -> Iterator[dict[str, RunningProcess]]:
    """Projector, translator, executor and two reconciler replicas."""
    started: dict[str, RunningProcess] = {}
    try:
        started["projector"] = start_projector(pipeline)
        started["reconciler-a"] = start_reconciler(pipeline)
        started["reconciler-b"] = start_reconciler(pipeline)
        started["translator"] = start_translator(pipeline.settings)
        started["executor"] = start_executor(pipeline.settings)
        yield started
    finally:
        for proc in reversed(list(started.values())):
            proc.stop()
    for proc in started.values():
        assert not proc.error, (proc.name, proc.error)


@pytest.fixture
def runs(pipeline: Pipeline) -> Iterator[RunDefinitionStore]:
    engine = engine_for(pipeline.settings)
    yield RunDefinitionStore(engine)
    engine.dispose()


def finished(runs: RunDefinitionStore, execution_id: str) -> Execution:
    wait_until(f"execution {execution_id} finished", lambda: runs.execution(execution_id).finished, timeout=60)
    return runs.execution(execution_id)


def entitled(sim: SimulatorHandle, secure_client_id: str) -> bool:
    return bool((sim.client_state(secure_client_id) or {}).get("entitlements"))


def card() -> str:
    return str(uuid.uuid4().int % 10**12)


# --- reset run definitions ----------------------------------------------------------------------------


def test_a_recurring_reset_runs_once_per_due_time_on_two_replicas_over_exactly_its_rolling_period(
        pipeline: Pipeline, product: dict[str, RunningProcess], runs: RunDefinitionStore,
        kms_simulator: SimulatorHandle) -> None:
    now = datetime.now(UTC)
    recent, old, business = (Device(distributor="MAIN", secure_client_id=card(), stb_serial=f"STB-{n}")
                             for n in range(3))
    subs = {"S-recent": (recent, now - timedelta(days=5), "RESIDENTIAL"),
            "S-old": (old, now - timedelta(days=40), "RESIDENTIAL"),
            "S-business": (business, now - timedelta(days=5), "BUSINESS")}
    pipeline.produce("subscriptions", [event(s, 1, [d], created=c, kind=k) for s, (d, c, k) in subs.items()])
    engine = engine_for(pipeline.settings)
    wait_projected(DesiredStateStore(engine), dict.fromkeys(subs, 1))
    cards = [d.secure_client_id for d, _c, _k in subs.values()]
    wait_until("real-time provisioning applied", lambda: all(entitled(kms_simulator, c) for c in cards), timeout=30)
    # drift on purpose: the KMS lost every product of the three boxes
    kms_simulator.set_state({"secure_clients": {c: {"entitlements": []} for c in cards}})
    audit_before = len(kms_simulator.audit())

    rule = {"kind": RunKind.RESET, "created_within_days": 30, "subscription_types": ["RESIDENTIAL"]}
    runs.define(RunDefinition(name="by-hand", **rule))
    preview = finished(runs, runs.request("by-hand", preview=True).execution_id)

    assert preview.state is ExecutionState.COMPLETED, preview.error
    assert (preview.counts["checked"], preview.counts["drifted"], preview.counts["commands_published"]) == (1, 1, 0)
    assert len(kms_simulator.audit()) == audit_before  # a preview changes nothing
    assert not any(entitled(kms_simulator, c) for c in cards)

    runs.define(RunDefinition(name="dormant", schedule="* * * * * */2", effective=False, **rule))
    runs.define(RunDefinition(name="every-3s", schedule="* * * * * */3", **rule))
    wait_until("three due times of every-3s executed",
               lambda: sum(e.finished for e in runs.executions("every-3s")) >= 3, timeout=60)
    runs.set_effective("every-3s", False)

    executions = [e for e in runs.executions("every-3s") if e.finished]
    dues = [e.due_at for e in executions]
    assert len(set(dues)) == len(dues), f"a due time executed twice: {sorted(d for d in dues if d)}"
    assert all(e.trigger.value == "schedule" and e.state is ExecutionState.COMPLETED for e in executions)
    assert all(e.counts["checked"] == 1 for e in executions)  # the rolling period and the type: S-recent only
    assert sum(e.counts["commands_published"] for e in executions) >= 1
    wait_until("S-recent repaired", lambda: entitled(kms_simulator, recent.secure_client_id), timeout=30)
    assert not entitled(kms_simulator, old.secure_client_id)  # created before the rolling period
    assert not entitled(kms_simulator, business.secure_client_id)  # another subscription type
    assert runs.executions("dormant") == []
    engine.dispose()


def test_replicas_racing_for_one_due_time_execute_it_once(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade(engine)
    store = RunDefinitionStore(engine)
    definition = RunDefinition(name="nightly", kind=RunKind.RESET, schedule="0 2 * * *")
    store.define(definition)
    due = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    start = threading.Barrier(8)

    def claim(owner: str) -> str | None:
        start.wait()
        return store.claim_due(definition, due, owner)

    with ThreadPoolExecutor(8) as pool:
        won = [c for c in pool.map(claim, [f"replica-{n}" for n in range(8)]) if c is not None]

    assert len(won) == 1
    assert [e.execution_id for e in store.executions("nightly")] == won
    engine.dispose()


# --- a single reset tells the truth ---------------------------------------------------------------------


def test_a_reset_whose_repair_the_kms_rejects_is_rejected_and_repeating_it_repairs(
        pipeline: Pipeline, product: dict[str, RunningProcess], kms_simulator: SimulatorHandle) -> None:
    box = Device(distributor="MAIN", secure_client_id=card(), stb_serial="STB-R")
    pipeline.produce("subscriptions", [event("S-R", 1, [box])])
    engine = engine_for(pipeline.settings)
    wait_projected(DesiredStateStore(engine), {"S-R": 1})
    wait_until("real-time provisioning applied", lambda: entitled(kms_simulator, box.secure_client_id), timeout=30)
    kms_simulator.set_state({"secure_clients": {box.secure_client_id: {"entitlements": []}}})
    kms_simulator.set_faults(card_errors={box.secure_client_id: "UNKNOWN_CLIENT"})  # commands fail, queries work

    first = run(pipeline, subscription_ids=["S-R"])
    assert first.commands_published >= 1
    assert outcome_of(pipeline, first).state is RequestState.REJECTED  # the repair did not reach the KMS
    expectations = Expectations(engine, timedelta(minutes=10))
    wait_until("the failed repair no longer counts as in flight",
               lambda: expectations.pending(["S-R"], datetime.now(UTC)) == {}, timeout=30)

    kms_simulator.clear_faults()
    second = run(pipeline, subscription_ids=["S-R"])

    assert second.commands_published == first.commands_published  # tried again
    assert outcome_of(pipeline, second).state is RequestState.COMPLETED
    assert entitled(kms_simulator, box.secure_client_id)
    engine.dispose()


def outcome_of(pipeline: Pipeline, report: ReconcileReport) -> Outcome:
    """The outcome store's answer once every command of the run has its result on ``kms.results``."""
    results = pipeline.results(lambda rs: sum(r.run_id == report.run_id for r in rs) >= report.commands_published,
                               timeout=60)
    store = OutcomeStore()
    store.add_report(report)
    for result in results:
        store.add_result(result)
    found = store.get(report.run_id)
    assert found is not None
    return found


# --- the communication queue --------------------------------------------------------------------------


def communication(comm_id: str, scid: str, *, system: str = "IRDETO", text: str = "Your bill is ready",
                  kind: MessageKind = MessageKind.MAIL, scheduled_at: datetime | None = None) -> CommunicationEvent:
    return CommunicationEvent(communication_id=comm_id, external_system=system, kind=kind, text_mode=TextMode.ANSI,
                              text=text, secure_client_id=scid, scheduled_at=scheduled_at,
                              created_at=datetime.now(UTC))


def states(queue: CommunicationQueue) -> dict[str, tuple[str, str | None]]:
    return {e["communication_id"]: (e["state"], e["error_code"]) for e in queue.entries(limit=1000)}


def test_communications_wait_in_the_queue_until_the_matching_mail_run_and_each_ends_with_its_own_outcome(
        pipeline: Pipeline, product: dict[str, RunningProcess], runs: RunDefinitionStore,
        kms_simulator: SimulatorHandle) -> None:
    a, b, other, later, bad = card(), card(), card(), card(), card()
    run = uuid.uuid4().hex[:6]
    held_until = datetime.now(UTC) + timedelta(seconds=8)
    comms = [communication(f"C-{run}-1", a),
             communication(f"C-{run}-2", b, kind=MessageKind.MESSAGE, text="Welcome"),
             communication(f"C-{run}-3", other, system="SMS-GATEWAY"),
             communication(f"C-{run}-4", later, text="Tonight", scheduled_at=held_until),
             communication(f"C-{run}-5", bad, text="Спасибо")]  # ANSI cannot carry it
    pipeline.produce("communications", comms)
    queue = CommunicationQueue(engine_for(pipeline.settings))
    wait_until("five communications pending", lambda: len(queue.entries(state=CommunicationState.PENDING)) == 5,
               timeout=30)

    runs.define(RunDefinition(name="irdeto", kind=RunKind.MAIL, external_systems=["IRDETO"]))
    first = finished(runs, runs.request("irdeto").execution_id)

    assert first.state is ExecutionState.COMPLETED, first.error
    assert first.counts == {"sent": 2, "skipped": 1, "rejected": 1}
    wait_until("the two sent communications completed", lambda: [states(queue)[c.communication_id][0]
               for c in comms[:2]] == ["COMPLETED", "COMPLETED"], timeout=30)
    assert states(queue)[f"C-{run}-3"] == ("PENDING", None)  # no definition handles SMS-GATEWAY
    assert states(queue)[f"C-{run}-4"] == ("PENDING", None)  # not due yet
    assert states(queue)[f"C-{run}-5"] == ("REJECTED", "TEXT_NOT_ENCODABLE")
    assert kms_simulator.client_state(a)["mailbox"] == [{"text": "Your bill is ready", "text_mode": "ANSI"}]  # type: ignore[index]
    assert kms_simulator.client_state(later) is None

    wait_until("the scheduled time of C-4", lambda: datetime.now(UTC) >= held_until, timeout=30)
    second = finished(runs, runs.request("irdeto").execution_id)

    assert second.counts == {"sent": 1, "skipped": 0, "rejected": 0}
    wait_until("C-4 completed", lambda: states(queue)[f"C-{run}-4"][0] == "COMPLETED", timeout=30)
    audit = [e for e in kms_simulator.audit() if e["secure_client_id"] == later]
    assert audit and all(datetime.fromisoformat(e["at"]) >= held_until for e in audit)
    assert states(queue)[f"C-{run}-3"] == ("PENDING", None)
    assert kms_simulator.client_state(other) is None and kms_simulator.client_state(bad) is None

    def sent_by(records: list[Any]) -> set[str]:
        return {r.source.process_name for r in records if isinstance(r, KmsCommand) and r.source.communication_id}

    assert sent_by(pipeline.read("commands", lambda got: len(sent_by(got)) >= 1)) == {"mail-run"}  # not the translator
