"""The scheduler of run definitions, inside ``kmsbridge run reconciler`` (docs/architecture.md §1 item 13).

Every ``tick_seconds`` each reconciler replica:

1. For each Effective definition with a schedule, computes the newest due time in
   ``(max(effective_since, newest due time executed), now]``
   (:meth:`~reconciler.run_definitions.RunDefinition.latest_due`). Older due times in that window
   are passed over: a due time missed while every reconciler was down is caught up **at most once**,
   when one is back; due times while the definition was Not Effective are never caught up.
2. **Claims** that due time by inserting its execution row. ``run_executions`` has a unique
   ``(definition_name, due_at)``, so when several replicas try, the database lets exactly one insert
   succeed; the others get an integrity error and move on. Only the winner executes.
3. Claims the executions requested by hand (CLI, Web API) with a conditional update REQUESTED →
   RUNNING (one replica's update matches the row) and executes them.

**Why a claimed row and not the run lock.** The run lock (:mod:`reconciler.lock`) serialises reset
runs, it does not remember what ran: a replica that takes the lease after another finished a due
time would run it again, and a crash between "ran" and "recorded" could not be told from "never
ran". The unique execution row makes "this due time was taken" one atomic fact in the database both
replicas share, with no clock agreement needed beyond the due time itself, and it is the execution
history the operator reads. The reset runs themselves still take the run lock, so a scheduled
reset and a reset requested on ``reconcile.requests`` never repair the same subscriptions at once.

A replica that dies after claiming leaves that execution RUNNING; it is not retried (at most once
per due time, as CRM.COM's process runs) and the next due time runs as usual. Executions run one at
a time on the scheduler's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.communications_queue import MailRun
from reconciler.run_definitions import (
    Execution,
    ExecutionState,
    RunDefinition,
    RunDefinitionStore,
    RunKind,
)
from schemas.records import ReconcileReport, ReconcileRequest

__all__ = ["RunExecutor", "Scheduler", "reset_counts"]

log = logging.getLogger(__name__)

ResetRunner = Callable[[ReconcileRequest], ReconcileReport]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def reset_counts(report: ReconcileReport) -> dict[str, int]:
    return {"checked": report.checked, "in_sync": report.in_sync, "drifted": report.drifted,
            "commands_published": report.commands_published, "failed": report.failed, "rejected": report.rejected,
            "unknown_subscriptions": len(report.unknown_subscriptions)}


class RunExecutor:
    """Executes one claimed execution and records how it ended."""

    def __init__(self, store: RunDefinitionStore, reset: ResetRunner, mail: MailRun,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._reset = reset
        self._mail = mail
        self._clock = clock

    def reset_request(self, definition: RunDefinition, execution: Execution, at: datetime) -> ReconcileRequest:
        """The reset run an execution of ``definition`` acting at ``at`` publishes (or previews)."""
        created_from, created_to = definition.period(at)
        return ReconcileRequest(run_id=execution.execution_id, created_from=created_from, created_to=created_to,
                                subscription_types=definition.subscription_types, preview=execution.preview,
                                requested_by=f"run-definition:{definition.name}"[:128], requested_at=self._clock())

    def execute(self, execution: Execution, definition: RunDefinition, at: datetime) -> None:
        log.info("run execution started execution_id=%s definition=%s trigger=%s preview=%s",
                 execution.execution_id, definition.name, execution.trigger.value, execution.preview)
        try:
            if definition.kind is RunKind.RESET:
                report = self._reset(self.reset_request(definition, execution, at))
                state = (ExecutionState.COMPLETED if report.succeeded
                         else ExecutionState.FAILED if report.error else ExecutionState.REJECTED)
                self._store.finish(execution.execution_id, state, reset_counts(report), report.error)
            else:
                counts = self._mail.execute(definition.external_systems, execution.execution_id,
                                            preview=execution.preview)
                self._store.finish(execution.execution_id, ExecutionState.COMPLETED, counts.as_dict())
        except Exception as exc:  # recorded, not retried (controller-runtime's terminal error)
            log.error("run execution failed execution_id=%s", execution.execution_id, exc_info=True)
            self._store.finish(execution.execution_id, ExecutionState.FAILED, {}, f"{type(exc).__name__}: {exc}")
            return
        log.info("run execution finished execution_id=%s definition=%s", execution.execution_id, definition.name)


class Scheduler:
    """Steps 1-3 of the module docstring, every ``tick_seconds`` until :meth:`request_stop`."""

    def __init__(self, store: RunDefinitionStore, executor: RunExecutor, owner: str, *,
                 tick_seconds: float = 1.0, clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._executor = executor
        self.owner = owner
        self._tick = tick_seconds
        self._clock = clock
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a database hiccup: the next tick tries again
                log.warning("scheduler tick failed; trying again", exc_info=True)
            self._stop.wait(self._tick)

    def tick(self) -> int:
        """One pass; the number of executions this replica ran."""
        ran = 0
        for definition, since in self._store.effective():
            if self._stop.is_set():
                return ran
            last = self._store.last_due(definition.name)
            due = definition.latest_due(self._clock(), max(since, last) if last else since)
            if due is None:
                continue
            execution_id = self._store.claim_due(definition, due, self.owner)  # step 2
            if execution_id is None:
                continue  # another replica claimed this due time
            self._executor.execute(self._store.execution(execution_id), definition, due)
            ran += 1
        for execution in self._store.claim_requested(self.owner):  # step 3
            self._executor.execute(execution, self._store.get(execution.definition_name), self._clock())
            ran += 1
        return ran
