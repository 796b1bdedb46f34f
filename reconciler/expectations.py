"""Expectations: repairs a reset run published that the KMS does not show yet.

A reset run is level-based: it compares the KMS with CRM and publishes what closes the difference.
Its commands reach the KMS only when the executor applies them, so a second run started before
that would see the same drift and publish the same repair again: harmless (commands are absolute)
but noisy, and with a slow or paused executor every scheduled run would pile up copies.
Kubernetes controllers meet the same problem (a ReplicaSet must not create pods twice before its
cache shows the first ones) with *expectations*; this is that idea:

* a reset run that publishes a subscription's repair records ``(subscription, run, fingerprint of
  the commands, expires_at = now + ttl)``;
* a later run that finds the subscription still drifted with an **unexpired expectation of the same
  fingerprint** publishes nothing for it (the repair is in flight); it still reports the drift;
* a different fingerprint (CRM changed since, or the KMS drifted differently) publishes at once;
* a subscription found in sync forgets its expectation; a command of the repair the KMS rejected
  withdraws it (:meth:`Expectations.withdraw`, from ``kms.results``), so a reset repeated right after
  a failed repair publishes it again; an expired one is ignored (the executor may have lost the
  commands: the next run repairs again).

Previews read nothing from here and write nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from reconciler.dialect import upsert_statement
from reconciler.tables import expectations_table
from schemas.records import KmsCommand

__all__ = ["Expectations", "fingerprint"]


def fingerprint(commands: Sequence[KmsCommand]) -> str:
    """A digest of what ``commands`` establish in the KMS (not of their keys, run or times)."""
    parts = [
        [c.operation.value, c.secure_client_id, c.chipset, c.pin is not None,
         [[p.product_id, _iso(p.valid_from), _iso(p.valid_until)] for p in c.products]]
        for c in commands
    ]
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class Expectations:
    """The ``reconcile_expectations`` table (see the module docstring)."""

    def __init__(self, engine: Engine, ttl: timedelta) -> None:
        self._engine = engine
        self.ttl = ttl

    def pending(self, subscription_ids: Iterable[str], now: datetime) -> dict[str, str]:
        """Subscription → fingerprint of its unexpired expectation."""
        ids = list(subscription_ids)
        if not ids:
            return {}
        t = expectations_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t.c.subscription_id, t.c.fingerprint)
                                .where(t.c.subscription_id.in_(ids), t.c.expires_at > now))
            return {sub: fp for sub, fp in rows}

    def expect(self, entries: Iterable[tuple[str, str, str]], now: datetime) -> None:
        """Record ``(subscription, run_id, fingerprint)`` entries, each expiring ``ttl`` from ``now``."""
        t = expectations_table
        expires = now + self.ttl
        rows = [{"subscription_id": sub, "run_id": run, "fingerprint": fp, "expires_at": expires}
                for sub, run, fp in entries]
        if not rows:
            return
        with self._engine.begin() as conn:
            for start in range(0, len(rows), 500):
                conn.execute(upsert_statement(conn.dialect, t, rows[start:start + 500], keys=("subscription_id",),
                                              update=["run_id", "fingerprint", "expires_at"]))

    def forget(self, subscription_ids: Iterable[str]) -> None:
        ids = list(subscription_ids)
        if not ids:
            return
        with self._engine.begin() as conn:
            conn.execute(delete(expectations_table).where(expectations_table.c.subscription_id.in_(ids)))

    def withdraw(self, rejected: Iterable[tuple[str, str]]) -> None:
        """Drop the expectations ``(subscription, run_id)`` whose repair the KMS rejected a command of."""
        t = expectations_table
        with self._engine.begin() as conn:
            for subscription_id, run_id in set(rejected):
                conn.execute(delete(t).where(t.c.subscription_id == subscription_id, t.c.run_id == run_id))

    def purge_expired(self, now: datetime) -> int:
        with self._engine.begin() as conn:
            return conn.execute(delete(expectations_table).where(expectations_table.c.expires_at <= now)).rowcount
