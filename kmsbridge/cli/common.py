"""What every CLI verb shares: settings (defaulting to the local stack's addresses) and exits."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from kafka_edge import tracing
from kmsbridge.logs import setup_logging
from kmsbridge.settings import Settings, SettingsError, load_settings
from kmsbridge.stack_state import load_state

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "cli_settings", "fail"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def stack_defaults() -> None:
    """While the local stack is up, its addresses (and its cluster's topic replication) are the defaults;
    explicit settings win."""
    state = load_state()
    if state is None:
        return
    defaults = {
        "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": state.bootstrap,
        "KMSBRIDGE_KMS__ENDPOINT": state.simulator_url + "/kms" if state.simulator_url else "",
        "KMSBRIDGE_KMS__TOKEN_FILE": state.token_file,
        "KMSBRIDGE_API__API_KEYS_FILE": state.api_key_file,
        "KMSBRIDGE_PIN_KEYS__FILE": state.pin_keys_file,
        "KMSBRIDGE_PROVIDER_FILE": state.provider_file,
        "KMSBRIDGE_DATABASE_URL": state.database_url,
        **state.topic_settings(),
    }
    for key, value in defaults.items():
        if value:
            os.environ.setdefault(key, value)


def cli_settings(*, logging: bool = True) -> Settings:
    stack_defaults()
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc))
    if logging:
        setup_logging(settings.log_level, settings.log_format, tracing.current_ids)
    return settings
