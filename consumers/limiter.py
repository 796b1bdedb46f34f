"""Traffic control towards the KMS: calls per second (token buckets) and KMS call slots, express first.

A pay-TV KMS takes a few hundred calls a second at best, so the executor limits its calls: one
bucket for every call (``KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND``) and one per operation class
(``KMSBRIDGE_EXECUTOR__RATE_LIMITS__<CLASS>``, messages a class of their own: :data:`OPERATION_CLASS`).
A call takes a token of its class's bucket, then one of the global bucket.

**Shares.** Every executor replica holds a share of each limit: ``limit * assigned partitions / all
partitions`` of the commands topics (:func:`replica_share`), recomputed on every rebalance. The shares
of the replicas add up to the limit with no coordination between them, as long as the commands are
spread evenly over the partitions (they are keyed by secure client).

**Priority.** Waiters of the express lane are served before every waiter of the regular lane, in the
buckets and in the :class:`PriorityGate` of the KMS call slots (``max_inflight``), so an agent's
request never queues behind a campaign's commands waiting for a token or a slot.

Every retry is a call and takes a token; the breaker's probe does not (it runs once a second while
the breaker is open, when no command is calling).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from kafka_edge.metrics import KMS_RATE_LIMIT_PER_SECOND, KMS_RATE_LIMIT_WAITS
from schemas.records import Operation

__all__ = [
    "CLASSES",
    "OPERATION_CLASS",
    "KmsRateLimiter",
    "PriorityGate",
    "RateLimits",
    "TokenBucket",
    "replica_share",
]

#: The operation classes of the per-class limits; ``messages`` are the mail and on-screen messages.
OPERATION_CLASS: Final[Mapping[Operation, str]] = {
    Operation.SYNC_ENTITLEMENTS: "entitlements",
    Operation.CLEAR_ENTITLEMENTS: "entitlements",
    Operation.PAIR: "pairing",
    Operation.UNPAIR: "pairing",
    Operation.SET_PIN: "pin",
    Operation.REAUTHORISE_SECTOR: "sector",
    Operation.SEND_MAIL: "messages",
    Operation.SEND_MESSAGE: "messages",
    Operation.SEND_MAIL_GLOBAL: "messages",
    Operation.SEND_MESSAGE_GLOBAL: "messages",
    Operation.QUERY_CLIENT: "queries",
    Operation.QUERY_CLIENTS: "queries",
}
CLASSES: Final[tuple[str, ...]] = ("entitlements", "pairing", "pin", "sector", "messages", "queries")
#: the label of the global bucket in the metrics
ALL: Final = "all"
#: a quiet bucket holds this many seconds of its rate (at least one token): the most it lets through
#: at once after a pause
BURST_SECONDS: Final = 0.02
#: the window of the bound: no bucket grants more than ``rate * WINDOW_SECONDS + capacity`` in any
#: window of this length, so any second carries at most ``rate * (1 + BURST_SECONDS)`` calls
WINDOW_SECONDS: Final = 1.0
#: a token counts as whole from here (floating-point refills land a hair below 1.0)
_WHOLE: Final = 1.0 - 1e-9
#: slack of the window's arithmetic on floating-point times
_EPSILON: Final = 1e-9


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def replica_share(assigned: int, total: int) -> float:
    """This replica's share of a limit: its assigned partitions over all partitions of the commands
    topics. With nothing assigned the share is one partition's, so a command still finishing after a
    revoke is not stopped for good (it is abandoned at its next attempt anyway)."""
    if total <= 0:
        return 1.0
    return max(assigned, 1) / total if assigned < total else 1.0


class TokenBucket:
    """``rate`` tokens a second; waiters are served in order, every express waiter before any regular
    one. ``clock`` and ``sleep`` are injectable so tests count tokens on a clock of their own.

    Two rules bound what it grants (:data:`BURST_SECONDS`, :data:`WINDOW_SECONDS`):

    - a *quiet* bucket (no waiter queued) fills up to :attr:`capacity` tokens only, and tokens it
      owes beyond that (below) lapse as fast as new ones would accrue, so a call arriving after a
      pause of a window finds the burst at most;
    - while waiters are queued, the tokens of the time that passed are theirs even when the bucket
      could not hand them out on time (the event loop ran something else past the next token: a
      ledger write, the SOAP parsing of a batch of answers, a busy CPU); capping them at
      :attr:`capacity` would lose every late wake-up's tokens for good, and the calls per second
      would run below the rate by as much as the loop is late (late by 30 ms every 20th wake-up, a
      capped bucket at 600/s holds 489/s: ``tests/unit/test_limiter_accuracy.py``). They are capped
      at one window's worth instead, and every grant obeys the window: no more than
      :attr:`per_window` (``rate + capacity``) callers go on with a token in any
      :data:`WINDOW_SECONDS`. A caller counts when it goes on (its task resumes), not when the
      drainer grants it, and granted callers not yet resumed hold their place: a busy loop that
      resumes many of them at once cannot crowd more than that into a window.

    So any second carries at most ``rate + capacity`` calls, and a saturated bucket grants ``rate``
    a second on average, however late its drainer wakes (up to a window).
    """

    def __init__(self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._clock = clock
        self._sleep = sleep
        self._rate = rate
        self._tokens = self.capacity
        self._last = clock()
        self._passed: deque[float] = deque()  # when callers went on with a token, within the last window
        self._in_transit = 0  # tokens handed to waiters that have not gone on yet
        self._express: deque[asyncio.Future[None]] = deque()
        self._regular: deque[asyncio.Future[None]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        """The tokens a quiet bucket keeps: :data:`BURST_SECONDS` of its rate, one at least."""
        return max(1.0, self._rate * BURST_SECONDS)

    @property
    def per_window(self) -> int:
        """The most grants in any :data:`WINDOW_SECONDS`: the window's tokens plus the burst."""
        return max(1, math.floor(self._rate * WINDOW_SECONDS + self.capacity + _EPSILON))

    @property
    def waiting(self) -> int:
        return sum(1 for f in (*self._express, *self._regular) if not f.done())

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (a rebalance moved this replica's share)."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._refill()
        self._rate = rate
        self._tokens = min(self._tokens, self.capacity)
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()  # it sleeps for the old rate's gap
            self._drainer = None
            self._kick()

    async def acquire(self, express: bool = False) -> bool:
        """Take one token, waiting for it when there is none; True when it waited."""
        if not self._express and not self._regular:
            self._refill()
            if self._tokens >= _WHOLE and self._room() > 0:
                self._tokens -= 1.0
                self._passed.append(self._clock())
                return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._express if express else self._regular).append(fut)
        self._kick()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._in_transit -= 1
                self._tokens += 1.0  # granted as the waiter was cancelled: the token goes back
                if self.waiting:
                    self._kick()
            raise
        # the window counts a call when its caller goes on, not when the drainer granted it: a busy
        # loop may resume many granted waiters at once
        self._in_transit -= 1
        self._passed.append(self._clock())
        if self.waiting:
            self._kick()  # the drainer may have stopped for the window's room this caller held
        return True

    def _refill(self) -> float:
        """Add the tokens of the time since the last refill (capped: see the class docstring); forget
        grants older than the window. Returns the clock's time."""
        now = self._clock()
        accrued = (now - self._last) * self._rate
        if self.waiting:  # the time was the waiters': its tokens are kept, up to a window's worth
            self._tokens = min(max(self._rate * WINDOW_SECONDS, self.capacity), self._tokens + accrued)
        else:  # quiet: up to the burst, and tokens owed beyond it lapse as fast as new ones accrue
            self._tokens = min(self._tokens + accrued, max(self.capacity, self._tokens - accrued))
        self._last = now
        horizon = now - WINDOW_SECONDS + _EPSILON
        while self._passed and self._passed[0] <= horizon:
            self._passed.popleft()
        return now

    def _room(self) -> int:
        """Grants the window still takes: callers that went on within it and granted ones on their way
        count."""
        return self.per_window - len(self._passed) - self._in_transit

    def _next_waiter(self) -> asyncio.Future[None] | None:
        for queue in (self._express, self._regular):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    return fut
        return None

    def _kick(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            now = self._refill()
            while self._tokens >= _WHOLE and self._room() > 0:
                fut = self._next_waiter()
                if fut is None:
                    return
                self._tokens -= 1.0
                self._in_transit += 1
                fut.set_result(None)
            if not self.waiting:
                return
            if self._room() <= 0 and len(self._passed) < self.per_window:
                return  # the window is held by granted callers on their way: each one kicks when it goes on
            token = max(1.0 - self._tokens, 0.0) / self._rate
            window = self._passed[0] + WINDOW_SECONDS - now if self._room() <= 0 else 0.0
            await self._sleep(max(token, window, 0.0))


@dataclass(frozen=True)
class RateLimits:
    """The whole deployment's limits in calls per second (None: no limit), before the replica's share."""

    total: float | None = None
    per_class: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.per_class) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown operation classes {unknown} (one of {list(CLASSES)})")

    @property
    def enabled(self) -> bool:
        return self.total is not None or bool(self.per_class)


