"""Run definitions (CRM.COM's reset and mail run definitions) and the record of their executions.

A definition is named, Effective or Not Effective, and has at most one schedule: a cron expression
read in a time zone (``schedule`` + ``time_zone``) or a one-off time (``once_at``); without one it
runs only when executed by hand. A *reset* definition selects subscriptions by a fixed creation
period (``created_from`` / ``created_to``) or a rolling one (``created_within_days``: the N days
before the moment the execution acts for) and by subscription types; a *mail* definition names the
external systems whose communications it sends. A definition can be deleted only while it has never
executed (CRM.COM's "deletable while Draft").

Every execution, due by schedule or requested by hand (CLI, Web API), is a row of
``run_executions`` with its trigger, times, state (REQUESTED → RUNNING → COMPLETED / REJECTED /
FAILED) and counts. How a due time is claimed exactly once is in :mod:`reconciler.scheduler`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from reconciler.run_tables import definitions_table, executions_table
from schemas.limits import MAX_ID_LIST, Identifier, Name

__all__ = [
    "DefinitionExists",
    "DefinitionInUse",
    "Execution",
    "ExecutionState",
    "RunDefinition",
    "RunDefinitionStore",
    "RunKind",
    "Trigger",
    "UnknownDefinition",
]


class RunKind(StrEnum):
    RESET = "reset"
    MAIL = "mail"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"


class ExecutionState(StrEnum):
    REQUESTED = "REQUESTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"


FINISHED = (ExecutionState.COMPLETED, ExecutionState.REJECTED, ExecutionState.FAILED)


class UnknownDefinition(LookupError):
    """No run definition has this name."""


class DefinitionExists(ValueError):
    """A run definition of this name exists already."""


class DefinitionInUse(ValueError):
    """The definition has executed: it can be made Not Effective, not deleted."""


class RunDefinition(BaseModel):
    """One definition, as the CLI and the Web API accept it (errors name the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier
    kind: RunKind
    effective: bool = True
    schedule: str | None = Field(default=None, max_length=256, description="cron expression (5 fields)")
    time_zone: str = Field(default="UTC", max_length=64, description="IANA zone the schedule is read in")
    once_at: AwareDatetime | None = None
    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None
    created_within_days: int | None = Field(default=None, ge=1, le=36_500)
    subscription_types: list[Name] = Field(default_factory=list, max_length=MAX_ID_LIST)
    external_systems: list[Name] = Field(default_factory=list, max_length=MAX_ID_LIST)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (five fields: minute hour day month weekday)")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Nicosia") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunDefinition:
        if self.schedule is not None and self.once_at is not None:
            raise ValueError("give schedule or once_at, not both")
        if self.kind is RunKind.MAIL:
            if not self.external_systems:
                raise ValueError("external_systems: a mail run names at least one external system")
            if self.created_from or self.created_to or self.created_within_days or self.subscription_types:
                raise ValueError("creation period and subscription types are filters of reset runs only")
        else:
            if self.external_systems:
                raise ValueError("external_systems: only mail runs name external systems")
            if self.created_within_days is not None and (self.created_from or self.created_to):
                raise ValueError("created_within_days: give a rolling period or a fixed one, not both")
            if self.created_from and self.created_to and self.created_from >= self.created_to:
                raise ValueError("created_to must be after created_from")
        return self

    def period(self, at: datetime) -> tuple[datetime | None, datetime | None]:
        """The creation period an execution acting at ``at`` selects (half-open, as reset runs are)."""
        if self.created_within_days is not None:
            return at - timedelta(days=self.created_within_days), at
        return self.created_from, self.created_to

    def latest_due(self, now: datetime, since: datetime) -> datetime | None:
        """The newest due time in ``(since, now]``, or ``None``: the one a scheduler executes.

        Due times before it in that window are passed over, so a scheduler that was down executes a
        missed definition at most once when it is back.
        """
        if self.once_at is not None:
            return self.once_at if since < self.once_at <= now else None
        if self.schedule is None:
            return None
        zone = ZoneInfo(self.time_zone)
        local_now = now.astimezone(zone)
        # croniter: get_prev from a time exactly on a due time returns the one before it
        due: datetime = croniter(self.schedule, local_now + timedelta(seconds=1)).get_prev(datetime)
        due = due.astimezone(UTC)
        return due if since < due <= now else None

    def view(self, now: datetime) -> dict[str, Any]:
        """The definition as JSON values, with ``next_due_at`` (``None``: Not Effective or no schedule)."""
        nxt = self.next_due(now) if self.effective else None
        return {**self.model_dump(mode="json"), "next_due_at": nxt.isoformat() if nxt else None}

    def next_due(self, after: datetime) -> datetime | None:
        if self.once_at is not None:
            return self.once_at if self.once_at > after else None
        if self.schedule is None:
            return None
        nxt: datetime = croniter(self.schedule, after.astimezone(ZoneInfo(self.time_zone))).get_next(datetime)
        return nxt.astimezone(UTC)


