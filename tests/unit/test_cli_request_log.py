"""``kmsbridge requests list|show`` and ``kmsbridge history`` over a request log in a SQLite file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import create_engine

from kmsbridge.cli import main
from kmsbridge.db import upgrade
from provisioning.keys import KeySource, idempotency_key, rejection_key
from reconciler.request_log_store import LogBatch, RequestLog
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    Operation,
    RequestType,
    ResultState,
    ServiceRequest,
    Source,
    SubscriptionEvent,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
PIN = "8642"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_engine(url)
    upgrade(engine)
    log = RequestLog(engine)
    pin = KmsCommand(idempotency_key=idempotency_key(KeySource.REQUEST, "R-1", "C-1", Operation.SET_PIN),
                     operation=Operation.SET_PIN, secure_client_id="C-1", pin=SecretStr(PIN), created_at=T0,
                     source=Source(process_name="cli", request_id="R-1"))
    sync = KmsCommand(idempotency_key=idempotency_key(KeySource.EVENT, "E-1", "C-1", Operation.SYNC_ENTITLEMENTS),
                      operation=Operation.SYNC_ENTITLEMENTS, secure_client_id="C-1", subscription_id="S-1",
                      distributor="MAIN", created_at=T0 - timedelta(minutes=1),
                      source=Source(process_name="translator", event_id="E-1"))
    event = SubscriptionEvent(event_id="E-1", event_type=EventType.ACTIVATED, occurred_at=T0 - timedelta(minutes=2),
                              subscription_id="S-1", account_id="A-1", subscription_type="RES", created_at=T0,
                              version=1, state="ACTIVE", devices=[Device(distributor="MAIN", secure_client_id="C-1")])
    bad = KmsResult(idempotency_key=rejection_key(KeySource.REQUEST, "R-2"), operation="SET_PIN",
                    secure_client_id="C-1", request_id="R-2", state=ResultState.REJECTED, error_code="INVALID_PIN",
                    error_description="a PIN has four digits", executed_at=T0)
    log.write(LogBatch(
        events=[event], commands=[pin, sync],
        requests=[ServiceRequest(request_id="R-1", type=RequestType.SET_PIN, secure_client_id="C-1",
                                 pin=SecretStr(PIN), requested_at=T0, process_name="cli")],
        results=[KmsResult(idempotency_key=pin.idempotency_key, operation="SET_PIN", secure_client_id="C-1",
                           request_id="R-1", state=ResultState.COMPLETED, attempts=1,
                           executed_at=T0 + timedelta(seconds=1)), bad]))
    engine.dispose()
    return {"KMSBRIDGE_DATABASE_URL": url, "KMSBRIDGE_STACK_DIR": str(tmp_path / "no-stack")}


def test_requests_list_filters_and_prints_a_table_or_json(env: dict[str, str]) -> None:
    table = CliRunner().invoke(main, ["requests", "list", "--secure-client", "C-1"], env=env)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:3] == ["CREATED", "STATE", "KIND"]
    assert [line.split()[3] for line in lines[1:]] == ["SET_PIN", "SET_PIN", "SET_PIN", "SYNC_ENTITLEMENTS"]

    got = CliRunner().invoke(main, ["requests", "list", "--state", "rejected", "--json"], env=env)
    assert got.exit_code == 0, got.output
    assert [e["error_code"] for e in json.loads(got.output)["entries"]] == ["INVALID_PIN"]
    paged = json.loads(CliRunner().invoke(main, ["requests", "list", "--limit", "1", "--json"], env=env).output)
    assert paged["next_cursor"]
    assert PIN not in table.output + got.output


def test_requests_show_answers_a_request_of_any_age_with_its_exit_code(env: dict[str, str]) -> None:
    done = CliRunner().invoke(main, ["requests", "show", "R-1"], env=env)
    assert done.exit_code == 0 and "request R-1 COMPLETED" in done.output
    rejected = CliRunner().invoke(main, ["requests", "show", "R-2", "--json"], env=env)
    assert rejected.exit_code == 1
    assert json.loads(rejected.output)["errors"] == [{"code": "INVALID_PIN", "description": "a PIN has four digits"}]
    assert CliRunner().invoke(main, ["requests", "show", "R-none"], env=env).exit_code == 1


def test_history_prints_the_boxs_timeline_oldest_first(env: dict[str, str]) -> None:
    got = CliRunner().invoke(main, ["history", "--secure-client", "C-1"], env=env)
    assert got.exit_code == 0, got.output
    whats = [line.split()[1] for line in got.output.splitlines()[1:]]
    assert whats == ["EVENT", "COMMAND", "REQUEST", "COMMAND", "RESULT", "RESULT", "RESULT"]
    data = json.loads(CliRunner().invoke(main, ["history", "--secure-client", "C-1", "--json"], env=env).output)
    assert data["timeline"][0]["event_type"] == "ACTIVATED"
    assert PIN not in got.output
    assert "nothing logged" in CliRunner().invoke(main, ["history", "--secure-client", "C-9"], env=env).output


def test_a_bad_time_or_cursor_is_a_usage_error(env: dict[str, str]) -> None:
    assert CliRunner().invoke(main, ["requests", "list", "--since", "yesterday"], env=env).exit_code == 2
    assert CliRunner().invoke(main, ["requests", "list", "--cursor", "x"], env=env).exit_code == 2
