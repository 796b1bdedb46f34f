"""Circuit breaker for the KMS.

Closed: calls flow. It opens when ``threshold`` transient failures follow each other with no success
in between and they come from at least two secure clients (one bad card alone must not stop the
others), or when a probe shows the KMS down. While open, callers wait in :meth:`wait_closed`, the
executor pauses its partitions (it keeps polling, so it stays in the group) and a probe task pings
the KMS every ``probe_seconds``; the first answered ping closes it and the backlog drains by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from consumers.metrics import KMS_BREAKER_OPEN

__all__ = ["Breaker"]

log = logging.getLogger(__name__)


class Breaker:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        *,
        threshold: int = 5,
        probe_seconds: float = 1.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._ping = ping
        self._threshold = threshold
        self._probe_seconds = probe_seconds
        self._on_change = on_change
        self._failures = 0
        self._failed_clients: set[str] = set()
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

    def record_success(self) -> None:
        self._failures = 0
        self._failed_clients.clear()

    def record_failure(self, secure_client_id: str) -> None:
        self._failures += 1
        self._failed_clients.add(secure_client_id)
        if self._failures >= self._threshold and len(self._failed_clients) >= 2:
            self.open("transient failures across secure clients")

    async def probe_now(self) -> bool:
        """Ping once; open the breaker if the KMS does not answer. True when it answered."""
        try:
            await self._ping()
        except Exception:  # any failure to answer means: treat the KMS as down
            self.open("probe failed")
            return False
        return True

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
        self._failures = 0
        self._failed_clients.clear()
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
