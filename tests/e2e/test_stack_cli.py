"""The CLI and the local stack as an operator uses them."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.support.cli import REPO, clean_env, kmsbridge

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples"


def _pids(state_file: Path) -> list[int]:
    state = json.loads(state_file.read_text())
    pids = [int(p["pid"]) for p in state["processes"].values()]
    if state.get("broker_pid"):
        pids.append(int(state["broker_pid"]))
    return pids


def test_stack_up_produce_tail_and_down_leaves_nothing_running(stack_env: dict[str, str], tmp_path: Path) -> None:
    up = kmsbridge(["stack", "up", "--json", "--process", "translator", "--process", "executor"], stack_env)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert set(info) >= {"bootstrap", "simulator_url", "api_url", "metrics", "logs"}
    pids = _pids(tmp_path / "stack" / "state.json")
    assert all(psutil.pid_exists(p) for p in pids)

    again = kmsbridge(["stack", "up", "--json", "--process", "translator", "--process", "executor"], stack_env)
    assert again.returncode == 0, again.stderr
    assert _pids(tmp_path / "stack" / "state.json") == pids  # idempotent: nothing restarted

    produced = kmsbridge(["produce", "subscriptions", "--file", str(EXAMPLES / "subscriptions.jsonl")], stack_env)
    assert produced.returncode == 0, produced.stderr
    assert "produced 2" in produced.stdout

    tail = kmsbridge(["tail", "crm.subscriptions", "--json", "--max", "2", "--timeout", "30"], stack_env)
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [r["version"] for r in records] == [1, 2]
    assert records[0]["devices"][0]["secure_client_id"] == "4120051539"

    commands = kmsbridge(["tail", "kms.commands", "--json", "--max", "1", "--timeout", "60"], stack_env)
    assert commands.returncode == 0, commands.stderr
    assert json.loads(commands.stdout.splitlines()[0])["secure_client_id"] == "4120051539"

    status = kmsbridge(["stack", "status", "--json"], stack_env)
    assert {r["name"]: r["health"] for r in json.loads(status.stdout)}["executor"] == "ok"

    down = kmsbridge(["stack", "down"], stack_env)
    assert down.returncode == 0, down.stderr
    survivors = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert survivors == []


def test_produce_with_a_bad_line_names_line_and_field_and_sends_nothing(tmp_path: Path) -> None:
    good = (EXAMPLES / "subscriptions.jsonl").read_text().splitlines()[0]
    bad = good.replace('"version": 1', '"version": -3').replace('"state": "ACTIVE", "services"',
                                                                  '"state": "ASLEEP", "services"')
    events = tmp_path / "events.jsonl"
    events.write_text(good + "\n" + bad + "\n")
    # an unreachable broker: validation must fail before any connection is attempted
    env = clean_env(KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", KMSBRIDGE_STACK_DIR=str(tmp_path / "none"))

    result = kmsbridge(["produce", "subscriptions", "--file", str(events)], env, timeout=60)

    assert result.returncode == 2
    assert "line 2" in result.stderr
    assert "version" in result.stderr and "state" in result.stderr
    assert "nothing sent" in result.stderr


def test_a_bad_setting_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    env = clean_env(KMSBRIDGE_EXECUTOR__MAX_INFLIGHT="zero", KMSBRIDGE_STACK_DIR=str(tmp_path / "none"))

    result = kmsbridge(["run", "executor"], env, timeout=60)

    assert result.returncode == 2
    assert "KMSBRIDGE_EXECUTOR__MAX_INFLIGHT" in result.stderr
