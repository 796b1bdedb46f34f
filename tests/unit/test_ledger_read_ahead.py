"""The executor's batch ledger read (``ReadAhead``): one query for a polled batch, answers that follow
what this process records, and the table whenever the batch read does not cover a lookup."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.breaker import Breaker
from consumers.coalesce import Origin
from consumers.command_runner import STALE_COMMAND, CommandRunner
from consumers.ledger import GroupCommit, Ledger, ReadAhead
from kms_adapter.fake import InMemoryKms
from schemas.records import KmsCommand, KmsResult, Operation, Product, ResultState, Source
from tests.support.ledger import Counted, counted_ledger


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Counted]:
    with counted_ledger(tmp_path) as counted:
        yield counted


def result(key: str, card: str, state: ResultState = ResultState.COMPLETED) -> KmsResult:
    return KmsResult(idempotency_key=key, operation="SYNC_ENTITLEMENTS", secure_client_id=card, state=state,
                     executed_at=datetime.now(UTC))


def command(card: str, key: str, version: int) -> KmsCommand:
    return KmsCommand(idempotency_key=key, operation=Operation.SYNC_ENTITLEMENTS, secure_client_id=card,
                      subscription_id="S-1", subscription_version=version, products=[Product(product_id="P100")],
                      source=Source(process_name="test", event_id=key), created_at=datetime.now(UTC))


def record(ledger: Ledger, reads: ReadAhead, key: str, card: str, version: int | None) -> None:
    async def main() -> None:
        await GroupCommit(ledger, reads).record(result(key, card), version=version, subscription_id="S-1")

    asyncio.run(main())


def test_a_batch_is_read_in_two_queries_when_its_first_command_asks(db: Counted) -> None:
    db.ledger.record(result("k0", "C0"), version=3, subscription_id="S-1")
    reads = ReadAhead(db.ledger)
    for i in range(50):
        reads.expect(f"k{i}", f"C{i}")

    reads.read()
    polled = db.selects
    answers = [reads.lookup(f"k{i}", f"C{i}") for i in range(50)]

    assert polled == 0  # nothing is read before a command of the batch runs
    assert db.selects == 2
    assert answers[0][0] is not None and answers[0][0].idempotency_key == "k0"
    assert answers[1] == (None, None)  # no outcome, no version yet


def test_the_second_command_of_a_card_in_one_batch_sees_the_first_ones_version(db: Counted) -> None:
    db.ledger.record(result("k0", "C1"), version=1, subscription_id="S-1")
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.expect("k2", "C1")
    reads.read()

    assert reads.lookup("k1", "C1") == (None, ("S-1", 1))
    record(db.ledger, reads, "k1", "C1", version=7)
    selects = db.selects

    assert reads.lookup("k2", "C1") == (None, ("S-1", 7))
    assert db.selects == selects  # answered from the batch read, updated by the record


def test_a_key_seen_twice_in_a_batch_reads_the_table_the_second_time(db: Counted) -> None:
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.expect("k1", "C1")
    reads.read()
    assert reads.lookup("k1", "C1") == (None, None)
    db.ledger.record(result("k1", "C1"), version=2, subscription_id="S-1")  # e.g. recorded elsewhere

    known, _ = reads.lookup("k1", "C1")

    assert known is not None and known.idempotency_key == "k1"


def test_a_key_recorded_after_a_later_batch_read_it_is_known_to_that_batch(db: Counted) -> None:
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.read()
    reads.lookup("k1", "C1")  # the first delivery starts
    reads.expect("k9", "C9")
    reads.expect("k1", "C1")  # a redelivery is polled, and its batch read, before the first delivery records
    reads.read()
    reads.lookup("k9", "C9")
    record(db.ledger, reads, "k1", "C1", version=2)
    selects = db.selects

    known, _ = reads.lookup("k1", "C1")

    assert known is not None and known.state is ResultState.COMPLETED
    assert db.selects == selects


def test_a_read_older_than_its_bound_is_not_used(db: Counted, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.read()
    db.ledger.record(result("k1", "C1"), version=2, subscription_id="S-1")  # written by another process
    monkeypatch.setattr(ReadAhead, "MAX_AGE_SECONDS", -1.0)

    known, _ = reads.lookup("k1", "C1")

    assert known is not None


def test_the_runner_rejects_an_older_version_behind_a_newer_one_of_the_same_batch(db: Counted) -> None:
    kms = InMemoryKms()

    async def main() -> list[str | None]:
        breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
        runner = CommandRunner(kms, db.ledger, breaker, attempt_budget=2, retry_initial=0.001, retry_max=0.005)
        newer, older = command("C1", "k-new", version=5), command("C1", "k-old", version=4)
        try:
            runner.expect(newer)
            runner.expect(older)
            runner.read_ahead()
            first = await runner.run(newer)
            second = await runner.run(older)
        finally:
            await breaker.aclose()
        return [first.result.error_code, second.result.error_code]

    codes = asyncio.run(main())

    assert codes == [None, STALE_COMMAND]
    assert [c.command.idempotency_key for c in kms.calls if c.command is not None] == ["k-new"]


def origin(key: str, version: int) -> Origin:
    return Origin(datetime(2026, 1, 1, tzinfo=UTC), "S-1", version, key)


def test_attribute_origins_are_read_with_the_batch_and_follow_what_is_recorded(db: Counted) -> None:
    async def write(reads: ReadAhead | None, key: str, version: int) -> None:
        await GroupCommit(db.ledger, reads).record(result(key, "C1"), version=version, subscription_id="S-1",
                                                   attribute="entitlements", origin=origin(key, version))

    asyncio.run(write(None, "k0", 3))
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1", ("C1", "entitlements"))
    reads.expect("k2", "C1", ("C1", "entitlements"))
    reads.expect("k3", "C2", ("C2", "pin"))
    reads.read()
    before_read = db.selects
    held = reads.origin("C1", "entitlements")
    after_read = db.selects

    assert held == db.ledger.origin("C1", "entitlements") == origin("k0", 3)
    assert reads.origin("C2", "pin") is None
    asyncio.run(write(reads, "k1", 5))
    selects = db.selects
    assert reads.origin("C1", "entitlements") == origin("k1", 5)
    asyncio.run(write(reads, "k-older", 4))  # an older one is recorded: the newer stays, as in the table
    assert reads.origin("C1", "entitlements") == db.ledger.origin("C1", "entitlements") == origin("k1", 5)
    assert after_read - before_read == 3
    assert db.selects - selects == 2  # the record's own read of the origin and the check above


def test_a_batch_is_read_when_it_runs_not_when_it_was_polled(db: Counted) -> None:
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.read()  # polled; it waits in the executor's buffer
    db.ledger.record(result("k1", "C1"), version=2, subscription_id="S-1")  # meanwhile, the table moves on

    known, _ = reads.lookup("k1", "C1")

    assert known is not None and known.idempotency_key == "k1"


def test_a_batch_read_that_fails_leaves_each_command_to_its_own_read(db: Counted,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db.ledger.record(result("k1", "C1"), version=2, subscription_id="S-1")
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.expect("k2", "C1")
    reads.read()

    def refused(*_args: Any) -> Any:
        raise RuntimeError("the database refused the batch")

    monkeypatch.setattr(db.ledger, "lookup_many", refused)

    known, _ = reads.lookup("k1", "C1")
    assert known is not None
    assert reads.lookup("k2", "C1") == (None, ("S-1", 2))


def test_a_large_batch_is_read_a_chunk_at_a_time(db: Counted) -> None:
    reads = ReadAhead(db.ledger)
    n = ReadAhead.READ_CHUNK * 2 + 10
    for i in range(n):
        reads.expect(f"k{i}", f"C{i}")
    reads.read()

    for i in range(ReadAhead.READ_CHUNK):
        reads.lookup(f"k{i}", f"C{i}")
    first_chunk = db.selects
    for i in range(ReadAhead.READ_CHUNK, n):
        reads.lookup(f"k{i}", f"C{i}")

    assert first_chunk == 2
    assert db.selects == 6
