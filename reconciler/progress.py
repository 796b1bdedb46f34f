"""Progress of a long reset run: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

__all__ = ["Progress"]

log = logging.getLogger("reconciler.progress")


class Progress:
    """Counts checked subscriptions against ``total``; :meth:`close` ends the bar (no summary here)."""

    def __init__(self, total: int, run_id: str, *, preview: bool, stream: IO[str] | None = None,
                 log_every_seconds: float = 10.0, tty: bool | None = None) -> None:
        self.total = total
        self.run_id = run_id
        self.done = 0
        self.drifted = 0
        self._kind = "preview" if preview else "reset"
        self._every = log_every_seconds
        self._t0 = time.monotonic()
        self._last_log = self._t0
        out = stream if stream is not None else sys.stderr
        self._bar: Any = None
        if out.isatty() if tty is None else tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="sub", desc=f"{self._kind} {run_id}", file=out, leave=False,
                             dynamic_ncols=True)

    def update(self, checked: int, drifted: int) -> None:
        self.done += checked
        self.drifted += drifted
        if self._bar is not None:
            self._bar.update(checked)
            self._bar.set_postfix(drifted=self.drifted, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= self._every:
            self._last_log = now
            elapsed = now - self._t0
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("reconcile progress run_id=%s type=%s checked=%d/%d (%.0f%%) drifted=%d rate=%.0f/s eta=%.0fs",
                     self.run_id, self._kind, self.done, self.total, 100.0 * self.done / max(self.total, 1),
                     self.drifted, rate, left)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
