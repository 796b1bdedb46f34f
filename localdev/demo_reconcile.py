"""The demo's reset-run chapter: a change lost in a KMS outage, found and repaired.

The story, told as it is simulated: the KMS goes down for a few seconds and comes back **restored
from a backup taken before the household's SPORTS channel was added**. The KMS had confirmed that
change before the outage, so the executor's ledger holds it as COMPLETED and the real-time path
will never send it again: the household silently lost SPORTS on its MAIN box. The restore is
simulated through the simulator's admin state (``POST /admin/state``) while the outage
(``POST /admin/faults``) is on. Then:

1. a *preview* run (filtered to this demo's households by creation time and type) lists exactly
   that subscription and card, and sends nothing;
2. the *reset* run publishes the repair and the KMS shows SPORTS again;
3. a second reset run finds nothing to do and publishes nothing.

Runs are requested on ``reconcile.requests`` and their reports read from ``reconcile.reports``,
exactly as ``kmsbridge reconcile --wait`` does, so the stack's reconciler process does the work.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from kmsbridge.cli.reconcile import ReportWaiter, format_report, publish_request
from kmsbridge.wiring import engine_for
from localdev.demo_kit import Demo, Household, held_products
from reconciler.store import DesiredStateStore
from schemas.records import ReconcileReport, ReconcileRequest

__all__ = ["reconcile_steps"]

OUTAGE_SECONDS = 3
REPORT_WAIT_SECONDS = 90.0
SPORTS = "P200"


def reconcile_steps(d: Demo, hh: Household) -> None:
    """Play the chapter on ``hh`` (the household of the real-time steps, MAIN holding SPORTS)."""
    main = hh.cards["MAIN"]
    if not _projected(d, hh):
        return

    d.step(f"The KMS goes down for {OUTAGE_SECONDS} s and comes back restored from an older backup")
    click.echo("  the backup predates the SPORTS channel: MAIN lost it, and since the KMS had confirmed")
    click.echo("  that change before the outage, nothing in the real-time path will send it again")
    _post(d, "/admin/faults", {"outage_seconds": OUTAGE_SECONDS})
    entitlements = d.state()["secure_clients"][main]["entitlements"]
    _post(d, "/admin/state", {"secure_clients": {main: {
        "entitlements": [e for e in entitlements if e["product_id"] != SPORTS]}}})
    if not _outage_over(d):
        return
    d.wait_for("MAIN without SPORTS after the restore", lambda s: SPORTS not in held_products(s, main))
    d.table(hh)

    # This demo's households only: created at the demo's start, residential.
    scope = {"created_from": d.now, "created_to": d.now + timedelta(seconds=1),
             "subscription_types": ["RESIDENTIAL"]}

    d.step("A preview run lists what a reset would repair, and sends nothing")
    preview = _run(d, preview=True, **scope)
    if preview is not None:
        found = sorted((i.subscription_id, i.secure_client_id, tuple(i.missing_products)) for i in preview.items)
        _expect(d, "the preview lists exactly MAIN missing SPORTS",
                found == [(hh.subscription_id, main, (SPORTS,))] and preview.commands_published == 0)
        d.wait_for("the KMS unchanged by the preview", lambda s: SPORTS not in held_products(s, main))

    d.step("The reset run repairs the household")
    reset = _run(d, preview=False, **scope)
    if reset is not None:
        _expect(d, "the reset run found one drifted subscription and published its repair",
                reset.drifted == 1 and reset.commands_published >= 1)
        d.wait_for("SPORTS back on MAIN", lambda s: SPORTS in held_products(s, main))
        d.table(hh)

    d.step("A second reset run finds nothing to do")
    again = _run(d, preview=False, **scope)
    if again is not None:
        _expect(d, "the second run found no drift and published nothing",
                again.drifted == 0 and again.commands_published == 0 and again.checked >= 1)


def _projected(d: Demo, hh: Household) -> bool:
    """Wait until the projector stored the household's newest version (the reset run reads it)."""
    engine = engine_for(d.settings)
    store = DesiredStateStore(engine)
    try:
        deadline = time.monotonic() + REPORT_WAIT_SECONDS
        while time.monotonic() < deadline:
            stored = store.get(hh.subscription_id)
            if stored is not None and stored.version >= hh.version:
                return True
            time.sleep(0.2)
    except Exception as exc:  # the database is not there yet (no projector running)
        click.echo(f"  desired-state database not readable: {type(exc).__name__}")
    finally:
        engine.dispose()
    _expect(d, "the projector stored the household's newest state (is `kmsbridge run projector` running?)", False)
    return False


def _run(d: Demo, *, preview: bool, **scope: Any) -> ReconcileReport | None:
    request = ReconcileRequest(run_id=f"demo-{d.run}-{uuid.uuid4().hex[:6]}", preview=preview,
                               requested_by="demo", requested_at=datetime.now(UTC), **scope)
    waiter = ReportWaiter(d.settings, d.codec)
    try:
        publish_request(d.settings, d.codec, request)
        report = waiter.wait(request.run_id, REPORT_WAIT_SECONDS)
    finally:
        waiter.close()
    if report is None:
        _expect(d, f"a report for run {request.run_id} (is `kmsbridge run reconciler` running?)", False)
        return None
    click.echo("\n".join(f"  {line}" for line in format_report(report).splitlines()))
    _expect(d, f"run {request.run_id} finished without error", report.error is None and report.failed == 0)
    return report


def _outage_over(d: Demo) -> bool:
    deadline = time.monotonic() + OUTAGE_SECONDS + 30
    while time.monotonic() < deadline:
        response = d.http.get(f"{d.sim}/admin/faults")
        response.raise_for_status()
        if not response.json().get("outage_seconds"):
            click.echo("  the KMS answers again")
            return True
        time.sleep(0.2)
    _expect(d, "the KMS outage ended", False)
    return False


def _post(d: Demo, path: str, body: dict[str, Any]) -> None:
    response = d.http.post(f"{d.sim}{path}", json=body)
    response.raise_for_status()


def _expect(d: Demo, what: str, held: bool) -> None:
    if held:
        click.echo(click.style(f"  ✓ {what}", fg="green"))
        return
    d.failures.append(what)
    click.echo(click.style(f"  ✗ expected: {what}", fg="red"))
