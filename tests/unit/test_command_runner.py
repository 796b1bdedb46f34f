"""The command runner against the in-memory KMS: ledger, stale guard, retries, breaker, transport budget."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine

from consumers.breaker import Breaker
from consumers.command_runner import (
    KMS_ERROR,
    OUTCOME_UNKNOWN,
    STALE_COMMAND,
    TRANSPORT_ERROR,
    CommandRunner,
    RunOutcome,
    full_jitter,
)
from consumers.ledger import LEDGER_METADATA, Ledger
from kafka_edge.errors import CommandAbandoned
from kms_adapter.errors import KmsUnavailable
from kms_adapter.fake import InMemoryKms, KmsCall
from kms_adapter.port import KmsOutcome
from schemas.records import KmsCommand, Message, MessageKind, Operation, Product, ResultState, Source, TextMode

BUDGET = 4


class FlakyKms(InMemoryKms):
    """The in-memory KMS plus transient failures: for everyone (``down``), for some cards, for a card's
    next N calls, or at random (``error_rate``, pings included)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.failing_cards: set[str] = set()
        self.fail_card_times: dict[str, int] = {}
        self.error_rate = 0.0
        self.rng = random.Random(5)
        self.on_failure: Callable[[], None] | None = None

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        card = command.secure_client_id
        remaining = self.fail_card_times.get(card, 0)
        if remaining:
            self.fail_card_times[card] = remaining - 1
        if self.down or card in self.failing_cards or remaining or self.rng.random() < self.error_rate:
            self.calls.append(KmsCall("execute", command=command, secure_client_id=card))
            if self.on_failure is not None:
                self.on_failure()
            raise KmsUnavailable("http_503")
        return await super().execute(command)

    async def ping(self) -> None:
        if self.down or self.rng.random() < self.error_rate:
            raise KmsUnavailable("connect")
        await super().ping()


