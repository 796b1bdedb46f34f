"""``kmsbridge requests list`` and ``kmsbridge history``: the provisioning request log for support.

Both read the request log's database (``KMSBRIDGE_DATABASE_URL``, the local stack's by default) that
``kmsbridge run request-log`` writes. PINs are never in it, so never printed.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.cli.table import format_rows, parse_time
from kmsbridge.wiring_request_log import open_request_log
from reconciler.request_log_store import BadCursor, LogFilter

__all__ = ["describe_history_item", "history_cmd", "requests_group"]

_STATES = ("PENDING", "COMPLETED", "REJECTED")
_KINDS = ("COMMAND", "REJECTION", "REQUEST", "RUN")
_LIST_HEADER = ("CREATED", "STATE", "KIND", "OPERATION", "SECURE-CLIENT", "SUBSCRIPTION", "SOURCE", "PROCESS",
                "ATTEMPTS", "ERROR")


def _short_time(value: str | None) -> str | None:
    return None if value is None else value.replace("+00:00", "Z")


def _error(entry: dict[str, Any]) -> str | None:
    if entry["state"] == "COMPLETED":
        return None  # the KMS's "OK" is no error
    parts = [p for p in (entry.get("error_code"), entry.get("provider_error_code")) if p]
    return "/".join(parts) or None


@click.group("requests")
def requests_group() -> None:
    """The provisioning request log: every request and command with its state (PENDING → COMPLETED / REJECTED)."""


@requests_group.command("list")
@click.option("--secure-client", "secure_client", help="one box (secure client id)")
@click.option("--subscription", help="one subscription")
@click.option("--type", "type_", help="a KMS operation (SYNC_ENTITLEMENTS, SET_PIN...) or a request type")
@click.option("--state", type=click.Choice(_STATES, case_sensitive=False))
@click.option("--kind", type=click.Choice(_KINDS, case_sensitive=False), help="commands, rejections, requests, runs")
@click.option("--process", "process", help="the process that made it (translator, reconciler, api, cli...)")
@click.option("--since", callback=parse_time, help="created at or after (ISO 8601)")
@click.option("--until", callback=parse_time, help="created before (ISO 8601)")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="continue after a previous page (its next_cursor)")
@click.option("--json", "as_json", is_flag=True, help='one JSON document {"entries": [...], "next_cursor": ...}')
def list_cmd(secure_client: str | None, subscription: str | None, type_: str | None, state: str | None,
             kind: str | None, process: str | None, since: datetime | None, until: datetime | None, limit: int,
             cursor: str | None, as_json: bool) -> None:
    """Requests and commands, newest first, filtered; every filter is optional."""
    settings = cli_settings(logging=False)
    where = LogFilter(secure_client_id=secure_client, subscription_id=subscription,
                      operation=type_.upper() if type_ else None, state=state.upper() if state else None,
                      process_name=process, kind=kind.upper() if kind else None, since=since, until=until)
    try:
        page = open_request_log(settings).search(where, limit=limit, cursor=cursor)
    except BadCursor as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({"entries": page.entries, "next_cursor": page.next_cursor}))
        return
    rows = [(_short_time(e["created_at"]), e["state"], e["kind"], e["operation"], e["secure_client_id"],
             e["subscription_id"], f"{e['source_kind']}:{e['source_id']}", e["process_name"], e["attempts"],
             _error(e)) for e in page.entries]
    for line in format_rows(_LIST_HEADER, rows):
        click.echo(line)
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@requests_group.command("show")
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="wait (bounded) until the log has it settled; exit 1 if REJECTED")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="the request's log entries as one JSON document")
def show_cmd(request_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """The outcome of one request or reset run from the durable log, however old (exit 1 unless COMPLETED)."""
    from kmsbridge.cli.ops import format_outcome

    settings = cli_settings(logging=False)
    log = open_request_log(settings)
    deadline = time.monotonic() + timeout
    outcome = log.outcome(request_id)
    while wait and (outcome is None or not outcome.settled) and time.monotonic() < deadline:
        time.sleep(0.5)  # a poll of the database, bounded by --timeout
        outcome = log.outcome(request_id)
    if outcome is None:
        fail(f"request {request_id} is not in the request log", EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"request_id": request_id, "state": outcome.state.value,
                               "errors": [{"code": c, "description": d} for c, d in outcome.errors],
                               "results": [json.loads(r.model_dump_json(exclude={"client_info"}))
                                           for r in outcome.results]}))
    else:
        for line in format_outcome(outcome, request_id):
            click.echo(line)
    sys.exit(0 if outcome.state.value == "COMPLETED" else EXIT_FAILED)


def describe_history_item(what: str, d: dict[str, Any]) -> str:
    """One timeline item in words (the DETAIL column of `kmsbridge history`)."""
    if what == "event":
        role = {"removed": "removes the box from", "added": "adds the box on"}.get(d["role"], "names the box on")
        return (f"{d['event_type']} subscription {d['subscription_id']} v{d['version']} ({d['subscription_state']}),"
                f" {role} {d['distributor']} [{d['event_id']}]")
    if what == "result":
        text = f"{d['operation']} {d['state']}"
        if d["state"] != "COMPLETED" and (d.get("error_code") or d.get("provider_error_code")):
            text += f" {d.get('error_code') or ''}/{d.get('provider_error_code') or ''}".rstrip("/")
            if d.get("error_description") or d.get("provider_error_description"):
                text += f": {d.get('provider_error_description') or d.get('error_description')}"
        if d.get("attempts"):
            text += f" after {d['attempts']} attempt(s)"
        if d.get("superseded_by"):
            text += f" superseded by {d['superseded_by']} (not sent to the KMS)"
        return text + (" (duplicate delivery)" if d.get("duplicate") else "")
    return (f"{d['operation']} by {d['process_name']} from {d['source_kind']} {d['source_id']}"
            + (f" on {d['distributor']}" if d.get("distributor") else ""))


@click.command("history")
@click.option("--secure-client", "secure_client", required=True, help="the box (secure client id)")
@click.option("--limit", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="the newest N items (still printed oldest first)")
@click.option("--json", "as_json", is_flag=True, help='one JSON document {"secure_client_id": ..., "timeline": [...]}')
def history_cmd(secure_client: str, limit: int, as_json: bool) -> None:
    """One box's events, the commands planned for it and their results, oldest first."""
    settings = cli_settings(logging=False)
    items = open_request_log(settings).history(secure_client, limit=limit)
    if as_json:
        click.echo(json.dumps({"secure_client_id": secure_client, "timeline": [i.view() for i in items]}))
        return
    if not items:
        click.echo(f"nothing logged for secure client {secure_client}")
        return
    rows = [(_short_time(i.at.isoformat()), i.what.upper(), describe_history_item(i.what, i.detail))
            for i in items]
    for line in format_rows(("AT", "WHAT", "DETAIL"), rows):
        click.echo(line)
