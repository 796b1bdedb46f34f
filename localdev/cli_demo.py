"""``kmsbridge demo``: start (or reuse) the local stack and play the scenario."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from localdev import stack
from localdev.cli_stack import DEFAULT_PROVIDER
from localdev.local_broker import BrokerError

__all__ = ["demo_cmd"]


@click.command("demo")
def demo_cmd() -> None:
    """Play the end-to-end scenario on the local stack; exit 0 only if every expectation held."""
    provider = Path(os.environ.get("KMSBRIDGE_PROVIDER_FILE", DEFAULT_PROVIDER))
    click.echo("bringing the local stack up (reused if already running) ...")
    try:
        state = stack.up(provider_file=provider, processes=stack.available_processes(), log=click.echo)
    except (BrokerError, RuntimeError) as exc:
        fail(str(exc), EXIT_FAILED)
    settings = cli_settings(logging=False)
    from localdev.demo import run_demo

    token = Path(state.token_file).read_text().strip()
    raise SystemExit(run_demo(settings, state.simulator_url, token))