class KmsRateLimiter:
    """The global bucket and one bucket per limited class, each at ``limit * share``."""

    def __init__(self, limits: RateLimits, *, share: float = 1.0, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._limits = limits
        self._share = share
        self._total = TokenBucket(limits.total * share, clock=clock, sleep=sleep) if limits.total else None
        self._classes = {name: TokenBucket(rate * share, clock=clock, sleep=sleep)
                         for name, rate in limits.per_class.items()}
        self._publish()

    @property
    def share(self) -> float:
        return self._share

    def rate(self, klass: str = ALL) -> float | None:
        """This replica's calls per second for ``klass`` (``all``: the global bucket), None: unlimited."""
        bucket = self._total if klass == ALL else self._classes.get(klass)
        return bucket.rate if bucket is not None else None

    def set_share(self, share: float) -> None:
        """This replica's share of every limit (:func:`replica_share`), from a rebalance."""
        if not 0 < share <= 1:
            raise ValueError(f"share must lie in (0, 1], got {share}")
        self._share = share
        if self._total is not None and self._limits.total is not None:
            self._total.set_rate(self._limits.total * share)
        for name, bucket in self._classes.items():
            bucket.set_rate(self._limits.per_class[name] * share)
        self._publish()

    async def acquire(self, operation: Operation, *, express: bool = False) -> None:
        """Wait for a token of ``operation``'s class, then one of the global bucket."""
        klass = OPERATION_CLASS[operation]
        waited = False
        bucket = self._classes.get(klass)
        if bucket is not None:
            waited = await bucket.acquire(express)
        if self._total is not None:
            waited = await self._total.acquire(express) or waited
        if waited:
            KMS_RATE_LIMIT_WAITS.labels(klass).inc()

    def _publish(self) -> None:
        if self._total is not None:
            KMS_RATE_LIMIT_PER_SECOND.labels(ALL).set(self._total.rate)
        for name, bucket in self._classes.items():
            KMS_RATE_LIMIT_PER_SECOND.labels(name).set(bucket.rate)


class PriorityGate:
    """At most ``slots`` holders at once; a free slot goes to the oldest express waiter, else to the
    oldest regular one (an :class:`asyncio.Semaphore` with two queues)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._free = slots
        self._express: deque[asyncio.Future[None]] = deque()
        self._regular: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    @contextlib.asynccontextmanager
    async def slot(self, express: bool = False) -> AsyncIterator[None]:
        await self._take(express)
        try:
            yield
        finally:
            self._release()

    async def _take(self, express: bool) -> None:
        if self._free > 0 and not self._express and not self._regular:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._express if express else self._regular).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # handed the slot as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        for queue in (self._express, self._regular):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # the slot passes straight to the waiter
                    return
        self._free += 1
