"""The calls-per-second limit holds its rate when the event loop wakes the bucket late, and never grants
more than ``rate + capacity`` in any one-second window; counted on a clock of the test's own (no timing).

A late wake-up is what a busy executor does to the bucket: its drainer sleeps until the next token, and
the loop runs something else (a ledger write, a batch of SOAP answers, another process on the CPU)
past it. The tests run the bucket on an event loop of virtual time (:class:`LateLoop`): the real
:func:`asyncio.sleep`, timers and task switches, but the clock jumps to the next timer when nothing is
ready, plus a lateness the test chooses.
"""

from __future__ import annotations

import asyncio
import bisect
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from consumers.limiter import BURST_SECONDS, KmsRateLimiter, RateLimits, TokenBucket
from schemas.records import Operation

#: the held rate the limiter keeps to, of its setting, however late its wake-ups
ACCURACY = 0.03


class LateLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, woken late: when nothing is ready it jumps its clock to the next
    timer instead of waiting, plus ``late(n)`` seconds on its ``n``-th wait (the loop ran something
    else past the wake-up). Callbacks run at the time they were woken at; no real time passes."""

    def __init__(self, late: Callable[[int], float]) -> None:
        self.now = 0.0
        self.waits = 0
        self._late = late
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self.now

    def advance(self, timeout: float | None) -> None:
        if timeout is None:
            raise RuntimeError("every task waits for nothing that will come: the scenario hangs")
        if timeout > 0:
            self.waits += 1
            self.now += timeout + self._late(self.waits)


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: LateLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)  # the loop's own wake-up pipe, never waited for
        if not ready:
            self._loop.advance(timeout)
        return ready


def _run(loop: LateLoop, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


def _saturate(rate: float, late: Callable[[int], float], *, until: float, workers: int = 64) -> list[float]:
    """Grant times of a bucket at ``rate`` (the loop's clock, :func:`asyncio.sleep`) to ``workers``
    callers that ask for a token again as soon as they got one, until ``until``: the bucket always has
    waiters, as under a backlog."""
    loop = LateLoop(late)
    times: list[float] = []

    async def scenario() -> None:
        bucket = TokenBucket(rate, clock=loop.time)

        async def worker() -> None:
            while loop.time() < until:
                await bucket.acquire()
                times.append(loop.time())

        await asyncio.gather(*(worker() for _ in range(workers)))

    _run(loop, scenario)
    return sorted(times)


def _busiest_window(times: list[float], seconds: float = 1.0) -> int:
    """The most grants in any window ``[t, t + seconds)`` (every window's count is largest when it
    starts at a grant)."""
    return max(bisect.bisect_left(times, t + seconds - 1e-6) - i for i, t in enumerate(times))


def _held_rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


@pytest.mark.parametrize("rate", [100.0, 300.0, 600.0])
def test_a_saturated_bucket_holds_its_rate_when_the_loop_wakes_it_late(rate: float) -> None:
    # every 20th wait the loop is 30 ms late (longer than the 20 ms of tokens a quiet bucket keeps),
    # every other one half a millisecond
    times = _saturate(rate, lambda n: 0.030 if n % 20 == 0 else 0.0005, until=20.0)
    held = _held_rate(times, 2.0, 18.0)
    assert held == pytest.approx(rate, rel=ACCURACY)
    assert _busiest_window(times) <= rate * (1 + BURST_SECONDS)


@pytest.mark.parametrize("rate", [100.0, 600.0])
def test_no_second_carries_more_than_the_rate_and_the_burst_even_after_a_long_stall(rate: float) -> None:
    # a stall longer than the window itself (the loop blocked for 1.5 s) with waiters queued: the
    # tokens of that time are theirs, but they may not all go out at once on top of the next second's
    times = _saturate(rate, lambda n: 1.5 if n == 100 else (0.030 if n % 7 == 0 else 0.0), until=12.0)
    assert _busiest_window(times) <= TokenBucket(rate).per_window == int(rate * (1 + BURST_SECONDS))
    # what the stall kept from the KMS is made up at the burst's pace only, never above the bound
    assert rate <= _held_rate(times, 4.0, 11.0) <= rate * (1 + BURST_SECONDS)


def test_a_quiet_bucket_lets_only_its_burst_through_at_once() -> None:
    loop = LateLoop(lambda n: 0.0)
    times: list[float] = []

    async def scenario() -> None:
        bucket = TokenBucket(600.0, clock=loop.time)
        await asyncio.gather(*(bucket.acquire() for _ in range(200)))  # owes nothing once done
        await asyncio.sleep(30.0)  # quiet for half a minute: no waiter, so no tokens owed to anyone

        async def one() -> None:
            await bucket.acquire()
            times.append(loop.time())

        await asyncio.gather(*(one() for _ in range(100)))

    _run(loop, scenario)
    first = min(times)
    assert sum(1 for t in times if t == first) == int(600 * BURST_SECONDS)


def test_tokens_owed_to_waiters_lapse_once_the_bucket_is_quiet() -> None:
    # the loop blocked for half a second with waiters queued: the bucket owes them 300 tokens, but
    # only 64 ask, once each; half a minute later nobody is owed anything and only the burst goes out
    loop = LateLoop(lambda n: 0.5 if n == 500 else 0.0)
    times: list[float] = []

    async def scenario() -> None:
        bucket = TokenBucket(600.0, clock=loop.time)

        async def worker() -> None:
            while loop.time() < 1.0:
                await bucket.acquire()

        await asyncio.gather(*(worker() for _ in range(64)))
        assert loop.time() > 1.0  # the stall happened with the workers waiting
        await asyncio.sleep(30.0)

        async def one() -> None:
            await bucket.acquire()
            times.append(loop.time())

        await asyncio.gather(*(one() for _ in range(100)))

    _run(loop, scenario)
    first = min(times)
    assert sum(1 for t in times if t == first) == int(600 * BURST_SECONDS)


def test_the_global_and_class_buckets_both_hold_their_rates_on_a_late_loop() -> None:
    loop = LateLoop(lambda n: 0.040 if n % 10 == 0 else 0.0)
    calls: dict[str, list[float]] = {"entitlements": [], "messages": []}

    async def scenario() -> None:
        limiter = KmsRateLimiter(RateLimits(total=600.0, per_class={"messages": 100.0}), clock=loop.time)

        async def worker(op: Operation, kind: str) -> None:
            while loop.time() < 12.0:
                await limiter.acquire(op)
                calls[kind].append(loop.time())

        await asyncio.gather(*(worker(Operation.SYNC_ENTITLEMENTS, "entitlements") for _ in range(64)),
                             *(worker(Operation.SEND_MAIL, "messages") for _ in range(16)))

    _run(loop, scenario)
    every = sorted(calls["entitlements"] + calls["messages"])
    assert _held_rate(every, 2.0, 10.0) == pytest.approx(600.0, rel=ACCURACY)
    assert _held_rate(calls["messages"], 2.0, 10.0) == pytest.approx(100.0, rel=ACCURACY)
    assert _busiest_window(every) <= 600 * (1 + BURST_SECONDS)
