"""``kmsbridge stack up --brokers N``: what the stack records and passes on for a three-node cluster,
and the refusals that come before anything starts (no broker runs in these tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsbridge.cli import main as kmsbridge
from kmsbridge.stack_state import StackState, load_state, save_state
from localdev import stack
from localdev.cluster import ClusterNode, LocalCluster
from localdev.local_broker import BrokerPorts


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cluster_state(pid: int = 0) -> StackState:
    return StackState(bootstrap="127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103",
                      brokers=[{"node_id": i, "pid": pid, "port": 9100 + i} for i in (1, 2, 3)])


def keep_a_cluster(folder: Path) -> None:
    """A stopped three-node cluster's storage as ``localdev.cluster`` leaves it in ``folder/kafka``."""
    kafka = folder / stack.KAFKA_DIR
    nodes = [ClusterNode(i, BrokerPorts(9100 + i, 9200 + i), kafka / f"node-{i}") for i in (1, 2, 3)]
    for node in nodes:
        (node.data_dir / "kraft-logs").mkdir(parents=True)
        (node.data_dir / "kraft-logs" / "meta.properties").write_text(f"node.id={node.node_id}\n")
    LocalCluster(kafka, nodes).save()


def keep_a_single_broker(folder: Path) -> None:
    kafka = folder / stack.KAFKA_DIR
    (kafka / "kraft-logs").mkdir(parents=True)
    (kafka / "kraft-logs" / "meta.properties").write_text("node.id=1\n")
    (kafka / "server.properties").write_text("listeners=PLAINTEXT://127.0.0.1:9101,CONTROLLER://127.0.0.1:9201\n")


@pytest.fixture
def stack_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "stack"
    folder.mkdir()
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(folder))
    monkeypatch.delenv("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    for name in ("KMSBRIDGE_PROVIDER_FILE", "KMSBRIDGE_TOPICS__REPLICATION_FACTOR",
                 "KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS"):
        monkeypatch.delenv(name, raising=False)  # and restored: the stack's defaults set them in os.environ
    return folder


def test_a_state_file_without_brokers_loads_as_the_single_broker_stack(tmp_path: Path) -> None:
    old = asdict(StackState(bootstrap="127.0.0.1:9092", broker_pid=4242))
    del old["brokers"]
    old["a_field_this_build_does_not_know"] = 1
    (tmp_path / "state.json").write_text(json.dumps(old))

    state = load_state(tmp_path)

    assert state is not None
    assert state.brokers == []
    assert stack.broker_count(state) == 1
    assert state.topic_settings() == {}


def test_every_process_of_a_three_node_stack_gets_the_nodes_replication_three_and_min_isr_two() -> None:
    env = stack.process_env(cluster_state(), base={})

    assert env["KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103"
    assert env["KMSBRIDGE_TOPICS__REPLICATION_FACTOR"] == "3"
    assert env["KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS"] == "2"


def test_the_single_broker_stack_leaves_the_topic_settings_at_their_defaults() -> None:
    env = stack.process_env(StackState(bootstrap="127.0.0.1:9092", broker_pid=4242), base={})

    assert not any(key.startswith("KMSBRIDGE_TOPICS__") for key in env)


def test_a_kept_cluster_brought_up_with_one_broker_is_refused_before_anything_starts(stack_folder: Path) -> None:
    keep_a_cluster(stack_folder)

    result = CliRunner().invoke(kmsbridge, ["stack", "up", "--keep", "--brokers", "1"])

    assert result.exit_code == 2, result.output
    assert f"the stack kept in {stack_folder} has 3 broker nodes" in result.output
    assert "--brokers 3" in result.output
    assert not (stack_folder / "state.json").exists()
    assert not (stack_folder / "logs" / "simulator.log").exists()


def test_a_kept_single_broker_brought_up_with_three_is_refused(stack_folder: Path) -> None:
    keep_a_single_broker(stack_folder)

    result = CliRunner().invoke(kmsbridge, ["stack", "up", "--keep", "--brokers", "3"])

    assert result.exit_code == 2, result.output
    assert "has 1 broker node;" in result.output
    assert not (stack_folder / "state.json").exists()


def test_three_brokers_with_bootstrap_servers_configured_is_refused(stack_folder: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")

    result = CliRunner().invoke(kmsbridge, ["stack", "up", "--brokers", "3"])

    assert result.exit_code == 2, result.output
    assert "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS" in result.output
    assert not (stack_folder / "state.json").exists()


def test_status_shows_every_node_of_the_cluster_and_fails_when_one_is_down(stack_folder: Path) -> None:
    save_state(cluster_state(pid=dead_pid()), stack_folder)

    rows = stack.status()
    result = CliRunner().invoke(kmsbridge, ["stack", "status"])

    assert [(r["name"], r["port"], r["alive"], r["health"]) for r in rows] == [
        ("kafka-1", 9101, False, "down"), ("kafka-2", 9102, False, "down"), ("kafka-3", 9103, False, "down")]
    assert result.exit_code == 1
    assert "kafka-2" in result.output


def test_cli_verbs_on_a_three_node_stack_plan_topics_with_its_replication(stack_folder: Path) -> None:
    save_state(cluster_state(), stack_folder)

    result = CliRunner().invoke(kmsbridge, ["topics", "create", "--dry-run"])

    assert result.exit_code == 0, result.output
    plans = [json.loads(line) for line in result.output.splitlines()]
    assert plans and {(p["replication"], p["config"]["min.insync.replicas"]) for p in plans} == {(3, "2")}
