"""Real-time provisioning through the real broker and the real simulator.

The translator and executor run exactly as ``kmsbridge run`` builds them (in threads, or as
subprocesses where a test kills one); events go through Kafka; outcomes are read from the
simulator's state and audit and from ``kms.results``.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.records import (
    Device,
    EventType,
    KmsResult,
    ResultState,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def svc(code: str, until: datetime | None = None, state: str = "ACTIVE") -> Service:
    return Service(service_code=code, state=ServiceState(state), valid_until=until)


def event(sub: str, version: int, *, devices: list[Device], services: list[Service],
          state: str = "ACTIVE", event_type: str = "UPDATED", removed: list[Device] | None = None,
          event_id: str | None = None) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=event_id or str(uuid.uuid4()), event_type=EventType(event_type), occurred_at=datetime.now(UTC),
        subscription_id=sub, account_id="A-" + sub, subscription_type="RESIDENTIAL", created_at=NOW,
        version=version, state=SubscriptionState(state), services=services, devices=devices,
        removed_devices=removed or [],
    )


def products(sim: SimulatorHandle, card: str) -> set[str]:
    client = sim.client_state(card) or {}
    return {e["product_id"] for e in client.get("entitlements", [])}


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    yield pipe
    pipe.close()


@pytest.fixture
def running(pipeline: Pipeline) -> Iterator[Pipeline]:
    procs: list[RunningProcess] = [start_translator(pipeline.settings), start_executor(pipeline.settings)]
    yield pipeline
    for proc in reversed(procs):
        proc.stop()


MAIN = Device(distributor="MAIN", secure_client_id="7000001", stb_serial="STB-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="7000002", stb_serial="STB-2")


def test_activation_pairs_sets_default_pin_and_entitles_each_box_by_its_distributor(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    running.produce("subscriptions", [event("S-1", 1, devices=[MAIN, TWIN1], event_type="ACTIVATED",
                                            services=[svc("BASIC"), svc("SPORTS")])])

    wait_until("both boxes entitled", lambda: products(kms_simulator, MAIN.secure_client_id) == {
        "P100", "P101", "P200"} and products(kms_simulator, TWIN1.secure_client_id) == {"P100", "P101"})
    main = kms_simulator.client_state(MAIN.secure_client_id) or {}
    assert main["paired_chipset"] == "STB-1"
    assert main["pin"] == "0001"


def test_suspension_clears_and_resumption_restores(running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    services = [svc("BASIC")]
    running.produce("subscriptions", [event("S-2", 1, devices=[MAIN], services=services, event_type="ACTIVATED")])
    wait_until("activated", lambda: products(kms_simulator, MAIN.secure_client_id) == {"P100", "P101"})

    running.produce("subscriptions", [event("S-2", 2, devices=[MAIN], services=services, state="SUSPENDED",
                                            event_type="SUSPENDED")])
    wait_until("cleared", lambda: products(kms_simulator, MAIN.secure_client_id) == set())

    running.produce("subscriptions", [event("S-2", 3, devices=[MAIN], services=services, event_type="RESUMED")])
    wait_until("restored", lambda: products(kms_simulator, MAIN.secure_client_id) == {"P100", "P101"})


def test_expired_termed_service_is_not_entitled(running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    services = [svc("BASIC"), svc("MOVIES", until=NOW + timedelta(days=2))]
    running.produce("subscriptions", [event("S-3", 1, devices=[MAIN], services=services, event_type="ACTIVATED")])
    wait_until("movies entitled", lambda: "P300" in products(kms_simulator, MAIN.secure_client_id))
    entry = next(e for e in (kms_simulator.client_state(MAIN.secure_client_id) or {})["entitlements"]
                 if e["product_id"] == "P300")
    assert entry["valid_until"] is not None

    expired = [svc("BASIC"), svc("MOVIES", until=datetime.now(UTC) - timedelta(minutes=1))]
    running.produce("subscriptions", [event("S-3", 2, devices=[MAIN], services=expired)])
    wait_until("movies gone", lambda: products(kms_simulator, MAIN.secure_client_id) == {"P100", "P101"})


def test_swapped_box_is_cleared_and_unpaired_and_the_new_one_installed(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    services = [svc("BASIC")]
    running.produce("subscriptions", [event("S-4", 1, devices=[MAIN, TWIN1], services=services,
                                            event_type="ACTIVATED")])
    wait_until("installed", lambda: products(kms_simulator, TWIN1.secure_client_id) == {"P100", "P101"})

    new = Device(distributor="TWIN1", secure_client_id="7000009", stb_serial="STB-9")
    running.produce("subscriptions", [event("S-4", 2, devices=[MAIN, new], services=services,
                                            event_type="DEVICES_CHANGED", removed=[TWIN1])])

    def swapped() -> bool:
        old = kms_simulator.client_state(TWIN1.secure_client_id) or {}
        fresh = kms_simulator.client_state(new.secure_client_id) or {}
        return (not old.get("entitlements") and old.get("paired_chipset") is None
                and fresh.get("paired_chipset") == "STB-9" and fresh.get("pin") == "0001"
                and products(kms_simulator, new.secure_client_id) == {"P100", "P101"})

    wait_until("swap applied", swapped)


@pytest.mark.parametrize(("devices", "services", "code"), [
    ([TWIN1], [svc("BASIC")], "REQUIRED_DISTRIBUTOR_MISSING"),
    ([MAIN, Device(distributor="MAIN", secure_client_id="7000003")], [svc("BASIC")], "DUPLICATE_DISTRIBUTOR"),
    ([Device(distributor="TWIN7", secure_client_id="7000004")], [svc("BASIC")], "UNKNOWN_DISTRIBUTOR"),
    ([MAIN], [svc("KARAOKE")], "UNMAPPED_SERVICE"),
    ([MAIN, TWIN1, Device(distributor="TWIN2", secure_client_id="7000005"),
      Device(distributor="TWIN3", secure_client_id="7000006"),
      Device(distributor="TWIN4", secure_client_id="7000007")], [svc("BASIC")], None),
])
def test_rejected_event_yields_a_rejected_result_and_grants_nothing_in_the_kms(
        running: Pipeline, kms_simulator: SimulatorHandle, devices: list[Device], services: list[Service],
        code: str | None) -> None:
    ev = event("S-5", 1, devices=devices, services=services, event_type="ACTIVATED")
    running.produce("subscriptions", [ev])

    results = running.results(lambda rs: any(r.event_id == ev.event_id for r in rs))
    result = next(r for r in results if r.event_id == ev.event_id)

    assert result.state is ResultState.REJECTED
    if code is not None:
        assert result.error_code == code
    else:  # five devices: either too many viewing points or the unknown TWIN4, both are rejections
        assert result.error_code in {"TOO_MANY_VIEWING_POINTS", "UNKNOWN_DISTRIBUTOR"}
    # only revocations reach the KMS (boxes that cannot stand are cleared, docs/architecture.md §5)
    assert {a["operation"] for a in kms_simulator.audit()} <= {"CLEAR_ENTITLEMENTS", "UNPAIR"}
    assert all(products(kms_simulator, d.secure_client_id) == set() for d in devices)


def test_same_event_produced_twice_gives_one_effect_per_idempotency_key(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    ev = event("S-6", 1, devices=[MAIN, TWIN1], services=[svc("BASIC")], event_type="ACTIVATED")
    running.produce("subscriptions", [ev, ev])

    # 2 pairs + 2 PINs + 2 syncs, each once; the second copy yields byte-identical commands
    results = running.results(lambda rs: len(rs) >= 12)
    applied = Counter(a["idempotency_key"] for a in kms_simulator.audit() if not a["duplicate"])
    assert len(applied) == 6
    assert set(applied.values()) == {1}
    assert sum(1 for r in results if r.duplicate) == 6


def _stream(n_subs: int, versions: int) -> tuple[list[SubscriptionEvent], dict[str, set[str]]]:
    """Events for n_subs households, each toggling SPORTS over ``versions`` versions."""
    events = []
    expected: dict[str, set[str]] = {}
    for v in range(1, versions + 1):
        for i in range(n_subs):
            card = f"8{i:06d}"
            dev = [Device(distributor="MAIN", secure_client_id=card, stb_serial=f"B{i}")]
            services = [svc("BASIC")] + ([svc("SPORTS")] if v % 2 == 0 else [])
            events.append(event(f"K-{i}", v, devices=dev, services=services,
                                event_type="ACTIVATED" if v == 1 else "SERVICES_CHANGED"))
            expected[card] = {"P100", "P101"} | ({"P200"} if v % 2 == 0 else set())
    return events, expected


def test_executor_killed_mid_stream_loses_nothing_and_applies_no_key_twice(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    events, expected = _stream(n_subs=400, versions=5)  # 2,000 events, 2,800 commands
    translator = start_translator(pipeline.settings)
    executor = pipeline.spawn("executor")
    try:
        pipeline.produce("subscriptions", events)
        wait_until("a quarter applied", lambda: len(kms_simulator.audit()) > 700, timeout=120)
        executor.send_signal(signal.SIGKILL)
        executor.wait(10)
        executor = pipeline.spawn("executor", log_name="executor-2")

        def converged() -> bool:
            state: dict[str, Any] = kms_simulator.state()["secure_clients"]
            return all({e["product_id"] for e in state.get(card, {}).get("entitlements", [])} == want
                       for card, want in expected.items())

        wait_until("final state equals what the events ask for", converged, timeout=180, interval=0.5)
        results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 2800, timeout=120)
    finally:
        executor.send_signal(signal.SIGTERM)
        executor.wait(30)
        translator.stop()

    audit = kms_simulator.audit()
    applied = Counter(a["idempotency_key"] for a in audit if not a["duplicate"])
    completed = {r.idempotency_key for r in results if r.state is ResultState.COMPLETED}
    superseded = {r.idempotency_key for r in results if r.superseded_by is not None}
    # every command ends COMPLETED; one that never reached the KMS was superseded by a newer one of its
    # box (coalescing), never lost; none is applied twice
    assert len(completed) == 2800
    assert completed - set(applied) <= superseded
    assert set(applied) <= completed
    assert max(applied.values()) == 1
    assert isinstance(results[0], KmsResult)
