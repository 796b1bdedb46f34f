"""The communication queue (CRM.COM's): communications wait PENDING until a mail run sends them.

In ``queue`` delivery (``KMSBRIDGE_COMMUNICATIONS__DELIVERY``, the default) the translator does not
read ``crm.communications``; the reconciler's queue reader (:mod:`reconciler.queue_reader`) stores
each one here, PENDING, and settles it from ``kms.results``. A mail run definition's execution
(:class:`MailRun`) takes the PENDING communications of its external systems that are due
(``scheduled_at`` absent or reached: one scheduled later stays PENDING and is counted ``skipped``),
plans each with the translator's planning code, records the keys of its commands, then publishes
them to ``kms.commands``. Each communication then ends:

- REJECTED with the planning code at once when it cannot be planned (an unknown subscription, a text
  its text mode cannot carry);
- COMPLETED when the KMS completed every one of its commands, REJECTED with the KMS code as soon as
  one of them is rejected (settled from ``kms.results`` by :meth:`CommunicationQueue.settle`).

Communications for an external system no Effective mail definition handles stay PENDING and listed.
The command keys are recorded *before* publishing, so a result can never arrive for a key the queue
does not know; if publishing fails, the keys are dropped again and the communication stays unsent
(PENDING, ``sent_at`` empty) for the next run: its keys are derived from the communication id, so
the executor's ledger applies a command only once even if a copy was delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from provisioning.plan import Plan
from provisioning.requests import plan_communication_send
from provisioning.text import TextLimits
from reconciler.dialect import dialect_insert
from reconciler.publish import CommandSink, PublishFailed
from reconciler.run_tables import communication_commands_table, communication_queue_table
from schemas.records import CommunicationEvent, Device, KmsResult, ResultState

__all__ = ["CommunicationQueue", "CommunicationState", "MailRun", "MailRunCounts"]

log = logging.getLogger(__name__)
PROCESS = "mail-run"


class CommunicationState(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CommunicationQueue:
    """The ``communication_queue`` and ``communication_commands`` tables (see the module docstring)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock

    def enqueue(self, comms: Sequence[CommunicationEvent]) -> None:
        """Store each communication PENDING; one stored already (a re-read) is left as it is."""
        if not comms:
            return
        now = self._clock()
        rows = {c.communication_id: {"communication_id": c.communication_id, "external_system": c.external_system,
                                     "state": CommunicationState.PENDING.value, "scheduled_at": c.scheduled_at,
                                     "received_at": now, "record_json": c.model_dump_json()} for c in comms}
        with self._engine.begin() as conn:
            stmt = dialect_insert(conn.dialect, communication_queue_table).values(list(rows.values()))
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["communication_id"]))

    def settle(self, results: Iterable[KmsResult]) -> None:
        """Record the results of mail-run commands and finish the communications they complete."""
        t = communication_commands_table
        touched: set[str] = set()
        with self._engine.begin() as conn:
            for r in results:
                if not r.communication_id:
                    continue
                done = conn.execute(update(t).where(t.c.idempotency_key == r.idempotency_key).values(
                    state=r.state.value, error_code=r.provider_error_code or r.error_code,
                    error_description=r.provider_error_description or r.error_description, attempts=r.attempts))
                if done.rowcount:
                    touched.add(r.communication_id)
            for communication_id in sorted(touched):
                self._finish_if_settled(conn, communication_id)

    def _finish_if_settled(self, conn: Connection, communication_id: str) -> None:
        t = communication_commands_table
        rows = conn.execute(select(t.c.state, t.c.error_code, t.c.error_description)
                            .where(t.c.communication_id == communication_id).order_by(t.c.idempotency_key)).all()
        rejected = next((r for r in rows if r[0] == ResultState.REJECTED.value), None)
        if rejected is not None:
            self._end(conn, communication_id, CommunicationState.REJECTED, rejected[1], rejected[2])
        elif rows and all(r[0] == ResultState.COMPLETED.value for r in rows):
            self._end(conn, communication_id, CommunicationState.COMPLETED, None, None)

    def _end(self, conn: Connection, communication_id: str, state: CommunicationState, code: str | None,
             description: str | None) -> None:
        q = communication_queue_table
        conn.execute(update(q).where(q.c.communication_id == communication_id,
                                     q.c.state == CommunicationState.PENDING.value)
                     .values(state=state.value, finished_at=self._clock(), error_code=code,
                             error_description=description))

    def unsent(self, systems: Sequence[str], limit: int) -> list[tuple[CommunicationEvent, datetime | None]]:
        """PENDING communications of ``systems`` no run has sent, oldest first, with their ``scheduled_at``."""
        q = communication_queue_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(q.c.record_json, q.c.scheduled_at).where(
                q.c.state == CommunicationState.PENDING.value, q.c.sent_at.is_(None),
                q.c.external_system.in_(list(systems))).order_by(q.c.received_at, q.c.communication_id)
                .limit(limit)).all()
        return [(CommunicationEvent.model_validate_json(r[0]), r[1]) for r in rows]

    def mark_sent(self, communication_id: str, execution_id: str, keys: Sequence[str]) -> None:
        with self._engine.begin() as conn:
            if keys:
                conn.execute(communication_commands_table.insert(), [
                    {"idempotency_key": k, "communication_id": communication_id, "state": "PENDING"} for k in keys])
            q = communication_queue_table
            conn.execute(update(q).where(q.c.communication_id == communication_id)
                         .values(sent_at=self._clock(), execution_id=execution_id))

    def unmark_sent(self, communication_ids: Sequence[str]) -> None:
        """Undo :meth:`mark_sent` (the commands were not delivered): the next run sends them again."""
        with self._engine.begin() as conn:
            conn.execute(delete(communication_commands_table).where(
                communication_commands_table.c.communication_id.in_(list(communication_ids))))
            q = communication_queue_table
            conn.execute(update(q).where(q.c.communication_id.in_(list(communication_ids)))
                         .values(sent_at=None, execution_id=None))

    def reject(self, communication_id: str, execution_id: str, code: str, description: str) -> None:
        q = communication_queue_table
        with self._engine.begin() as conn:
            conn.execute(update(q).where(q.c.communication_id == communication_id).values(
                sent_at=self._clock(), execution_id=execution_id))
            self._end(conn, communication_id, CommunicationState.REJECTED, code, description)

    def entries(self, *, state: CommunicationState | None = None, external_system: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Oldest first; the text is not shown (it may be personal), its length is."""
        q = communication_queue_table
        where = []
        if state is not None:
            where.append(q.c.state == state.value)
        if external_system is not None:
            where.append(q.c.external_system == external_system)
        with self._engine.connect() as conn:
            rows = conn.execute(select(q).where(and_(True, *where))
                                .order_by(q.c.received_at, q.c.communication_id).limit(limit)).all()
        return [_view(r._mapping) for r in rows]

    def count(self, state: CommunicationState) -> int:
        q = communication_queue_table
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(q).where(q.c.state == state.value))
                       .scalar_one())


def _view(m: Any) -> dict[str, Any]:
    comm = CommunicationEvent.model_validate_json(m["record_json"])
    target = ("all" if comm.all else f"secure_client:{comm.secure_client_id}" if comm.secure_client_id
              else f"subscription:{comm.subscription_id}")

    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None
    return {"communication_id": m["communication_id"], "external_system": m["external_system"],
            "state": m["state"], "kind": comm.kind.value, "text_mode": comm.text_mode.value,
            "text_length": len(comm.text), "target": target, "scheduled_at": iso(m["scheduled_at"]),
            "received_at": iso(m["received_at"]), "sent_at": iso(m["sent_at"]),
            "finished_at": iso(m["finished_at"]), "execution_id": m["execution_id"],
            "error_code": m["error_code"], "error_description": m["error_description"]}


@dataclass
class MailRunCounts:
    sent: int = 0
    skipped: int = 0  # not due yet (scheduled_at in the future)
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "skipped": self.skipped, "rejected": self.rejected}


class MailRun:
    """One execution of a mail run definition over the queue (see the module docstring)."""

    def __init__(self, queue: CommunicationQueue, devices_of: Callable[[str], Sequence[Device] | None],
                 sink: CommandSink, limits: TextLimits | None = None, *, batch: int = 500,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._queue = queue
        self._devices_of = devices_of
        self._sink = sink
        self._limits = limits
        self._batch = batch
        self._clock = clock

    def execute(self, systems: Sequence[str], execution_id: str, *, preview: bool = False) -> MailRunCounts:
        """Send what is due; with ``preview``, count what would be sent, skipped and rejected, change nothing."""
        counts = MailRunCounts()
        now = self._clock()
        seen: set[str] = set()
        while True:
            page = [(c, at) for c, at in self._queue.unsent(systems, self._batch + len(seen))
                    if c.communication_id not in seen]
            if not page:
                return counts
            sent: list[str] = []
            for comm, scheduled_at in page:
                seen.add(comm.communication_id)
                if scheduled_at is not None and scheduled_at > now:
                    counts.skipped += 1
                    continue
                plan = self._plan(comm)
                if preview:
                    counts.rejected += plan.rejection is not None
                    counts.sent += plan.rejection is None
                    continue
                if plan.rejection is not None:
                    self._queue.reject(comm.communication_id, execution_id, plan.rejection.code,
                                       plan.rejection.description)
                    counts.rejected += 1
                    continue
                self._queue.mark_sent(comm.communication_id, execution_id,
                                      [c.idempotency_key for c in plan.commands])
                sent.append(comm.communication_id)
                for command in plan.commands:
                    self._sink.publish(command)
            try:
                self._sink.flush()
            except PublishFailed:
                self._queue.unmark_sent(sent)
                raise
            counts.sent += len(sent)
            log.info("mail run %s: %d sent, %d skipped, %d rejected so far", execution_id, counts.sent,
                     counts.skipped, counts.rejected)

    def _plan(self, comm: CommunicationEvent) -> Plan:
        devices = self._devices_of(comm.subscription_id) if comm.subscription_id else None
        return plan_communication_send(comm, self._limits, devices, process_name=PROCESS)
