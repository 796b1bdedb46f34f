"""``kmsbridge communications list``: the communication queue (docs/architecture.md §8).

::

    kmsbridge communications list [--state pending|completed|rejected] [--external-system X]
                                  [--limit N] [--json]

Oldest first. A communication's text is never printed (only its length); its target, state, the
execution that sent it and, when REJECTED, the code are.
"""

from __future__ import annotations

import json

import click

from kmsbridge.cli.common import cli_settings
from kmsbridge.cli.table import format_rows
from reconciler.communications_queue import CommunicationState

__all__ = ["communications_group"]


@click.group("communications")
def communications_group() -> None:
    """The communication queue that mail run definitions send from."""


@communications_group.command("list")
@click.option("--state", type=click.Choice(["pending", "completed", "rejected"], case_sensitive=False))
@click.option("--external-system", help="only this external system")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON array")
def list_cmd(state: str | None, external_system: str | None, limit: int, as_json: bool) -> None:
    """Communications in the queue, oldest first."""
    from kmsbridge.wiring_runs import open_queue

    queue = open_queue(cli_settings())
    entries = queue.entries(state=CommunicationState(state.upper()) if state else None,
                            external_system=external_system, limit=limit)
    if as_json:
        click.echo(json.dumps(entries))
        return
    rows = [(e["communication_id"], e["external_system"], e["state"], e["kind"], e["target"], e["scheduled_at"],
             e["execution_id"], e["error_code"]) for e in entries]
    for line in format_rows(("COMMUNICATION", "SYSTEM", "STATE", "KIND", "TARGET", "SCHEDULED", "EXECUTION", "ERROR"),
                            rows):
        click.echo(line)
