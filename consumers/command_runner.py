"""Runs one ``KmsCommand`` against the KMS port, effectively once by idempotency key.

Steps, in order (the executor calls :meth:`CommandRunner.run` for each command, one secure client's
commands one after the other):

1. Ledger: a key already COMPLETED or REJECTED is not sent again; its result is returned with
   ``duplicate`` true.
2. Stale guard: a command for an older subscription version than the newest applied to the same
   secure client is not applied; its result is REJECTED with ``STALE_COMMAND``.
3. Call the KMS. Business errors are REJECTED at once. Transient errors retry in place with
   exponential backoff and full jitter; attempts made while the breaker is open do not count
   against the budget, so an outage never dead-letters anything.
4. Past the attempt budget a probe decides: if the KMS is down for everyone the breaker opens and the
   command waits; if the KMS answers, this card alone is failing and the command is REJECTED with
   ``TRANSPORT_ERROR`` and marked for the DLQ with its attempt history.
5. The outcome goes to the ledger (and the client's version rises) before the result is published.

The retry loop is ours rather than tenacity's because its budget interacts with the breaker: an
attempt made while the KMS is down for everyone must not count, and exhausting the budget triggers a
probe rather than a stop. The backoff itself is the standard full-jitter formula.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumers.breaker import Breaker
from consumers.ledger import Ledger
from consumers.metrics import KMS_REQUEST_SECONDS, KMS_REQUESTS, KMS_RETRIES
from kms_adapter.errors import KmsError, KmsRejected
from kms_adapter.port import KmsPort
from schemas.records import KmsCommand, KmsResult, Operation, ResultState

__all__ = ["STALE_COMMAND", "TRANSPORT_ERROR", "CommandRunner", "RunOutcome"]

log = logging.getLogger(__name__)

STALE_COMMAND = "STALE_COMMAND"
TRANSPORT_ERROR = "TRANSPORT_ERROR"
KMS_ERROR = "KMS_ERROR"


@dataclass(frozen=True)
class RunOutcome:
    result: KmsResult
    dead_letter: bool = False
    history: tuple[str, ...] = field(default_factory=tuple)


def full_jitter(attempt: int, initial: float, cap: float) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return random.uniform(0, min(cap, initial * (2**attempt)))


class CommandRunner:
    def __init__(
        self,
        kms: KmsPort,
        ledger: Ledger,
        breaker: Breaker,
        *,
        attempt_budget: int = 6,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._kms = kms
        self._ledger = ledger
        self._breaker = breaker
        self._budget = attempt_budget
        self._initial = retry_initial
        self._cap = retry_max

    async def run(self, cmd: KmsCommand) -> RunOutcome:
        # step 1: ledger
        known = self._ledger.get(cmd.idempotency_key)
        if known is not None:
            return RunOutcome(known.model_copy(update={"duplicate": True}))
        # step 2: stale guard
        stale = self._stale(cmd)
        if stale is not None:
            result = self._result(cmd, ResultState.REJECTED, attempts=0, started=time.monotonic(),
                                  error_code=STALE_COMMAND, error_description=stale)
            self._ledger.record(result)
            return RunOutcome(result)
        # steps 3-4: call with retries
        history: list[str] = []
        counted = 0
        started = time.monotonic()
        op = cmd.operation.value
        while True:
            await self._breaker.wait_closed()
            t0 = time.monotonic()
            try:
                outcome = await self._call(cmd)
            except KmsRejected as exc:
                KMS_REQUESTS.labels(op, "rejected").inc()
                self._breaker.record_success()  # the KMS answered
                result = self._result(
                    cmd, ResultState.REJECTED, attempts=len(history) + 1, started=started,
                    error_code=KMS_ERROR, error_description="the KMS rejected the command",
                    provider_error_code=exc.code, provider_error_description=exc.description,
                )
                self._ledger.record(result)
                return RunOutcome(result)
            except KmsError as exc:
                KMS_REQUESTS.labels(op, "transient").inc()
                KMS_REQUEST_SECONDS.labels(op).observe(time.monotonic() - t0)
                kind = getattr(exc, "kind", type(exc).__name__)
                history.append(f"{datetime.now(UTC).isoformat(timespec='milliseconds')} {kind}")
                if not exc.retryable:
                    return self._transport_reject(cmd, started, history, dead_letter=True)
                was_open = self._breaker.is_open
                self._breaker.record_failure(cmd.secure_client_id)
                if was_open or self._breaker.is_open:
                    continue  # an outage: wait for the breaker, spend no budget
                counted += 1
                if counted >= self._budget:
                    if await self._breaker.probe_now():
                        return self._transport_reject(cmd, started, history, dead_letter=True)
                    counted = 0  # the KMS is down for everyone: wait for it with a fresh budget
                    continue
                KMS_RETRIES.labels(op).inc()
                await asyncio.sleep(full_jitter(counted, self._initial, self._cap))
                continue
            # step 5: record, then the caller publishes
            KMS_REQUESTS.labels(op, "completed").inc()
            KMS_REQUEST_SECONDS.labels(op).observe(time.monotonic() - t0)
            self._breaker.record_success()
            result = self._result(cmd, ResultState.COMPLETED, attempts=len(history) + 1, started=started,
                                  provider_error_code=outcome[0], provider_error_description=None,
                                  client_info=outcome[1])
            self._ledger.record(result, version=cmd.subscription_version, subscription_id=cmd.subscription_id)
            return RunOutcome(result)

    async def _call(self, cmd: KmsCommand) -> tuple[str, dict[str, dict[str, str]] | None]:
        if cmd.operation is Operation.QUERY_CLIENT:
            info = await self._kms.query_client(cmd.secure_client_id)
            return "OK", info
        outcome = await self._kms.execute(cmd)
        return outcome.provider_code, None

    def _stale(self, cmd: KmsCommand) -> str | None:
        if cmd.subscription_version is None or cmd.secure_client_id == "*":
            return None
        known = self._ledger.version(cmd.secure_client_id)
        if known is None:
            return None
        subscription_id, version = known
        if subscription_id == cmd.subscription_id and cmd.subscription_version < version:
            return f"subscription version {cmd.subscription_version} is older than applied version {version}"
        return None

    def _transport_reject(self, cmd: KmsCommand, started: float, history: list[str], *,
                          dead_letter: bool) -> RunOutcome:
        result = self._result(
            cmd, ResultState.REJECTED, attempts=len(history), started=started, error_code=TRANSPORT_ERROR,
            error_description=f"KMS unreachable for this secure client after {len(history)} attempts",
        )
        self._ledger.record(result)
        log.error("command %s rejected after %d transient failures", cmd.idempotency_key, len(history))
        return RunOutcome(result, dead_letter=dead_letter, history=tuple(history))

    @staticmethod
    def _result(cmd: KmsCommand, state: ResultState, *, attempts: int, started: float,
                error_code: str | None = None, error_description: str | None = None,
                provider_error_code: str | None = None, provider_error_description: str | None = None,
                client_info: dict[str, dict[str, str]] | None = None) -> KmsResult:
        src = cmd.source
        return KmsResult(
            idempotency_key=cmd.idempotency_key,
            operation=cmd.operation.value,
            secure_client_id=cmd.secure_client_id,
            subscription_id=cmd.subscription_id,
            event_id=src.event_id,
            communication_id=src.communication_id,
            request_id=src.request_id,
            run_id=src.run_id,
            state=state,
            error_code=error_code,
            error_description=error_description,
            provider_error_code=provider_error_code,
            provider_error_description=provider_error_description,
            attempts=attempts,
            executed_at=datetime.now(UTC),
            latency_ms=(time.monotonic() - started) * 1000.0,
            client_info=client_info,
        )
