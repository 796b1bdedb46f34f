"""The executor's ledger reads stay batched for commands that wait long in the buffer: a command whose
read went stale behind its card's earlier commands is read again with the other waiting commands, in
one chunk, instead of one lookup each."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import consumers.ledger as ledger_module
from consumers.ledger import ReadAhead
from schemas.records import KmsResult, ResultState
from tests.support.ledger import Counted, counted_ledger


class Clock:
    """``time`` for the ledger module: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Counted]:
    with counted_ledger(tmp_path) as counted:
        yield counted


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ledger_module, "time", fake)
    return fake


def test_commands_whose_read_went_stale_in_the_buffer_are_read_again_in_one_chunk(db: Counted,
                                                                                  clock: Clock) -> None:
    reads = ReadAhead(db.ledger)
    for round_ in range(2):  # two commands per card, polled in one batch
        for card in range(10):
            reads.expect(f"k{round_}-{card}", f"C{card}")
    reads.read()
    for card in range(10):
        reads.lookup(f"k0-{card}", f"C{card}")
    first_round = db.selects
    clock.now += ReadAhead.MAX_AGE_SECONDS + 1  # the second round waited behind the first

    answers = [reads.lookup(f"k1-{card}", f"C{card}") for card in range(10)]

    assert first_round == 2
    assert db.selects - first_round == 2  # one chunk: keys and cards, not a lookup per command
    assert answers == [(None, None)] * 10


def test_a_card_held_from_an_older_read_is_read_again_with_its_chunk(db: Counted, clock: Clock) -> None:
    db.ledger.record(KmsResult(idempotency_key="k-other", operation="SYNC_ENTITLEMENTS", secure_client_id="C1",
                               state=ResultState.COMPLETED, executed_at=datetime.now(UTC)),
                     version=4, subscription_id="S-1")
    reads = ReadAhead(db.ledger)
    reads.expect("k1", "C1")
    reads.read()
    assert reads.lookup("k1", "C1") == (None, ("S-1", 4))
    reads.expect("k2", "C1")  # C1's version is held from k1's read
    reads.expect("k3", "C2")
    reads.read()
    clock.now += ReadAhead.MAX_AGE_SECONDS * 0.75
    selects = db.selects
    third = reads.lookup("k3", "C2")  # reads the chunk while C1's version is still fresh
    clock.now += ReadAhead.MAX_AGE_SECONDS * 0.5  # k2 asks: its key's read is fresh, k1's read of C1 is not

    second = reads.lookup("k2", "C1")

    assert (second, third) == ((None, ("S-1", 4)), (None, None))
    assert db.selects - selects == 2  # one chunk read C1 again with the keys: no lookup of its own
