"""``kmsbridge run PROCESS``: one process in the foreground."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

from kafka_edge.errors import FatalKafkaError
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.errors import Unreachable
from kmsbridge.settings import SettingsError
from kmsbridge.tracing import setup_tracing
from schemas.errors import SchemaRegistryRefused

__all__ = ["PROCESS_RUNNERS", "resolve_runner", "run_cmd"]

#: process name -> (module, function) of its composition root; imported only when run.
PROCESS_RUNNERS: dict[str, tuple[str, str]] = {
    "translator": ("kmsbridge.wiring", "run_translator"),
    "executor": ("kmsbridge.wiring", "run_executor"),
    "projector": ("kmsbridge.wiring_reconciler", "run_projector"),
    "reconciler": ("kmsbridge.wiring_reconciler", "run_reconciler"),
    "api": ("kmsbridge.wiring_api", "run_api"),
    "request-log": ("kmsbridge.wiring_request_log", "run_request_log"),
}


def resolve_runner(process: str) -> Callable[..., Any] | None:
    module_name, func = PROCESS_RUNNERS[process]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    runner: Callable[..., Any] | None = getattr(module, func, None)
    return runner


@click.command("run")
@click.argument("process", type=click.Choice(sorted(PROCESS_RUNNERS)))
def run_cmd(process: str) -> None:
    """Run one process (translator, executor, projector, reconciler, api, request-log) until SIGTERM."""
    settings = cli_settings()
    runner = resolve_runner(process)
    if runner is None:
        fail(f"process {process!r} is not available in this build")
    setup_tracing(process)  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set, else off
    try:
        runner(settings)
    except Unreachable as exc:  # the database is down: fail, so the supervisor tries again
        fail(str(exc), EXIT_FAILED)
    except SettingsError as exc:
        fail(str(exc))
    # e.g. refused credentials (Kafka's or the Schema Registry's): fail closed, say why, let the supervisor act
    except (FatalKafkaError, SchemaRegistryRefused) as exc:
        fail(str(exc), EXIT_FAILED)
