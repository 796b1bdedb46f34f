"""Tables of run definitions, their executions and the communication queue, on :data:`RUNS_METADATA`.

Created and changed only by the Alembic migrations (``0005_run_definitions``); a test checks the
migrated schema equals these objects.

- ``run_definitions``: one row per named definition (reset or mail), its whole definition as JSON
  plus the columns the scheduler reads (``kind``, ``effective``, ``effective_since``).
- ``run_executions``: every execution, requested by hand or due by schedule. ``(definition_name,
  due_at)`` is unique: a scheduled due time is claimed by inserting its row, so among several
  reconciler replicas exactly one inserts it and executes (see :mod:`reconciler.scheduler`). Rows
  requested by hand have no ``due_at`` (NULLs never collide) and are claimed by a conditional update
  from REQUESTED to RUNNING.
- ``communication_queue``: each communication of ``crm.communications`` in ``queue`` delivery, its
  record as JSON, its state (PENDING, COMPLETED, REJECTED) and the execution that sent it.
- ``communication_commands``: the commands a mail run published for a communication, each settled by
  its ``kms.results`` result; a communication ends COMPLETED when all of them completed and REJECTED
  (with the first code) when one was rejected.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from reconciler.tables import ID_LENGTH, UtcDateTime

__all__ = [
    "RUNS_METADATA",
    "communication_commands_table",
    "communication_queue_table",
    "definitions_table",
    "executions_table",
]

RUNS_METADATA = MetaData()
KEY_LENGTH = 255

definitions_table = Table(
    "run_definitions",
    RUNS_METADATA,
    Column("name", String(ID_LENGTH), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("effective", Boolean, nullable=False),
    Column("effective_since", UtcDateTime(), nullable=False),
    Column("definition_json", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

executions_table = Table(
    "run_executions",
    RUNS_METADATA,
    Column("execution_id", String(ID_LENGTH), primary_key=True),
    Column("definition_name", String(ID_LENGTH), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("preview", Boolean, nullable=False),
    Column("due_at", UtcDateTime(), nullable=True),
    Column("state", String(16), nullable=False),
    Column("owner", String(ID_LENGTH * 2), nullable=True),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("counts_json", Text, nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("definition_name", "due_at", name="uq_run_executions_due"),
    Index("ix_run_executions_definition", "definition_name", "requested_at"),
    Index("ix_run_executions_state", "state"),
)

communication_queue_table = Table(
    "communication_queue",
    RUNS_METADATA,
    Column("communication_id", String(ID_LENGTH), primary_key=True),
    Column("external_system", String(ID_LENGTH), nullable=False),
    Column("state", String(16), nullable=False),
    Column("scheduled_at", UtcDateTime(), nullable=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("execution_id", String(ID_LENGTH), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_description", Text, nullable=True),
    Column("record_json", Text, nullable=False),
    Index("ix_communication_queue_pending", "state", "external_system", "received_at"),
)

communication_commands_table = Table(
    "communication_commands",
    RUNS_METADATA,
    Column("idempotency_key", String(KEY_LENGTH), primary_key=True),
    Column("communication_id", String(ID_LENGTH), nullable=False),
    Column("state", String(16), nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("error_description", Text, nullable=True),
    Column("attempts", Integer, nullable=True),
    Index("ix_communication_commands_comm", "communication_id"),
)
