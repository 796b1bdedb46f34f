"""``kmsbridge stack up --replicas 2`` on PostgreSQL (``KMSBRIDGE_DATABASE_URL``): two translators, two
executors, two projectors and two reconcilers, each healthy under its own name and ``POD_NAME``, the
events of a few subscriptions applied on the simulator and projected in PostgreSQL, both executors
members of the executor's group with their own static membership ids, and ``stack down`` leaving
nothing alive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, select

from reconciler.tables import subscriptions_table
from tests.integration.events import activation
from tests.support.cli import clean_env, kmsbridge
from tests.support.pg import new_database, postgres_url  # noqa: F401 (the session fixture)
from tests.support.pipeline import wait_until
from tests.support.processes import alive, process_environ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

SCALED = ("translator", "executor", "projector", "reconciler")
REPLICAS = [f"{p}-{i}" for p in SCALED for i in (0, 1)]
SUBSCRIPTIONS = {f"S-R{i}": f"91000{i:02d}" for i in range(6)}  # subscription -> its box's card


def simulator_clients(state: dict[str, Any], folder: Path) -> dict[str, Any]:
    token = (folder / "kms.token").read_text().strip()
    response = httpx.get(state["simulator_url"] + "/admin/state", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
    response.raise_for_status()
    clients: dict[str, Any] = response.json()["secure_clients"]
    return clients


def projected(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(subscriptions_table.c.subscription_id, subscriptions_table.c.version))
            return {r.subscription_id: r.version for r in rows}
    finally:
        engine.dispose()


def group_members(bootstrap: str, group: str) -> list[Any]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    return list(description.members)


def test_stack_up_with_two_replicas_on_postgresql_runs_each_replica_apart_and_down_stops_them_all(
        tmp_path: Path, postgres_url: str) -> None:  # noqa: F811 (the fixture)
    folder = tmp_path / "stack"
    database_url = new_database(postgres_url, "stack")
    env = clean_env(KMSBRIDGE_STACK_DIR=str(folder), KMSBRIDGE_DATABASE_URL=database_url)
    args = [arg for p in SCALED for arg in ("--process", p)]
    pids: list[int] = []
    try:
        up = kmsbridge(["stack", "up", "--replicas", "2", *args], env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "(KMSBRIDGE_DATABASE_URL; the stack does not empty it)" in up.stdout
        state = json.loads((folder / "state.json").read_text())
        assert state["database_url"] == database_url and state["replicas"] == 2
        assert list(state["processes"]) == ["simulator", *REPLICAS]
        pids = [int(p["pid"]) for p in state["processes"].values()] + [int(state["broker_pid"])]

        # every replica healthy under its own name, POD_NAME and metrics port, on PostgreSQL
        status = kmsbridge(["stack", "status", "--json"], env)
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert {name: rows[name]["health"] for name in REPLICAS} == dict.fromkeys(REPLICAS, "ok")
        assert len({rows[name]["port"] for name in REPLICAS}) == len(REPLICAS)
        environs = {name: process_environ(state["processes"][name]["pid"]) for name in REPLICAS}
        assert {name: e["POD_NAME"] for name, e in environs.items()} == {name: name for name in REPLICAS}
        assert {e["KMSBRIDGE_DATABASE_URL"] for e in environs.values()} == {database_url}

        # the events of a few subscriptions: applied on the simulator, projected in PostgreSQL
        events = tmp_path / "events.jsonl"
        events.write_text("".join(activation(sub, card).model_dump_json() + "\n"
                                  for sub, card in SUBSCRIPTIONS.items()))
        produced = kmsbridge(["produce", "subscriptions", "--file", str(events)], env)
        assert produced.returncode == 0, produced.stderr
        wait_until("every box entitled on the simulator", lambda: all(
            (simulator_clients(state, folder).get(card) or {}).get("entitlements")
            for card in SUBSCRIPTIONS.values()), timeout=90, interval=0.5)
        wait_until("every subscription projected in PostgreSQL",
                   lambda: projected(database_url) == dict.fromkeys(SUBSCRIPTIONS, 1), timeout=90, interval=0.5)

        # both executors are members of the executor's group, each with its own static membership id
        members = wait_until("two members in the executor's group", lambda: (
            m if len(m := group_members(state["bootstrap"], "kmsbridge-executor")) == 2 else None),
            timeout=90, interval=0.5)
        assert sorted(m.group_instance_id for m in members) == ["executor-0-executor", "executor-1-executor"]

        down = kmsbridge(["stack", "down"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        kmsbridge(["stack", "down"], env)
