"""The run lock: one reset run at a time, as a lease row in the database.

**Choice: a database lease, not partitioned ownership.** A run's scope is whatever its request
selects (a creation period, some types, one subscription), so runs overlap in arbitrary ways;
partitioning subscriptions between replicas would still need coordination for every overlapping
request, and Kafka partitions of ``reconcile.requests`` are keyed by run id, not by subscription.
Runs are short (100,000 subscriptions in well under a minute) and rare, so serialising *reset* runs
costs little and makes the interference question disappear: a second run waits until the first has
published its repairs and recorded its expectations (``expectations.py``), then sees them and does not
publish them again. The lease lives in the database the runs already share (SQLite for one host,
PostgreSQL for replicas), so it needs no extra infrastructure. Previews publish nothing and take no
lock.

**Lease mechanics.** Row ``reconcile_leases[name]`` holds ``owner``, ``run_id`` and ``expires_at``.
Acquire is one atomic ``INSERT ... ON CONFLICT DO UPDATE ... WHERE stored.expires_at <= now OR
stored.owner = me RETURNING name`` (a row back means we hold it). The holder renews it every
``ttl / 3`` from a heartbeat thread; if a renewal finds the lease taken (we stalled past ``ttl``),
:attr:`Lease.lost` is set and the job stops before publishing anything more. A crashed holder's lease
expires after ``ttl``. Times come from the hosts' clocks: skew between replicas must stay well below
``ttl`` (60 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Engine

from reconciler.dialect import dialect_insert
from reconciler.tables import leases_table

__all__ = ["Lease", "LeaseLost", "LockTimeout", "RunLock"]

log = logging.getLogger(__name__)


class LockTimeout(Exception):
    """Another run held the lock for longer than we were willing to wait."""


class LeaseLost(Exception):
    """The lease expired under us (the process stalled past its ttl); another run may hold it now."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lease:
    """A held lock; :attr:`lost` turns true if a renewal finds it taken."""

    run_id: str
    lost: bool = False

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"run {self.run_id} lost the reset-run lock (lease expired); stopping")


class RunLock:
    """A named lease (see the module docstring)."""

    def __init__(self, engine: Engine, name: str = "reset-run", *, owner: str | None = None,
                 ttl: timedelta = timedelta(seconds=60), clock: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self.name = name
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = ttl
        self._clock = clock

    def try_acquire(self, run_id: str) -> bool:
        t = leases_table
        now = self._clock()
        with self._engine.begin() as conn:
            stmt = dialect_insert(conn.dialect, t).values(
                name=self.name, owner=self.owner, run_id=run_id, acquired_at=now, expires_at=now + self.ttl)
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.name],
                set_={"owner": stmt.excluded.owner, "run_id": stmt.excluded.run_id,
                      "acquired_at": stmt.excluded.acquired_at, "expires_at": stmt.excluded.expires_at},
                where=or_(t.c.expires_at <= stmt.excluded.acquired_at, t.c.owner == stmt.excluded.owner),
            ).returning(t.c.name)
            return conn.execute(stmt).first() is not None

    def renew(self) -> bool:
        """Extend our lease by ``ttl``; false if we no longer hold it."""
        t = leases_table
        with self._engine.begin() as conn:
            result = conn.execute(update(t).where(t.c.name == self.name, t.c.owner == self.owner)
                                  .values(expires_at=self._clock() + self.ttl))
            return result.rowcount == 1

    def release(self) -> None:
        t = leases_table
        with self._engine.begin() as conn:
            conn.execute(delete(t).where(t.c.name == self.name, t.c.owner == self.owner))

    def holder(self) -> tuple[str, str | None, datetime] | None:
        """``(owner, run_id, expires_at)`` of the current lease row, if any (it may be expired)."""
        t = leases_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t.c.owner, t.c.run_id, t.c.expires_at).where(t.c.name == self.name)).first()
        return (row[0], row[1], row[2]) if row else None

    @contextlib.contextmanager
    def hold(self, run_id: str, *, wait_seconds: float, stop: threading.Event | None = None) -> Iterator[Lease]:
        """Acquire (polling up to ``wait_seconds``), keep renewed while the block runs, release after.

        Raises :class:`LockTimeout` naming the holder when the wait runs out (or ``stop`` is set).
        """
        deadline = time.monotonic() + wait_seconds
        delay = 0.05
        while not self.try_acquire(run_id):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                held = self.holder()
                who = f"run {held[1]} ({held[0]})" if held else "another run"
                raise LockTimeout(f"the reset-run lock is held by {who}; waited {wait_seconds:.0f}s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        lease = Lease(run_id)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, done), name="reconcile-lease", daemon=True)
        beat.start()
        log.info("reset-run lock acquired run_id=%s owner=%s", run_id, self.owner)
        try:
            yield lease
        finally:
            done.set()
            beat.join()
            if not lease.lost:
                self.release()

    def _heartbeat(self, lease: Lease, done: threading.Event) -> None:
        interval = self.ttl.total_seconds() / 3
        while not done.wait(interval):
            try:
                if not self.renew():
                    lease.lost = True
                    log.error("reset-run lock lost run_id=%s owner=%s", lease.run_id, self.owner)
                    return
            except Exception:  # a database hiccup: try again next beat, the ttl leaves room for two misses
                log.warning("reset-run lock renewal failed run_id=%s; retrying", lease.run_id, exc_info=True)
