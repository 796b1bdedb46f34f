"""``kmsbridge projector rebuild``: the desired-state database rebuilt from ``crm.subscriptions``."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.settings import mask_url
from kmsbridge.wiring_rebuild import rebuild_desired_state, target_url
from reconciler.rebuild import RebuildError, RebuildRefused, RebuildReport

__all__ = ["projector_group"]


@click.group("projector")
def projector_group() -> None:
    """The projector's desired-state database."""


@projector_group.command("rebuild")
@click.option("--into", "into", metavar="DATABASE_URL",
              help="Rebuild into this database (SQLAlchemy URL, created and migrated) instead of "
                   "KMSBRIDGE_DATABASE_URL.")
@click.option("--force", is_flag=True,
              help="Rebuild into a database that already holds desired state (the newest version of each "
                   "subscription wins; nothing is deleted).")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds without a record read before a rebuild that has not reached the end fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
def rebuild_cmd(into: str | None, force: bool, idle_timeout: float, as_json: bool) -> None:
    """Rebuild the desired-state database from the compacted crm.subscriptions topic, read from its
    beginning to the end offsets it has when the rebuild starts (read_committed). No consumer group's
    offsets move. A bad record is counted and named, never a reason to stop."""
    settings = cli_settings()
    shown = mask_url(target_url(settings, into).get_secret_value())
    try:
        report = rebuild_desired_state(settings, into=into, force=force, idle_timeout_seconds=idle_timeout)
    except RebuildRefused as exc:
        fail(f"{shown}: {exc}", EXIT_FAILED)
    except RebuildError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        data = asdict(report)
        data["database"] = shown
        click.echo(json.dumps(data, sort_keys=True))
        return
    _print(report, shown)


def _print(report: RebuildReport, database: str) -> None:
    click.echo(f"read {report.records} records of {report.topic} ({report.partitions} partitions) in "
               f"{report.seconds:.1f}s: {report.events} events, {report.tombstones} tombstones, {report.bad} bad")
    click.echo(f"{database}: {report.after.subscriptions} subscriptions, {report.after.cards} cards "
               f"(before: {report.before.subscriptions} subscriptions, {report.before.cards} cards)")
    for bad in report.bad_records:
        click.echo(f"bad record: {bad}")
    if report.bad > len(report.bad_records):
        click.echo(f"... and {report.bad - len(report.bad_records)} more bad records")
