"""A SQLite ledger that counts its SELECT statements: how the ledger read tests see batching."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from consumers.ledger import LEDGER_METADATA, Ledger

__all__ = ["Counted", "counted_ledger"]


class Counted:
    """A SQLite ledger that counts the SELECT statements sent to its database."""

    def __init__(self, tmp_path: Path) -> None:
        self.engine: Engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
        LEDGER_METADATA.create_all(self.engine)
        self.ledger = Ledger(self.engine)
        self.selects = 0
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1


@contextmanager
def counted_ledger(tmp_path: Path) -> Iterator[Counted]:
    """A :class:`Counted` ledger in ``tmp_path``, its engine disposed after."""
    counted = Counted(tmp_path)
    try:
        yield counted
    finally:
        counted.engine.dispose()
