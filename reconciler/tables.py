"""The reconciler's tables, on their own :data:`DESIRED_METADATA` (the executor's ledger has its own).

The schema is created and changed only by the Alembic migrations in ``kmsbridge/migrations``; these
``Table`` objects are what the code reads and writes, and a test checks the migrated schema equals
them.

- ``desired_subscriptions``: one row per subscription, the newest event the projector applied (its
  whole JSON, plus the columns a reset run filters on).
- ``desired_cards``: every secure client a subscription's events ever named, ``current`` while the
  newest event lists it among ``devices``. The non-current ones are how a reset run knows which cards
  the KMS may still hold for the subscription although CRM no longer has them (see ``drift.py``).
- ``reconcile_expectations``: repairs a reset run published and has not yet seen applied
  (controller-runtime's "expectations"): a run right after another does not publish them again.
- ``reconcile_leases``: the run lock (``lock.py``).

Times are stored in UTC through :class:`UtcDateTime`, so SQLite (no time zones) and PostgreSQL
(``timestamptz``) compare and return the same instants.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, MetaData, String, Table, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "DESIRED_METADATA",
    "UtcDateTime",
    "cards_table",
    "expectations_table",
    "leases_table",
    "subscriptions_table",
]

DESIRED_METADATA = MetaData()

#: Longest id the tables hold (subscription, secure client, run); CRM ids are far shorter.
ID_LENGTH = 128


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware ``datetime`` stored as UTC; naive values read back from SQLite get UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"a timezone-aware datetime is required, got {value!r}")
        moment = value.astimezone(UTC)
        # SQLite stores text without a zone: keep it naive UTC so text order is time order.
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


subscriptions_table = Table(
    "desired_subscriptions",
    DESIRED_METADATA,
    Column("subscription_id", String(ID_LENGTH), primary_key=True),
    Column("subscription_type", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("event_id", String(ID_LENGTH), nullable=False),
    Column("event_json", Text, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # keyset pagination of a reset run walks (created_at, subscription_id)
    Index("ix_desired_subscriptions_created", "created_at", "subscription_id"),
)

cards_table = Table(
    "desired_cards",
    DESIRED_METADATA,
    Column("subscription_id", String(ID_LENGTH), primary_key=True),
    Column("secure_client_id", String(ID_LENGTH), primary_key=True),
    Column("distributor", String(16), nullable=False),
    Column("stb_serial", String(ID_LENGTH), nullable=True),
    Column("current", Boolean, nullable=False),
    Column("version", BigInteger, nullable=False),  # version of the newest event that named the card
    Index("ix_desired_cards_card", "secure_client_id"),
)

expectations_table = Table(
    "reconcile_expectations",
    DESIRED_METADATA,
    Column("subscription_id", String(ID_LENGTH), primary_key=True),
    Column("run_id", String(ID_LENGTH), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

leases_table = Table(
    "reconcile_leases",
    DESIRED_METADATA,
    Column("name", String(64), primary_key=True),
    Column("owner", String(ID_LENGTH * 2), nullable=False),
    Column("run_id", String(ID_LENGTH), nullable=True),
    Column("acquired_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)
