"""``kmsbridge demo``: the feature list played end to end on the local stack (DESIGN.md §6).

Each step produces real records to Kafka, waits (bounded) until the KMS simulator's state or the
results topic shows the expected outcome, and prints the household's KMS state as a table. The demo
exits 0 only if every expectation held.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import httpx
from confluent_kafka import Consumer, Producer

from kmsbridge.cli_io import record_key
from kmsbridge.settings import Settings
from kmsbridge.wiring import build_codec
from schemas.records import (
    Device,
    EventType,
    KmsResult,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)

__all__ = ["Demo", "Household", "active_service", "held_products", "paired_box", "run_demo"]

WAIT_SECONDS = 30.0
PIN_MASK = "****"


@dataclass
class Household:
    subscription_id: str
    cards: dict[str, str]  # role -> secure client id
    boxes: dict[str, str]  # role -> stb serial
    version: int = 0
    services: dict[str, Service] = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    state: SubscriptionState = SubscriptionState.ACTIVE


class Demo:
    def __init__(self, settings: Settings, simulator_url: str, token: str) -> None:
        self.settings = settings
        self.sim = simulator_url.rstrip("/")
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.codec = build_codec(settings)
        self.producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 5})
        self.results = Consumer({**settings.kafka_config(), "group.id": f"kmsbridge-demo-{uuid.uuid4().hex[:8]}",
                                 "auto.offset.reset": "latest", "enable.auto.commit": False,
                                 "isolation.level": "read_committed"})
        assigned: list[bool] = []
        self.results.subscribe([settings.topic("results")], on_assign=lambda _c, _p: assigned.append(True))
        deadline = time.monotonic() + WAIT_SECONDS
        while not assigned and time.monotonic() < deadline:  # "latest" must be fixed before we produce
            self.results.poll(0.1)
        self.failures: list[str] = []
        self.run = uuid.uuid4().hex[:6].upper()
        self.now = datetime.now(UTC).replace(microsecond=0)

    # --- plumbing ----------------------------------------------------------------------------------

    def produce(self, logical: str, record: Any) -> None:
        topic = self.settings.topic(logical)
        self.producer.produce(topic, key=record_key(record).encode(), value=self.codec.encode(record, topic))
        self.producer.flush(10)

    def state(self) -> dict[str, Any]:
        response = self.http.get(f"{self.sim}/admin/state")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool]) -> bool:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if check(self.state()):
                return True
            time.sleep(0.2)
        self.failures.append(what)
        click.echo(click.style(f"  ✗ expected: {what}", fg="red"))
        return False

    def wait_result(self, what: str, match: Callable[[KmsResult], bool]) -> KmsResult | None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            msg = self.results.poll(0.2)
            if msg is None or msg.error():
                continue
            result = self.codec.decode(msg.value(), KmsResult)
            if match(result):
                return result
        self.failures.append(what)
        click.echo(click.style(f"  ✗ expected: {what}", fg="red"))
        return None

    def event(self, hh: Household, event_type: EventType, removed: list[Device] | None = None,
              added: list[Device] | None = None) -> SubscriptionEvent:
        hh.version += 1
        event = SubscriptionEvent(
            event_id=str(uuid.uuid4()), event_type=event_type, occurred_at=datetime.now(UTC),
            subscription_id=hh.subscription_id, account_id=f"A-{self.run}", subscription_type="RESIDENTIAL",
            created_at=self.now, version=hh.version, state=hh.state, services=list(hh.services.values()),
            devices=list(hh.devices), removed_devices=removed or [], added_devices=added or [],
        )
        self.produce("subscriptions", event)
        return event

    # --- presentation ------------------------------------------------------------------------------

    def table(self, hh: Household) -> None:
        state = self.state()["secure_clients"]
        click.echo(f"  {'role':<7} {'secure client':<16} {'box':<14} {'PIN':<5} entitlements")
        for role, card in hh.cards.items():
            c = state.get(card)
            if c is None:
                continue  # a card the KMS never saw
            ents = ", ".join(_product(e) for e in c.get("entitlements", [])) or "none"
            pin = PIN_MASK if c.get("pin") else "-"
            click.echo(f"  {role:<7} {card:<16} {(c.get('paired_chipset') or '-'):<14} {pin:<5} {ents}")

    @staticmethod
    def step(title: str) -> None:
        click.echo("")
        click.echo(click.style(f"▶ {title}", bold=True))


def _product(e: dict[str, Any]) -> str:
    until = e.get("valid_until")
    return f"{e['product_id']}" + (f" (until {str(until)[:10]})" if until else "")


def held_products(state: dict[str, Any], card: str) -> set[str]:
    """Product ids ``card`` holds in the simulator's ``state``."""
    c = state["secure_clients"].get(card) or {}
    return {e["product_id"] for e in c.get("entitlements", [])}


def paired_box(state: dict[str, Any], card: str) -> str | None:
    c = state["secure_clients"].get(card) or {}
    chipset: str | None = c.get("paired_chipset")
    return chipset


def active_service(code: str, until: datetime | None = None, distributors: list[str] | None = None) -> Service:
    """An ACTIVE service, ending at ``until``, chosen for ``distributors`` (None: every box)."""
    return Service(service_code=code, state=ServiceState.ACTIVE, valid_until=until, distributors=distributors)


