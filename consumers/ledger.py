"""The executor's ledger: each idempotency key's outcome, and each secure client's newest version.

A key already COMPLETED or REJECTED is never sent to the KMS again (a real KMS may not deduplicate);
its stored result is re-published with ``duplicate`` true. SQLAlchemy Core, so SQLite (default) and
PostgreSQL (production, shared by executor replicas) both work.

Speed (docs/benchmarks.md, executor): every statement is built once, with bind parameters, so
SQLAlchemy's compiled cache is hit instead of generating a cache key from a fresh construct per call;
:meth:`Ledger.lookup` reads the key and the client's version on one connection; :meth:`Ledger.record`
is two single-statement upserts (``INSERT ... ON CONFLICT DO UPDATE``) in one transaction instead of
select-then-insert-or-update twice; :class:`GroupCommit` writes the outcomes of one event-loop turn
in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from kafka_edge.dlq import is_content_error
from schemas.records import KmsResult

__all__ = ["LEDGER_METADATA", "Entry", "GroupCommit", "Ledger"]

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
    Column("version", BigInteger, nullable=False),  # an Avro long
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


@dataclass(frozen=True)
class Entry:
    """One command's outcome to record, with the version it applied (None: nothing applied)."""

    result: KmsResult
    version: int | None = None
    subscription_id: str | None = None


class GroupCommit:
    """Ledger writes of one event-loop turn in one transaction (group commit).

    :meth:`record` returns once its entry is committed, so a caller still publishes a result only
    after its ledger row is durable; commands that finish together (a burst of KMS answers) share
    one commit instead of paying one each. A failed commit fails every entry of its batch, except
    when the database refused an entry's content (:func:`~kafka_edge.dlq.is_content_error`): then each
    entry is written alone, so only the entries at fault fail and the others are recorded.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._pending: list[tuple[Entry, asyncio.Future[None]]] = []

    async def record(self, result: KmsResult, *, version: int | None = None,
                     subscription_id: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after every callback ready in this turn has had its say
        self._pending.append((Entry(result, version, subscription_id), done))
        await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            self._ledger.record_many([entry for entry, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and is_content_error(exc):
                self._one_by_one(batch)
                return
            for _, done in batch:
                _settle(done, exc)
            return
        for _, done in batch:
            _settle(done, None)

    def _one_by_one(self, batch: list[tuple[Entry, asyncio.Future[None]]]) -> None:
        for entry, done in batch:
            try:
                self._ledger.record_many([entry])
            except Exception as exc:
                _settle(done, exc)
            else:
                _settle(done, None)


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


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
        self.record_many([Entry(result, version, subscription_id)])

    def record_many(self, entries: Sequence[Entry]) -> None:
        """:meth:`record` for several commands in one transaction, in order."""
        now = datetime.now(UTC)
        outcomes = [{"idempotency_key": e.result.idempotency_key, "state": e.result.state.value,
                     "result_json": e.result.model_dump_json(), "updated_at": now} for e in entries]
        # row by row, in order: two commands of one card in one batch raise its version in turn
        versions = [{"secure_client_id": e.result.secure_client_id, "subscription_id": e.subscription_id,
                     "version": e.version} for e in entries if e.version is not None and e.result.secure_client_id]
        unique = list({row["idempotency_key"]: row for row in outcomes}.values())  # one row per key, last wins
        with self._engine.begin() as conn:
            conn.execute(self._record_outcome, unique)  # type: ignore[call-overload]
            for row in versions:
                conn.execute(self._raise_version, row)  # type: ignore[call-overload]

    @staticmethod
    def _get(conn: Connection, key: str) -> KmsResult | None:
        row = conn.execute(_GET, {"key": key}).first()
        return KmsResult.model_validate_json(row[0]) if row else None

    @staticmethod
    def _version(conn: Connection, card: str) -> tuple[str | None, int] | None:
        row = conn.execute(_VERSION, {"card": card}).first()
        return (row[0], int(row[1])) if row else None
