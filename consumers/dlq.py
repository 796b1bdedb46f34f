"""Dead-letter queue: the original bytes and key, plus headers saying where they came from and why.

Header values name the error class and a short reason; they never carry payload content, PINs or
message texts (:func:`safe_reason` masks quoted values and digit runs, and truncates).

The screens every consumer applies before decoding live here too (:func:`screen_size`,
:func:`screen_times`), so the translator and the executor reject the same inputs the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from confluent_kafka import Message

from schemas.errors import PoisonMessage

__all__ = [
    "HEADER_PREFIX",
    "Oversized",
    "TooFarInFuture",
    "UnexpectedError",
    "dlq_headers",
    "safe_reason",
    "screen_size",
    "screen_times",
]

HEADER_PREFIX = "kmsbridge."
_DIGITS = re.compile(r"\d{4,}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_REASON = 300


class Oversized(PoisonMessage):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__("oversized", f"message of {size} bytes exceeds the limit of {limit} bytes")


class TooFarInFuture(PoisonMessage):
    def __init__(self, field: str, value: datetime, limit: timedelta) -> None:
        # the value itself stays out of the message: only how far ahead it is
        ahead = value - datetime.now(UTC)
        super().__init__("future_timestamp",
                         f"{field} lies {ahead.days} days ahead, more than the allowed {limit} in the future")


class UnexpectedError(Exception):
    """A handler failed in a way nobody planned for (a bug). Dead-lettered, so one record cannot stop
    its partition forever; the DLQ alert makes it seen. Only the exception's class is kept: its text
    may quote the input."""

    reason = "unexpected_error"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"handler failed with {type(exc).__name__}")


def safe_reason(text: str) -> str:
    """A reason fit for a header: quoted values and runs of 4+ digits masked, bounded length."""
    text = _QUOTED.sub("'***'", text)
    text = _DIGITS.sub("****", text)
    return text[:MAX_REASON]


def screen_size(value: bytes, limit: int) -> None:
    """Raise :class:`Oversized` for a value above ``limit`` bytes."""
    if len(value) > limit:
        raise Oversized(len(value), limit)


def screen_times(record: object, fields: Iterable[str], limit: timedelta) -> None:
    """Raise :class:`TooFarInFuture` when one of ``fields`` lies more than ``limit`` ahead of now."""
    horizon = datetime.now(UTC) + limit
    # the instance dict, not getattr: a field the record type lacks (``requested_at`` on a
    # SubscriptionEvent) would raise and catch inside pydantic's __getattr__ (6 us -> 0.8 us a message)
    values: dict[str, object] = getattr(record, "__dict__", {})
    for name in fields:
        value = values.get(name)
        if isinstance(value, datetime) and value > horizon:
            raise TooFarInFuture(name, value, limit)


def dlq_headers(msg: Message, error: BaseException, *, reason: str | None = None,
                extra: Sequence[tuple[str, str]] = (),
                trusted: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str | bytes | None]]:
    """Headers of a DLQ copy of ``msg``: where it came from, the error class, reason and message.

    ``extra`` values are masked like the message; ``trusted`` values are ours alone (counts, times
    and error kinds we formatted, never input) and go out as they are.
    """
    headers: list[tuple[str, str | bytes | None]] = [
        (f"{HEADER_PREFIX}original.topic", (msg.topic() or "").encode()),
        (f"{HEADER_PREFIX}original.partition", str(msg.partition()).encode()),
        (f"{HEADER_PREFIX}original.offset", str(msg.offset()).encode()),
        (f"{HEADER_PREFIX}error.class", type(error).__name__.encode()),
        (f"{HEADER_PREFIX}error.reason", (reason or getattr(error, "reason", "") or "").encode()),
        (f"{HEADER_PREFIX}error.message", safe_reason(str(error)).encode()),
    ]
    headers += [(k, safe_reason(v).encode()) for k, v in extra]
    headers += [(k, v.encode()) for k, v in trusted]
    return headers
