"""The provisioning request log, the history of each box, and the dead letters replayed.

Revision ID: 0003_request_log
Revises: 0002_desired_state
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_request_log"
down_revision = "0002_desired_state"
branch_labels = None
depends_on = None

ID = 128
KEY = 255

_NEWEST_FIRST = {
    "ix_log_created": [],
    "ix_log_client": ["secure_client_id"],
    "ix_log_subscription": ["subscription_id"],
    "ix_log_operation": ["operation"],
    "ix_log_state": ["state"],
    "ix_log_process": ["process_name"],
}


def upgrade() -> None:
    op.create_table(
        "provisioning_log",
        sa.Column("entry_key", sa.String(KEY), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("secure_client_id", sa.String(ID), nullable=True),
        sa.Column("subscription_id", sa.String(ID), nullable=True),
        sa.Column("distributor", sa.String(16), nullable=True),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("source_id", sa.String(ID), nullable=False),
        sa.Column("process_name", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(ID), nullable=True),
        sa.Column("priority", sa.String(16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_description", sa.Text(), nullable=True),
        sa.Column("provider_error_code", sa.String(64), nullable=True),
        sa.Column("provider_error_description", sa.Text(), nullable=True),
        sa.Column("detail_json", sa.Text(), nullable=True),
    )
    for name, lead in _NEWEST_FIRST.items():
        op.create_index(name, "provisioning_log", [*lead, "created_at", "entry_key"])
    op.create_index("ix_log_source", "provisioning_log", ["source_id", "source_kind"])
    op.create_table(
        "provisioning_log_events",
        sa.Column("event_id", sa.String(ID), primary_key=True),
        sa.Column("secure_client_id", sa.String(ID), primary_key=True),
        sa.Column("subscription_id", sa.String(ID), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("subscription_state", sa.String(16), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("distributor", sa.String(16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_log_events_client", "provisioning_log_events", ["secure_client_id", "occurred_at"])
    op.create_index("ix_log_events_occurred", "provisioning_log_events", ["occurred_at"])
    op.create_table(
        "dlq_replays",
        sa.Column("dlq_topic", sa.String(KEY), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("offset", sa.BigInteger(), primary_key=True),
        sa.Column("target_topic", sa.String(KEY), nullable=False),
        sa.Column("error_class", sa.String(64), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dlq_replays")
    op.drop_table("provisioning_log_events")
    op.drop_table("provisioning_log")
