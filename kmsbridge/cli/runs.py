"""``kmsbridge runs``: reset and mail run definitions, their executions (docs/architecture.md §8).

::

    kmsbridge runs define reset NAME [--schedule CRON [--time-zone TZ] | --once-at T] [--created-from D]
                    [--created-to D] [--created-within-days N] [--type T]... [--not-effective]
    kmsbridge runs define mail NAME --external-system X... [--schedule CRON | --once-at T] [--not-effective]
    kmsbridge runs list [--json] | show NAME [--json] | effective NAME | not-effective NAME | delete NAME
    kmsbridge runs execute NAME [--preview] [--wait] [--timeout S] [--json]

``CRON`` has five fields (minute hour day month weekday), or six with seconds last, read in
``--time-zone`` (IANA, UTC by default). Dates are as ``kmsbridge reconcile`` reads them. ``execute``
records an execution REQUESTED in the database; a running reconciler (``kmsbridge run reconciler``)
claims and executes it; ``--wait`` waits (bounded) until it has finished and prints its counts.
Exit codes: 0 done, 1 the execution ended REJECTED or FAILED or was still running at the timeout, or
the definition cannot be deleted, 2 bad arguments (the message names the option).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from pydantic import ValidationError

from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.cli.reconcile import parse_when
from kmsbridge.cli.table import format_rows, parse_time
from reconciler.run_definitions import (
    DefinitionExists,
    DefinitionInUse,
    Execution,
    ExecutionState,
    RunDefinition,
    RunDefinitionStore,
    UnknownDefinition,
)
from schemas.errors import describe_validation_error

__all__ = ["definition_view", "runs_group"]

DEFAULT_TIMEOUT = 300.0


def _store() -> RunDefinitionStore:
    from kmsbridge.wiring_runs import open_run_store

    return open_run_store(cli_settings())


def definition_view(definition: RunDefinition) -> dict[str, Any]:
    return definition.view(datetime.now(UTC))


def _define(fields: dict[str, Any]) -> None:
    try:
        definition = RunDefinition.model_validate({k: v for k, v in fields.items() if v not in (None, [], ())})
    except ValidationError as exc:
        fail(describe_validation_error(exc))
    store = _store()
    try:
        store.define(definition)
    except DefinitionExists as exc:
        fail(str(exc))
    state = "Effective" if definition.effective else "Not Effective"
    click.echo(f"run definition {definition.name} ({definition.kind.value}) defined, {state}")


_schedule = [
    click.option("--schedule", help="cron expression (5 fields, or 6 with seconds last)"),
    click.option("--time-zone", default="UTC", show_default=True, help="IANA time zone of --schedule"),
    click.option("--once-at", callback=parse_time, help="one-off time (ISO 8601)"),
    click.option("--not-effective", is_flag=True, help="define it Not Effective (it does not run when due)"),
]


def _with(options: list[Any]) -> Any:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@click.group("runs")
def runs_group() -> None:
    """Reset and mail run definitions: define, schedule, execute, and their history."""


@runs_group.group("define")
def define_group() -> None:
    """Define a reset or a mail run."""


@define_group.command("reset")
@click.argument("name")
@_with(_schedule)
@click.option("--created-from", help="subscriptions created from this date (YYYY-MM-DD or ISO 8601)")
@click.option("--created-to", help="... until this date (a whole day is included)")
@click.option("--created-within-days", type=int, help="rolling period: created in the N days before each execution")
@click.option("--type", "types", multiple=True, help="subscription type (repeatable)")
def define_reset_cmd(name: str, schedule: str | None, time_zone: str, once_at: datetime | None, not_effective: bool,
                     created_from: str | None, created_to: str | None, created_within_days: int | None,
                     types: tuple[str, ...]) -> None:
    """Define a reset run."""
    _define({"name": name, "kind": "reset", "schedule": schedule, "time_zone": time_zone, "once_at": once_at,
             "effective": not not_effective,
             "created_from": parse_when(created_from, end=False) if created_from else None,
             "created_to": parse_when(created_to, end=True) if created_to else None,
             "created_within_days": created_within_days, "subscription_types": list(types)})


@define_group.command("mail")
@click.argument("name")
@click.option("--external-system", "systems", multiple=True, required=True,
              help="external system whose communications it sends (repeatable)")
@_with(_schedule)
def define_mail_cmd(name: str, systems: tuple[str, ...], schedule: str | None, time_zone: str,
                    once_at: datetime | None, not_effective: bool) -> None:
    """Define a mail run."""
    _define({"name": name, "kind": "mail", "schedule": schedule, "time_zone": time_zone, "once_at": once_at,
             "effective": not not_effective, "external_systems": list(systems)})


@runs_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Every run definition."""
    views = [definition_view(d) for d in _store().all()]
    if as_json:
        click.echo(json.dumps(views))
        return
    rows = [(v["name"], v["kind"], "Effective" if v["effective"] else "Not Effective",
             v["schedule"] or v["once_at"] or "by hand", v["next_due_at"]) for v in views]
    for line in format_rows(("NAME", "KIND", "STATE", "SCHEDULE", "NEXT DUE"), rows):
        click.echo(line)


