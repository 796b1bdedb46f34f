"""A process started while its database does not answer stops with one line naming
``KMSBRIDGE_DATABASE_URL`` and the address it tried: no traceback, never the password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from kmsbridge.db import upgrade
from kmsbridge.errors import SettingsError
from localdev.local_broker import free_port
from schemas.pin_seal import generate_key
from tests.support.cli import REPO, clean_env, kmsbridge

PASSWORD = "s3cret-Pa55word"


def closed_port_url() -> tuple[str, int]:
    port = free_port()  # bound and released: nothing listens on it
    return f"postgresql+psycopg://kmsbridge:{PASSWORD}@127.0.0.1:{port}/kmsbridge", port


def test_upgrade_against_a_closed_port_names_the_setting_and_the_address_but_not_the_password() -> None:
    url, port = closed_port_url()
    engine = create_engine(url)
    try:
        with pytest.raises(SettingsError) as raised:
            upgrade(engine)
    finally:
        engine.dispose()
    message = str(raised.value)
    assert message.startswith("KMSBRIDGE_DATABASE_URL: cannot connect to the postgresql database at "
                              f"127.0.0.1:{port}: ")
    assert "\n" not in message
    assert PASSWORD not in message


def test_run_with_the_database_down_exits_1_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    url, port = closed_port_url()
    pin_keys = tmp_path / "pin-keys.json"
    pin_keys.write_text(json.dumps({"current": "k1", "keys": {"k1": generate_key()}}))
    env = clean_env(KMSBRIDGE_DATABASE_URL=url, KMSBRIDGE_STACK_DIR=str(tmp_path / "no-stack"),
                    KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                    KMSBRIDGE_PROVIDER_FILE=str(REPO / "examples" / "provider.yaml"),
                    KMSBRIDGE_PIN_KEYS__FILE=str(pin_keys))

    result = kmsbridge(["run", "executor"], env, timeout=120)

    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: KMSBRIDGE_DATABASE_URL: cannot connect to the postgresql database at "
                                f"127.0.0.1:{port}: ")
    assert "Traceback" not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
