"""The executor's ledger: each idempotency key's outcome, and each secure client's newest version.

A key already COMPLETED or REJECTED is never sent to the KMS again (a real KMS may not deduplicate);
its stored result is re-published with ``duplicate`` true. SQLAlchemy Core, so SQLite (default) and
PostgreSQL (production, shared by executor replicas) both work.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, select
from sqlalchemy.engine import Engine

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


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, key: str) -> KmsResult | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(ledger_table.c.result_json).where(ledger_table.c.idempotency_key == key)
            ).first()
        return KmsResult.model_validate_json(row[0]) if row else None

    def record(self, result: KmsResult, *, version: int | None = None,
               subscription_id: str | None = None) -> None:
        """Store the outcome and, for an applied command, raise the client's version (one transaction)."""
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            exists = conn.execute(
                select(ledger_table.c.idempotency_key).where(
                    ledger_table.c.idempotency_key == result.idempotency_key
                )
            ).first()
            values = {"state": result.state.value, "result_json": result.model_dump_json(), "updated_at": now}
            if exists:
                conn.execute(
                    ledger_table.update()
                    .where(ledger_table.c.idempotency_key == result.idempotency_key)
                    .values(**values)
                )
            else:
                conn.execute(ledger_table.insert().values(idempotency_key=result.idempotency_key, **values))
            if version is not None and result.secure_client_id:
                self._raise_version(conn, result.secure_client_id, subscription_id, version)

    def version(self, secure_client_id: str) -> tuple[str | None, int] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(versions_table.c.subscription_id, versions_table.c.version).where(
                    versions_table.c.secure_client_id == secure_client_id
                )
            ).first()
        return (row[0], int(row[1])) if row else None

    @staticmethod
    def _raise_version(conn: object, scid: str, subscription_id: str | None, version: int) -> None:
        from sqlalchemy.engine import Connection

        assert isinstance(conn, Connection)
        row = conn.execute(
            select(versions_table.c.version, versions_table.c.subscription_id).where(
                versions_table.c.secure_client_id == scid
            )
        ).first()
        if row is None:
            conn.execute(versions_table.insert().values(
                secure_client_id=scid, subscription_id=subscription_id, version=version))
        elif row[1] != subscription_id or version > int(row[0]):
            # a card moved to another subscription starts that subscription's version sequence
            conn.execute(
                versions_table.update()
                .where(versions_table.c.secure_client_id == scid)
                .values(version=version, subscription_id=subscription_id)
            )
