"""Run definitions, their executions, and the communication queue.

Revision ID: 0005_run_definitions
Revises: 0004_ledger_version_bigint
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_run_definitions"
down_revision = "0004_ledger_version_bigint"
branch_labels = None
depends_on = None

ID = 128
KEY = 255


def upgrade() -> None:
    op.create_table(
        "run_definitions",
        sa.Column("name", sa.String(ID), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("effective", sa.Boolean(), nullable=False),
        sa.Column("effective_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("definition_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "run_executions",
        sa.Column("execution_id", sa.String(ID), primary_key=True),
        sa.Column("definition_name", sa.String(ID), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("preview", sa.Boolean(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(ID * 2), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts_json", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("definition_name", "due_at", name="uq_run_executions_due"),
    )
    op.create_index("ix_run_executions_definition", "run_executions", ["definition_name", "requested_at"])
    op.create_index("ix_run_executions_state", "run_executions", ["state"])
    op.create_table(
        "communication_queue",
        sa.Column("communication_id", sa.String(ID), primary_key=True),
        sa.Column("external_system", sa.String(ID), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("execution_id", sa.String(ID), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_description", sa.Text(), nullable=True),
        sa.Column("record_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_communication_queue_pending", "communication_queue",
                    ["state", "external_system", "received_at"])
    op.create_table(
        "communication_commands",
        sa.Column("idempotency_key", sa.String(KEY), primary_key=True),
        sa.Column("communication_id", sa.String(ID), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_description", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
    )
    op.create_index("ix_communication_commands_comm", "communication_commands", ["communication_id"])


def downgrade() -> None:
    op.drop_index("ix_communication_commands_comm", "communication_commands")
    op.drop_table("communication_commands")
    op.drop_index("ix_communication_queue_pending", "communication_queue")
    op.drop_table("communication_queue")
    op.drop_index("ix_run_executions_state", "run_executions")
    op.drop_index("ix_run_executions_definition", "run_executions")
    op.drop_table("run_executions")
    op.drop_table("run_definitions")
