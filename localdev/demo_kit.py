"""What every demo part uses: the household it plays with, the :class:`Demo` driver (produce, wait,
read the simulator's state) and small readers of that state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
import httpx
from confluent_kafka import Consumer, Producer

from kmsbridge.settings import Settings
from kmsbridge.wiring import build_codec
from schemas.keys import record_key
from schemas.records import (
    Device,
    EventType,
    KmsResult,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)

__all__ = ["PIN_MASK", "WAIT_SECONDS", "Demo", "Household", "active_service", "held_products", "paired_box"]

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
