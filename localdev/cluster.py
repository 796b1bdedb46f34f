"""A real three-node Apache Kafka 4.x cluster (KRaft) on loopback, from the same jars as the single node.

Each node is both broker and controller (combined mode) and a voter of a static quorum
(``controller.quorum.voters``: every node lists all three), so losing one node loses one voter and the
other two keep a majority. Topics are replicated as production runs them: internal topics and the
default replication factor 3, ``min.insync.replicas=2``.

Lifecycle, as :func:`start_cluster` does it:

1. pick free loopback ports for every node (client listener and controller);
2. write each node's ``server.properties`` (the single node's, :func:`~localdev.local_broker.broker_properties`,
   with its node id, the static voters and replication 3) and ``log4j2.properties`` under
   ``folder/node-<id>``;
3. format every node's storage with the same cluster id (``StorageTool format``; static voters need no
   ``--standalone`` or ``--initial-controllers``);
4. start the three JVMs detached, each in its own session, with a small heap (:data:`NODE_HEAP`);
5. wait until every node answers, all of them are in the metadata and the quorum has a leader.

:class:`LocalCluster` then stops (SIGTERM: controlled shutdown), kills (SIGKILL) and starts one node by
index on its own data dir and ports, waits for the replicas to be in sync again, and names the leader of a
topic-partition and the active controller (the quorum leader, read from the ``quorum-state`` file each
running node keeps beside its metadata log).

Command line::

    python -m localdev.cluster start --folder var/kafka-cluster [--nodes 3] [--json]
    python -m localdev.cluster stop --folder var/kafka-cluster
    python -m localdev.cluster resume --folder var/kafka-cluster     # the stopped cluster, on its storage
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localdev.local_broker import (
    _CHILDREN,
    _LOG4J2_PROPERTIES,
    _LOOPBACK,
    BrokerError,
    BrokerPorts,
    BrokerStartError,
    _classpath,
    _java,
    _jvm_flags,
    _new_cluster_id,
    _port_answers,
    _port_free,
    _reap_or_probe,
    _tail,
    broker_properties,
    ensure_jars,
    free_port,
    render_properties,
    stop_broker,
)

__all__ = [
    "MIN_INSYNC_REPLICAS",
    "NODE_HEAP",
    "ClusterNode",
    "LocalCluster",
    "cluster_properties",
    "has_cluster",
    "load_cluster",
    "main",
    "resume_cluster",
    "start_cluster",
]

#: Heap of each node: three JVMs, the processes and the tests share 2 cores and 24 GiB.
NODE_HEAP: tuple[str, ...] = ("-Xms64m", "-Xmx384m")
MIN_INSYNC_REPLICAS = 2
_STATE_FILE = "cluster.json"


@dataclass(frozen=True)
class ClusterNode:
    """One node of the cluster: its node id, ports and data dir (``pid`` is 0 while it is down)."""

    node_id: int
    ports: BrokerPorts
    data_dir: Path
    pid: int = 0

    @property
    def bootstrap(self) -> str:
        return f"{_LOOPBACK}:{self.ports.plaintext}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"


def cluster_properties(node: ClusterNode, voters: Sequence[ClusterNode]) -> dict[str, str]:
    """The ``server.properties`` of ``node``: the single node's settings with its own id, the static
    quorum of ``voters`` and replication as production runs it (RF 3 where there are three nodes)."""
    replication = str(min(3, len(voters)))
    min_isr = str(min(MIN_INSYNC_REPLICAS, len(voters)))
    props = broker_properties(node.data_dir, node.ports)
    props.pop("controller.quorum.bootstrap.servers")
    props.update({
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{v.node_id}@{_LOOPBACK}:{v.ports.controller}" for v in voters),
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        # A node that comes back takes its preferred leaderships back soon, as production brokers do.
        "leader.imbalance.check.interval.seconds": "10",
        # Elections and fetches are quick on loopback; the defaults suit a real network.
        "controller.quorum.election.timeout.ms": "1000",
        "controller.quorum.fetch.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "6000",
        "replica.lag.time.max.ms": "10000",
    })
    return props


class LocalCluster:
    """A running local cluster; nodes are addressed by index (0, 1, 2: node ids 1, 2, 3)."""

    def __init__(self, folder: Path, nodes: list[ClusterNode]) -> None:
        self.folder = folder
        self.nodes = nodes
        self.bootstrap = ",".join(n.bootstrap for n in nodes)

    # --- state on disk (for the command line and `stack down`) ---------------------------------------

    def save(self) -> None:
        data = [{"node_id": n.node_id, "plaintext": n.ports.plaintext, "controller": n.ports.controller,
                 "data_dir": str(n.data_dir), "pid": n.pid} for n in self.nodes]
        (self.folder / _STATE_FILE).write_text(json.dumps({"bootstrap": self.bootstrap, "nodes": data}), "utf-8")

    def to_json(self) -> str:
        return json.dumps({"bootstrap": self.bootstrap, "pids": [n.pid for n in self.nodes],
                           "folder": str(self.folder)})

    # --- one node ------------------------------------------------------------------------------------

    def running(self, index: int) -> bool:
        pid = self.nodes[index].pid
        return pid > 0 and _reap_or_probe(pid)

    def stop(self, index: int, timeout: float = 30) -> None:
        """SIGTERM node ``index`` (controlled shutdown: it hands its leaderships over), SIGKILL after
        ``timeout``."""
        node = self.nodes[index]
        if node.pid:
            stop_broker(node.pid, timeout=timeout)
        self._set_pid(index, 0)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: no controlled shutdown, its leaderships move after its session expires."""
        node = self.nodes[index]
        if node.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            stop_broker(node.pid, timeout=10)  # reaps it
        self._set_pid(index, 0)

    def start(self, index: int, timeout: float = 90) -> None:
        """Start the stopped node ``index`` on its data dir and ports; return once it is back in the
        metadata (its replicas may still be catching up: :meth:`wait_in_sync`)."""
        if self.running(index):
            raise BrokerError(f"node {self.nodes[index].node_id} (pid {self.nodes[index].pid}) is running")
        node = self.nodes[index]
        deadline = time.monotonic() + 10
        for port in (node.ports.plaintext, node.ports.controller):
            while not _port_free(port):  # the old JVM's sockets may take a moment to be released
                if time.monotonic() > deadline:
                    raise BrokerError(f"port {port} on {_LOOPBACK} is still in use; cannot start node {node.node_id}")
                time.sleep(0.1)
        self._set_pid(index, _spawn(_java(), ensure_jars(), node))
        self._wait_ready([index], timeout)

    def restart(self, index: int, timeout: float = 90) -> None:
        self.stop(index)
        self.start(index, timeout)

    def close(self, timeout: float = 30) -> None:
        """Stop every node: SIGTERM to all at once (the last one standing cannot hand anything over, so
        one at a time would wait for it), SIGKILL to any still running after ``timeout``."""
        for node in self.nodes:
            if node.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        for i in range(len(self.nodes)):
            self.stop(i, timeout=timeout)

    # --- what the cluster says -------------------------------------------------------------------------

    def index_of(self, node_id: int) -> int:
        for i, node in enumerate(self.nodes):
            if node.node_id == node_id:
                return i
        raise BrokerError(f"no node {node_id} in this cluster")

    def brokers(self) -> set[int]:
        """Node ids of the brokers in the metadata right now (empty when no node answers)."""
        metadata = self._metadata()
        return set(metadata.brokers) if metadata is not None else set()

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """Index of the node leading ``topic``[``partition``]; raises :class:`BrokerError` when it has none."""
        metadata = self._metadata(topic)
        if metadata is None or topic not in metadata.topics:
            raise BrokerError(f"no metadata for topic {topic!r}")
        part = metadata.topics[topic].partitions.get(partition)
        if part is None or part.leader < 0:
            raise BrokerError(f"{topic}[{partition}] has no leader")
        return self.index_of(part.leader)

    def active_controller(self) -> int:
        """Index of the quorum leader, as the running node with the newest epoch knows it."""
        best: tuple[int, int] | None = None  # (epoch, leader id)
        for i, node in enumerate(self.nodes):
            if not self.running(i):
                continue
            state = _quorum_state(node.data_dir)
            if state is None or state.get("leaderId", -1) < 0:
                continue
            seen = (int(state.get("leaderEpoch", -1)), int(state["leaderId"]))
            if best is None or seen[0] > best[0]:
                best = seen
        if best is None:
            raise BrokerError("no running node knows a quorum leader")
        return self.index_of(best[1])

    def under_replicated(self) -> list[tuple[str, int]]:
        """Partitions whose in-sync replicas are fewer than their replicas (every topic)."""
        metadata = self._metadata()
        if metadata is None:
            return [("?", -1)]
        return [(name, p.id) for name, topic in metadata.topics.items() for p in topic.partitions.values()
                if p.leader < 0 or set(p.isrs) != set(p.replicas)]

    def wait_in_sync(self, timeout: float = 120) -> float:
        """Wait until no partition is under-replicated; returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            lagging = self.under_replicated()
            if not lagging:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise BrokerError(f"{len(lagging)} partitions still under-replicated after {timeout:.0f}s: "
                                  f"{lagging[:5]}")
            time.sleep(0.2)

    # --- internals -------------------------------------------------------------------------------------

    def _set_pid(self, index: int, pid: int) -> None:
        node = self.nodes[index]
        self.nodes[index] = ClusterNode(node.node_id, node.ports, node.data_dir, pid)
        if (self.folder / _STATE_FILE).exists():
            self.save()

    def _metadata(self, topic: str | None = None) -> Any:
        from confluent_kafka.admin import AdminClient  # function-level: keeps this module stdlib-importable

        live = ",".join(n.bootstrap for i, n in enumerate(self.nodes) if self.running(i)) or self.bootstrap
        admin = AdminClient({"bootstrap.servers": live, "socket.timeout.ms": "2000", "log_level": "0"})
        try:
            return admin.list_topics(topic, timeout=3)
        except Exception:  # KafkaException while nodes are starting or leaving: the caller polls again
            return None

    def _wait_ready(self, indexes: Sequence[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = {self.nodes[i].node_id for i in range(len(self.nodes)) if self.running(i) or i in indexes}
        try:
            while True:
                for i in indexes:
                    if not self.running(i):
                        log = _tail(self.nodes[i].log_file)
                        raise BrokerStartError(f"Kafka node {self.nodes[i].node_id} exited during start:\n{log}")
                if all(_port_answers(_LOOPBACK, self.nodes[i].ports.plaintext) for i in indexes):
                    with contextlib.suppress(BrokerError):
                        if want <= self.brokers() and self.active_controller() >= 0:
                            return
                if time.monotonic() > deadline:
                    tails = "\n".join(f"--- node {self.nodes[i].node_id}\n{_tail(self.nodes[i].log_file, 1500)}"
                                      for i in indexes)
                    raise BrokerStartError(f"Kafka cluster not ready after {timeout:.0f}s "
                                           f"(brokers in metadata: {sorted(self.brokers())}):\n{tails}")
                time.sleep(0.2)
        except BaseException:
            for i in indexes:
                self.stop(i, timeout=10)
            raise


def _quorum_state(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "kraft-logs" / "__cluster_metadata-0" / "quorum-state"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written yet, or being replaced: the caller asks again
    return state if isinstance(state, dict) else None


def _spawn(java: str, libs: Path, node: ClusterNode) -> int:
    cmd = [java, *_jvm_flags(), *NODE_HEAP, f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
           "-cp", _classpath(libs), "kafka.Kafka", str(node.data_dir / "server.properties")]
    with node.log_file.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _format(java: str, libs: Path, node: ClusterNode, cluster_id: str) -> None:
    cmd = [java, *_jvm_flags(), *NODE_HEAP, "-cp", _classpath(libs), "kafka.tools.StorageTool", "format",
           "--cluster-id", cluster_id, "--config", str(node.data_dir / "server.properties")]
    with node.log_file.open("ab") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise BrokerStartError(f"formatting node {node.node_id} failed (exit {result.returncode}):\n"
                               f"{_tail(node.log_file)}")


def start_cluster(folder: Path, nodes: int = 3, timeout: float = 120) -> LocalCluster:
    """Format and start a ``nodes``-node KRaft cluster under ``folder`` (which must not hold one yet);
    return once every node is in the metadata and the quorum has a leader. The caller owns the
    processes: :meth:`LocalCluster.close` stops them."""
    if nodes < 1:
        raise BrokerError("a cluster needs at least one node")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if any((folder / f"node-{i}" / "kraft-logs" / "meta.properties").exists() for i in range(1, nodes + 1)):
        raise BrokerError(f"{folder} already holds a formatted cluster; use an empty folder")
    libs = ensure_jars()
    java = _java()
    # 1. ports
    specs = [ClusterNode(i, BrokerPorts(plaintext=free_port(), controller=free_port()), folder / f"node-{i}")
             for i in range(1, nodes + 1)]
    if len({p for s in specs for p in (s.ports.plaintext, s.ports.controller)}) != 2 * nodes:
        return start_cluster(folder, nodes, timeout)  # the kernel handed out a port twice: pick again
    cluster_id = _new_cluster_id()
    for node in specs:
        # 2. configuration files
        node.data_dir.mkdir(parents=True, exist_ok=True)
        (node.data_dir / "server.properties").write_text(render_properties(cluster_properties(node, specs)), "utf-8")
        (node.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
        node.log_file.write_bytes(b"")
        # 3. storage, one cluster id for all
        _format(java, libs, node, cluster_id)
    # 4. the JVMs, all at once: a static quorum elects a leader only once a majority runs
    cluster = LocalCluster(folder, [ClusterNode(n.node_id, n.ports, n.data_dir, _spawn(java, libs, n)) for n in specs])
    # 5. readiness
    cluster._wait_ready(range(nodes), timeout)
    cluster.save()
    return cluster


def has_cluster(folder: Path) -> bool:
    """True when ``folder`` holds a cluster :func:`start_cluster` formatted (its state file and every
    node's storage), which :func:`resume_cluster` can start again."""
    try:
        cluster = load_cluster(folder)
    except (BrokerError, KeyError, TypeError):
        return False
    return all((n.data_dir / "kraft-logs" / "meta.properties").exists() for n in cluster.nodes)


def load_cluster(folder: Path) -> LocalCluster:
    """The cluster :func:`start_cluster` left in ``folder`` (its state file), e.g. to stop it."""
    folder = Path(folder).resolve()
    try:
        data = json.loads((folder / _STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BrokerError(f"{folder} holds no cluster state ({_STATE_FILE}): {exc}") from exc
    nodes = [ClusterNode(n["node_id"], BrokerPorts(n["plaintext"], n["controller"]), Path(n["data_dir"]), n["pid"])
             for n in data["nodes"]]
    return LocalCluster(folder, nodes)


def resume_cluster(folder: Path, timeout: float = 120) -> LocalCluster:
    """Start every stopped node of the cluster :func:`start_cluster` left in ``folder`` on its storage
    (the same ports, cluster id, topics and committed offsets); return once all are in the metadata."""
    cluster = load_cluster(folder)
    stopped = [i for i in range(len(cluster.nodes)) if not cluster.running(i)]
    java, libs = _java(), ensure_jars()
    for i in stopped:  # all at once: with two of three voters down, none can be elected alone
        cluster._set_pid(i, _spawn(java, libs, cluster.nodes[i]))
    cluster._wait_ready(stopped, timeout)
    return cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="format and start a cluster; prints its bootstrap servers and pids")
    start.add_argument("--folder", type=Path, required=True)
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--timeout", type=float, default=120)
    start.add_argument("--json", action="store_true", help="print bootstrap, pids and folder as JSON")
    resume = sub.add_parser("resume", help="start the stopped nodes of the cluster in --folder on their storage")
    resume.add_argument("--folder", type=Path, required=True)
    resume.add_argument("--timeout", type=float, default=120)
    resume.add_argument("--json", action="store_true", help="print bootstrap, pids and folder as JSON")
    stop = sub.add_parser("stop", help="stop the cluster started in --folder")
    stop.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command in ("start", "resume"):
            began = time.monotonic()
            cluster = (start_cluster(args.folder, args.nodes, args.timeout) if args.command == "start"
                       else resume_cluster(args.folder, args.timeout))
            if args.json:
                print(cluster.to_json())
            else:
                print(f"kafka cluster ready bootstrap={cluster.bootstrap} pids={[n.pid for n in cluster.nodes]} "
                      f"in {time.monotonic() - began:.1f}s")
        else:
            load_cluster(args.folder).close()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
