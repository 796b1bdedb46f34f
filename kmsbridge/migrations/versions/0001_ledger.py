"""The executor's ledger: each idempotency key's outcome and each secure client's newest version.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-25

Databases created before migrations existed (``LEDGER_METADATA.create_all``) already hold these
tables; :func:`kmsbridge.db.upgrade` stamps them at this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kms_ledger",
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "kms_client_versions",
        sa.Column("secure_client_id", sa.String(128), primary_key=True),
        sa.Column("subscription_id", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kms_client_versions")
    op.drop_table("kms_ledger")
