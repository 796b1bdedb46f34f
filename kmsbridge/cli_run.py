"""``kmsbridge run PROCESS``: one process in the foreground."""

from __future__ import annotations

import click

from kmsbridge.cli_common import cli_settings, fail
from kmsbridge.settings import SettingsError

__all__ = ["run_cmd"]

PROCESSES = ("translator", "executor", "projector", "reconciler", "api")


@click.command("run")
@click.argument("process", type=click.Choice(PROCESSES))
def run_cmd(process: str) -> None:
    """Run one process (translator, executor, projector, reconciler, api) until SIGTERM."""
    settings = cli_settings()
    from kmsbridge import wiring

    runners = {
        "translator": wiring.run_translator,
        "executor": wiring.run_executor,
    }
    runner = runners.get(process) or getattr(wiring, f"run_{process}", None)
    if runner is None:
        fail(f"process {process!r} is not available in this build")
    try:
        runner(settings)
    except SettingsError as exc:
        fail(str(exc))
