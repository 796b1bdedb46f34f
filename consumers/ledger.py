"""The executor's ledger: each idempotency key's outcome, and each secure client's newest version.

A key already COMPLETED or REJECTED is never sent to the KMS again (a real KMS may not deduplicate);
its stored result is re-published with ``duplicate`` true. SQLAlchemy Core, so SQLite (default) and
PostgreSQL (production, shared by executor replicas) both work.

Speed (docs/benchmarks.md, executor): every statement is built once, with bind parameters, so
SQLAlchemy's compiled cache is hit instead of generating a cache key from a fresh construct per call;
:meth:`Ledger.lookup` reads the key and the client's version on one connection; :meth:`Ledger.record`
is two single-statement upserts (``INSERT ... ON CONFLICT DO UPDATE``) in one transaction instead of
select-then-insert-or-update twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from schemas.records import KmsResult

__all__ = ["LEDGER_METADATA", "Ledger"]

LEDGER_METADATA = MetaData()

ledger_table = Table(
    "kms_ledger",
    LEDGER_METADATA,
    Column("idempotency_key", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("result_json", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

versions_table = Table(
    "kms_client_versions",
    LEDGER_METADATA,
    Column("secure_client_id", String(128), primary_key=True),
    Column("subscription_id", String(128), nullable=True),
    Column("version", Integer, nullable=False),
)

_GET = select(ledger_table.c.result_json).where(ledger_table.c.idempotency_key == bindparam("key"))
_VERSION = select(versions_table.c.subscription_id, versions_table.c.version).where(
    versions_table.c.secure_client_id == bindparam("card"))


def _upserts(dialect_name: str) -> tuple[object, object]:
    module = postgresql if dialect_name == "postgresql" else sqlite
    outcome = module.insert(ledger_table)
    outcome = outcome.on_conflict_do_update(
        index_elements=[ledger_table.c.idempotency_key],
        set_={"state": outcome.excluded.state, "result_json": outcome.excluded.result_json,
              "updated_at": outcome.excluded.updated_at})
    version = module.insert(versions_table)
    # a card moved to another subscription starts that subscription's version sequence
    version = version.on_conflict_do_update(
        index_elements=[versions_table.c.secure_client_id],
        set_={"version": version.excluded.version, "subscription_id": version.excluded.subscription_id},
        where=or_(versions_table.c.subscription_id.is_distinct_from(version.excluded.subscription_id),
                  version.excluded.version > versions_table.c.version))
    return outcome, version


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._record_outcome, self._raise_version = _upserts(engine.dialect.name)

    def get(self, key: str) -> KmsResult | None:
        with self._engine.connect() as conn:
            return self._get(conn, key)

    def version(self, secure_client_id: str) -> tuple[str | None, int] | None:
        with self._engine.connect() as conn:
            return self._version(conn, secure_client_id)

    def lookup(self, key: str, secure_client_id: str | None) -> tuple[KmsResult | None, tuple[str | None, int] | None]:
        """``(get(key), version(secure_client_id))`` on one connection (the runner's two reads)."""
        with self._engine.connect() as conn:
            known = self._get(conn, key)
            if known is not None or secure_client_id is None:
                return known, None
            return None, self._version(conn, secure_client_id)

    def record(self, result: KmsResult, *, version: int | None = None,
               subscription_id: str | None = None) -> None:
        """Store the outcome and, for an applied command, raise the client's version (one transaction)."""
        with self._engine.begin() as conn:
            conn.execute(self._record_outcome, {  # type: ignore[call-overload]
                "idempotency_key": result.idempotency_key, "state": result.state.value,
                "result_json": result.model_dump_json(), "updated_at": datetime.now(UTC)})
            if version is not None and result.secure_client_id:
                conn.execute(self._raise_version, {  # type: ignore[call-overload]
                    "secure_client_id": result.secure_client_id, "subscription_id": subscription_id,
                    "version": version})

    @staticmethod
    def _get(conn: Connection, key: str) -> KmsResult | None:
        row = conn.execute(_GET, {"key": key}).first()
        return KmsResult.model_validate_json(row[0]) if row else None

    @staticmethod
    def _version(conn: Connection, card: str) -> tuple[str | None, int] | None:
        row = conn.execute(_VERSION, {"card": card}).first()
        return (row[0], int(row[1])) if row else None
