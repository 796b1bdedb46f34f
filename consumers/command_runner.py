"""Runs one ``KmsCommand`` against the KMS port, effectively once by idempotency key.

Steps, in order (the executor calls :meth:`CommandRunner.run` for each command, one secure client's
commands one after the other):

1. Ledger: a key already COMPLETED or REJECTED is not sent again; its result is returned with
   ``duplicate`` true. The executor's commands read the ledger in chunks, one query each for keys,
   cards and attributes (:meth:`CommandRunner.expect`, :meth:`CommandRunner.read_ahead`,
   :class:`~consumers.ledger.ReadAhead`).
   Only a deliberate replay from the DLQ (``kmsbridge dlq replay``, the ``kmsbridge.replayed.from``
   header) runs again a command whose recorded outcome was that it could not be delivered
   (``TRANSPORT_ERROR``, ``OUTCOME_UNKNOWN``).
2. Stale guard: a command for an older subscription version than the newest applied to the same
   secure client is not applied; its result is REJECTED with ``STALE_COMMAND``. An absolute command
   older than the last one applied to the same attribute of its secure client
   (:mod:`consumers.coalesce`: the ledger keeps each attribute's origin) is not sent either: it ends
   COMPLETED with ``superseded_by`` naming the newer key, so the express lane and the regular lane
   never undo each other.
3. Call the KMS, after a token of the calls-per-second limiter (:mod:`consumers.limiter`, for every
   attempt) and a KMS call slot, both express first. Business errors are REJECTED at once.
   Transient errors retry in place with exponential backoff and full jitter; attempts made while the
   breaker is open do not count against the budget, so an outage never dead-letters anything.
4. Past the attempt budget the breaker diagnoses (:meth:`Breaker.diagnose`): the KMS down for everyone
   (a probe fails: the breaker opens, the command waits with a fresh budget), flaky for everyone (the
   other secure clients fail often enough that the streak may be chance: a fresh budget), or fine for
   everyone else: this card alone is failing and the command is REJECTED with ``TRANSPORT_ERROR`` and
   marked for the DLQ with its attempt history. So a degraded KMS never dead-letters anything either.
   An effect (a Mail or a Message: :data:`~kms_adapter.port.EFFECT_OPERATIONS`) whose request reached
   the KMS without a complete answer (``KmsUnavailable.maybe_applied``) is never resent on its own: the KMS
   may have shown it already, and it does not deduplicate by our key. It is REJECTED with
   ``OUTCOME_UNKNOWN`` and dead-lettered, so an operator sees it and replays it deliberately
   (``kmsbridge dlq replay``). Absolute commands are resent: applying them twice changes nothing.
5. The outcome goes to the ledger (and the client's version rises, and an absolute command's attribute
   takes its origin) before the result is published.

A database error caused by the command's content (a value too long for its ledger column, a NUL
byte: :func:`~kafka_edge.dlq.is_content_error`) raises :class:`LedgerRejected` with the result to
publish: the caller dead-letters the command and never retries it, so a KMS call already made is
never repeated. Other database errors propagate for the caller to retry (the database is away).

An error the adapter did not map (a bug) counts as transient: the command stays in place instead of
crashing its task and blocking its partition's offset forever. Before every attempt the caller may
say the command was abandoned (its partition revoked): it stops at once, recording nothing, and the
partition's new owner runs it.

The retry loop is ours rather than tenacity's because its budget interacts with the breaker: an
attempt made while the KMS is down for everyone must not count, and exhausting the budget triggers a
probe rather than a stop. The backoff itself is the standard full-jitter formula.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

from consumers.breaker import Breaker, Diagnosis
from consumers.coalesce import Origin, attribute_of, is_newer
from consumers.ledger import GroupCommit, Ledger, ReadAhead
from consumers.limiter import KmsRateLimiter, PriorityGate
from kafka_edge import tracing
from kafka_edge.dlq import DatabaseRejected, is_content_error
from kafka_edge.errors import CommandAbandoned
from kafka_edge.metrics import KMS_REQUEST_SECONDS, KMS_REQUESTS, KMS_RETRIES
from kms_adapter.errors import KmsError, KmsRejected
from kms_adapter.port import EFFECT_OPERATIONS, KmsPort
from schemas.records import KmsCommand, KmsResult, Operation, ResultState

__all__ = ["INVALID_COMMAND", "KMS_ERROR", "MAX_HISTORY", "OUTCOME_UNKNOWN", "STALE_COMMAND", "TRANSPORT_ERROR",
           "UNDELIVERED", "CommandRunner", "LedgerRejected", "RunOutcome", "full_jitter"]

log = logging.getLogger(__name__)


# metric children by label values, looked up once (``labels()`` takes a lock and builds a key per call)
@functools.cache
def _requests(op: str, outcome: str) -> Counter:
    return KMS_REQUESTS.labels(op, outcome)


@functools.cache
def _request_seconds(op: str) -> Histogram:
    return KMS_REQUEST_SECONDS.labels(op)


@functools.cache
def _retries(op: str) -> Counter:
    return KMS_RETRIES.labels(op)


STALE_COMMAND = "STALE_COMMAND"
TRANSPORT_ERROR = "TRANSPORT_ERROR"
KMS_ERROR = "KMS_ERROR"
INVALID_COMMAND = "INVALID_COMMAND"
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
#: Recorded outcomes of a command that was not delivered: a replay from the DLQ runs it again (step 1).
UNDELIVERED = frozenset({TRANSPORT_ERROR, OUTCOME_UNKNOWN})
_ABANDON_CHECK_SECONDS = 0.5
MAX_HISTORY = 20  # attempts kept for the DLQ headers (the newest; the count says how many there were)


@dataclass(frozen=True)
class RunOutcome:
    """The result to publish; ``dead_letter`` with the attempt ``history`` when the command goes to the
    DLQ too (transport budget spent for this secure client alone)."""

    result: KmsResult
    dead_letter: bool = False
    history: tuple[str, ...] = field(default_factory=tuple)


class LedgerRejected(DatabaseRejected):
    """The ledger refused the command's content; ``result`` is what to publish (the KMS's outcome when
    the call was made, else REJECTED ``INVALID_COMMAND``)."""

    def __init__(self, exc: BaseException, result: KmsResult) -> None:
        super().__init__(exc)
        self.result = result


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
        limiter: KmsRateLimiter | None = None,
    ) -> None:
        self._kms = kms
        self._limiter = limiter
        self._ledger = ledger
        self._reads = ReadAhead(ledger)
        self._writes = GroupCommit(ledger, self._reads)
        self._breaker = breaker
        self._budget = attempt_budget
        self._initial = retry_initial
        self._cap = retry_max

    def expect(self, cmd: KmsCommand) -> None:
        """``cmd`` was polled and will run: its ledger reads join the batch's (:meth:`read_ahead`)."""
        guarded = cmd.subscription_version is not None and cmd.secure_client_id != "*"
        attribute = attribute_of(cmd)
        self._reads.expect(cmd.idempotency_key, cmd.secure_client_id if guarded else None,
                           None if attribute is None else (cmd.secure_client_id, attribute))

    def read_ahead(self) -> None:
        """The commands :meth:`expect` named since the last call are a polled batch: they read the ledger
        in chunks as they run (:class:`~consumers.ledger.ReadAhead`); a chunk read that fails leaves
        each of its commands to read for itself."""
        try:
            self._reads.read()
        except Exception as exc:
            log.warning("ledger read-ahead failed (%s); each command reads its own", type(exc).__name__)

    async def run(self, cmd: KmsCommand, *, abandoned: Callable[[], bool] | None = None,
                  gate: asyncio.Semaphore | PriorityGate | None = None, replayed: bool = False,
                  express: bool = False, newer: Callable[[], str | None] | None = None) -> RunOutcome:
        """Run ``cmd`` to its outcome. ``abandoned`` is asked before every attempt; when it answers
        true (the partition was revoked) :class:`CommandAbandoned` is raised and nothing is recorded.
        ``replayed``: the command was replayed from the DLQ on purpose (step 1). ``express``: its
        calls wait for a token of the limiter and a KMS call slot before every regular command's.
        ``newer`` is asked before every attempt, once the breaker is closed and again once a token is
        taken: the key of a newer absolute command the executor holds for the same box and attribute
        (coalescing), and then ``cmd`` ends COMPLETED ``superseded_by`` it, without a KMS call."""
        # step 1: ledger
        guarded = cmd.subscription_version is not None and cmd.secure_client_id != "*"
        try:
            known, applied = self._reads.lookup(cmd.idempotency_key, cmd.secure_client_id if guarded else None)
        except Exception as exc:
            if not is_content_error(exc):
                raise
            result = self._result(cmd, ResultState.REJECTED, attempts=0, started=time.monotonic(),
                                  error_code=INVALID_COMMAND,
                                  error_description="the ledger refused the command's content")
            raise LedgerRejected(exc, result) from exc
        if known is not None and not (replayed and known.error_code in UNDELIVERED):
            return RunOutcome(known.model_copy(update={"duplicate": True}))
        # step 2: stale guard
        stale = self._stale(cmd, applied)
        if stale is not None:
            result = self._result(cmd, ResultState.REJECTED, attempts=0, started=time.monotonic(),
                                  error_code=STALE_COMMAND, error_description=stale)
            await self._record(result)
            log.info("stale command not applied idempotency_key=%s secure_client_id=%s",
                     cmd.idempotency_key, cmd.secure_client_id)
            return RunOutcome(result)
        # step 2b: an absolute command older than the last applied to its attribute is superseded
        attribute = attribute_of(cmd)
        if attribute is not None:
            last = self._reads.origin(cmd.secure_client_id, attribute)
            if last is not None and is_newer(last, Origin.of(cmd)):
                return await self._superseded(cmd, last.idempotency_key)
        # steps 3-4: call with retries
        history: deque[str] = deque(maxlen=MAX_HISTORY)
        attempts = 0
        counted = 0  # attempts that count against the budget (breaker closed throughout)
        started = time.monotonic()
        op = cmd.operation.value
        card = cmd.secure_client_id
        while True:
            await self._wait_closed(cmd, abandoned)
            if newer is not None and (newer_key := newer()) is not None:
                return await self._superseded(cmd, newer_key)
            attempts += 1
            t0 = time.monotonic()
            retry_after: float | None = None
            if self._limiter is not None:  # calls per second: every attempt is a call
                await self._limiter.acquire(cmd.operation, express=express)
                if abandoned is not None and abandoned():
                    raise CommandAbandoned(cmd.idempotency_key)
                if newer is not None and (newer_key := newer()) is not None:
                    return await self._superseded(cmd, newer_key)  # the token goes unused
            try:
                slot = gate.slot(express) if isinstance(gate, PriorityGate) else gate or contextlib.nullcontext()
                async with slot:  # max_inflight KMS calls, ledger work aside
                    late = newer() if newer is not None else None  # again: the wait for a slot may be long
                    if late is None:
                        outcome = await self._call(cmd)
                if late is not None:
                    return await self._superseded(cmd, late)  # the slot goes unused
            except KmsRejected as exc:
                _requests(op, "rejected").inc()
                self._breaker.record_success(card)  # the KMS answered
                result = self._result(
                    cmd, ResultState.REJECTED, attempts=attempts, started=started,
                    error_code=KMS_ERROR, error_description="the KMS rejected the command",
                    provider_error_code=exc.code, provider_error_description=exc.description,
                )
                await self._record(result)
                return RunOutcome(result)
            except KmsError as exc:
                kind = str(getattr(exc, "kind", type(exc).__name__))
                retry_after = getattr(exc, "retry_after", None)
                if not exc.retryable:
                    history.append(f"attempt {attempts} +{t0 - started:.1f}s {kind}")
                    return await self._transport_reject(cmd, started, attempts, history)
                if op in EFFECT_OPERATIONS and getattr(exc, "maybe_applied", False):
                    history.append(f"attempt {attempts} +{t0 - started:.1f}s {kind} (sent, no answer)")
                    return await self._outcome_unknown(cmd, started, attempts, history)
            except Exception as exc:  # an unmapped error or a bug in an adapter: not the command's fault
                kind = f"unexpected_{type(exc).__name__}"
                log.warning("unexpected error calling the KMS idempotency_key=%s: %s", cmd.idempotency_key,
                            type(exc).__name__)
            else:
                # step 5: record, then the caller publishes
                _requests(op, "completed").inc()
                _request_seconds(op).observe(time.monotonic() - t0)
                self._breaker.record_success(card)
                result = self._result(cmd, ResultState.COMPLETED, attempts=attempts, started=started,
                                      provider_error_code=outcome[0], provider_error_description=None,
                                      client_info=outcome[1])
                await self._record(result, version=cmd.subscription_version,
                                   subscription_id=cmd.subscription_id, attribute=attribute,
                                   origin=Origin.of(cmd) if attribute is not None else None)
                return RunOutcome(result)
            # a transient failure
            _requests(op, "transient").inc()
            _request_seconds(op).observe(time.monotonic() - t0)
            history.append(f"attempt {attempts} +{t0 - started:.1f}s {kind}")
            was_open = self._breaker.is_open
            self._breaker.record_failure(card)
            if was_open or self._breaker.is_open:
                continue  # an outage: wait for the breaker, spend no budget
            counted += 1
            if counted >= self._budget:
                diagnosis = await self._breaker.diagnose(card, counted)
                if diagnosis is Diagnosis.CARD:
                    return await self._transport_reject(cmd, started, attempts, history)
                counted = 0  # the KMS is down or flaky for everyone: not this card's fault, fresh budget
                if diagnosis is Diagnosis.DOWN:
                    continue
            _retries(op).inc()
            delay = full_jitter(counted, self._initial, self._cap)
            if retry_after:
                delay = max(delay, min(retry_after, self._cap))
            await asyncio.sleep(delay)

    async def _superseded(self, cmd: KmsCommand, newer_key: str) -> RunOutcome:
        result = self._result(cmd, ResultState.COMPLETED, attempts=0, started=time.monotonic(),
                              superseded_by=newer_key)
        await self._record(result)
        log.info("superseded command not sent idempotency_key=%s secure_client_id=%s superseded_by=%s",
                 cmd.idempotency_key, cmd.secure_client_id, newer_key)
        return RunOutcome(result)

    async def _record(self, result: KmsResult, *, version: int | None = None,
                      subscription_id: str | None = None, attribute: str | None = None,
                      origin: Origin | None = None) -> None:
        """Step 5: the outcome to the ledger; a refusal of its content is :class:`LedgerRejected`."""
        try:
            await self._writes.record(result, version=version, subscription_id=subscription_id,
                                      attribute=attribute, origin=origin)
        except Exception as exc:
            if not is_content_error(exc):
                raise
            log.error("ledger refused the outcome idempotency_key=%s state=%s error=%s", result.idempotency_key,
                      result.state.value, type(exc).__name__)
            raise LedgerRejected(exc, result) from exc

    async def _wait_closed(self, cmd: KmsCommand, abandoned: Callable[[], bool] | None) -> None:
        """Wait for the breaker to close, noticing meanwhile (every half second) if the command was
        abandoned, so a shutdown during an outage is not held up by it."""
        while True:
            if abandoned is not None and abandoned():
                raise CommandAbandoned(cmd.idempotency_key)
            if not self._breaker.is_open:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._breaker.wait_closed(), timeout=_ABANDON_CHECK_SECONDS)

    async def _call(self, cmd: KmsCommand) -> tuple[str, dict[str, dict[str, str]] | None]:
        with tracing.kms_call_span(cmd.operation.value):  # a span per KMS call when tracing
            if cmd.operation is Operation.QUERY_CLIENT:
                info = await self._kms.query_client(cmd.secure_client_id)
                return "OK", info
            outcome = await self._kms.execute(cmd)
            return outcome.provider_code, None

    @staticmethod
    def _stale(cmd: KmsCommand, applied: tuple[str | None, int] | None) -> str | None:
        """Why ``cmd`` is older than what was applied to its card (``applied``: the ledger's
        subscription and version of the card), or None."""
        if applied is None or cmd.subscription_version is None:
            return None
        subscription_id, version = applied
        if subscription_id == cmd.subscription_id and cmd.subscription_version < version:
            return f"subscription version {cmd.subscription_version} is older than applied version {version}"
        return None

    async def _transport_reject(self, cmd: KmsCommand, started: float, attempts: int,
                          history: deque[str]) -> RunOutcome:
        result = self._result(
            cmd, ResultState.REJECTED, attempts=attempts, started=started, error_code=TRANSPORT_ERROR,
            error_description=f"KMS unreachable for this secure client after {attempts} attempts",
        )
        await self._record(result)
        log.error("command rejected after %d transient failures idempotency_key=%s secure_client_id=%s",
                  attempts, cmd.idempotency_key, cmd.secure_client_id)
        return RunOutcome(result, dead_letter=True, history=tuple(history))

    async def _outcome_unknown(self, cmd: KmsCommand, started: float, attempts: int,
                               history: deque[str]) -> RunOutcome:
        result = self._result(
            cmd, ResultState.REJECTED, attempts=attempts, started=started, error_code=OUTCOME_UNKNOWN,
            error_description="sent to the KMS but no answer came back: it may have been shown; not resent on "
                              "its own (replay it from the DLQ to send it again)",
        )
        await self._record(result)
        log.error("effect not resent: the KMS may have applied it idempotency_key=%s secure_client_id=%s",
                  cmd.idempotency_key, cmd.secure_client_id)
        return RunOutcome(result, dead_letter=True, history=tuple(history))

    @staticmethod
    def _result(cmd: KmsCommand, state: ResultState, *, attempts: int, started: float,
                error_code: str | None = None, error_description: str | None = None,
                provider_error_code: str | None = None, provider_error_description: str | None = None,
                client_info: dict[str, dict[str, str]] | None = None,
                superseded_by: str | None = None) -> KmsResult:
        """The command's result. Its ids are the command's, validated when the command was; the codes
        and texts are ``str`` (ours, or the KMS's ``resultCode``/``resultText``), which is all the
        record asks of them; so it is built without validation (:meth:`KmsResult.trusted`, every field
        in declaration order), except with a query's ``client_info``, which validation copies."""
        src = cmd.source
        values: dict[str, Any] = {
            "idempotency_key": cmd.idempotency_key,
            "operation": cmd.operation.value,
            "secure_client_id": cmd.secure_client_id,
            "subscription_id": cmd.subscription_id,
            "event_id": src.event_id,
            "communication_id": src.communication_id,
            "request_id": src.request_id,
            "run_id": src.run_id,
            "state": state,
            "error_code": error_code,
            "error_description": error_description,
            "provider_error_code": provider_error_code,
            "provider_error_description": provider_error_description,
            "attempts": attempts,
            "executed_at": datetime.now(UTC),
            "latency_ms": (time.monotonic() - started) * 1000.0,
            "duplicate": False,
            "superseded_by": superseded_by,
            "client_info": client_info,
        }
        if client_info is not None:
            return KmsResult.model_validate(values)
        return KmsResult.trusted(values)
