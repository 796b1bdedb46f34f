"""Request outcomes that survive restarts: the in-memory store first, the request log behind it.

:class:`producers.outcomes.OutcomeStore` holds the last hour or 100,000 requests, re-read from Kafka
when the Web API starts. :class:`DurableOutcomes` answers from it and, for a request it does not hold
(older than that window, or submitted before a restart the feed did not reach back to), from the
durable provisioning request log (:class:`reconciler.request_log_store.RequestLog`), which settles a
request by the same rule (:func:`provisioning.outcomes.settle`). So a request is never reported unknown
because a process restarted.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from producers.outcomes import Outcome, OutcomeStore
from schemas.records import ReconcileRequest, ServiceRequest

__all__ = ["DurableOutcomes", "OutcomeLog"]


class OutcomeLog(Protocol):
    """The durable log's read of one request (``RequestLog.outcome``)."""

    def outcome(self, request_id: str) -> Outcome | None: ...


class DurableOutcomes:
    """The :class:`producers.api.deps.OutcomeSource` surface over a memory store and a durable log."""

    def __init__(self, memory: OutcomeStore, log: OutcomeLog) -> None:
        self._memory = memory
        self._log = log

    def track(self, req: ServiceRequest) -> None:
        self._memory.track(req)

    def track_run(self, run: ReconcileRequest) -> None:
        self._memory.track_run(run)

    def get(self, request_id: str) -> Outcome | None:
        found = self._memory.get(request_id)
        return found if found is not None else self._log.outcome(request_id)

    async def wait(self, request_id: str, timeout: float) -> Outcome | None:
        found = await self._memory.wait(request_id, timeout)
        if found is not None:
            return found
        return await asyncio.to_thread(self._log.outcome, request_id)
