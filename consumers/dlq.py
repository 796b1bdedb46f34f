"""Dead-letter queue: the original bytes and key, plus headers saying where they came from and why.

Header values name the error class and a short reason; they never carry payload content, PINs or
message texts (:func:`safe_reason` masks digit runs and truncates).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from confluent_kafka import Message

__all__ = ["dlq_headers", "safe_reason"]

_DIGITS = re.compile(r"\d{4,}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_REASON = 300


def safe_reason(text: str) -> str:
    """A reason fit for a header: quoted values and runs of 4+ digits masked, bounded length."""
    text = _QUOTED.sub("'***'", text)
    text = _DIGITS.sub("****", text)
    return text[:MAX_REASON]


def dlq_headers(msg: Message, error: BaseException, *, reason: str | None = None,
                extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str | bytes | None]]:
    headers: list[tuple[str, str | bytes | None]] = [
        ("kmsbridge.original.topic", (msg.topic() or "").encode()),
        ("kmsbridge.original.partition", str(msg.partition()).encode()),
        ("kmsbridge.original.offset", str(msg.offset()).encode()),
        ("kmsbridge.error.class", type(error).__name__.encode()),
        ("kmsbridge.error.reason", (reason or getattr(error, "reason", "") or "").encode()),
        ("kmsbridge.error.message", safe_reason(str(error)).encode()),
    ]
    headers += [(k, safe_reason(v).encode()) for k, v in extra]
    return headers
