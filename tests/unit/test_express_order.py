"""Per-box order across the express and regular lanes: the ledger keeps each attribute's last applied
origin, an older absolute command is superseded (COMPLETED, never sent), effects and newer revocations
always run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine

from consumers.breaker import Breaker
from consumers.coalesce import Origin, attribute_of, is_newer
from consumers.command_runner import CommandRunner, RunOutcome
from consumers.ledger import LEDGER_METADATA, Ledger
from kms_adapter.fake import InMemoryKms
from schemas.records import (
    KmsCommand,
    Message,
    MessageKind,
    Operation,
    Priority,
    Product,
    ResultState,
    Source,
    TextMode,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
CARD = "4120051539"


def cmd(key: str, op: Operation, at: datetime, *, version: int | None = None, subscription: str | None = "S-1",
        chipset: str | None = None, express: bool = False) -> KmsCommand:
    return KmsCommand(
        idempotency_key=key, operation=op, secure_client_id=CARD, subscription_id=subscription,
        subscription_version=version, chipset=chipset,
        products=[Product(product_id="P100")] if op is Operation.SYNC_ENTITLEMENTS else [],
        pin=SecretStr("1234") if op is Operation.SET_PIN else None,
        message=Message(kind=MessageKind.MESSAGE, text_mode=TextMode.ANSI, text="hi")
        if op is Operation.SEND_MESSAGE else None,
        source=Source(process_name="test", request_id=key if express else None, event_id=None if express else key),
        priority=Priority.EXPRESS if express else Priority.REGULAR, created_at=at,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    LEDGER_METADATA.create_all(engine)
    return Ledger(engine)


def run_all(kms: InMemoryKms, ledger: Ledger, *commands: KmsCommand) -> list[RunOutcome]:
    async def main() -> list[RunOutcome]:
        breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
        runner = CommandRunner(kms, ledger, breaker, retry_initial=0.001, retry_max=0.005)
        try:
            return [await runner.run(c) for c in commands]
        finally:
            await breaker.aclose()

    return asyncio.run(main())


def sent(kms: InMemoryKms) -> list[str]:
    return [c.command.idempotency_key for c in kms.calls if c.command is not None]


def test_an_express_pin_reset_is_not_undone_by_an_older_regular_pin_applied_after_it(ledger: Ledger) -> None:
    kms = InMemoryKms()
    express = cmd("req:R-1:pin", Operation.SET_PIN, T0 + timedelta(minutes=5), express=True)
    older = cmd("evt:E-1:pin", Operation.SET_PIN, T0, version=3)  # from a campaign backlog

    first, second = run_all(kms, ledger, express, older)

    assert first.result.state is ResultState.COMPLETED and first.result.superseded_by is None
    assert second.result.state is ResultState.COMPLETED
    assert second.result.superseded_by == "req:R-1:pin"
    assert sent(kms) == ["req:R-1:pin"]  # the older PIN never reached the KMS
    assert ledger.get("evt:E-1:pin") == second.result  # and a redelivery answers the same


def test_a_newer_regular_command_after_an_express_one_is_sent(ledger: Ledger) -> None:
    kms = InMemoryKms()
    express = cmd("req:R-1:pin", Operation.SET_PIN, T0, express=True)
    newer = cmd("evt:E-2:pin", Operation.SET_PIN, T0 + timedelta(minutes=1), version=4)

    run_all(kms, ledger, express, newer)

    assert sent(kms) == ["req:R-1:pin", "evt:E-2:pin"]


def test_a_clear_is_held_back_only_by_a_newer_command_already_applied(ledger: Ledger) -> None:
    kms = InMemoryKms()
    sync_v5 = cmd("evt:E-5:sync", Operation.SYNC_ENTITLEMENTS, T0 + timedelta(minutes=5), version=5)
    clear_v3 = cmd("evt:E-3:clear", Operation.CLEAR_ENTITLEMENTS, T0 + timedelta(minutes=3), version=3,
                   subscription="S-1")
    clear_v6 = cmd("evt:E-6:clear", Operation.CLEAR_ENTITLEMENTS, T0 + timedelta(minutes=6), version=6)

    outcomes = run_all(kms, ledger, sync_v5, clear_v6)
    assert sent(kms) == ["evt:E-5:sync", "evt:E-6:clear"]  # a newer revocation always goes
    assert all(o.result.superseded_by is None for o in outcomes)

    kms2 = InMemoryKms()
    fresh = Ledger(ledger._engine)
    with ledger._engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM kms_ledger")
        conn.exec_driver_sql("DELETE FROM kms_client_versions")  # leave only the attribute origins
    (late_clear,) = run_all(kms2, fresh, clear_v3)
    assert late_clear.result.superseded_by == "evt:E-6:clear"
    assert sent(kms2) == []


def test_effects_are_never_superseded(ledger: Ledger) -> None:
    kms = InMemoryKms()
    newer = cmd("evt:E-9:sync", Operation.SYNC_ENTITLEMENTS, T0 + timedelta(hours=1), version=9)
    message = cmd("req:R-2:msg", Operation.SEND_MESSAGE, T0, express=True)
    reauth = cmd("req:R-3:sector", Operation.REAUTHORISE_SECTOR, T0, express=True)

    run_all(kms, ledger, newer, message, reauth)

    assert sent(kms) == ["evt:E-9:sync", "req:R-2:msg", "req:R-3:sector"]


def test_the_commands_of_one_input_do_not_supersede_each_other(ledger: Ledger) -> None:
    kms = InMemoryKms()
    unpair = cmd("evt:E-4:unpair", Operation.UNPAIR, T0, version=4, chipset="STB-OLD")
    pair = cmd("evt:E-4:pair", Operation.PAIR, T0, version=4, chipset="STB-NEW")
    again = cmd("evt:E-4b:pair", Operation.PAIR, T0, version=4, chipset="STB-NEW")  # same origin

    run_all(kms, ledger, unpair, pair, again)

    assert sent(kms) == ["evt:E-4:unpair", "evt:E-4:pair", "evt:E-4b:pair"]


def test_within_a_subscription_the_version_decides_not_the_clock() -> None:
    later_clock = Origin(T0 + timedelta(hours=1), "S-1", 3)
    higher_version = Origin(T0, "S-1", 4)
    assert is_newer(higher_version, later_clock)
    assert not is_newer(later_clock, higher_version)
    other_subscription = Origin(T0 + timedelta(hours=2), "S-2", 1)
    assert is_newer(other_subscription, higher_version)  # a card moved: the origin time decides


def test_attributes_are_per_box_and_pairing_is_per_chipset() -> None:
    assert attribute_of(cmd("a", Operation.SYNC_ENTITLEMENTS, T0)) == attribute_of(
        cmd("b", Operation.CLEAR_ENTITLEMENTS, T0)) == "entitlements"
    assert attribute_of(cmd("c", Operation.PAIR, T0, chipset="X")) == attribute_of(
        cmd("d", Operation.UNPAIR, T0, chipset="X")) != attribute_of(cmd("e", Operation.PAIR, T0, chipset="Y"))
    assert attribute_of(cmd("f", Operation.SEND_MESSAGE, T0)) is None
    assert attribute_of(cmd("g", Operation.REAUTHORISE_SECTOR, T0)) is None
