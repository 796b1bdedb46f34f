"""The executor's ledger on both databases it runs on: SQLite (embedded) and PostgreSQL (replicas).

The ledger writes with dialect-specific upserts (``INSERT ... ON CONFLICT``), so its rules are checked
on each dialect: one outcome per key (the last written wins), and a card's version only rises, except
when the card moved to another subscription; and the executor's group commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from consumers.ledger import Entry, GroupCommit, Ledger
from kmsbridge.db import upgrade
from schemas.records import KmsResult, ResultState
from tests.support.pg import new_database, postgres_url  # noqa: F401 (the session fixture)

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


def test_record_many_writes_every_entry_in_order_in_one_transaction(ledger: Ledger) -> None:
    ledger.record_many([Entry(result("m1"), 2, "S-1"), Entry(result("m2", ResultState.REJECTED)),
                        Entry(result("m3"), 4, "S-1"), Entry(result("m4", card="C-2"), 1, "S-9")])

    assert [ledger.get(k).state for k in ("m1", "m2", "m3", "m4")] == [  # type: ignore[union-attr]
        ResultState.COMPLETED, ResultState.REJECTED, ResultState.COMPLETED, ResultState.COMPLETED]
    assert (ledger.version("C-1"), ledger.version("C-2")) == (("S-1", 4), ("S-9", 1))


class CountingLedger(Ledger):
    def __init__(self, engine: Any, fail: bool = False) -> None:
        super().__init__(engine)
        self.batches: list[int] = []
        self.fail = fail

    def record_many(self, entries: Sequence[Entry]) -> None:
        self.batches.append(len(entries))
        if self.fail:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        super().record_many(entries)


def test_group_commit_writes_the_records_of_one_loop_turn_together_and_returns_after_the_commit(
        ledger: Ledger) -> None:
    counting = CountingLedger(ledger._engine)
    writes = GroupCommit(counting)

    async def main() -> None:
        await asyncio.gather(*(writes.record(result(f"g{i}", card=f"C-{i}"), version=1, subscription_id="S-1")
                               for i in range(5)))
        await writes.record(result("g5"), version=2, subscription_id="S-1")

    asyncio.run(main())
    assert counting.batches == [5, 1]
    assert all(ledger.get(f"g{i}") is not None for i in range(6))  # committed when record returned


def test_a_failed_group_commit_fails_every_record_of_its_batch(ledger: Ledger) -> None:
    writes = GroupCommit(CountingLedger(ledger._engine, fail=True))

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(writes.record(result(f"f{i}")) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, OperationalError) for o in outcomes)
    assert ledger.get("f0") is None


def test_a_batch_lookup_answers_what_single_lookups_answer(ledger: Ledger) -> None:
    ledger.record(result("k1", card="C-1"), version=4, subscription_id="S-1")
    ledger.record(result("k2", ResultState.REJECTED, card="C-2"))
    keys = ["k1", "k2", "k3", *(f"absent-{i}" for i in range(1000))]  # more than one IN list
    cards = ["C-1", "C-2", "C-3"]

    known, versions = ledger.lookup_many(keys, cards)

    assert known == {key: ledger.get(key) for key in ("k1", "k2")}
    assert versions == {"C-1": ("S-1", 4)}
    assert versions.get("C-1") == ledger.version("C-1") and ledger.version("C-2") is None


def test_a_batch_read_of_origins_answers_what_single_reads_answer(ledger: Ledger) -> None:
    from consumers.coalesce import Origin

    for key, card, attribute, version in [("k1", "C-1", "entitlements", 2), ("k2", "C-1", "pin", 3),
                                          ("k3", "C-2", "entitlements", 1)]:
        ledger.record_many([Entry(result(key, card=card), version, "S-1", attribute,
                                  Origin(T0, "S-1", version, key))])
    pairs = [("C-1", "entitlements"), ("C-2", "entitlements"), ("C-2", "pin"), ("C-3", "pin")]

    found = ledger.origins_of(pairs)

    assert found == {pair: ledger.origin(*pair) for pair in pairs if ledger.origin(*pair) is not None}
    assert set(found) == {("C-1", "entitlements"), ("C-2", "entitlements")}


def test_origins_recorded_together_end_as_recorded_one_by_one(ledger: Ledger) -> None:
    from consumers.coalesce import Origin

    def entry(key: str, card: str, attribute: str, version: int) -> Entry:
        return Entry(result(key, card=card), version, "S-1", attribute, Origin(T0, "S-1", version, key))

    ledger.record_many([entry("k0", "C-1", "pin", 2)])  # stored before: the group updates it
    ledger.record_many([entry("k1", "C-1", "entitlements", 5), entry("k2", "C-1", "entitlements", 4),
                        entry("k3", "C-1", "pin", 3), entry("k4", "C-1", "pin", 1),
                        entry("k5", "C-2", "entitlements", 1), entry("k6", "C-1", "entitlements", 7),
                        entry("k7", "C-3", "entitlements", 5), entry("k8", "C-3", "entitlements", 4)])

    assert ledger.origin("C-1", "entitlements") == Origin(T0, "S-1", 7, "k6")
    assert ledger.origin("C-1", "pin") == Origin(T0, "S-1", 3, "k3")
    assert ledger.origin("C-2", "entitlements") == Origin(T0, "S-1", 1, "k5")
    assert ledger.origin("C-3", "entitlements") == Origin(T0, "S-1", 5, "k7")  # the older second one is not
    assert ledger.version("C-1") == ("S-1", 7)
