"""Logging set-up: one line per event, ``key=value`` friendly, to stderr (or a file for the stack).

Log calls name ids (event, request, idempotency key, secure client), never PINs or message texts;
as a second line of defence :class:`RedactFilter` masks anything that looks like ``pin=NNNN``.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["RedactFilter", "setup_logging"]

_PIN = re.compile(r"(?i)(pin[\"']?\s*[:=]\s*[\"']?)\d{4}")


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = _PIN.sub(r"\1****", msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "zeep", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
