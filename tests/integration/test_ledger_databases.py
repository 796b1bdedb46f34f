"""The executor's ledger on both databases it runs on: SQLite (embedded) and PostgreSQL (replicas).

The ledger writes with dialect-specific upserts (``INSERT ... ON CONFLICT``), so its rules are checked
on each dialect: one outcome per key (the last written wins), and a card's version only rises, except
when the card moved to another subscription.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pg import new_database, postgres_url  # noqa: F401 (the session fixture)
from sqlalchemy import create_engine

from consumers.ledger import Ledger
from kmsbridge.db import upgrade
from schemas.records import KmsResult, ResultState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = new_database(request.getfixturevalue("postgres_url"))
    engine = create_engine(url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def result(key: str, state: ResultState = ResultState.COMPLETED, card: str = "C-1") -> KmsResult:
    return KmsResult(idempotency_key=key, operation="SYNC_ENTITLEMENTS", secure_client_id=card,
                     subscription_id="S-1", state=state, executed_at=T0, attempts=1)


def test_an_outcome_is_stored_once_per_key_and_the_last_write_wins(ledger: Ledger) -> None:
    assert ledger.get("k1") is None

    ledger.record(result("k1", ResultState.REJECTED))
    ledger.record(result("k1", ResultState.COMPLETED))
    ledger.record(result("k2", ResultState.REJECTED))

    stored = ledger.get("k1")
    assert stored is not None and stored.state is ResultState.COMPLETED
    other = ledger.get("k2")
    assert other is not None and other.state is ResultState.REJECTED
    assert ledger.lookup("k1", "C-1") == (stored, None)


def test_a_cards_version_only_rises_unless_the_card_moved_to_another_subscription(ledger: Ledger) -> None:
    assert ledger.version("C-1") is None

    ledger.record(result("a"), version=5, subscription_id="S-1")
    ledger.record(result("b"), version=3, subscription_id="S-1")  # older: the stored version stays
    assert ledger.version("C-1") == ("S-1", 5)

    ledger.record(result("c"), version=7, subscription_id="S-1")
    assert ledger.version("C-1") == ("S-1", 7)

    ledger.record(result("d"), version=1, subscription_id="S-2")  # moved: S-2's sequence starts
    assert ledger.version("C-1") == ("S-2", 1)
    assert ledger.lookup("new-key", "C-1") == (None, ("S-2", 1))
