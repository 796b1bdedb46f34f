"""``kmsbridge stack up --brokers 3``: the local stack on a three-node KRaft cluster (``localdev.cluster``),
its topics with replication factor 3 and ``min.insync.replicas=2``, the processes on the three nodes,
and ``stack down`` stopping every node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tests.support.cli import REPO, clean_env, kmsbridge
from tests.support.processes import alive, process_environ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CARD = "4120051539"  # the MAIN box of examples/subscriptions.jsonl


def topic_layout(bootstrap: str) -> dict[str, tuple[set[int], str]]:
    """Every topic but Kafka's own: the replica counts of its partitions and its min.insync.replicas."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = {name: t for name, t in admin.list_topics(timeout=30).topics.items() if not name.startswith("__")}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources, request_timeout=30).items()}
    return {name: ({len(p.replicas) for p in t.partitions.values()}, configs[name]["min.insync.replicas"].value)
            for name, t in topics.items()}


def test_stack_up_with_three_brokers_replicates_topics_translates_on_the_cluster_and_down_stops_every_node(
        tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    env = clean_env(KMSBRIDGE_STACK_DIR=str(folder))
    try:
        up = kmsbridge(["stack", "up", "--json", "--brokers", "3", "--process", "translator"], env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((folder / "state.json").read_text())
        nodes = state["brokers"]
        assert [n["node_id"] for n in nodes] == [1, 2, 3]
        assert state["bootstrap"] == ",".join(f"127.0.0.1:{n['port']}" for n in nodes)
        assert all(alive(n["pid"]) for n in nodes)

        # every topic: replication factor 3, min.insync.replicas=2
        layout = topic_layout(state["bootstrap"])
        assert {"crm.subscriptions", "kms.commands", "kms.results", "kms.commands.dlq"} <= set(layout)
        assert {name: value for name, value in layout.items() if value != ({3}, "2")} == {}

        # the translator runs on the three nodes with the cluster's topic settings
        translator_env = process_environ(state["processes"]["translator"]["pid"])
        assert translator_env["KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"] == state["bootstrap"]
        assert translator_env["KMSBRIDGE_TOPICS__REPLICATION_FACTOR"] == "3"
        assert translator_env["KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS"] == "2"

        produced = kmsbridge(["produce", "subscriptions", "--file", str(REPO / "examples" / "subscriptions.jsonl")],
                             env)
        assert produced.returncode == 0, produced.stderr
        commands = kmsbridge(["tail", "kms.commands", "--json", "--max", "1", "--timeout", "60"], env)
        assert commands.returncode == 0, commands.stderr
        assert json.loads(commands.stdout.splitlines()[0])["secure_client_id"] == CARD

        status = kmsbridge(["stack", "status", "--json"], env)
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert [rows[f"kafka-{i}"]["health"] for i in (1, 2, 3)] == ["ok", "ok", "ok"]

        other = kmsbridge(["stack", "up", "--brokers", "1", "--process", "translator"], env)
        assert other.returncode == 2
        assert "the running stack has 3 broker nodes" in other.stderr

        down = kmsbridge(["stack", "down"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [n["pid"] for n in nodes if alive(n["pid"])] == []
        assert not alive(state["processes"]["translator"]["pid"])

        # the kept cluster keeps its size: one broker on its storage is refused, nothing starts
        kept = kmsbridge(["stack", "up", "--keep", "--brokers", "1"], env)
        assert kept.returncode == 2
        assert "has 3 broker nodes; bring it up with --brokers 3" in kept.stderr
        assert not (folder / "state.json").exists()
    finally:
        kmsbridge(["stack", "down"], env)
