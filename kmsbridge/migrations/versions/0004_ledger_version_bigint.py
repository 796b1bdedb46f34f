"""The ledger's per-card subscription version is a 64-bit integer, like the records' Avro ``long``.

Revision ID: 0004_ledger_version_bigint
Revises: 0003_request_log
Create Date: 2026-12-02

``kms_client_versions.version`` holds ``KmsCommand.subscription_version``, an Avro ``long``. A 32-bit
column refused every version above 2**31 - 1 on PostgreSQL, so the command it guarded was
dead-lettered after the KMS had applied it. SQLite's INTEGER is already 64-bit; the batch operation
rebuilds the table there and alters the column in place on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ledger_version_bigint"
down_revision = "0003_request_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kms_client_versions") as batch:
        batch.alter_column("version", type_=sa.BigInteger(), existing_type=sa.Integer(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("kms_client_versions") as batch:
        batch.alter_column("version", type_=sa.Integer(), existing_type=sa.BigInteger(),
                           existing_nullable=False)
