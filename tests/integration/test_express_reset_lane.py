"""A single reset travels on the express lane, a reset run over a creation period on the regular one.

The reconciler is built as ``kmsbridge run reconciler`` builds it and runs in a thread, over the real
broker, the real simulator (an empty KMS: every stored subscription has drifted) and a SQLite store;
requests and reports travel through Kafka (docs/traffic.md, "What travels on it").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kmsbridge.db import upgrade
from kmsbridge.wiring import engine_for
from kmsbridge.wiring_reconciler import build_reconciler
from reconciler.store import DesiredStateStore
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Priority,
    ReconcileReport,
    ReconcileRequest,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.pipeline import Pipeline
from tests.support.processes import RunningProcess, start_in_thread
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

JANUARY = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
MARCH = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work")
    engine = engine_for(pipe.settings)
    upgrade(engine)
    engine.dispose()
    yield pipe
    pipe.close()


@pytest.fixture
def reconciler(pipeline: Pipeline) -> Iterator[RunningProcess]:
    engine = engine_for(pipeline.settings)
    store = DesiredStateStore(engine)
    # the desired state, as the projector stores it; the simulator's KMS holds none of these cards
    store.upsert([_event("S-JAN-1", "7000011", JANUARY), _event("S-JAN-2", "7000021", JANUARY),
                  _event("S-MAR-1", "7000031", MARCH)])
    engine.dispose()
    app = build_reconciler(pipeline.settings)
    proc = start_in_thread("reconciler", app.run, app.runner.request_stop, app)
    yield proc
    proc.stop()


def _event(sub: str, card: str, created: datetime) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=created, subscription_id=sub,
        account_id=f"A-{sub}", subscription_type="RESIDENTIAL", created_at=created, version=1,
        state=SubscriptionState.ACTIVE,
        services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card, stb_serial=f"STB-{card}")],
    )


def _run(pipeline: Pipeline, **fields: Any) -> ReconcileReport:
    request = ReconcileRequest(run_id=f"run-{uuid.uuid4().hex[:10]}", requested_by="test", **fields)
    pipeline.produce("reconcile_requests", [request])
    reports = pipeline.read("reconcile_reports", lambda got: any(r.run_id == request.run_id for r in got),
                            timeout=60)
    report: ReconcileReport = next(r for r in reports if r.run_id == request.run_id)
    assert report.error is None and report.commands_published > 0, report
    return report


def _commands(pipeline: Pipeline, logical: str, at_least: int) -> list[KmsCommand]:
    """Every command on ``logical`` once ``at_least`` are there (the runs' reports came after their
    commands were delivered, so the count is final)."""
    def commands(records: list[Any]) -> list[KmsCommand]:
        return [r for r in records if isinstance(r, KmsCommand)]

    return commands(pipeline.read(logical, lambda got: len(commands(got)) >= at_least, timeout=30))


def test_a_single_resets_commands_take_the_express_lane_and_a_period_runs_the_regular_one(
        pipeline: Pipeline, reconciler: RunningProcess) -> None:
    single = _run(pipeline, subscription_ids=["S-MAR-1"])
    period = _run(pipeline, created_from=datetime(2026, 1, 1, tzinfo=UTC), created_to=datetime(2026, 2, 1, tzinfo=UTC))
    assert (single.checked, period.checked) == (1, 2)

    express = _commands(pipeline, "commands_express", single.commands_published)
    regular = _commands(pipeline, "commands", period.commands_published)

    assert {c.source.run_id for c in express} == {single.run_id}
    assert len(express) == single.commands_published
    assert {c.secure_client_id for c in express} == {"7000031"}
    assert all(c.priority is Priority.EXPRESS for c in express)
    assert all(c.source.topic == pipeline.settings.topic("commands_express") for c in express)

    assert {c.source.run_id for c in regular} == {period.run_id}
    assert len(regular) == period.commands_published
    assert {c.secure_client_id for c in regular} == {"7000011", "7000021"}
    assert all(c.priority is Priority.REGULAR for c in regular)


def test_a_run_naming_two_subscriptions_is_no_single_reset(pipeline: Pipeline, reconciler: RunningProcess) -> None:
    pair = _run(pipeline, subscription_ids=["S-JAN-1", "S-MAR-1"])
    regular = _commands(pipeline, "commands", pair.commands_published)
    assert {c.source.run_id for c in regular} == {pair.run_id}
    assert {c.secure_client_id for c in regular} == {"7000011", "7000031"}
