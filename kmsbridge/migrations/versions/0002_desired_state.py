"""The reconciler: desired state per subscription, the cards each one named, expectations, run lock.

Revision ID: 0002_desired_state
Revises: 0001_ledger
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_desired_state"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None

ID = 128


def upgrade() -> None:
    op.create_table(
        "desired_subscriptions",
        sa.Column("subscription_id", sa.String(ID), primary_key=True),
        sa.Column("subscription_type", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(ID), nullable=False),
        sa.Column("event_json", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_desired_subscriptions_created", "desired_subscriptions", ["created_at", "subscription_id"])
    op.create_table(
        "desired_cards",
        sa.Column("subscription_id", sa.String(ID), primary_key=True),
        sa.Column("secure_client_id", sa.String(ID), primary_key=True),
        sa.Column("distributor", sa.String(16), nullable=False),
        sa.Column("stb_serial", sa.String(ID), nullable=True),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_desired_cards_card", "desired_cards", ["secure_client_id"])
    op.create_table(
        "reconcile_expectations",
        sa.Column("subscription_id", sa.String(ID), primary_key=True),
        sa.Column("run_id", sa.String(ID), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "reconcile_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(2 * ID), nullable=False),
        sa.Column("run_id", sa.String(ID), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reconcile_leases")
    op.drop_table("reconcile_expectations")
    op.drop_index("ix_desired_cards_card", table_name="desired_cards")
    op.drop_table("desired_cards")
    op.drop_index("ix_desired_subscriptions_created", table_name="desired_subscriptions")
    op.drop_table("desired_subscriptions")
