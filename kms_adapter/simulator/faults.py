"""Fault injection for the KMS simulator (``POST /admin/faults``).

What each fault does to a SOAP call (``POST /kms``), checked in this order:

1. ``outage_seconds``: for that many seconds from now the KMS is "down". We answer **HTTP 503 at once**
   (with ``Retry-After`` and ``Connection: close``) rather than refuse connections: refusing at the
   socket level would mean closing and re-opening the listening socket from inside the server, which
   uvicorn does not support, and a fast 503 exercises the same client path (``KmsUnavailable``,
   breaker opens, partitions pause). The admin endpoints keep working during an outage.
2. ``latency_ms``: ``await asyncio.sleep`` before answering (other calls proceed meanwhile).
3. ``timeout``: hang for ``timeout_seconds`` (default 300, longer than any client waits), then 504.
4. ``http_status``: answer every call with this status (e.g. 429 with ``Retry-After: 1``, or 503).
5. ``error_rate``: with this probability answer HTTP 500 with a SOAP Server fault.
6. ``card_errors``: ``{card: code}``: any call naming that card answers the business error ``code``;
   a code ``HTTP_<status>`` (e.g. ``HTTP_503``) answers that HTTP status instead, a transient fault of
   that one card.
7. ``lose_answers``: the next that many SOAP calls are applied, then their connection is aborted
   before a byte of the answer (the answer is lost; the effect is not).
8. ``response_shape``: how the SOAP answers that get this far are framed (:mod:`.shapes`):
   ``chunked``, ``connection_close``, ``http10``, ``te_and_cl`` (both ``Transfer-Encoding`` and
   ``Content-Length``), ``oversized`` (the answer padded to ``oversized_bytes``, default 8 MiB, with a
   ``Content-Length``) or ``oversized_chunked`` (the same, streamed in chunks without one);
   ``null`` for plain answers.

``GET /admin/faults`` also reports ``soap_connections``: the connections that carried a SOAP call since
the server started (not a fault, not cleared), so a test can tell whether a client reused a connection.

Faults are in-memory only and reset by ``clear`` (or ``POST /admin/reset``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_OVERSIZED_BYTES", "DEFAULT_TIMEOUT_SECONDS", "RESPONSE_SHAPES", "FaultError", "Faults"]

DEFAULT_TIMEOUT_SECONDS = 300.0
DEFAULT_OVERSIZED_BYTES = 8 * 1024 * 1024
#: The values of ``response_shape``.
RESPONSE_SHAPES = frozenset({"chunked", "connection_close", "http10", "te_and_cl", "oversized", "oversized_chunked"})


class FaultError(ValueError):
    """A fault request has the wrong shape; the message names the field."""


@dataclass(slots=True)
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    http_status: int | None = None
    timeout_seconds: float | None = None
    outage_until: float | None = None  # time.monotonic() deadline
    card_errors: dict[str, str] = field(default_factory=dict)
    lose_answers: int = 0
    response_shape: str | None = None
    oversized_bytes: int = DEFAULT_OVERSIZED_BYTES
    soap_connections: int = 0  # since start: an observation, not a fault (``clear`` keeps it)
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def clear(self) -> None:
        self.latency_ms = 0.0
        self.error_rate = 0.0
        self.http_status = None
        self.timeout_seconds = None
        self.outage_until = None
        self.card_errors = {}
        self.lose_answers = 0
        self.response_shape = None
        self.oversized_bytes = DEFAULT_OVERSIZED_BYTES

    def count_soap_connection(self) -> None:
        self.soap_connections += 1

    def take_lost_answer(self) -> bool:
        """Whether this call's answer is to be lost (and one fewer remains)."""
        if self.lose_answers <= 0:
            return False
        self.lose_answers -= 1
        return True

    # --- checks used by the app ------------------------------------------------------------------

    def outage_remaining(self) -> float:
        if self.outage_until is None:
            return 0.0
        remaining = self.outage_until - time.monotonic()
        if remaining <= 0:
            self.outage_until = None
            return 0.0
        return remaining

    def roll_error(self) -> bool:
        return self.error_rate > 0 and self._random.random() < self.error_rate

    def card_http_status(self, card: str | None) -> int | None:
        """The HTTP status injected for this card (``card_errors`` code ``HTTP_<status>``), else None."""
        code = self.card_error(card)
        if code is None or not code.startswith("HTTP_") or not code[5:].isdigit():
            return None
        return int(code[5:])

    def card_error(self, card: str | None) -> str | None:
        if card is None or not self.card_errors:
            return None
        return self.card_errors.get(card)

    # --- the admin API -----------------------------------------------------------------------------

    def update(self, request: Mapping[str, Any]) -> None:
        """Apply ``POST /admin/faults``: ``clear`` first (if true), then every field given.

        ``timeout`` is ``true`` (hang :data:`DEFAULT_TIMEOUT_SECONDS`), a number of seconds, or
        ``false``/``null`` (off). ``http_status`` ``null`` or ``0`` turns it off. ``card_errors``
        merges into the current map; a ``null`` code removes that card's error.
        Validates everything before changing anything.
        """
        if not isinstance(request, Mapping):
            raise FaultError("faults must be a JSON object")
        known = {"latency_ms", "error_rate", "http_status", "timeout", "outage_seconds", "card_errors",
                 "clear", "seed", "lose_answers", "response_shape", "oversized_bytes"}
        extra = set(request) - known
        if extra:
            raise FaultError(f"unknown fault field: {sorted(extra)[0]} (known: {', '.join(sorted(known))})")

        changes: dict[str, Any] = {}
        if "latency_ms" in request:
            changes["latency_ms"] = _number(request, "latency_ms", low=0)
        if "error_rate" in request:
            changes["error_rate"] = _number(request, "error_rate", low=0, high=1)
        if "http_status" in request:
            status = request["http_status"]
            if status in (None, 0):
                changes["http_status"] = None
            elif isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
                changes["http_status"] = status
            else:
                raise FaultError("http_status must be an HTTP error status 400-599, or null to clear")
        if "timeout" in request:
            value = request["timeout"]
            if value is None or value is False:
                changes["timeout_seconds"] = None
            elif value is True:
                changes["timeout_seconds"] = DEFAULT_TIMEOUT_SECONDS
            else:
                changes["timeout_seconds"] = _number(request, "timeout", low=0) or None
        if "outage_seconds" in request:
            seconds = _number(request, "outage_seconds", low=0)
            changes["outage_until"] = time.monotonic() + seconds if seconds else None
        card_errors: dict[str, str | None] = {}
        if "card_errors" in request:
            raw = request["card_errors"] or {}
            if not isinstance(raw, Mapping) or not all(
                isinstance(c, str) and (v is None or (isinstance(v, str) and v)) for c, v in raw.items()
            ):
                raise FaultError("card_errors must map secure client ids to error codes (or null)")
            card_errors = dict(raw)
        if "seed" in request:
            changes["seed"] = int(_number(request, "seed"))
        if "lose_answers" in request:
            changes["lose_answers"] = int(_number(request, "lose_answers", low=0))
        if "oversized_bytes" in request:
            changes["oversized_bytes"] = int(_number(request, "oversized_bytes", low=1))
        if "response_shape" in request:
            shape = request["response_shape"]
            if shape is not None and shape not in RESPONSE_SHAPES:
                raise FaultError(f"response_shape must be one of {', '.join(sorted(RESPONSE_SHAPES))}, or null")
            changes["response_shape"] = shape

        if request.get("clear"):
            self.clear()
        seed = changes.pop("seed", None)
        if seed is not None:
            self._random.seed(seed)
        for key, value in changes.items():
            setattr(self, key, value)
        for card, code in card_errors.items():
            if code is None:
                self.card_errors.pop(card, None)
            else:
                self.card_errors[card] = code

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "http_status": self.http_status,
            "timeout": self.timeout_seconds,
            "outage_seconds": round(self.outage_remaining(), 3),
            "card_errors": dict(self.card_errors),
            "lose_answers": self.lose_answers,
            "response_shape": self.response_shape,
            "oversized_bytes": self.oversized_bytes,
            "soap_connections": self.soap_connections,
        }


def _number(request: Mapping[str, Any], name: str, *, low: float | None = None,
            high: float | None = None) -> float:
    value = request[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{name} must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise FaultError(f"{name} must be {bounds}")
    return float(value)
