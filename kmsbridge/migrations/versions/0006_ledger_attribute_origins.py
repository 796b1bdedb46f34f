"""The ledger keeps, per secure client and attribute, the origin of the last absolute command applied.

Revision ID: 0006_ledger_attribute_origins
Revises: 0005_run_definitions
Create Date: 2026-12-02

``kms_client_attributes`` holds, for each (secure client, attribute: entitlements, pairing with a
chipset, PIN), the origin time, subscription and version and the idempotency key of the last absolute
command the executor applied. An older absolute command for the same attribute ends COMPLETED with
``superseded_by`` and never reaches the KMS (docs/traffic.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_ledger_attribute_origins"
down_revision = "0005_run_definitions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "kms_client_attributes" in sa.inspect(op.get_bind()).get_table_names():
        return  # a ledger made from the code's tables (before migrations existed) has it already
    op.create_table(
        "kms_client_attributes",
        sa.Column("secure_client_id", sa.String(128), primary_key=True),
        sa.Column("attribute", sa.String(160), primary_key=True),
        sa.Column("origin_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subscription_id", sa.String(128), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kms_client_attributes")
