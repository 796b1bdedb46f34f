"""Aligned text tables for the support CLI verbs (``requests list``, ``history``, ``dlq list``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import click

__all__ = ["format_rows", "parse_time"]


def format_rows(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of an aligned table, header first; ``None`` shows as ``-``."""
    cells = [list(header)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def parse_time(_ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> datetime | None:
    """A click callback: ISO 8601 (``2026-11-25T10:00:00Z``, or a date); without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        name = param.name if param is not None else "time"
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2026-11-25T10:00:00Z",
                                 param_hint=f"--{(name or 'time').replace('_', '-')}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
