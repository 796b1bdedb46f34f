"""Per-box channel selection and fail-safe revocation through the real broker and the real simulator.

The translator and executor run as ``kmsbridge run`` builds them; events go through Kafka with the
example provider (MAIN "*", TWIN1/TWIN2 [BASIC] require MAIN); outcomes are read from the
simulator's state and ``kms.results``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

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

MAIN = Device(distributor="MAIN", secure_client_id="7100001", stb_serial="STB-L")  # living room
TWIN1 = Device(distributor="TWIN1", secure_client_id="7100002", stb_serial="STB-B")  # bedroom
BASIC = {"P100", "P101"}
SPORTS = {"P200"}


def svc(code: str, distributors: list[str] | None = None) -> Service:
    return Service(service_code=code, state=ServiceState.ACTIVE, distributors=distributors)


def event(sub: str, version: int, event_type: str, *, devices: list[Device], services: list[Service],
          state: str = "ACTIVE", removed: list[Device] | None = None) -> SubscriptionEvent:
    now = datetime.now(UTC)
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType(event_type), occurred_at=now, subscription_id=sub,
        account_id="A-" + sub, subscription_type="RESIDENTIAL", created_at=now, version=version,
        state=SubscriptionState(state), services=services, devices=devices, removed_devices=removed or [])


def products(sim: SimulatorHandle, card: str) -> set[str]:
    return {e["product_id"] for e in (sim.client_state(card) or {}).get("entitlements", [])}


@pytest.fixture
def running(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    procs: list[RunningProcess] = [start_translator(pipe.settings), start_executor(pipe.settings)]
    yield pipe
    for proc in reversed(procs):
        proc.stop()
    pipe.close()


def outcomes(pipe: Pipeline, ev: SubscriptionEvent, completed: int) -> list[KmsResult]:
    """The event's REJECTED result and ``completed`` COMPLETED results of its commands."""
    prefix = f"ev:{ev.event_id}:"

    def of_event(rs: list[KmsResult]) -> list[KmsResult]:
        return [r for r in rs if r.event_id == ev.event_id or r.idempotency_key.startswith(prefix)]

    def arrived(rs: list[KmsResult]) -> bool:
        mine = of_event(rs)
        return (any(r.state is ResultState.REJECTED for r in mine)
                and sum(r.state is ResultState.COMPLETED for r in mine) >= completed)

    return of_event(pipe.results(arrived))


def rejection_code(results: list[KmsResult]) -> str | None:
    return next(r.error_code for r in results if r.state is ResultState.REJECTED)


def activate_household(pipe: Pipeline, sim: SimulatorHandle, sub: str) -> None:
    pipe.produce("subscriptions", [event(sub, 1, "ACTIVATED", devices=[MAIN, TWIN1],
                                         services=[svc("BASIC"), svc("SPORTS", ["MAIN"])])])
    wait_until("household provisioned", lambda: products(sim, MAIN.secure_client_id) == BASIC | SPORTS
               and products(sim, TWIN1.secure_client_id) == BASIC)


def test_each_box_gets_the_channels_chosen_for_it(running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    activate_household(running, kms_simulator, "S-SEL-1")  # SPORTS for the living room only

    # the household moves BASIC to the bedroom only: the living-room box keeps SPORTS alone
    running.produce("subscriptions", [event("S-SEL-1", 2, "SERVICES_CHANGED", devices=[MAIN, TWIN1],
                                            services=[svc("BASIC", ["TWIN1"]), svc("SPORTS", ["MAIN"])])])

    wait_until("selection changed", lambda: products(kms_simulator, MAIN.secure_client_id) == SPORTS
               and products(kms_simulator, TWIN1.secure_client_id) == BASIC)


def test_a_service_chosen_for_a_box_that_may_not_carry_it_is_rejected_with_its_code(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    activate_household(running, kms_simulator, "S-SEL-2")
    ev = event("S-SEL-2", 2, "SERVICES_CHANGED", devices=[MAIN, TWIN1],
               services=[svc("BASIC"), svc("SPORTS", ["MAIN", "TWIN1"])])  # TWIN1 carries BASIC only
    running.produce("subscriptions", [ev])

    results = outcomes(running, ev, completed=0)

    assert rejection_code(results) == "SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR"
    assert not any(a["idempotency_key"].startswith(f"ev:{ev.event_id}:") for a in kms_simulator.audit())
    assert products(kms_simulator, TWIN1.secure_client_id) == BASIC  # nothing granted, nothing taken


def test_a_cancelled_twin_without_main_loses_every_channel(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_state({"secure_clients": {TWIN1.secure_client_id: {
        "entitlements": [{"product_id": "P100", "valid_from": None, "valid_until": None}]}}})
    ev = event("S-SEL-3", 5, "CANCELLED", state="CANCELLED", devices=[TWIN1], services=[svc("BASIC")])
    running.produce("subscriptions", [ev])

    results = outcomes(running, ev, completed=1)

    assert rejection_code(results) == "REQUIRED_DISTRIBUTOR_MISSING"
    assert products(kms_simulator, TWIN1.secure_client_id) == set()


def test_removing_main_clears_and_unpairs_it_and_the_twin_that_required_it_loses_its_channels(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    activate_household(running, kms_simulator, "S-SEL-4")
    ev = event("S-SEL-4", 2, "DEVICES_CHANGED", devices=[TWIN1], removed=[MAIN],
               services=[svc("BASIC"), svc("SPORTS", ["MAIN"])])
    running.produce("subscriptions", [ev])

    results = outcomes(running, ev, completed=3)  # CLEAR + UNPAIR of MAIN, CLEAR of TWIN1

    assert rejection_code(results) == "REQUIRED_DISTRIBUTOR_MISSING"
    main = kms_simulator.client_state(MAIN.secure_client_id) or {}
    assert main.get("entitlements") == [] and main.get("paired_chipset") is None
    assert products(kms_simulator, TWIN1.secure_client_id) == set()


def test_a_suspension_clears_every_box_it_names_whatever_else_is_wrong(
        running: Pipeline, kms_simulator: SimulatorHandle) -> None:
    activate_household(running, kms_simulator, "S-SEL-5")
    stray = Device(distributor="TWIN7", secure_client_id="7100009")  # a distributor nobody configures
    kms_simulator.set_state({"secure_clients": {stray.secure_client_id: {
        "entitlements": [{"product_id": "P200", "valid_from": None, "valid_until": None}]}}})
    ev = event("S-SEL-5", 2, "SUSPENDED", state="SUSPENDED", devices=[MAIN, TWIN1, stray],
               services=[svc("BASIC"), svc("SPORTS", ["MAIN"])])
    running.produce("subscriptions", [ev])

    results = outcomes(running, ev, completed=3)

    assert rejection_code(results) == "UNKNOWN_DISTRIBUTOR"
    assert all(products(kms_simulator, d.secure_client_id) == set() for d in (MAIN, TWIN1, stray))
