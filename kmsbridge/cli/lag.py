"""``kmsbridge lag``: lag per consumer group, topic and partition (like ``kafka-consumer-groups``).

By default it shows the product's groups
(``<group_prefix>-translator|executor|executor-express|projector|reconciler|request-log``)
that exist on the broker; ``--group`` names others. Numbers come from :mod:`kafka_edge.lag`: the group's
committed offsets against the high watermark, and the age of the oldest unprocessed message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import click

from kafka_edge.lag import LagError, LagReader, PartitionLag
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail

__all__ = ["CONSUMING_PROCESSES", "format_table", "lag_cmd"]

#: The consumer groups of the processes (``Settings.group_id``); the executor's express lane is read by a
#: group of its own (:func:`kmsbridge.wiring.express_group`).
CONSUMING_PROCESSES = ("translator", "executor", "executor-express", "projector", "reconciler", "request-log")

_HEADER = ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG-SECONDS")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: Sequence[PartitionLag]) -> list[str]:
    """Aligned lines, header first; an unknown time lag shows ``-``."""
    cells = [_HEADER] + [
        (r.group, r.topic, str(r.partition), str(r.committed), str(r.high_watermark), str(r.lag),
         _seconds(r.lag_seconds))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADER))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]


@click.command("lag")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per partition and line")
@click.option("--group", "groups", multiple=True, metavar="G",
              help="consumer group (repeatable); default: the product's groups that exist")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait for the broker")
def lag_cmd(as_json: bool, groups: tuple[str, ...], timeout: float) -> None:
    """Lag per consumer group, topic and partition: committed offset, end offset, lag in messages and
    the age in seconds of the oldest unprocessed message."""
    settings = cli_settings()
    reader = LagReader(settings.kafka_config(), client_id="kmsbridge-cli-lag")
    try:
        if groups:
            wanted = list(dict.fromkeys(groups))
        else:
            known = set(reader.groups(timeout))
            wanted = [g for g in (settings.group_id(p) for p in CONSUMING_PROCESSES) if g in known]
            if not wanted:
                click.echo("no kmsbridge consumer groups on the broker yet", err=True)
                return
        rows: list[PartitionLag] = []
        for group in wanted:
            found = reader.read(group, None, timeout)
            if not found:
                click.echo(f"group {group}: no committed offsets", err=True)
            rows.extend(found)
    except LagError as exc:
        fail(str(exc), EXIT_FAILED)
    finally:
        reader.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(asdict(row)))
    elif rows:
        for line in format_table(rows):
            click.echo(line)
