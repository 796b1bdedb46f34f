"""The demo's chapter of run definitions and the communication queue.

An operator defines a nightly reset run for residential subscriptions created in the last 30 days
and a mail run for the external system IRDETO. Three communications wait in the queue, one for
another system; the mail run executes and the queue shows two COMPLETED and one still PENDING. The
same reset rule, scheduled a few seconds ahead, executes on its schedule in the stack's reconciler
and its history shows the execution.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from kmsbridge.cli.table import format_rows
from kmsbridge.wiring_runs import open_queue, open_run_store
from reconciler.communications_queue import CommunicationQueue
from reconciler.run_definitions import DefinitionExists, Execution, RunDefinition, RunDefinitionStore, RunKind
from schemas.records import CommunicationEvent, MessageKind, TextMode

if TYPE_CHECKING:
    from localdev.demo_kit import Demo, Household

__all__ = ["runs_steps"]

WAIT_SECONDS = 60.0
EXTERNAL_SYSTEM = "IRDETO"


def _wait(d: Demo, what: str, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    d.failures.append(what)
    click.echo(click.style(f"  ✗ expected: {what}", fg="red"))
    return False


def _define(store: RunDefinitionStore, definition: RunDefinition) -> None:
    with contextlib.suppress(DefinitionExists):  # this demo run defined it already
        store.define(definition)


def _executed(d: Demo, store: RunDefinitionStore, execution_id: str) -> Execution | None:
    if not _wait(d, f"execution {execution_id} finished (is the stack's reconciler running?)",
                 lambda: store.execution(execution_id).finished):
        return None
    return store.execution(execution_id)


def mail_definition(d: Demo) -> str:
    return f"mail-{EXTERNAL_SYSTEM}-{d.run}"


def _send_pending_mail(d: Demo) -> Execution | None:
    """Execute the demo's mail run for IRDETO now and wait until it has finished."""
    store = open_run_store(d.settings)
    _define(store, RunDefinition(name=mail_definition(d), kind=RunKind.MAIL, external_systems=[EXTERNAL_SYSTEM]))
    return _executed(d, store, store.request(mail_definition(d)).execution_id)


def _queue_table(queue: CommunicationQueue, ids: list[str]) -> None:
    entries = [e for e in queue.entries(limit=10_000) if e["communication_id"] in ids]
    rows = [(e["communication_id"], e["external_system"], e["state"], e["kind"], e["target"]) for e in entries]
    for line in format_rows(("COMMUNICATION", "SYSTEM", "STATE", "KIND", "TARGET"), rows):
        click.echo(f"  {line}")


def runs_steps(d: Demo, hh: Household) -> None:
    store = open_run_store(d.settings)
    queue = open_queue(d.settings)
    d.step("Run definitions: a nightly reset run (residential, created in the last 30 days) and a mail run for "
           f"{EXTERNAL_SYSTEM}")
    rule = {"kind": "reset", "created_within_days": 30, "subscription_types": ["RESIDENTIAL"]}
    nightly = RunDefinition.model_validate({"name": f"nightly-residential-{d.run}", "schedule": "0 2 * * *",
                                            "time_zone": "Europe/Nicosia", **rule})
    _define(store, nightly)
    _define(store, RunDefinition(name=mail_definition(d), kind=RunKind.MAIL, external_systems=[EXTERNAL_SYSTEM]))
    due = nightly.next_due(datetime.now(UTC))
    click.echo(f"  {nightly.name}: Effective, cron '0 2 * * *' Europe/Nicosia, "
               f"next due {due.isoformat() if due else '-'}")
    click.echo(f"  {mail_definition(d)}: Effective, external system {EXTERNAL_SYSTEM}, executed by hand")

    d.step("Three communications wait in the queue, one of them for another external system")
    now = datetime.now(UTC)
    comms = [CommunicationEvent(communication_id=f"Q-{d.run}-{n}", external_system=system, kind=MessageKind.MAIL,
                                text_mode=TextMode.ANSI, text=f"Your invoice is ready (run {d.run}, {n})",
                                secure_client_id=hh.cards[role], created_at=now)
             for n, (system, role) in enumerate([(EXTERNAL_SYSTEM, "MAIN"), (EXTERNAL_SYSTEM, "TWIN1"),
                                                 ("SMS-GATEWAY", "MAIN")], 1)]
    for comm in comms:
        d.produce("communications", comm)
    ids = [c.communication_id for c in comms]
    if _wait(d, "three communications PENDING in the queue",
             lambda: sum(e["communication_id"] in ids and e["state"] == "PENDING"
                         for e in queue.entries(limit=10_000)) == 3):
        _queue_table(queue, ids)

    d.step(f"The mail run for {EXTERNAL_SYSTEM} executes")
    execution = _send_pending_mail(d)
    if execution is not None:
        click.echo(f"  execution {execution.execution_id}: {execution.state.value} {execution.counts}")
    expected = {ids[0]: "COMPLETED", ids[1]: "COMPLETED", ids[2]: "PENDING"}
    _wait(d, "two communications COMPLETED and the SMS-GATEWAY one still PENDING",
          lambda: {e["communication_id"]: e["state"] for e in queue.entries(limit=10_000)
                   if e["communication_id"] in ids} == expected)
    _queue_table(queue, ids)

    d.step("The same reset rule, scheduled a few seconds ahead, executes on its schedule")
    soon = RunDefinition.model_validate({"name": f"residential-30d-{d.run}",
                                         "once_at": datetime.now(UTC) + timedelta(seconds=5), **rule})
    _define(store, soon)
    click.echo(f"  {soon.name}: once at {soon.once_at.isoformat() if soon.once_at else '-'}")
    if _wait(d, f"{soon.name} executed on its schedule",
             lambda: any(e.finished for e in store.executions(soon.name))):
        rows = [(e.execution_id, e.trigger.value, e.due_at, e.state.value,
                 " ".join(f"{k}={v}" for k, v in e.counts.items())) for e in store.executions(soon.name)]
        for line in format_rows(("EXECUTION", "TRIGGER", "DUE", "STATE", "COUNTS"), rows):
            click.echo(f"  {line}")
        if any(e.state.value != "COMPLETED" for e in store.executions(soon.name)):
            d.failures.append(f"{soon.name} did not complete")
