"""The ``kmsbridge`` command (DESIGN.md §8). Exit codes: 0 done, 1 rejected or failed, 2 bad input."""

from __future__ import annotations

import click

from consumers.build_info import kmsbridge_version
from kmsbridge.cli_communications import communications_group
from kmsbridge.cli_demo import demo_cmd
from kmsbridge.cli_dlq import dlq_group
from kmsbridge.cli_io import produce_cmd, tail_cmd, topics_group
from kmsbridge.cli_lag import lag_cmd
from kmsbridge.cli_ops import OPS_COMMANDS
from kmsbridge.cli_reconcile import reconcile_cmd
from kmsbridge.cli_requests import history_cmd, requests_group
from kmsbridge.cli_run import run_cmd
from kmsbridge.cli_runs import runs_group
from kmsbridge.cli_simulator import simulator_group
from kmsbridge.cli_stack import stack_group

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kmsbridge_version(), "--version", prog_name="kmsbridge", message="%(prog)s %(version)s")
def main() -> None:
    """kmsbridge: provisions an Irdeto KMS from CRM events on Kafka."""


for command in (demo_cmd, produce_cmd, tail_cmd, topics_group, run_cmd, simulator_group, stack_group, lag_cmd,
                reconcile_cmd, *OPS_COMMANDS, requests_group, history_cmd, dlq_group, runs_group, communications_group):
    main.add_command(command)


if __name__ == "__main__":
    main()
