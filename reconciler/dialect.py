"""Dialect-specific SQL the reconciler needs: a version-guarded ``INSERT ... ON CONFLICT DO UPDATE``.

SQLite (3.24+) and PostgreSQL share the syntax, and SQLAlchemy exposes it per dialect
(``sqlalchemy.dialects.sqlite.insert`` / ``sqlalchemy.dialects.postgresql.insert``); any other
database is refused with :class:`UnsupportedDatabase` naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

__all__ = ["UnsupportedDatabase", "dialect_insert", "insert_missing", "upsert_statement"]


class UnsupportedDatabase(RuntimeError):
    """The database is neither SQLite nor PostgreSQL."""

    def __init__(self, name: str) -> None:
        super().__init__(f"KMSBRIDGE_DATABASE_URL: database {name!r} is not supported (use sqlite or postgresql)")


def dialect_insert(dialect: Dialect, table: Table) -> Any:
    """The dialect's ``INSERT`` construct (it has ``on_conflict_do_update`` and ``excluded``)."""
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    raise UnsupportedDatabase(dialect.name)


def upsert_statement(dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]], *,
                     keys: Sequence[str], update: Sequence[str], newer_only: str | None = None,
                     or_equal: bool = False, keep_when_null: Sequence[str] = ()) -> Any:
    """``INSERT rows ON CONFLICT (keys) DO UPDATE SET update WHERE excluded.<newer_only> > stored``.

    Without ``newer_only`` the update is unconditional. ``or_equal`` relaxes the guard to ``>=``.
    Columns in ``keep_when_null`` keep their stored value when the new row has NULL there. The
    statement can take ``.returning(...)``: with a guard that fails, the row is neither changed nor
    returned.
    """
    stmt = dialect_insert(dialect, table).values(list(rows))
    excluded = stmt.excluded
    values = {
        name: (func.coalesce(excluded[name], table.c[name]) if name in keep_when_null else excluded[name])
        for name in update
    }
    index = [table.c[k] for k in keys]
    if newer_only is None:
        return stmt.on_conflict_do_update(index_elements=index, set_=values)
    guard = (excluded[newer_only] >= table.c[newer_only] if or_equal
             else excluded[newer_only] > table.c[newer_only])
    return stmt.on_conflict_do_update(index_elements=index, set_=values, where=guard)


def insert_missing(dialect: Dialect, table: Table, rows: Sequence[Mapping[str, Any]], *, keys: Sequence[str]) -> Any:
    """``INSERT rows ON CONFLICT (keys) DO NOTHING``: rows whose key exists are left as they are."""
    stmt = dialect_insert(dialect, table).values(list(rows))
    return stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
