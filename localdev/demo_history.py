"""The demo's last chapter: the history of the household's first TWIN1 box, from the request log.

It waits (bounded) until the request log (``kmsbridge run request-log`` of the local stack) holds the
box's whole story: the events that named it, every command planned for it with its result, down to
the swap that cleared and unpaired it. Then it prints the timeline as ``kmsbridge history`` does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from kmsbridge.cli.requests import describe_history_item
from kmsbridge.cli.table import format_rows
from kmsbridge.wiring_request_log import open_request_log
from reconciler.request_log_store import HistoryItem

if TYPE_CHECKING:
    from localdev.demo_kit import Demo, Household

__all__ = ["history_steps"]

WAIT_SECONDS = 30.0


def _complete(items: list[HistoryItem]) -> bool:
    """Every command has its result, and the box's last commands cleared and unpaired it (the swap)."""
    commands = {i.detail["entry_key"] for i in items if i.what == "command"}
    results = {i.detail["entry_key"]: i.detail for i in items if i.what == "result"}
    if not commands or not commands <= set(results):
        return False
    removed = any(i.what == "event" and i.detail["role"] == "removed" for i in items)
    finished = {(r["operation"], r["state"]) for r in results.values()}
    return removed and {("CLEAR_ENTITLEMENTS", "COMPLETED"), ("UNPAIR", "COMPLETED")} <= finished


def history_steps(d: Demo, hh: Household) -> None:
    card = hh.cards.get("OLD") or hh.cards["TWIN1"]  # the first TWIN1 box, swapped out by realtime_steps
    d.step(f"The history of the household's first TWIN1 box ({card}), from the provisioning request log")
    log = open_request_log(d.settings)
    deadline = time.monotonic() + WAIT_SECONDS
    items = log.history(card)
    while not _complete(items) and time.monotonic() < deadline:
        time.sleep(0.5)  # the log writer is a separate process; poll it, bounded
        items = log.history(card)
    rows = [(i.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), i.what.upper(),
             describe_history_item(i.what, i.detail)) for i in items]
    for line in format_rows(("AT", "WHAT", "DETAIL"), rows):
        click.echo(f"  {line}")
    if not _complete(items):
        what = "the request log holds the TWIN1 box's events, commands and their results, down to its swap"
        d.failures.append(what)
        click.echo(click.style(f"  ✗ expected: {what}", fg="red"))
