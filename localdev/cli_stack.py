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
    """The local stack: Kafka, topics, KMS simulator and every process.

    A stack that is down starts empty (Kafka's topics, the database and the simulator's state), unless
    `stack up --keep` keeps all three from the last run.
    """


@stack_group.command("up")
@click.option("--json", "as_json", is_flag=True)
@click.option("--process", "processes", multiple=True, type=click.Choice(stack.PROCESSES),
              help="start only these processes (default: all)")
@click.option("--keep", is_flag=True,
              help="keep the last run's data: Kafka's topics and offsets, the database and the simulator's "
                   "secure clients (default: a stack that is down starts with all three empty)")
@click.option("--brokers", type=click.Choice([str(n) for n in stack.BROKER_COUNTS]), default="1", show_default=True,
              help="Kafka nodes: 1, or a 3-node KRaft cluster (each node broker and controller; topics with "
                   "replication factor 3 and min.insync.replicas=2)")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="run N translators, N executors and N projectors (named <process>-<i>, each its own "
                   "POD_NAME and metrics port) and 2 reconcilers; the api and the request log run once")
def up_cmd(as_json: bool, processes: tuple[str, ...], keep: bool, brokers: str, replicas: int) -> None:
    """Start what is not running. A stack that is down starts from empty data, or with --keep from the
    data the last `stack down` left; a running stack keeps its data either way. A running or kept stack
    has the broker count it was started with, and a running stack its replica count and database;
    asking for another fails (exit 2). The database is KMSBRIDGE_DATABASE_URL when it is set (e.g.
    PostgreSQL; the stack never empties it), else the stack folder's SQLite file."""
    provider = Path(os.environ.get("KMSBRIDGE_PROVIDER_FILE", DEFAULT_PROVIDER))
    if not provider.exists():
        fail(f"KMSBRIDGE_PROVIDER_FILE: {provider} does not exist")
    try:
        state = stack.up(provider_file=provider, processes=processes or None, keep=keep, brokers=int(brokers),
                         replicas=replicas, log=(lambda _m: None) if as_json else click.echo)
    except stack.StackConflict as exc:
        fail(str(exc))
    except (BrokerError, RuntimeError) as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(state.summary()))
    else:
        click.echo(json.dumps(state.summary(), indent=2))


@stack_group.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(as_json: bool) -> None:
    """Each Kafka node and process with pid, port and health (exit 1 if one is down)."""
    rows = stack.status()
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no stack is running")
        return
    click.echo(f"{'process':<14} {'pid':>8} {'port':>6}  health")
    for r in rows:
        click.echo(f"{r['name']:<14} {r['pid']!s:>8} {r['port']!s:>6}  {r['health']}")
    if not all(r["alive"] for r in rows):
        raise SystemExit(EXIT_FAILED)


@stack_group.command("down")
def down_cmd() -> None:
    """Stop all of it (every Kafka node too), nothing left running; the data stays on disk for
    `stack up --keep`."""
    stack.down(log=click.echo)
