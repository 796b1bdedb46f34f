"""The ``kmsbridge`` command (docs/architecture.md §8). Exit codes: 0 done, 1 rejected or failed, 2 bad input."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import click

from kafka_edge.build_info import kmsbridge_version
from kmsbridge.cli.communications import communications_group
from kmsbridge.cli.dlq import dlq_group
from kmsbridge.cli.io import produce_cmd, tail_cmd, topics_group
from kmsbridge.cli.lag import lag_cmd
from kmsbridge.cli.ops import OPS_COMMANDS
from kmsbridge.cli.projector import projector_group
from kmsbridge.cli.reconcile import reconcile_cmd
from kmsbridge.cli.requests import history_cmd, requests_group
from kmsbridge.cli.run import run_cmd
from kmsbridge.cli.runs import runs_group
from kmsbridge.cli.simulator import simulator_group

__all__ = ["PLUGIN_GROUP", "main", "plugin_commands"]

#: Entry-point group through which other packages add verbs (the local tooling adds ``demo`` and ``stack``).
PLUGIN_GROUP = "kmsbridge.commands"

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kmsbridge_version(), "--version", prog_name="kmsbridge", message="%(prog)s %(version)s")
def main() -> None:
    """kmsbridge: provisions an Irdeto KMS from CRM events on Kafka."""


def plugin_commands() -> list[click.Command]:
    """The verbs of the ``kmsbridge.commands`` entry points whose package is installed. The image holds
    no local tooling, so there ``demo`` and ``stack`` are simply absent."""
    commands = []
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            commands.append(entry.load())
        except ModuleNotFoundError as exc:
            if exc.name is None or not entry.value.startswith(exc.name):
                raise
            log.debug("kmsbridge verb %s not in this build (%s)", entry.name, exc.name)
    return commands


for command in (produce_cmd, tail_cmd, topics_group, run_cmd, simulator_group, lag_cmd, reconcile_cmd,
                *OPS_COMMANDS, requests_group, history_cmd, dlq_group, runs_group, communications_group,
                projector_group, *plugin_commands()):
    main.add_command(command)


if __name__ == "__main__":
    main()