@dataclass(frozen=True)
class Execution:
    execution_id: str
    definition_name: str
    kind: RunKind
    trigger: Trigger
    preview: bool
    due_at: datetime | None
    state: ExecutionState
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def view(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None
        return {"execution_id": self.execution_id, "definition": self.definition_name, "kind": self.kind.value,
                "trigger": self.trigger.value, "preview": self.preview, "due_at": iso(self.due_at),
                "state": self.state.value, "requested_at": iso(self.requested_at),
                "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
                "counts": self.counts, "error": self.error}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_execution_id(name: str) -> str:
    return f"run-{name[:80]}-{uuid.uuid4().hex[:12]}"


class RunDefinitionStore:
    """Definitions and executions in the database the reconciler already uses."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- definitions ---------------------------------------------------------------------------------

    def define(self, definition: RunDefinition) -> None:
        now = self._clock()
        try:
            with self._engine.begin() as conn:
                conn.execute(definitions_table.insert().values(
                    name=definition.name, kind=definition.kind.value, effective=definition.effective,
                    effective_since=now, definition_json=definition.model_dump_json(), created_at=now))
        except IntegrityError as exc:
            raise DefinitionExists(f"a run definition named {definition.name!r} exists already") from exc

    def get(self, name: str) -> RunDefinition:
        with self._engine.connect() as conn:
            row = conn.execute(select(definitions_table.c.definition_json)
                               .where(definitions_table.c.name == name)).first()
        if row is None:
            raise UnknownDefinition(f"no run definition named {name!r}")
        return RunDefinition.model_validate_json(row[0])

    def all(self) -> list[RunDefinition]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(definitions_table.c.definition_json).order_by(definitions_table.c.name))
            return [RunDefinition.model_validate_json(r[0]) for r in rows]

    def effective(self) -> list[tuple[RunDefinition, datetime]]:
        """Effective definitions with the time since which they are (due times before it never run)."""
        t = definitions_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t.c.definition_json, t.c.effective_since).where(t.c.effective.is_(True))
                                .order_by(t.c.name)).all()
        return [(RunDefinition.model_validate_json(r[0]), r[1]) for r in rows]

    def set_effective(self, name: str, effective: bool) -> RunDefinition:
        definition = self.get(name).model_copy(update={"effective": effective})
        t = definitions_table
        values: dict[str, Any] = {"effective": effective, "definition_json": definition.model_dump_json()}
        with self._engine.begin() as conn:
            current = conn.execute(select(t.c.effective).where(t.c.name == name)).scalar_one()
            if effective and not current:
                values["effective_since"] = self._clock()  # due times while Not Effective are not caught up
            conn.execute(update(t).where(t.c.name == name).values(**values))
        return definition

    def delete(self, name: str) -> None:
        self.get(name)
        with self._engine.begin() as conn:
            used = conn.execute(select(func.count()).select_from(executions_table)
                                .where(executions_table.c.definition_name == name)).scalar_one()
            if used:
                raise DefinitionInUse(f"run definition {name!r} has executed {used} time(s): make it Not "
                                      "Effective instead")
            conn.execute(delete(definitions_table).where(definitions_table.c.name == name))

    # --- executions ----------------------------------------------------------------------------------

    def request(self, name: str, *, preview: bool = False) -> Execution:
        """Record an execution by hand (REQUESTED); a reconciler claims and runs it."""
        definition = self.get(name)
        execution_id = new_execution_id(name)
        with self._engine.begin() as conn:
            conn.execute(executions_table.insert().values(
                execution_id=execution_id, definition_name=name, kind=definition.kind.value,
                trigger=Trigger.MANUAL.value, preview=preview, due_at=None, state=ExecutionState.REQUESTED.value,
                requested_at=self._clock()))
        return self.execution(execution_id)

    def claim_due(self, definition: RunDefinition, due_at: datetime, owner: str) -> str | None:
        """Insert the execution of ``definition`` at ``due_at``; its id, or ``None`` if a replica did."""
        execution_id = new_execution_id(definition.name)
        now = self._clock()
        try:
            with self._engine.begin() as conn:
                conn.execute(executions_table.insert().values(
                    execution_id=execution_id, definition_name=definition.name, kind=definition.kind.value,
                    trigger=Trigger.SCHEDULE.value, preview=False, due_at=due_at,
                    state=ExecutionState.RUNNING.value, owner=owner, requested_at=now, started_at=now))
        except IntegrityError:
            return None
        return execution_id

    def claim_requested(self, owner: str) -> list[Execution]:
        """The REQUESTED executions this owner won (a conditional update: one replica wins each)."""
        t = executions_table
        with self._engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(t.c.execution_id).where(
                t.c.state == ExecutionState.REQUESTED.value).order_by(t.c.requested_at).limit(20))]
        won = []
        for execution_id in ids:
            with self._engine.begin() as conn:
                result = conn.execute(update(t).where(t.c.execution_id == execution_id,
                                                      t.c.state == ExecutionState.REQUESTED.value)
                                      .values(state=ExecutionState.RUNNING.value, owner=owner,
                                              started_at=self._clock()))
            if result.rowcount == 1:
                won.append(self.execution(execution_id))
        return won

    def last_due(self, name: str) -> datetime | None:
        t = executions_table
        with self._engine.connect() as conn:
            found: datetime | None = conn.execute(select(func.max(t.c.due_at))
                                                  .where(t.c.definition_name == name)).scalar_one()
        return found

    def finish(self, execution_id: str, state: ExecutionState, counts: Mapping[str, int],
               error: str | None = None) -> None:
        t = executions_table
        with self._engine.begin() as conn:
            conn.execute(update(t).where(t.c.execution_id == execution_id).values(
                state=state.value, finished_at=self._clock(), counts_json=json.dumps(dict(counts)),
                error=error))

    def execution(self, execution_id: str) -> Execution:
        t = executions_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.execution_id == execution_id)).first()
        if row is None:
            raise LookupError(f"no execution {execution_id!r}")
        return _execution(row)

    def executions(self, name: str, *, limit: int = 100) -> list[Execution]:
        """Newest first."""
        t = executions_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.definition_name == name)
                                .order_by(t.c.requested_at.desc(), t.c.execution_id).limit(limit)).all()
        return [_execution(r) for r in rows]


def _execution(row: Row[Any]) -> Execution:
    m = row._mapping
    return Execution(
        execution_id=m["execution_id"], definition_name=m["definition_name"], kind=RunKind(m["kind"]),
        trigger=Trigger(m["trigger"]), preview=bool(m["preview"]), due_at=m["due_at"],
        state=ExecutionState(m["state"]), requested_at=m["requested_at"], started_at=m["started_at"],
        finished_at=m["finished_at"], counts=json.loads(m["counts_json"]) if m["counts_json"] else {},
        error=m["error"])