def realtime_steps(d: Demo) -> Household:
    """Issue #3's scenario: activation, a sports channel, a rejected TWIN3, a termed service,
    suspension and resumption, a box swap."""
    run = d.run
    hh = Household(subscription_id=f"S-{run}",
                   cards={"MAIN": f"41{run}01", "TWIN1": f"41{run}02", "TWIN3": f"41{run}03",
                          "SWAP": f"41{run}04"},
                   boxes={"MAIN": f"STB-{run}-1", "TWIN1": f"STB-{run}-2", "TWIN3": f"STB-{run}-3",
                          "SWAP": f"STB-{run}-4"})
    main, twin = hh.cards["MAIN"], hh.cards["TWIN1"]
    basic = {"P100", "P101"}

    d.step("A household activates with MAIN and TWIN1 (TWIN1 may carry the basic package only)")
    hh.services = {"BASIC": active_service("BASIC")}
    hh.devices = [Device(distributor="MAIN", secure_client_id=main, stb_serial=hh.boxes["MAIN"]),
                  Device(distributor="TWIN1", secure_client_id=twin, stb_serial=hh.boxes["TWIN1"])]
    d.event(hh, EventType.ACTIVATED)
    d.wait_for("both boxes paired with BASIC", lambda s: held_products(s, main) == basic
               and held_products(s, twin) == basic and paired_box(s, main) == hh.boxes["MAIN"]
               and paired_box(s, twin) == hh.boxes["TWIN1"])
    d.table(hh)

    d.step("The household adds the SPORTS channel (MAIN only: TWIN1 is not allowed to carry it)")
    hh.services["SPORTS"] = active_service("SPORTS")
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("SPORTS on MAIN, not on TWIN1", lambda s: held_products(s, main) == basic | {"P200"}
               and held_products(s, twin) == basic)
    d.table(hh)

    d.step("A third box arrives as TWIN3, but TWIN3 requires TWIN2, which the household lacks")
    third = Device(distributor="TWIN3", secure_client_id=hh.cards["TWIN3"], stb_serial=hh.boxes["TWIN3"])
    before = list(hh.devices)
    hh.devices = [*before, third]
    ev = d.event(hh, EventType.DEVICES_CHANGED)
    rejected = d.wait_result("a REJECTED result for the TWIN3 event", lambda r: r.event_id == ev.event_id)
    if rejected is not None:
        click.echo(f"  result: {rejected.state.value} {rejected.error_code}: {rejected.error_description}")
        if rejected.state.value != "REJECTED":
            d.failures.append("TWIN3 event not rejected")
    hh.devices = before
    third_card = hh.cards["TWIN3"]
    if d.wait_for("the TWIN3 card cleared, never paired or entitled",
                  lambda s: third_card in s["secure_clients"] and not held_products(s, third_card)
                  and paired_box(s, third_card) is None):
        click.echo(f"  TWIN3 card {third_card}: the grant is rejected; the card is only cleared (a TWIN3 may not"
                   " stand without a TWIN2)")
    d.table(hh)

    d.step("A termed MOVIES service is added until tomorrow, then its term ends")
    hh.services["MOVIES"] = active_service("MOVIES", until=d.now + timedelta(days=1))
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("MOVIES (P300) on MAIN with its end date", lambda s: "P300" in held_products(s, main))
    d.table(hh)
    hh.services["MOVIES"] = active_service("MOVIES", until=datetime.now(UTC) - timedelta(minutes=1))
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("MOVIES gone once its term ended", lambda s: "P300" not in held_products(s, main))
    d.table(hh)

    d.step("The subscription is suspended (unpaid bill), then resumed")
    hh.state = SubscriptionState.SUSPENDED
    d.event(hh, EventType.SUSPENDED)
    d.wait_for("every box cleared", lambda s: not held_products(s, main) and not held_products(s, twin))
    d.table(hh)
    hh.state = SubscriptionState.ACTIVE
    d.event(hh, EventType.RESUMED)
    d.wait_for("entitlements restored", lambda s: held_products(s, main) == basic | {"P200"}
               and held_products(s, twin) == basic)
    d.table(hh)

    d.step("The TWIN1 box is swapped for a new one")
    old = hh.devices[1]
    new = Device(distributor="TWIN1", secure_client_id=hh.cards["SWAP"], stb_serial=hh.boxes["SWAP"])
    hh.devices = [hh.devices[0], new]
    d.event(hh, EventType.DEVICES_CHANGED, removed=[old])
    swap = hh.cards["SWAP"]
    d.wait_for("old card cleared and unpaired, new card paired with BASIC",
               lambda s: not held_products(s, twin) and paired_box(s, twin) is None
               and held_products(s, swap) == basic and paired_box(s, swap) == hh.boxes["SWAP"])
    hh.cards = {"MAIN": main, "TWIN1": swap, "OLD": twin}
    d.table(hh)
    return hh


def run_demo(settings: Settings, simulator_url: str, token: str) -> int:
    demo = Demo(settings, simulator_url, token)
    click.echo(f"kmsbridge demo (run {demo.run}) — operator Aluxsat, KMS simulator {simulator_url}")
    try:
        hh = realtime_steps(demo)
        from kmsbridge.demo_operator import operator_steps

        operator_steps(demo, hh)
        from kmsbridge.demo_reconcile import reconcile_steps

        reconcile_steps(demo, hh)
        from kmsbridge.demo_selection import selection_steps

        second = selection_steps(demo)
        from kmsbridge.demo_runs import runs_steps

        runs_steps(demo, hh)
        click.echo("")
        click.echo(click.style("Final KMS state of the households, per box", bold=True))
        demo.table(hh)
        demo.table(second)
        from kmsbridge.demo_history import history_steps

        history_steps(demo, hh)
    finally:
        demo.results.close()
    click.echo("")
    if demo.failures:
        click.echo(click.style(f"demo FAILED: {len(demo.failures)} expectation(s) did not hold", fg="red"))
        for f in demo.failures:
            click.echo(f"  - {f}")
        return 1
    click.echo(click.style("demo passed: every expected state held", fg="green"))
    return 0
