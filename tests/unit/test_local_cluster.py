"""The three-node cluster's configuration and the drills' duplicate count, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localdev.cluster import ClusterNode, cluster_properties
from localdev.local_broker import BrokerPorts
from schemas.codec import Codec
from schemas.records import KmsCommand, Operation, Product, Source
from tests.support.cluster import count_duplicate_commands


def nodes(tmp_path: Path) -> list[ClusterNode]:
    return [ClusterNode(i, BrokerPorts(plaintext=19090 + i, controller=19190 + i), tmp_path / f"node-{i}")
            for i in (1, 2, 3)]


def test_every_node_is_a_voter_of_one_static_quorum_with_its_own_id_and_ports(tmp_path: Path) -> None:
    voters = nodes(tmp_path)

    props = [cluster_properties(node, voters) for node in voters]

    assert {p["controller.quorum.voters"] for p in props} == {
        "1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"}
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert [p["listeners"] for p in props] == [
        f"PLAINTEXT://127.0.0.1:{19090 + i},CONTROLLER://127.0.0.1:{19190 + i}" for i in (1, 2, 3)]
    assert all(p["process.roles"] == "broker,controller" for p in props)
    assert all("controller.quorum.bootstrap.servers" not in p for p in props)  # static voters, not dynamic
    assert len({p["log.dirs"] for p in props}) == 3


def test_three_nodes_replicate_every_topic_three_times_with_two_in_sync(tmp_path: Path) -> None:
    voters = nodes(tmp_path)

    props = cluster_properties(voters[0], voters)

    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "default.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"


def test_one_node_cluster_keeps_replication_at_one(tmp_path: Path) -> None:
    [only] = nodes(tmp_path)[:1]

    props = cluster_properties(only, [only])

    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


class _Message:
    """The part of confluent_kafka.Message the count reads."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


def command(key: str) -> KmsCommand:
    return KmsCommand(idempotency_key=key, operation=Operation.SYNC_ENTITLEMENTS, secure_client_id="4120051539",
                      products=[Product(product_id="P100")], source=Source(process_name="translator"),
                      created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_command_published_twice_is_one_duplicate_and_distinct_keys_are_none() -> None:
    codec = Codec()
    values: list[Any] = [_Message(codec.encode(command(k), "kms.commands"))
                         for k in ("ev:1:c:SYNC", "ev:2:c:SYNC", "ev:1:c:SYNC", "ev:3:c:SYNC", "ev:1:c:SYNC")]

    assert count_duplicate_commands(values, codec) == (5, 2)
    assert count_duplicate_commands(values[:2] + values[3:4], codec) == (3, 0)
