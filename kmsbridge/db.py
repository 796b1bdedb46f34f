"""Database schema management: ``alembic upgrade head``, run by every process that owns tables.

:func:`upgrade` runs the migrations shipped in ``kmsbridge/migrations`` programmatically (no
``alembic.ini`` on disk), so an upgrade of the product never needs a manual step. It is safe when
several processes start at once against one database (executor, projector and reconciler of the
local stack share one SQLite file; replicas share one PostgreSQL):

- PostgreSQL: the whole upgrade runs in one transaction holding ``pg_advisory_xact_lock``; DDL is
  transactional there, so a second process waits, then finds nothing left to do.
- SQLite: an exclusive ``flock`` on ``<database file>.migrate.lock`` serialises the upgrades.

A database made before migrations existed (the executor's ``LEDGER_METADATA.create_all``) has the
ledger tables but no ``alembic_version``: it is stamped at ``0001_ledger`` first, then upgraded.

The upgrade is each process's first connection to the database, so a database that does not answer
stops start-up there: :func:`upgrade` raises :class:`~kmsbridge.errors.Unreachable` naming
``KMSBRIDGE_DATABASE_URL`` and the address it tried (never the password), which ``kmsbridge run``
reports in one line, without a traceback, exiting 1 (a failure its supervisor retries; a bad setting
exits 2).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from kmsbridge.errors import Unreachable

__all__ = [
    "BASELINE_REVISION",
    "DATABASE_URL_SETTING",
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "unreachable",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision that creates the executor's ledger tables.
BASELINE_REVISION = "0001_ledger"
#: Any constant shared by every kmsbridge process: the PostgreSQL advisory lock of migrations.
_PG_LOCK_KEY = 0x6B6D7362  # "kmsb"
#: The setting that holds the database URL (``Settings.database_url``).
DATABASE_URL_SETTING = "KMSBRIDGE_DATABASE_URL"
#: Default ports of the server dialects, for a URL that names none.
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the shipped migrations, bound to ``connection`` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent, concurrency-safe; see the module docstring).

    Raises :class:`~kmsbridge.errors.Unreachable` (:func:`unreachable`) when no connection opens."""
    with _file_lock(engine), _connect(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        config = alembic_config(conn)
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "kms_ledger" in tables:
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, revision)


def unreachable(url: URL, exc: BaseException) -> Unreachable:
    """The start-up error for a database that does not answer: one line naming the setting, the
    address tried and the driver's reason (its first line, the password masked if it appears)."""
    backend = url.get_backend_name()
    if url.host is not None:
        port = url.port or _DEFAULT_PORTS.get(backend)
        where = f"{url.host}:{port}" if port else url.host
    else:
        where = url.database or "(no database named)"
    cause = getattr(exc, "orig", None) or exc
    reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return Unreachable(f"{DATABASE_URL_SETTING}: cannot connect to the {backend} database at {where}: {reason}")


def _connect(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except (OperationalError, InterfaceError) as exc:
        raise unreachable(engine.url, exc) from exc


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = Path(os.path.abspath(database) + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
