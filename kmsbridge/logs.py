"""Logging set-up: one line per event, to stderr (or a file for the stack), as ``key=value`` text or,
with ``KMSBRIDGE_LOG_FORMAT=json``, one JSON object per line (``time``, ``level``, ``logger``,
``message``, ``exception``, and ``trace_id``/``span_id`` inside a traced span) as log platforms expect.

Log calls name ids (event, request, idempotency key, secure client), never PINs or message texts.
As a second line of defence every formatted line, tracebacks included, goes through a
:class:`Redactor`: anything that looks like ``pin=NNNN`` is masked, and so is every secret the process
was configured with (environment variables ``KMSBRIDGE_*`` naming a password, token, secret or API
keys, and the contents of the ``*_FILE`` settings that name secret files), should a library ever
echo one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["JsonFormatter", "RedactFilter", "RedactingFormatter", "Redactor", "secrets_from_env", "setup_logging"]

_PIN = re.compile(r"(?i)(pin[\"']?\s*[:=]\s*[\"']?)\d{4}")
_SECRET_NAME = re.compile(r"(?i)(PASSWORD|TOKEN|SECRET|API_KEYS)")
_MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words and numbers
_MAX_SECRET_FILE = 64 * 1024


def secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret values the process was given: ``KMSBRIDGE_*`` variables whose name says password,
    token, secret or API keys, and the contents of such ``*_FILE`` variables' files."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    for name, value in env.items():
        upper = name.upper()
        if not upper.startswith("KMSBRIDGE_") or not _SECRET_NAME.search(upper) or not value:
            continue
        if upper.endswith("_FILE"):
            try:
                path = Path(value)
                if path.stat().st_size > _MAX_SECRET_FILE:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            found += [line.strip() for line in text.splitlines() if line.strip()]
            continue
        found.append(value)
        try:  # a list setting (API keys) arrives as JSON
            parsed = json.loads(value)
        except ValueError:
            continue
        if isinstance(parsed, list):
            found += [str(item) for item in parsed]
    return found


class Redactor:
    """Masks PIN-looking ``pin=NNNN`` fragments and known secret values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if len(secret) >= _MIN_SECRET:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        text = _PIN.sub(r"\1****", text)
        for secret in sorted(self._secrets, key=len, reverse=True):  # longest first: no partial leftovers
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


class RedactFilter(logging.Filter):
    """Masks the message of each record (for handlers whose formatter is not ours)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = self.redactor(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


class RedactingFormatter(logging.Formatter):
    """Masks the whole formatted line, exception text and stack included."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))


#: The current trace context of a log record as ``(trace_id, span_id)`` hex strings, or None; set by
#: :mod:`kmsbridge.tracing` when tracing is on (no tracing, no lookup).
TraceContext = Callable[[], "tuple[str, str] | None"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the message and the exception text masked like the text format's.

    Each text field is redacted before it is serialised, so a secret is matched as the process knows it
    (JSON escaping would hide a quote or backslash in it from a redactor run over the line).
    """

    def __init__(self, redactor: Redactor, trace_context: TraceContext | None = None) -> None:
        super().__init__()
        self.redactor = redactor
        self.trace_context = trace_context

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = self.redactor(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self.redactor(self.formatStack(record.stack_info))
        context = self.trace_context() if self.trace_context is not None else None
        if context is not None:
            line["trace_id"], line["span_id"] = context
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text",
                  trace_context: TraceContext | None = None) -> None:
    redactor = Redactor(secrets_from_env())
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(redactor, trace_context)
    else:
        formatter = RedactingFormatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s", redactor)
    handler.setFormatter(formatter)
    handler.addFilter(RedactFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "zeep", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
