"""``kmsbridge stack up|status|down``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kmsbridge.cli.common import EXIT_FAILED, fail
from localdev import stack
from localdev.local_broker import BrokerError

__all__ = ["stack_group"]

DEFAULT_PROVIDER = Path(__file__).resolve().parent.parent / "examples" / "provider.yaml"


@click.group("stack")
def stack_group() -> None:
    """The local stack: Kafka, topics, KMS simulator and every process."""


@stack_group.command("up")
@click.option("--json", "as_json", is_flag=True)
@click.option("--process", "processes", multiple=True, type=click.Choice(stack.PROCESSES),
              help="start only these processes (default: all)")
def up_cmd(as_json: bool, processes: tuple[str, ...]) -> None:
    provider = Path(os.environ.get("KMSBRIDGE_PROVIDER_FILE", DEFAULT_PROVIDER))
    if not provider.exists():
        fail(f"KMSBRIDGE_PROVIDER_FILE: {provider} does not exist")
    try:
        state = stack.up(provider_file=provider, processes=processes or None,
                         log=(lambda _m: None) if as_json else click.echo)
    except (BrokerError, RuntimeError) as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(state.summary()))
    else:
        click.echo(json.dumps(state.summary(), indent=2))


@stack_group.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(as_json: bool) -> None:
    rows = stack.status()
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no stack is running")
        return
    click.echo(f"{'process':<12} {'pid':>8} {'port':>6}  health")
    for r in rows:
        click.echo(f"{r['name']:<12} {r['pid']!s:>8} {r['port']!s:>6}  {r['health']}")
    if not all(r["alive"] for r in rows):
        raise SystemExit(EXIT_FAILED)


@stack_group.command("down")
def down_cmd() -> None:
    stack.down(log=click.echo)
