"""Traffic control towards the KMS on the real broker and the real simulator (docs/traffic.md): the
express lane overtakes a backlog, coalesced commands never reach the simulator, and the calls-per-second
limit holds across two executor replicas. Counts come from the simulator's audit log and the results
topic; the limit is checked on the simulator's own clock, with a tolerance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from schemas.records import (
    KmsCommand,
    KmsResult,
    Operation,
    Product,
    RequestType,
    ResultState,
    ServiceRequest,
    Source,
)
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle, at_seconds

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def sync(card: str, version: int, *, key: str | None = None, minutes_ago: int = 60) -> KmsCommand:
    return KmsCommand(
        idempotency_key=key or f"bk:{card}:v{version}", operation=Operation.SYNC_ENTITLEMENTS, secure_client_id=card,
        subscription_id=f"S-{card}", subscription_version=version, products=[Product(product_id=f"P{version}")],
        source=Source(process_name="test", event_id=f"E-{card}-{version}"),
        created_at=NOW - timedelta(minutes=minutes_ago) + timedelta(seconds=version))


def audit_keys(sim: SimulatorHandle) -> list[str]:
    return [entry["idempotency_key"] for entry in sim.audit()]


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    env = getattr(request, "param", {})
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path, extra_env=env)
    yield pipe
    pipe.close()


def stop_all(procs: list[RunningProcess]) -> None:
    for proc in reversed(procs):
        proc.stop(60)


@pytest.mark.parametrize("pipeline", [{"KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND": "1000"}], indirect=True)
def test_an_express_pin_request_overtakes_a_20000_command_backlog_and_the_box_ends_right(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    box = "8000000"
    backlog = [sync(f"8{i:06d}", 1) for i in range(1, 20_000)]
    # an older regular PIN for the same box at the very end of the backlog (a campaign's default PIN)
    old_pin = KmsCommand(idempotency_key="bk:pin", operation=Operation.SET_PIN, secure_client_id=box,
                         subscription_id="S-box", subscription_version=1, pin=SecretStr("1111"),
                         source=Source(process_name="test", event_id="E-pin"), created_at=NOW - timedelta(hours=1))
    pipeline.produce("commands", [*backlog, old_pin])
    procs = [start_executor(pipeline.settings), start_translator(pipeline.settings)]
    try:
        wait_until("the backlog is draining", lambda: len(kms_simulator.audit()) > 200, timeout=90)
        request = ServiceRequest(request_id="R-express", type=RequestType.SET_PIN, secure_client_id=box,
                                 pin=SecretStr("4321"), requested_by="agent-7", requested_at=datetime.now(UTC))
        pipeline.produce("requests", [request])

        def express_result(results: list[KmsResult]) -> bool:
            return any(r.request_id == "R-express" for r in results)

        pipeline.results(express_result, timeout=60)
        keys = audit_keys(kms_simulator)
        express_key = next(k for k in keys if k.startswith("req:R-express"))
        assert keys.index(express_key) < 10_000, "the express request waited behind the backlog"

        results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 20_001, timeout=240)
    finally:
        stop_all(procs)
    by_key = {r.idempotency_key: r for r in results}
    assert by_key["bk:pin"].state is ResultState.COMPLETED
    assert by_key["bk:pin"].superseded_by == express_key  # the older PIN never undid the agent's
    assert "bk:pin" not in audit_keys(kms_simulator)
    assert (kms_simulator.client_state(box) or {})["pin"] == "4321"


def test_coalesced_commands_never_reach_the_simulator_and_their_results_say_so(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    boxes = [f"9{i:06d}" for i in range(300)]
    # a catch-up: five versions of every box waiting when the executor starts
    commands = [sync(card, version) for version in range(1, 6) for card in boxes]
    pipeline.produce("commands", commands)
    procs = [start_executor(pipeline.settings)]
    try:
        results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= len(commands), timeout=120)
    finally:
        stop_all(procs)
    by_key = {r.idempotency_key: r for r in results}
    audited = Counter(audit_keys(kms_simulator))
    superseded = [r for r in by_key.values() if r.superseded_by is not None]
    assert superseded, "nothing was coalesced"
    for result in superseded:
        assert result.state is ResultState.COMPLETED and result.attempts == 0
        assert audited[result.idempotency_key] == 0
    for card in boxes:  # every box ends at its newest version, sent once
        assert audited[f"bk:{card}:v5"] == 1
        client = kms_simulator.client_state(card) or {}
        assert [e["product_id"] for e in client["entitlements"]] == ["P5"]
    assert sum(audited.values()) + len(superseded) == len(commands) - sum(
        1 for r in by_key.values() if r.error_code == "STALE_COMMAND")


@pytest.mark.parametrize("pipeline", [{"KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND": "150"}], indirect=True)
def test_the_calls_per_second_limit_holds_with_two_executor_replicas(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    limit = 150.0
    procs = [start_executor(pipeline.settings), start_executor(pipeline.settings)]
    try:
        executors = [p.handle.executor for p in procs]
        total = 2 * pipeline.partitions  # the regular and the express topic
        wait_until("both replicas hold partitions", lambda: all(e.assigned for e in executors) and sum(
            len(e.assigned) for e in executors) == pipeline.partitions, timeout=60)
        commands = [sync(f"7{i:06d}", 1) for i in range(1800)]
        pipeline.produce("commands", commands)
        pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= len(commands), timeout=120)
    finally:
        stop_all(procs)
    assert total == 6
    times = sorted(at_seconds(e) for e in kms_simulator.audit())
    assert len(times) == len(commands)
    per_second = Counter(int(t - times[0]) for t in times)
    full_seconds = [n for second, n in per_second.items() if 0 < second < max(per_second)]  # whole seconds only
    assert max(full_seconds) <= limit * 1.10
    overall = (len(times) - 1) / (times[-1] - times[0])
    assert overall <= limit * 1.05
    assert overall >= limit * 0.5  # the limit, not something else, holds the rate back
