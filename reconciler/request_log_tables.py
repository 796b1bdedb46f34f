"""The provisioning request log's tables, on their own :data:`LOG_METADATA`.

Created and changed only by the Alembic migration ``0003_request_log``; a test checks the migrated
schema equals these ``Table`` objects.

- ``provisioning_log``: one row per KMS command (its idempotency key), per whole-input rejection (the
  rejection key), per service request (``@request:<id>``) and per reset run (``@run:<id>``). ``kind``
  says which; ``state`` is PENDING, COMPLETED or REJECTED. ``source_kind``/``source_id`` name what
  caused the row (``event``, ``request``, ``reset``, ``mail``), so a request's commands are the rows
  with its source. Every search filter has an index ending in ``(created_at, entry_key)``, the keyset
  of the newest-first pagination, so a filtered page is an index range scan.
- ``provisioning_log_events``: one row per subscription event and box it named (current, added or
  removed device): the "events" part of a box's history.
- ``dlq_replays``: each dead letter ``kmsbridge dlq replay`` produced again, so a second replay of the
  same records does nothing.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from reconciler.tables import ID_LENGTH, UtcDateTime

__all__ = ["KEY_LENGTH", "LOG_METADATA", "dlq_replays_table", "log_events_table", "log_table"]

LOG_METADATA = MetaData()

#: An idempotency key (``provisioning.keys.MAX_KEY_LENGTH`` is below it) or a topic name.
KEY_LENGTH = 255


def _newest_first(name: str, *lead: str) -> Index:
    return Index(name, *lead, "created_at", "entry_key")


log_table = Table(
    "provisioning_log",
    LOG_METADATA,
    Column("entry_key", String(KEY_LENGTH), primary_key=True),
    Column("kind", String(16), nullable=False),  # COMMAND, REJECTION, REQUEST, RUN
    Column("operation", String(64), nullable=False),  # KMS operation, request type, RESET_RUN
    Column("state", String(16), nullable=False),
    Column("secure_client_id", String(ID_LENGTH), nullable=True),
    Column("subscription_id", String(ID_LENGTH), nullable=True),
    Column("distributor", String(16), nullable=True),
    Column("source_kind", String(16), nullable=False),  # event, request, reset, mail
    Column("source_id", String(ID_LENGTH), nullable=False),
    Column("process_name", String(64), nullable=False),
    Column("requested_by", String(ID_LENGTH), nullable=True),
    Column("priority", String(16), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("executed_at", UtcDateTime(), nullable=True),
    Column("attempts", Integer, nullable=True),
    Column("duplicate", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("error_description", Text, nullable=True),
    Column("provider_error_code", String(64), nullable=True),
    Column("provider_error_description", Text, nullable=True),
    Column("detail_json", Text, nullable=True),  # the KmsResult, or a reset run's ReconcileReport
    _newest_first("ix_log_created"),
    _newest_first("ix_log_client", "secure_client_id"),
    _newest_first("ix_log_subscription", "subscription_id"),
    _newest_first("ix_log_operation", "operation"),
    _newest_first("ix_log_state", "state"),
    _newest_first("ix_log_process", "process_name"),
    Index("ix_log_source", "source_id", "source_kind"),
)

log_events_table = Table(
    "provisioning_log_events",
    LOG_METADATA,
    Column("event_id", String(ID_LENGTH), primary_key=True),
    Column("secure_client_id", String(ID_LENGTH), primary_key=True),
    Column("subscription_id", String(ID_LENGTH), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("subscription_state", String(16), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("role", String(16), nullable=False),  # device, added, removed
    Column("distributor", String(16), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Index("ix_log_events_client", "secure_client_id", "occurred_at"),
    Index("ix_log_events_occurred", "occurred_at"),
)

dlq_replays_table = Table(
    "dlq_replays",
    LOG_METADATA,
    Column("dlq_topic", String(KEY_LENGTH), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("target_topic", String(KEY_LENGTH), nullable=False),
    Column("error_class", String(64), nullable=False),
    Column("replayed_at", UtcDateTime(), nullable=False),
)
