"""The calls-per-second limit and the KMS call slots: counted on a clock of the test's own (no timing)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest
from prometheus_client import REGISTRY

from consumers.limiter import (
    CLASSES,
    OPERATION_CLASS,
    KmsRateLimiter,
    PriorityGate,
    RateLimits,
    TokenBucket,
    replica_share,
)
from schemas.records import Operation


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def _grant_times(bucket: TokenBucket, n: int, fake: FakeTime, express: bool = False) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await bucket.acquire(express)
        times.append(fake.now)

    await asyncio.gather(*(one() for _ in range(n)))
    return times


def test_a_bucket_grants_no_more_than_its_rate_in_any_second() -> None:
    fake = FakeTime()

    async def scenario() -> list[float]:
        bucket = TokenBucket(100.0, clock=fake.clock, sleep=fake.sleep)
        return await _grant_times(bucket, 1000, fake)

    times = asyncio.run(scenario())
    per_second = Counter(math.floor(t) for t in times)
    assert len(times) == 1000
    assert max(per_second.values()) <= 100 + 2  # the rate, plus the burst a quiet bucket keeps
    assert 9.9 <= max(times) <= 10.0  # and it does not hold calls back below the rate either


def test_a_new_rate_applies_to_the_waiters_already_queued() -> None:
    fake = FakeTime()

    async def scenario() -> float:
        bucket = TokenBucket(10.0, clock=fake.clock, sleep=fake.sleep)
        waiters = [asyncio.create_task(bucket.acquire()) for _ in range(101)]
        await asyncio.sleep(0)
        bucket.set_rate(100.0)
        await asyncio.gather(*waiters)
        return fake.now

    assert asyncio.run(scenario()) <= 1.05  # at 10/s the hundred would take ten seconds


def test_express_waiters_are_served_before_every_regular_waiter() -> None:
    fake = FakeTime()
    order: list[str] = []

    async def scenario() -> None:
        bucket = TokenBucket(10.0, clock=fake.clock, sleep=fake.sleep)
        await bucket.acquire()  # the one token a quiet bucket holds

        async def one(name: str, express: bool) -> None:
            await bucket.acquire(express)
            order.append(name)

        regular = [asyncio.create_task(one(f"r{i}", False)) for i in range(5)]
        await asyncio.sleep(0)
        express = asyncio.create_task(one("e", True))
        await asyncio.gather(*regular, express)

    asyncio.run(scenario())
    assert order[0] == "e"
    assert order[1:] == [f"r{i}" for i in range(5)]


def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    fake = FakeTime()

    async def scenario() -> int:
        bucket = TokenBucket(10.0, clock=fake.clock, sleep=fake.sleep)
        await bucket.acquire()
        first = asyncio.create_task(bucket.acquire())
        second = asyncio.create_task(bucket.acquire())
        await asyncio.sleep(0)
        first.cancel()
        await second
        return bucket.waiting

    assert asyncio.run(scenario()) == 0


def test_the_replicas_shares_add_up_to_the_limit() -> None:
    limits = RateLimits(total=300.0, per_class={"messages": 30.0})
    assignment = {"replica-a": 4, "replica-b": 2}  # six partitions of the commands topics
    limiters = {name: KmsRateLimiter(limits, share=replica_share(n, 6)) for name, n in assignment.items()}
    assert sum(lim.rate() or 0 for lim in limiters.values()) == pytest.approx(300.0)
    assert sum(lim.rate("messages") or 0 for lim in limiters.values()) == pytest.approx(30.0)
    assert limiters["replica-a"].rate() == pytest.approx(200.0)
    assert limiters["replica-a"].rate("entitlements") is None  # no class limit: only the global one


def test_a_rebalance_moves_the_share_and_the_metric_shows_it() -> None:
    limiter = KmsRateLimiter(RateLimits(total=300.0), share=replica_share(3, 6))
    limiter.set_share(replica_share(6, 6))  # the other replica left
    assert limiter.rate() == pytest.approx(300.0)
    assert REGISTRY.get_sample_value("kmsbridge_kms_rate_limit_per_second", {"class": "all"}) == pytest.approx(300.0)


def test_a_replica_with_nothing_assigned_keeps_one_partitions_share() -> None:
    assert replica_share(0, 6) == pytest.approx(1 / 6)
    assert replica_share(6, 6) == 1.0


def test_a_call_takes_a_token_of_its_class_and_one_of_the_global_bucket() -> None:
    fake = FakeTime()
    waits = REGISTRY.get_sample_value("kmsbridge_kms_rate_limit_waits_total", {"class": "messages"}) or 0.0

    async def scenario() -> list[float]:
        limiter = KmsRateLimiter(RateLimits(total=100.0, per_class={"messages": 10.0}),
                                 clock=fake.clock, sleep=fake.sleep)
        times: list[float] = []

        async def one(op: Operation) -> None:
            await limiter.acquire(op)
            times.append(fake.now)

        await asyncio.gather(*(one(Operation.SEND_MAIL) for _ in range(21)))
        return times

    times = asyncio.run(scenario())
    assert max(times) >= 2.0  # the messages class at 10/s, although the global bucket allows 100/s
    after = REGISTRY.get_sample_value("kmsbridge_kms_rate_limit_waits_total", {"class": "messages"}) or 0.0
    assert after - waits == 20  # every call but the first waited


def test_every_operation_has_a_class_and_unknown_classes_are_refused() -> None:
    assert set(OPERATION_CLASS) == set(Operation)
    assert set(OPERATION_CLASS.values()) == set(CLASSES)
    with pytest.raises(ValueError, match="unknown operation classes"):
        RateLimits(per_class={"mails": 5.0})


def test_a_free_call_slot_goes_to_an_express_waiter_first() -> None:
    order: list[str] = []

    async def scenario() -> None:
        gate = PriorityGate(1)
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.slot():
                await release.wait()

        async def one(name: str, express: bool) -> None:
            async with gate.slot(express):
                order.append(name)

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(one(f"r{i}", False)) for i in range(3)]
        await asyncio.sleep(0)
        waiters.append(asyncio.create_task(one("e", True)))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(held, *waiters)
        assert gate.free == 1

    asyncio.run(scenario())
    assert order == ["e", "r0", "r1", "r2"]


def test_a_cancelled_slot_waiter_does_not_keep_a_free_slot_from_the_next() -> None:
    async def scenario() -> int:
        gate = PriorityGate(1)
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.slot():
                await release.wait()

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        stuck = asyncio.create_task(gate.slot().__aenter__())
        await asyncio.sleep(0)
        stuck.cancel()
        release.set()
        await held
        async with gate.slot():
            pass
        return gate.free

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == 1



def test_the_chart_turns_the_traffic_values_into_the_executor_settings() -> None:
    from tests.unit.test_helm_chart import CI_VALUES, _objects

    objects = _objects(str(CI_VALUES), sets=("executor.trafficControl.expressLane=false",
                                             "executor.trafficControl.rateLimitPerSecond=300",
                                             "executor.trafficControl.rateLimits.messages=20"))
    executor = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-executor"))
    env = {e["name"]: e.get("value") for e in executor["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KMSBRIDGE_EXECUTOR__EXPRESS_LANE"] == "false"
    assert env["KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND"] == "300"
    assert env["KMSBRIDGE_EXECUTOR__RATE_LIMITS__MESSAGES"] == "20"
    default = next(o for o in _objects(str(CI_VALUES)) if o["kind"] == "Deployment"
                   and o["metadata"]["name"].endswith("-executor"))
    names = {e["name"] for e in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND" not in names  # no limit unless one is set
