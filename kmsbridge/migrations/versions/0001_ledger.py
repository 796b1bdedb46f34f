"""The executor's ledger: each idempotency key's outcome and each secure client's newest version.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-25

Databases created before migrations existed (``LEDGER_METADATA.create_all``) already hold these
tables; :func:`kmsbridge.db.upgrade` stamps them at this revision instead of running it. The tables
are created only when missing, so a process still calling ``create_all`` at the same moment (the
executor, until it runs :func:`kmsbridge.db.upgrade` itself) cannot make the baseline fail.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "kms_ledger" not in existing:
        _create_ledger()
    if "kms_client_versions" not in existing:
        _create_versions()


def _create_ledger() -> None:
    op.create_table(
        "kms_ledger",
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _create_versions() -> None:
    op.create_table(
        "kms_client_versions",
        sa.Column("secure_client_id", sa.String(128), primary_key=True),
        sa.Column("subscription_id", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kms_client_versions")
    op.drop_table("kms_ledger")
