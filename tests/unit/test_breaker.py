"""The KMS circuit breaker: when it opens, how it closes, and whose fault a failure streak is."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from consumers.breaker import Breaker, Diagnosis
from kms_adapter.errors import KmsUnavailable


class Ping:
    """A scriptable ping: ``down`` makes it fail; ``calls`` counts it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise KmsUnavailable("connect")


async def until(what: str, check: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_failures_across_secure_clients_open_the_breaker_and_a_probe_closes_it() -> None:
    async def scenario() -> None:
        ping = Ping()
        ping.down = True
        changes: list[bool] = []
        breaker = Breaker(ping, threshold=5, probe_seconds=0.01, on_change=changes.append)
        for i in range(5):
            breaker.record_failure(f"card-{i % 2}")
        assert breaker.is_open
        waiter = asyncio.create_task(breaker.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # callers wait while the KMS is down

        ping.down = False
        await until("closed", lambda: not breaker.is_open)
        await asyncio.wait_for(waiter, 1)
        assert changes == [True, False]
        assert breaker.opened_count == 1
        await breaker.aclose()

    run(scenario)


def test_one_card_failing_alone_never_opens_the_breaker() -> None:
    async def scenario() -> None:
        breaker = Breaker(Ping(), threshold=5)
        for _ in range(200):
            breaker.record_failure("bad-card")
        assert not breaker.is_open

    run(scenario)


def test_a_kms_failing_one_call_in_five_does_not_open_the_breaker() -> None:
    async def scenario() -> None:
        rng = random.Random(20)
        breaker = Breaker(Ping(), threshold=5)
        for i in range(20_000):
            card = f"card-{i % 50}"
            if rng.random() < 0.2:
                breaker.record_failure(card)
            else:
                breaker.record_success(card)
            assert not breaker.is_open, f"opened after {i} calls"

    run(scenario)


def test_most_calls_failing_opens_the_breaker_even_after_a_long_healthy_run() -> None:
    async def scenario() -> None:
        breaker = Breaker(Ping(), threshold=5, probe_seconds=10)
        for i in range(500):
            breaker.record_success(f"card-{i % 7}")
        for i in range(30):
            breaker.record_failure(f"card-{i % 7}")
        assert breaker.is_open
        await breaker.aclose()

    run(scenario)


def test_a_failed_probe_opens_the_breaker() -> None:
    async def scenario() -> None:
        ping = Ping()
        ping.down = True
        breaker = Breaker(ping, probe_seconds=10)
        assert await breaker.probe_now() is False
        assert breaker.is_open
        await breaker.aclose()

    run(scenario)


def test_diagnosis_blames_the_card_when_every_other_card_succeeds() -> None:
    async def scenario() -> None:
        breaker = Breaker(Ping())
        for i in range(100):
            breaker.record_success(f"card-{i % 10}")
        for _ in range(6):
            breaker.record_failure("bad-card")
        assert await breaker.diagnose("bad-card", streak=6) is Diagnosis.CARD

    run(scenario)


def test_diagnosis_calls_a_streak_chance_when_other_cards_fail_often_too() -> None:
    async def scenario() -> None:
        breaker = Breaker(Ping())
        for i in range(200):  # a degraded KMS: 20 % of everyone's calls fail
            if i % 5 == 0:
                breaker.record_failure(f"card-{i % 10}")
            else:
                breaker.record_success(f"card-{i % 10}")
        # 0.2 ** 6 = 6.4e-5: six failures in a row are well within chance
        assert await breaker.diagnose("card-x", streak=6) is Diagnosis.FLAKY
        assert not breaker.is_open

    run(scenario)


def test_diagnosis_says_down_and_opens_when_the_probe_fails() -> None:
    async def scenario() -> None:
        ping = Ping()
        ping.down = True
        breaker = Breaker(ping, probe_seconds=10)
        assert await breaker.diagnose("card-x", streak=6) is Diagnosis.DOWN
        assert breaker.is_open
        await breaker.aclose()

    run(scenario)


def test_with_little_traffic_the_diagnosis_samples_the_kms_with_pings() -> None:
    async def scenario() -> None:
        ping = Ping()
        breaker = Breaker(ping, min_samples=20)
        for _ in range(6):
            breaker.record_failure("lonely-card")
        assert await breaker.diagnose("lonely-card", streak=6) is Diagnosis.CARD
        assert ping.calls >= 20  # the probe plus pings until 20 samples of "everyone else"

    run(scenario)


def test_closing_starts_judging_the_kms_afresh() -> None:
    async def scenario() -> None:
        ping = Ping()
        breaker = Breaker(ping, probe_seconds=0.01)
        for i in range(10):
            breaker.record_failure(f"card-{i % 3}")
        assert breaker.is_open
        await until("closed", lambda: not breaker.is_open)
        assert breaker.failure_ratio() == (0.0, 0)
        breaker.record_failure("card-0")  # one failure right after an outage does not re-open it
        assert not breaker.is_open

    run(scenario)


@pytest.mark.parametrize("excluded", ["a", "b"])
def test_failure_ratio_leaves_out_the_card_under_suspicion(excluded: str) -> None:
    async def scenario() -> None:
        breaker = Breaker(Ping())
        breaker.record_failure("a")
        breaker.record_failure("a")
        breaker.record_success("b")
        breaker.record_failure("b")
        ratio, samples = breaker.failure_ratio(excluding=excluded)
        assert samples == 2
        assert ratio == (0.5 if excluded == "a" else 1.0)

    run(scenario)