def command(card: str, key: str, *, version: int = 1, products: tuple[str, ...] = ("P100",),
            subscription: str = "S-1") -> KmsCommand:
    return KmsCommand(
        idempotency_key=key, operation=Operation.SYNC_ENTITLEMENTS, secure_client_id=card,
        subscription_id=subscription, subscription_version=version,
        products=[Product(product_id=p) for p in products],
        source=Source(process_name="test", event_id=key), created_at=datetime.now(UTC),
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    LEDGER_METADATA.create_all(engine)
    return Ledger(engine)


def runner_for(kms: InMemoryKms, ledger: Ledger, *, budget: int = BUDGET) -> tuple[CommandRunner, Breaker]:
    breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
    return CommandRunner(kms, ledger, breaker, attempt_budget=budget, retry_initial=0.001, retry_max=0.005), breaker


def run_one(kms: InMemoryKms, ledger: Ledger, cmd: KmsCommand, *, replayed: bool = False) -> RunOutcome:
    async def main() -> RunOutcome:
        runner, breaker = runner_for(kms, ledger)
        try:
            return await runner.run(cmd, replayed=replayed)
        finally:
            await breaker.aclose()

    return asyncio.run(main())


async def until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_transient_failures_are_retried_in_place_and_the_command_applies_once(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(2, lambda: KmsUnavailable("timeout"))

    outcome = run_one(kms, ledger, command("C1", "k1"))

    assert outcome.result.state is ResultState.COMPLETED
    assert outcome.result.attempts == 3
    assert not outcome.dead_letter
    assert [p.product_id for p in kms.entitlements("C1")] == ["P100"]
    assert len(kms.executed) == 3
    assert ledger.get("k1") is not None


def test_a_business_error_is_rejected_at_once_without_a_retry(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.set_card_error("C1", "UNKNOWN_CLIENT")

    outcome = run_one(kms, ledger, command("C1", "k1"))

    assert outcome.result.state is ResultState.REJECTED
    assert outcome.result.error_code == KMS_ERROR
    assert outcome.result.provider_error_code == "UNKNOWN_CLIENT"
    assert len(kms.executed) == 1
    assert not outcome.dead_letter


def test_a_key_already_in_the_ledger_is_not_sent_to_the_kms_again(ledger: Ledger) -> None:
    kms = FlakyKms()
    first = run_one(kms, ledger, command("C1", "k1"))
    again = run_one(kms, ledger, command("C1", "k1"))

    assert len(kms.executed) == 1
    assert again.result.duplicate is True
    assert again.result.state is first.result.state is ResultState.COMPLETED


def test_an_older_version_arriving_after_a_newer_one_is_not_applied_and_says_stale(ledger: Ledger) -> None:
    kms = FlakyKms()
    run_one(kms, ledger, command("C1", "v2", version=2, products=("P100", "P200")))

    late = run_one(kms, ledger, command("C1", "v1", version=1, products=("P100",)))

    assert late.result.state is ResultState.REJECTED
    assert late.result.error_code == STALE_COMMAND
    assert "older" in (late.result.error_description or "")
    assert [c.idempotency_key for c in kms.executed] == ["v2"]
    assert {p.product_id for p in kms.entitlements("C1")} == {"P100", "P200"}


def test_the_same_version_again_and_a_card_moved_to_another_subscription_are_not_stale(ledger: Ledger) -> None:
    kms = FlakyKms()
    run_one(kms, ledger, command("C1", "a", version=5))

    same = run_one(kms, ledger, command("C1", "b", version=5))
    moved = run_one(kms, ledger, command("C1", "c", version=1, subscription="S-2"))

    assert same.result.state is ResultState.COMPLETED
    assert moved.result.state is ResultState.COMPLETED


def test_one_card_failing_alone_past_its_budget_is_rejected_with_its_attempt_history(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.failing_cards = {"BAD"}

    async def main() -> tuple[RunOutcome, RunOutcome, Breaker]:
        runner, breaker = runner_for(kms, ledger)
        good = await runner.run(command("GOOD", "g1"))
        bad = await runner.run(command("BAD", "b1"))
        return good, bad, breaker

    good, bad, breaker = asyncio.run(main())

    assert good.result.state is ResultState.COMPLETED
    assert bad.result.state is ResultState.REJECTED
    assert bad.result.error_code == TRANSPORT_ERROR
    assert bad.dead_letter
    assert bad.result.attempts == BUDGET
    assert len(bad.history) == BUDGET
    assert all("http_503" in h for h in bad.history)
    assert bad.history[0].startswith("attempt 1 ")
    assert breaker.opened_count == 0


def test_a_kms_outage_never_dead_letters_the_command_waits_and_completes_after_recovery(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.down = True

    async def main() -> tuple[RunOutcome, Breaker, int]:
        runner, breaker = runner_for(kms, ledger)
        task = asyncio.create_task(runner.run(command("C1", "k1")))
        await until("breaker open", lambda: breaker.is_open)
        calls_while_open = len(kms.executed)
        await asyncio.sleep(0.1)  # the outage lasts: nothing is sent meanwhile (only probes)
        assert not task.done()
        assert len(kms.executed) == calls_while_open
        kms.down = False
        outcome = await asyncio.wait_for(task, 5)
        await breaker.aclose()
        return outcome, breaker, calls_while_open

    outcome, breaker, calls_while_open = asyncio.run(main())

    assert outcome.result.state is ResultState.COMPLETED
    assert not outcome.dead_letter
    assert breaker.opened_count >= 1
    assert calls_while_open == BUDGET  # the budget was spent, then the probe said "down", not "this card"
    assert [p.product_id for p in kms.entitlements("C1")] == ["P100"]


def test_failures_during_an_outage_do_not_count_against_the_budget(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_card_times["C1"] = BUDGET * 3  # far past its budget, but each time the KMS is down for all

    async def main() -> RunOutcome:
        runner, breaker = runner_for(kms, ledger)
        # other cards' failures open the breaker while each of C1's calls is in flight
        kms.on_failure = lambda: breaker.open("other secure clients failing")
        outcome = await asyncio.wait_for(runner.run(command("C1", "k1")), 10)
        await breaker.aclose()
        return outcome

    outcome = asyncio.run(main())

    assert outcome.result.state is ResultState.COMPLETED
    assert not outcome.dead_letter
    assert outcome.result.attempts == BUDGET * 3 + 1


def test_a_degraded_kms_never_dead_letters_a_card_whose_failure_streak_is_chance(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_card_times["UNLUCKY"] = BUDGET + 2  # more failures in a row than its budget

    async def main() -> RunOutcome:
        runner, breaker = runner_for(kms, ledger)
        for i in range(200):  # everyone else sees 25 % errors meanwhile
            if i % 4 == 0:
                breaker.record_failure(f"other-{i % 9}")
            else:
                breaker.record_success(f"other-{i % 9}")
        outcome = await runner.run(command("UNLUCKY", "u1"))
        await breaker.aclose()
        return outcome

    outcome = asyncio.run(main())

    assert outcome.result.state is ResultState.COMPLETED
    assert not outcome.dead_letter
    assert outcome.result.attempts == BUDGET + 3


def test_a_stream_through_a_kms_failing_one_call_in_five_dead_letters_nothing(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.error_rate = 0.2

    async def main() -> list[RunOutcome]:
        runner, breaker = runner_for(kms, ledger, budget=2)  # a small budget makes streaks common
        outcomes = await asyncio.gather(*(runner.run(command(f"C{i}", f"k{i}")) for i in range(300)))
        await breaker.aclose()
        return list(outcomes)

    outcomes = asyncio.run(main())

    assert all(o.result.state is ResultState.COMPLETED for o in outcomes)
    assert not any(o.dead_letter for o in outcomes)


def test_an_error_the_adapter_did_not_map_is_retried_instead_of_killing_the_command(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(1, RuntimeError("a bug in an adapter"))

    outcome = run_one(kms, ledger, command("C1", "k1"))

    assert outcome.result.state is ResultState.COMPLETED
    assert outcome.result.attempts == 2


def test_an_abandoned_command_stops_before_its_next_attempt_and_records_nothing(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(1, lambda: KmsUnavailable("timeout"))

    async def main() -> None:
        runner, breaker = runner_for(kms, ledger)
        with pytest.raises(CommandAbandoned):
            await runner.run(command("C1", "k1"), abandoned=lambda: len(kms.calls) >= 1)
        await breaker.aclose()

    asyncio.run(main())

    assert len(kms.executed) == 1
    assert ledger.get("k1") is None  # the partition's new owner will run it


def test_a_command_waiting_for_an_open_breaker_notices_it_was_abandoned(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.down = True

    async def main() -> None:
        runner, breaker = runner_for(kms, ledger)
        breaker.open("outage")
        flag = asyncio.Event()
        task = asyncio.create_task(runner.run(command("C1", "k1"), abandoned=flag.is_set))
        await asyncio.sleep(0.05)
        flag.set()  # e.g. SIGTERM during the outage
        with pytest.raises(CommandAbandoned):
            await asyncio.wait_for(task, 2)
        await breaker.aclose()

    asyncio.run(main())
    assert kms.executed == []


@given(st.integers(min_value=0, max_value=30), st.floats(min_value=0.001, max_value=1),
       st.floats(min_value=0.01, max_value=10))
def test_full_jitter_backoff_stays_between_zero_and_the_capped_exponential(attempt: int, initial: float,
                                                                           cap: float) -> None:
    delay = full_jitter(attempt, initial, cap)
    assert 0 <= delay <= min(cap, initial * 2**attempt)


class CountingKms(InMemoryKms):
    """The in-memory KMS that holds each call until released and records how many overlapped."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.most = 0
        self.release = asyncio.Event()

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await self.release.wait()
            return await super().execute(command)
        finally:
            self.active -= 1


def test_the_gate_bounds_kms_calls_in_flight_and_every_command_still_completes(ledger: Ledger) -> None:
    kms = CountingKms()

    async def main() -> list[RunOutcome]:
        runner, breaker = runner_for(kms, ledger)
        gate = asyncio.Semaphore(3)
        try:
            tasks = [asyncio.create_task(runner.run(command(f"C-{i}", f"k{i}"), gate=gate)) for i in range(12)]
            await until("three calls in flight", lambda: kms.active == 3)
            assert not any(t.done() for t in tasks)
            kms.release.set()
            return await asyncio.gather(*tasks)
        finally:
            await breaker.aclose()

    outcomes = asyncio.run(main())
    assert kms.most == 3  # never more than the gate allows
    assert [o.result.state for o in outcomes] == [ResultState.COMPLETED] * 12


# An effect sent without a complete answer is never resent on its own (OUTCOME_UNKNOWN, dead-lettered).


def mail(card: str, key: str) -> KmsCommand:
    return KmsCommand(
        idempotency_key=key, operation=Operation.SEND_MAIL, secure_client_id=card,
        message=Message(kind=MessageKind.MAIL, text_mode=TextMode.ANSI, text="Your bill is ready"),
        source=Source(process_name="test", communication_id=key), created_at=datetime.now(UTC),
    )


def test_a_mail_sent_without_an_answer_is_not_resent_and_is_dead_lettered(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(1, lambda: KmsUnavailable("timeout", maybe_applied=True))

    outcome = run_one(kms, ledger, mail("C1", "m1"))

    assert outcome.result.state is ResultState.REJECTED
    assert outcome.result.error_code == OUTCOME_UNKNOWN
    assert outcome.dead_letter
    assert len(kms.executed) == 1  # the one call whose answer was lost; no second one
    assert ledger.get("m1") is not None  # a redelivery is not sent again either


def test_a_mail_that_never_reached_the_kms_is_retried_until_it_is_shown(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(2, lambda: KmsUnavailable("connect"))

    outcome = run_one(kms, ledger, mail("C1", "m2"))

    assert outcome.result.state is ResultState.COMPLETED
    assert outcome.result.attempts == 3


def test_an_absolute_command_whose_answer_was_lost_is_resent(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(1, lambda: KmsUnavailable("timeout", maybe_applied=True))

    outcome = run_one(kms, ledger, command("C1", "k1"))

    assert outcome.result.state is ResultState.COMPLETED
    assert outcome.result.attempts == 2


def test_a_replay_from_the_dlq_sends_an_undelivered_command_again_and_a_redelivery_does_not(ledger: Ledger) -> None:
    kms = FlakyKms()
    kms.fail_next(1, lambda: KmsUnavailable("timeout", maybe_applied=True))
    first = run_one(kms, ledger, mail("C1", "m3"))
    redelivered = run_one(kms, ledger, mail("C1", "m3"))
    calls_before_the_replay = len(kms.executed)

    replayed = run_one(kms, ledger, mail("C1", "m3"), replayed=True)

    assert first.result.error_code == OUTCOME_UNKNOWN
    assert redelivered.result.duplicate and calls_before_the_replay == 1
    assert replayed.result.state is ResultState.COMPLETED and not replayed.result.duplicate
    assert len(kms.executed) == 2


def test_a_replay_of_a_command_that_completed_is_not_sent_again(ledger: Ledger) -> None:
    kms = FlakyKms()
    run_one(kms, ledger, mail("C1", "m4"))

    assert run_one(kms, ledger, mail("C1", "m4"), replayed=True).result.duplicate
    assert len(kms.executed) == 1