def _get(store: RunDefinitionStore, name: str) -> RunDefinition:
    try:
        return store.get(name)
    except UnknownDefinition as exc:
        fail(str(exc))


@runs_group.command("show")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="executions shown")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(name: str, limit: int, as_json: bool) -> None:
    """A definition and its executions, newest first."""
    store = _store()
    view = definition_view(_get(store, name))
    executions = [e.view() for e in store.executions(name, limit=limit)]
    if as_json:
        click.echo(json.dumps({**view, "executions": executions}))
        return
    for key, value in view.items():
        click.echo(f"{key}: {value}")
    click.echo("executions:")
    rows = [(e["execution_id"], e["trigger"], "yes" if e["preview"] else "no", e["due_at"], e["state"],
             e["started_at"], e["finished_at"], _counts(e["counts"])) for e in executions]
    for line in format_rows(("EXECUTION", "TRIGGER", "PREVIEW", "DUE", "STATE", "STARTED", "FINISHED", "COUNTS"),
                            rows):
        click.echo(f"  {line}")


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "-"


@runs_group.command("effective")
@click.argument("name")
def effective_cmd(name: str) -> None:
    """Make a definition Effective: it runs when due (due times while it was not are not caught up)."""
    _set(name, True)


@runs_group.command("not-effective")
@click.argument("name")
def not_effective_cmd(name: str) -> None:
    """Make a definition Not Effective: it never runs when due."""
    _set(name, False)


def _set(name: str, effective: bool) -> None:
    store = _store()
    _get(store, name)
    store.set_effective(name, effective)
    click.echo(f"run definition {name} is {'Effective' if effective else 'Not Effective'}")


@runs_group.command("delete")
@click.argument("name")
def delete_cmd(name: str) -> None:
    """Delete a definition that has never executed."""
    store = _store()
    _get(store, name)
    try:
        store.delete(name)
    except DefinitionInUse as exc:
        fail(str(exc), EXIT_FAILED)
    click.echo(f"run definition {name} deleted")


@runs_group.command("execute")
@click.argument("name")
@click.option("--preview", is_flag=True, help="what it would do now, changing nothing")
@click.option("--wait", is_flag=True, help="wait until it has finished and print its counts")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def execute_cmd(name: str, preview: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Execute a definition now (a running reconciler carries it out)."""
    store = _store()
    _get(store, name)
    execution = store.request(name, preview=preview)
    if wait:
        execution = wait_for(store, execution.execution_id, timeout)
    if as_json:
        click.echo(json.dumps(execution.view()))
    else:
        click.echo(f"execution {execution.execution_id} of {name}: {execution.state.value} "
                   f"{_counts(execution.counts)}{' error=' + execution.error if execution.error else ''}")
    if wait and execution.state is not ExecutionState.COMPLETED:
        if not execution.finished:
            click.echo(f"error: still {execution.state.value} after {timeout:.0f}s", err=True)
        raise SystemExit(EXIT_FAILED)


def wait_for(store: RunDefinitionStore, execution_id: str, timeout: float) -> Execution:
    """The execution once finished, or as it is at the timeout."""
    deadline = time.monotonic() + timeout
    execution = store.execution(execution_id)
    while not execution.finished and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the database the reconciler writes
        execution = store.execution(execution_id)
    return execution
