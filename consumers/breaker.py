"""Circuit breaker for the KMS, and the evidence for "is it the KMS or this one card?".

Every KMS call reports its outcome (:meth:`Breaker.record_success` / :meth:`Breaker.record_failure`,
with the secure client it named). From those outcomes:

- **Opening.** Among the last ``window`` outcomes, when at least ``threshold`` are failures, they make
  up at least ``open_ratio`` of the window and they come from at least two secure clients, the breaker
  opens (one bad card alone must not stop the others). A failed probe opens it too. A failure *ratio*
  rather than a run of consecutive failures keeps a degraded KMS (say 20 % errors) from flapping the
  breaker: retries absorb that; only a KMS that fails most calls is treated as down.
- **Open.** Callers wait in :meth:`wait_closed`, the executor pauses its partitions (it keeps polling,
  so it stays in the group) and a probe task pings the KMS every ``probe_seconds``; the first
  answered ping closes it, the outcome window starts afresh and the backlog drains by itself.
- **Blame.** When one command has failed its whole attempt budget, :meth:`diagnose` tells the runner
  whether the KMS is down (a probe fails: open, and wait), merely flaky (the other secure clients fail
  often enough that the streak may be chance: keep retrying) or fine for everyone else (this card
  alone: reject it). "Often enough" is a probability: with a failure ratio ``p`` among the other
  clients' recent calls, ``streak`` failures in a row happen by chance with probability ``p**streak``;
  below :data:`CHANCE_FLOOR` (one in a million) the card is to blame. With too few recent calls of
  other clients to judge, extra pings supply the samples.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum

from kafka_edge.metrics import KMS_BREAKER_OPEN

__all__ = ["CHANCE_FLOOR", "Breaker", "Diagnosis"]

log = logging.getLogger(__name__)

#: Below this probability a streak of failures is not chance: the card is to blame.
CHANCE_FLOOR = 1e-6
_PROBE = "<probe>"  # outcomes of pings count as their own "client"


class Diagnosis(Enum):
    DOWN = "down"  # the KMS does not answer: the breaker is open, wait for it
    FLAKY = "flaky"  # the KMS fails for others too: the streak may be chance, keep retrying
    CARD = "card"  # the KMS is fine for everyone else: this secure client alone fails


class Breaker:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        threshold: int = 5,
        probe_seconds: float = 1.0,
        window: int = 50,
        open_ratio: float = 0.5,
        sample_window: int = 200,
        min_samples: int = 20,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._ping = ping
        self._threshold = threshold
        self._probe_seconds = probe_seconds
        self._window = window
        self._open_ratio = open_ratio
        self._min_samples = min_samples
        self._on_change = on_change
        self._outcomes: deque[tuple[str, bool]] = deque(maxlen=max(window, sample_window))
        self._closed = asyncio.Event()
        self._closed.set()
        self._probe_task: asyncio.Task[None] | None = None
        self.opened_count = 0
        KMS_BREAKER_OPEN.set(0)

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- outcomes ----------------------------------------------------------------------------------

    def record_success(self, secure_client_id: str | None = None) -> None:
        self._outcomes.append((secure_client_id or _PROBE, True))

    def record_failure(self, secure_client_id: str | None = None) -> None:
        self._outcomes.append((secure_client_id or _PROBE, False))
        if not self.is_open and self._should_open():
            self.open("most recent KMS calls failed, across secure clients")

    def _should_open(self) -> bool:
        recent = list(self._outcomes)[-self._window:]
        failed = [client for client, ok in recent if not ok]
        return (len(failed) >= self._threshold and len(failed) >= self._open_ratio * len(recent)
                and len(set(failed)) >= 2)

    def failure_ratio(self, *, excluding: str | None = None) -> tuple[float, int]:
        """``(ratio, samples)`` of failures among recent outcomes, leaving out one secure client."""
        samples = [ok for client, ok in self._outcomes if client != excluding]
        if not samples:
            return 0.0, 0
        return samples.count(False) / len(samples), len(samples)

    # --- probing -----------------------------------------------------------------------------------

    async def probe_now(self) -> bool:
        """Ping once; open the breaker if the KMS does not answer. True when it answered."""
        try:
            await self._ping()
        except Exception:  # any failure to answer means: treat the KMS as down
            self._outcomes.append((_PROBE, False))
            self.open("probe failed")
            return False
        self._outcomes.append((_PROBE, True))
        return True

    async def diagnose(self, secure_client_id: str, streak: int) -> Diagnosis:
        """After ``streak`` transient failures of one secure client in a row: whose fault is it?"""
        if not await self.probe_now():
            return Diagnosis.DOWN
        ratio, samples = self.failure_ratio(excluding=secure_client_id)
        pings = 0
        while samples < self._min_samples and pings < self._min_samples:
            pings += 1
            try:
                await self._ping()
            except Exception:  # a failed extra ping is a sample too (and may open the breaker)
                self.record_failure(None)
            else:
                self.record_success(None)
            ratio, samples = self.failure_ratio(excluding=secure_client_id)
        if ratio > 0 and ratio**streak >= CHANCE_FLOOR:
            log.info("KMS flaky (failure ratio %.2f over %d calls); secure_client_id=%s keeps retrying",
                     ratio, samples, secure_client_id)
            return Diagnosis.FLAKY
        return Diagnosis.CARD

    # --- state changes -----------------------------------------------------------------------------

    def open(self, why: str) -> None:
        if self.is_open:
            return
        self.opened_count += 1
        log.warning("KMS circuit breaker open: %s", why)
        self._closed.clear()
        KMS_BREAKER_OPEN.set(1)
        if self._on_change:
            self._on_change(True)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(), name="kms-probe")

    def _close(self) -> None:
        self._outcomes.clear()  # judge the KMS afresh: the outage's failures say nothing any more
        self._closed.set()
        KMS_BREAKER_OPEN.set(0)
        if self._on_change:
            self._on_change(False)
        log.warning("KMS circuit breaker closed: the KMS answers again")

    async def _probe(self) -> None:
        while self.is_open:
            await asyncio.sleep(self._probe_seconds)
            try:
                await self._ping()
            except Exception as exc:  # still down; keep probing
                log.info("KMS probe failed: %s", type(exc).__name__)
                continue
            self._close()

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
