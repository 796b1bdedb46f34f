"""Fault drills on a three-node Kafka cluster (:mod:`localdev.cluster`), with replicas of the processes.

:class:`ClusterDrill` is a :class:`~tests.support.chaos.Drill` whose pipeline runs on the cluster (topics
with replication factor 3 and ``min.insync.replicas=2``), with N translators, N executors, N projectors
and 2 reconcilers (``POD_NAME`` ``translator-<i>``, ``executor-<i>``, ``projector-<i>``,
``reconciler-<i>``) on one PostgreSQL database, and whose faults act on the cluster's nodes, on the
replicas and on a PostgreSQL server (:class:`RestartablePostgres`). Its report, a :class:`ClusterReport`,
adds these figures to the drill's ledger:

- **recovery per fault**: for each fault, from the moment it ended to the moment every event produced
  before that moment had been applied (a kill's own moment is its end: that figure is the failover);
- **duplicate commands**: ``kms.commands`` read with read_committed after the drill, the idempotency keys
  found more than once. The translator keys every command by its source event (``ev:<event id>:...``)
  and the stream's events all have their own ids, so no key may appear twice: a second copy is a batch
  processed twice and published twice, which the executor's ledger then hides from the KMS;
- **projection behind**: subscriptions the desired-state store does not hold at their newest version
  once the stream is applied (a projector lost an event, or applied an older one after a newer);
- **the run lock** (:class:`LeaseWatch`): the lease row (``reconcile_leases``) sampled every 100 ms while
  :class:`ReconcileLoad` keeps reset runs queued on every partition of ``reconcile.requests``, so the two
  reconcilers contend for it for the whole drill and through every fault. Each sample of a held lease
  must name a running reconciler of the drill, and over the drill both must have held it; every run
  must end with a report and none with a lock error. The runs cover a settled set of subscriptions
  (produced in the warm-up, never changed by the stream), so they repair nothing and publish no command;
- **final drift**: a reset run over the whole store after the drill, which must find every subscription
  of the stream and no drift between the projection and the simulator.

The count proves itself with :data:`PLAIN_TRANSLATOR`: the translator's own loop with its transaction
taken out (``python -m tests.support.cluster plain-translator``; test-only, the product has no switch for
it). It produces a batch's outputs, flushes them, then stores the batch's offsets for the consumer's
auto-commit (every 500 ms): at least once, as a consumer without transactions is. A kill -9 between the
flush and the next auto-commit makes the restarted process publish those commands again.

:func:`cluster_table` prints the reports as ``docs/reliability.md``'s cluster table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from consumers.translator import PROCESS, TransactionalTranslator
from kafka_edge.dlq import DeadLetters
from kafka_edge.kafka_clients import consumer_config, make_consumer, make_producer, producer_config
from kafka_edge.messages import positions_after
from localdev.cluster import MIN_INSYNC_REPLICAS, LocalCluster
from localdev.local_broker import BrokerError, free_port
from provisioning.provider import ProviderConfig
from reconciler.lock import RunLock
from reconciler.tables import subscriptions_table
from schemas.codec import Codec
from schemas.records import KmsCommand, ReconcileReport, ReconcileRequest
from tests.support.chaos import Drill, DrillReport, Fault, Progress, Size, Stream, Supervisor, read_all
from tests.support.pg import SUPERUSER, _run, find_pg_bin
from tests.support.pipeline import Pipeline
from tests.support.simulator import SimulatorHandle

__all__ = [
    "CLUSTER_FULL",
    "CLUSTER_SHORT",
    "PLAIN_TRANSLATOR",
    "ClusterDrill",
    "ClusterReport",
    "ClusterSize",
    "LeaseWatch",
    "PlainTranslator",
    "ReconcileLoad",
    "RestartablePostgres",
    "cluster_pipeline",
    "cluster_table",
    "count_duplicate_commands",
]

log = logging.getLogger(__name__)

#: The process name :class:`ClusterSupervisor` starts as the non-transactional translator.
PLAIN_TRANSLATOR = "plain-translator"
#: Households produced (one version each) in the warm-up: the reset runs during the drill cover them.
SETTLED_HOUSEHOLDS = 100


@dataclass(frozen=True)
class ClusterSize(Size):
    """A drill's size on the cluster: ``node_down`` is how long a killed node stays down,
    ``broker_outage`` how long a stopped one does, ``database_outage`` PostgreSQL's."""

    node_down: float = 10.0
    database_outage: float = 5.0


#: 1,500 events at 60/s: a 25 s stream, so the eight short drills fit in about four minutes.
CLUSTER_SHORT = ClusterSize("short", events=1500, rate=60, broker_outage=15, kms_outage=0, degraded=0,
                            timeout=180, node_down=8, database_outage=5)
CLUSTER_FULL = ClusterSize("full", events=20_000, rate=60, broker_outage=60, kms_outage=0, degraded=0,
                           timeout=900, node_down=30, database_outage=30)


def cluster_pipeline(cluster: LocalCluster, simulator_url: str, token: str, workdir: Path, *,
                     partitions: int = 6, database_url: str | None = None) -> Pipeline:
    """A pipeline on ``cluster``: its topics with replication factor 3 and ``min.insync.replicas=2``."""
    replication = min(3, len(cluster.nodes))
    return Pipeline(cluster.bootstrap, simulator_url, token, workdir, partitions=partitions,
                    database_url=database_url, replication=replication,
                    topic_config={"min.insync.replicas": str(min(MIN_INSYNC_REPLICAS, replication))})


# --------------------------------------------------------------------------------------------------
# The report


@dataclass
class ClusterReport(DrillReport):
    commands_on_topic: int = 0
    duplicate_commands: int = 0
    #: the control drill (no transactions): duplicates must show, or the count proves nothing
    duplicates_expected: bool = False
    recoveries: dict[str, float] = field(default_factory=dict)
    projectors: int = 0
    #: subscriptions of the stream the desired-state store does not hold at their newest version
    projection_behind: int = 0
    reconcilers: int = 0
    reconcile_runs: int = 0  # reset runs requested during the drill
    reconcile_unreported: int = 0  # of those, runs with no report at the end
    reconcile_lock_errors: int = 0  # reports whose error is the run lock's (LockTimeout, LeaseLost)
    reconcile_other_errors: int = 0  # reports with another error (a database or Kafka outage)
    lease_samples: int = 0  # samples of the lease row that could be read
    #: samples of a held lease, by reconciler; "other" is a holder that is no running reconciler of the drill
    lease_held: dict[str, int] = field(default_factory=dict)
    final_checked: int = 0  # subscriptions the reset run after the drill checked
    final_drift: int | None = None  # and found drifted (None: no report)
    final_failed: int = 0
    subscriptions: int = 0  # in the stream

    @property
    def lease_exclusive(self) -> bool:
        """Every held sample names a running reconciler, and each reconciler held the lease at some sample."""
        held = {name: n for name, n in self.lease_held.items() if name != "other"}
        return self.lease_held.get("other", 0) == 0 and len(held) == self.reconcilers and all(held.values())

    @property
    def passed(self) -> bool:
        exactly_once_as_expected = (self.duplicate_commands > 0) == self.duplicates_expected
        projection = self.projectors == 0 or self.projection_behind == 0
        reconcilers = self.reconcilers == 0 or (
            self.lease_exclusive and self.reconcile_runs > 0 and self.reconcile_unreported == 0
            and self.reconcile_lock_errors == 0 and self.final_drift == 0 and self.final_failed == 0
            and self.final_checked == self.subscriptions)
        return super().passed and exactly_once_as_expected and projection and reconcilers


def count_duplicate_commands(messages: Sequence[Message], codec: Codec) -> tuple[int, int]:
    """(commands, duplicates): how many commands ``messages`` holds and how many of them repeat the
    idempotency key of an earlier one."""
    keys = Counter(codec.decode(msg.value(), KmsCommand).idempotency_key for msg in messages)
    return sum(keys.values()), sum(n - 1 for n in keys.values() if n > 1)


def cluster_table(reports: Sequence[ClusterReport]) -> str:
    """The cluster drills as ``docs/reliability.md`` shows them: the drill table plus the duplicate
    commands on ``kms.commands`` and the recovery time of each fault."""
    head = ("| case | size | events | lost | applied twice | DLQ | duplicate commands | recovery per fault "
            "| projectors, reconcilers | unplanned restarts | result |\n"
            "|---|---|---:|---:|---:|---:|---:|---|---|---:|---|\n")
    rows = []
    for r in reports:
        per_fault = "; ".join(f"{label} {seconds:.1f} s" for label, seconds in r.recoveries.items()) or "n/a"
        rows.append(f"| {r.case} | {r.size} | {r.events:,} | {r.lost} | {r.applied_twice} | {r.dlq} | "
                    f"{r.duplicate_commands} of {r.commands_on_topic:,} | {per_fault} | {replicas_summary(r)} | "
                    f"{r.unplanned_restarts} | {'pass' if r.passed else 'FAIL'} |")
    return head + "\n".join(rows) + "\n"


def replicas_summary(r: ClusterReport) -> str:
    """The projectors' and reconcilers' figures of one drill, as the cluster table's cell."""
    parts = []
    if r.projectors:
        parts.append(f"{r.projectors} projectors: {r.projection_behind} of {r.subscriptions:,} behind")
    if r.reconcilers:
        held = ", ".join(f"{name} {n}" for name, n in sorted(r.lease_held.items())) or "none"
        drift = "no report" if r.final_drift is None else f"{r.final_drift} of {r.final_checked:,}"
        parts.append(f"{r.reconcilers} reconcilers: {r.reconcile_runs} runs ({r.reconcile_unreported} unreported, "
                     f"{r.reconcile_lock_errors} lock errors), lease held in {sum(r.lease_held.values())} of "
                     f"{r.lease_samples} samples ({held}), final drift {drift}")
    return "; ".join(parts) or "none"


# --------------------------------------------------------------------------------------------------
# The reconcilers' lease and runs, the projection


def observer_engine(database_url: str) -> Engine:
    """An engine for the drill's own reads of the product's database (short connect timeout: the
    database may be down for a fault)."""
    connect_args = {"connect_timeout": 2} if database_url.startswith("postgresql") else {}
    return create_engine(database_url, pool_pre_ping=True, connect_args=connect_args)


class LeaseWatch(threading.Thread):
    """Samples the run lock's lease row every ``interval`` s: each sample of a held lease (row present,
    not expired) is counted for the reconciler whose process the owner names (``<host>:<pid>:<nonce>``),
    or as ``other`` when no running reconciler of the drill has that pid."""

    def __init__(self, database_url: str, running: Callable[[], dict[int, str]], interval: float = 0.1) -> None:
        super().__init__(name="lease-watch", daemon=True)
        self._engine = observer_engine(database_url)
        self._lock = RunLock(self._engine, owner="chaos-lease-watch")
        self._running = running
        self._interval = interval
        self._stopping = threading.Event()
        self.samples = 0
        self.unreadable = 0
        self.held: Counter[str] = Counter()
        self.others: set[str] = set()

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        try:
            row = self._lock.holder()
        except Exception:  # the database is down (a fault): nothing to read
            self.unreadable += 1
            return
        self.samples += 1
        if row is None or row[2] <= datetime.now(UTC):
            return
        owner = row[0]
        pid = owner.split(":")[1] if owner.count(":") >= 2 else ""
        name = self._running().get(int(pid)) if pid.isdigit() else None
        if name is None:
            self.others.add(owner)
        self.held[name or "other"] += 1

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(10)
        self._engine.dispose()


class ReconcileLoad(threading.Thread):
    """Keeps reset runs queued: a round of one request per partition of ``reconcile.requests`` (so every
    reconciler has some), over ``subscription_ids``; the next round once every report of this one is in
    (or after ``round_timeout`` s). Reports are read from ``reconcile.reports`` from its end at the start."""

    def __init__(self, pipeline: Pipeline, subscription_ids: Sequence[str], *, pause: float = 2.0,
                 round_timeout: float = 60.0) -> None:
        super().__init__(name="reconcile-load", daemon=True)
        settings = pipeline.settings
        self._codec = pipeline.codec
        self._requests = settings.topic("reconcile_requests")
        self._subscription_ids = list(subscription_ids)
        self._pause = pause
        self._round_timeout = round_timeout
        self._stopping = threading.Event()
        self._producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
        self._consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "enable.auto.commit": False,
                                   "group.id": f"chaos-reports-{uuid.uuid4().hex}"})
        reports = settings.topic("reconcile_reports")
        partitions = self._consumer.list_topics(reports, timeout=10).topics[reports].partitions
        start = []
        for p in partitions:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(reports, p), timeout=10)
            start.append(TopicPartition(reports, p, high))
        self._consumer.assign(start)
        meta = self._producer.list_topics(self._requests, timeout=10).topics[self._requests]
        self._request_partitions = sorted(meta.partitions)
        self.requested: list[str] = []
        self.reports: dict[str, ReconcileReport] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                round_ids = [self.request(self._subscription_ids, partition=p) for p in self._request_partitions]
                deadline = time.monotonic() + self._round_timeout
                while (not self._stopping.is_set() and time.monotonic() < deadline
                       and any(run_id not in self.reports for run_id in round_ids)):
                    self.read(0.2)
                self._stopping.wait(self._pause)
        except BaseException as exc:
            self.error = exc

    def request(self, subscription_ids: Sequence[str] = (), partition: int | None = None) -> str:
        """Produce a reset run over ``subscription_ids`` (all of the store when empty); its run id."""
        run_id = f"chaos-{uuid.uuid4().hex[:12]}"
        request = ReconcileRequest(run_id=run_id, subscription_ids=list(subscription_ids), requested_by="chaos-drill",
                                   requested_at=datetime.now(UTC))
        value = self._codec.encode(request, self._requests)
        if partition is None:
            self._producer.produce(self._requests, key=run_id.encode(), value=value)
        else:
            self._producer.produce(self._requests, key=run_id.encode(), value=value, partition=partition)
        while self._producer.flush(10) > 0:
            log.warning("reconcile request not delivered yet; flushing again")
        self.requested.append(run_id)
        return run_id

    def read(self, timeout: float) -> None:
        for msg in self._consumer.consume(100, timeout):
            if msg.error() is None and msg.value() is not None:
                report = self._codec.decode(msg.value(), ReconcileReport)
                self.reports[report.run_id] = report

    def wait_for(self, run_ids: Sequence[str], timeout: float) -> None:
        """Read reports until every one of ``run_ids`` has one, or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while any(r not in self.reports for r in run_ids) and time.monotonic() < deadline:
            self.read(0.5)

    def stop(self) -> None:
        """End the rounds (the thread stops using the clients; :meth:`wait_for` and :meth:`request` go on)."""
        self._stopping.set()
        if self.is_alive():
            self.join(self._round_timeout + 10)

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(10)


# --------------------------------------------------------------------------------------------------
# Processes


class ClusterSupervisor(Supervisor):
    """A :class:`Supervisor` that also starts :data:`PLAIN_TRANSLATOR` and can retire a replica."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(pipeline)
        self._pipe = pipeline

    def start(self, name: str, process: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if process != PLAIN_TRANSLATOR:
            return super().start(name, process, env)
        return self._start_plain(name, process, env)

    def running(self, prefix: str) -> dict[int, str]:
        """pid -> name of the running processes whose name starts with ``prefix``."""
        return {proc.pid: name for name, proc in list(self.procs.items())
                if name.startswith(prefix) and proc.poll() is None}

    def _start_plain(self, name: str, process: str, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        self._spec[name] = (process, dict(env or {}))
        self._starts[name] += 1
        log_file = open(self._pipe.workdir / f"{name}.{self._starts[name]}.log", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.cluster", PLAIN_TRANSLATOR],
                                env={**self._pipe.env(), **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log_file.close()
        self.procs[name] = proc
        return proc

    def retire(self, name: str, timeout: float) -> tuple[int | None, float]:
        """SIGTERM ``name`` and forget it (a replica scaled away: nobody restarts it)."""
        outcome = self.sigterm(name, timeout)
        self.procs.pop(name)
        return outcome


class ClusterDrill(Drill):
    """A drill on ``cluster`` with ``translators``, ``executors``, ``projectors`` and ``reconcilers``
    replicas; see the module docstring."""

    def __init__(self, case: str, size: ClusterSize, pipeline: Pipeline, sim: SimulatorHandle, audit_file: Path,
                 provider: ProviderConfig, *, cluster: LocalCluster, translators: int = 2, executors: int = 2,
                 projectors: int = 2, reconcilers: int = 2, transactions: bool = True,
                 database: RestartablePostgres | None = None) -> None:
        super().__init__(case, size, pipeline, sim, audit_file, provider, executors=executors)
        self.cluster = cluster
        self.cluster_size = size
        self.database = database
        self.translators = [f"translator-{i}" for i in range(translators)]
        self.projectors = [f"projector-{i}" for i in range(projectors)]
        self.reconcilers = [f"reconciler-{i}" for i in range(reconcilers)]
        self.settled: list[str] = []
        if reconcilers:
            self._settle_first(provider, SETTLED_HOUSEHOLDS)
        self.lease_watch: LeaseWatch | None = None
        self.load: ReconcileLoad | None = None
        self.translator_process = "translator" if transactions else PLAIN_TRANSLATOR
        self.transactions = transactions
        self.supervisor = ClusterSupervisor(pipeline)
        self.faults_scheduled: list[str] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-fault")
        self.grace = float(pipeline.env().get("KMSBRIDGE_SHUTDOWN_GRACE_SECONDS", "10"))

    def _settle_first(self, provider: ProviderConfig, households: int) -> None:
        """Put ``households`` subscriptions of one version each before the stream: the warm-up applies
        them, the stream never changes them, and the reset runs during the drill cover them."""
        settled = Stream(households, provider, self.topic, self.pipeline.codec, versions=1)
        stream = self.stream
        stream.items[:0] = settled.items
        stream.expected.update(settled.expected)
        stream.key_index = {k: i for i, item in enumerate(stream.items) for k in item.keys}
        self.progress = Progress(stream)
        self.warmup = len(settled.items)
        self.settled = [item.event.subscription_id for item in settled.items if item.event is not None]

    def run(self, faults: Sequence[Fault]) -> DrillReport:
        self.faults_scheduled = [label for _, label, _ in faults]
        try:
            return super().run(faults)
        finally:
            self._worker.shutdown(wait=True)
            self._stop_reconcile_load()
            if self.load is not None:
                self.load.close()

    def warmed_up(self) -> None:
        if not self.reconcilers:
            return
        assert isinstance(self.supervisor, ClusterSupervisor)
        supervisor = self.supervisor
        assert self.pipeline.database_url is not None
        self.lease_watch = LeaseWatch(self.pipeline.database_url, lambda: supervisor.running("reconciler-"))
        self.load = ReconcileLoad(self.pipeline, self.settled)
        self.lease_watch.start()
        self.load.start()

    def _stop_reconcile_load(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.lease_watch is not None:
            self.lease_watch.stop()

    def later(self, action: Callable[[], float]) -> Future[float]:
        """Run ``action`` (which returns its fault's end) in the background, after any earlier one: node
        and database starts take seconds, during which the drill keeps reading the ledger."""
        return self._worker.submit(action)

    def at(self, seconds: float) -> float:
        """``seconds`` into the stream, as the fraction a fault is scheduled at."""
        return seconds / self.size.duration

    # --- processes -----------------------------------------------------------------------------------

    def start_processes(self) -> None:
        for name in self.translators:
            self.supervisor.start(name, self.translator_process, {"POD_NAME": name})
        for name in self.executors:
            self.supervisor.start(name, "executor", {"POD_NAME": name})
        for name in self.projectors:
            self.supervisor.start(name, "projector", {"POD_NAME": name})
        for name in self.reconcilers:
            self.supervisor.start(name, "reconciler", {"POD_NAME": name})

    def add_replica(self, name: str, process: str) -> float:
        self.supervisor.start(name, self.translator_process if process == "translator" else process,
                              {"POD_NAME": name})
        return time.monotonic()

    def remove_replica(self, name: str) -> float:
        assert isinstance(self.supervisor, ClusterSupervisor)
        code, seconds = self.supervisor.retire(name, self.grace + 10)
        self.notes.append(f"{name} removed: exit {code} after {seconds:.1f} s")
        return time.monotonic()

    # --- nodes ---------------------------------------------------------------------------------------

    def commands_leader(self) -> int:
        return self.cluster.leader_of(self.pipeline.settings.topic("commands"), 0)

    def settle(self) -> None:
        """Wait until every node runs and no partition is under-replicated: each node fault starts on a
        healthy cluster, never on top of the previous one."""
        for i in range(len(self.cluster.nodes)):
            if not self.cluster.running(i):
                raise AssertionError(f"node {self.cluster.nodes[i].node_id} is down before the next fault")
        self.cluster.wait_in_sync()

    def start_stopped_nodes(self) -> float:
        for i in range(len(self.cluster.nodes)):
            if not self.cluster.running(i):
                self.cluster.start(i)
        return time.monotonic()

    def _down_then_back(self, start: float, down: float, labels: tuple[str, str], pick: Callable[[], int],
                        take_down: Callable[[int], None], why: str) -> list[Fault]:
        """A node taken down at ``start`` s into the stream and started again ``down`` s after that."""
        gone: list[tuple[int, float]] = []  # (index, when it went down)

        def fault() -> float:
            self.settle()
            index = pick()
            take_down(index)
            gone.append((index, time.monotonic()))
            self.notes.append(f"{labels[0]}: node {self.cluster.nodes[index].node_id} ({why})")
            return gone[0][1]

        def back() -> float:
            index, since = gone[0]
            time.sleep(max(0.0, since + down - time.monotonic()))  # the fault itself: the node stays down
            self.cluster.start(index)
            return time.monotonic()

        return [(self.at(start), labels[0], lambda d: self.later(fault)),
                (self.at(start + down), labels[1], lambda d: self.later(back))]

    def leader_kill(self, start: float, down: float) -> list[Fault]:
        """The leader of ``kms.commands``[0] killed (kill -9) and started again ``down`` s later."""
        return self._down_then_back(start, down, ("leader killed", "leader back"), self.commands_leader,
                                    self.cluster.kill, "leader of kms.commands[0], kill -9")

    def broker_stop(self, start: float, down: float) -> list[Fault]:
        """A broker that is neither the active controller nor the commands leader stopped (SIGTERM,
        controlled shutdown) for ``down`` s."""
        def pick() -> int:
            busy = {self.cluster.active_controller(), self.commands_leader()}
            return next((i for i in range(len(self.cluster.nodes)) if i not in busy), 0)

        return self._down_then_back(start, down, ("broker stopped", "broker back"), pick, self.cluster.stop,
                                    "SIGTERM")

    def voter_kill(self, start: float, down: float) -> list[Fault]:
        """The controller quorum loses its leader (kill -9 of the active controller) for ``down`` s; the
        note says how soon the two remaining voters elected another."""
        def kill(index: int) -> None:
            self.cluster.kill(index)
            t0 = time.monotonic()
            while True:
                with contextlib.suppress(BrokerError):
                    leader = self.cluster.active_controller()
                    if leader != index:
                        break
                if time.monotonic() > t0 + 30:
                    raise AssertionError("no new quorum leader within 30 s")
                time.sleep(0.1)
            self.notes.append(f"node {self.cluster.nodes[leader].node_id} leads the quorum "
                              f"{time.monotonic() - t0:.1f} s after the kill")

        return self._down_then_back(start, down, ("voter killed", "voter back"), self.cluster.active_controller,
                                    kill, "the active controller, kill -9")

    def rolling_restart(self, start: float) -> list[Fault]:
        """Every node restarted one after the other (SIGTERM, start, in sync), the active controller last."""
        rolled: list[int] = []

        def roll() -> float:
            self.settle()
            controller = self.cluster.active_controller()
            left = [i for i in range(len(self.cluster.nodes)) if i not in rolled]
            index = next((i for i in left if i != controller), left[0])
            t0 = time.monotonic()
            self.cluster.stop(index)
            self.cluster.start(index)
            waited = self.cluster.wait_in_sync()
            rolled.append(index)
            self.notes.append(f"roll {len(rolled)}: node {self.cluster.nodes[index].node_id} restarted in "
                              f"{time.monotonic() - t0:.1f} s, in sync {waited:.1f} s after its start")
            return time.monotonic()

        return [(self.at(start), f"roll {n}/{len(self.cluster.nodes)}", lambda d: self.later(roll))
                for n in range(1, len(self.cluster.nodes) + 1)]

    # --- replicas, the database, the translator ------------------------------------------------------

    def replicas_added_then_removed(self, start: float, stay: float) -> list[Fault]:
        """A third translator and a third executor join at ``start`` s and leave (SIGTERM) ``stay`` s later."""
        translator, executor = f"translator-{len(self.translators)}", f"executor-{len(self.executors)}"
        return [
            (self.at(start), f"{translator} added", lambda d: self.add_replica(translator, "translator")),
            (self.at(start + 1), f"{executor} added", lambda d: self.add_replica(executor, "executor")),
            (self.at(start + stay), f"{translator} removed", lambda d: self.remove_replica(translator)),
            (self.at(start + stay + 1), f"{executor} removed", lambda d: self.remove_replica(executor)),
        ]

    def database_restart(self, start: float, down: float) -> list[Fault]:
        """PostgreSQL stopped (fast shutdown) at ``start`` s and started again ``down`` s later."""
        database = self.database
        if database is None:
            raise ValueError("this drill has no RestartablePostgres (database=...)")
        stopped: list[float] = []

        def stop() -> float:
            stopped.append(database.stop())
            return stopped[0]

        def back() -> float:
            time.sleep(max(0.0, stopped[0] + down - time.monotonic()))  # the fault itself
            return database.start()

        return [(self.at(start), "database stopped", lambda d: self.later(stop)),
                (self.at(start + down), "database back", lambda d: self.later(back))]

    def translator_kills(self, starts: Sequence[float]) -> list[Fault]:
        """translator-0 killed (kill -9) and started again at each of ``starts`` s."""
        return [(self.at(at), f"translator-0 kill -9 #{n}", lambda d: self.kill_and_restart("translator-0"))
                for n, at in enumerate(starts, start=1)]

    # --- the report ----------------------------------------------------------------------------------

    def _report(self, began: float, recoveries: dict[str, float]) -> DrillReport:
        report = super()._report(began, recoveries)
        commands = read_all(self.pipeline.bootstrap, self.pipeline.settings.topic("commands"))
        total, duplicates = count_duplicate_commands(commands, codec=self.pipeline.codec)
        per_fault = "; ".join(f"{label} {seconds:.1f} s" for label, seconds in recoveries.items())
        self.notes.append(f"recovery per fault: {per_fault or 'n/a'}; duplicate commands on kms.commands "
                          f"(read_committed): {duplicates} of {total}")
        out = ClusterReport(**asdict(report), commands_on_topic=total, duplicate_commands=duplicates,
                            duplicates_expected=not self.transactions, recoveries=dict(recoveries),
                            projectors=len(self.projectors), reconcilers=len(self.reconcilers),
                            subscriptions=len(self.newest_versions()))
        if self.projectors or self.reconcilers:
            out.projection_behind = self.wait_for_projection()
        if self.reconcilers:
            self._reconcile_figures(out)
        return out

    # --- the projection and the reconcilers ----------------------------------------------------------

    def newest_versions(self) -> dict[str, int]:
        """subscription id -> the newest version the stream produced of it."""
        newest: dict[str, int] = {}
        for item in self.stream.items:
            if item.event is not None:
                newest[item.event.subscription_id] = max(newest.get(item.event.subscription_id, 0),
                                                         item.event.version)
        return newest

    def projection_behind(self, engine: Engine, newest: dict[str, int]) -> list[str]:
        """The stream's subscriptions the desired-state store holds at another version than the newest."""
        t = subscriptions_table
        with engine.connect() as conn:
            stored = {row[0]: row[1] for row in conn.execute(select(t.c.subscription_id, t.c.version))}
        return [sub for sub, version in newest.items() if stored.get(sub) != version]

    def wait_for_projection(self, timeout: float = 60.0) -> int:
        """Poll the store until it holds every subscription at its newest version (the projectors may
        still be catching up when the KMS has converged); how many are not, at the end."""
        assert self.pipeline.database_url is not None
        engine = observer_engine(self.pipeline.database_url)
        newest = self.newest_versions()
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.supervisor.check()
                behind = self.projection_behind(engine, newest)
                if not behind or time.monotonic() > deadline:
                    break
                time.sleep(1)
        finally:
            engine.dispose()
        self.notes.append(f"projection: {len(newest) - len(behind)} of {len(newest)} subscriptions at their newest "
                          f"version{'; behind: ' + ', '.join(behind[:5]) if behind else ''}")
        return len(behind)

    def _reconcile_figures(self, out: ClusterReport) -> None:
        load, watch = self.load, self.lease_watch
        assert load is not None and watch is not None
        self._stop_reconcile_load()
        if load.error is not None:
            raise RuntimeError("requesting reset runs failed") from load.error
        during = list(load.requested)
        load.wait_for(during, 60)
        reports = [load.reports[r] for r in during if r in load.reports]
        errors = [r.error for r in reports if r.error]
        lock_errors = [e for e in errors if e.startswith(("LockTimeout", "LeaseLost"))]
        out.reconcile_runs = len(during)
        out.reconcile_unreported = len(during) - len(reports)
        out.reconcile_lock_errors = len(lock_errors)
        out.reconcile_other_errors = len(errors) - len(lock_errors)
        out.lease_samples = watch.samples
        out.lease_held = {name: watch.held.get(name, 0) for name in self.reconcilers}
        if watch.held.get("other"):
            out.lease_held["other"] = watch.held["other"]
        final_id = load.request()
        load.wait_for([final_id], 120)
        final = load.reports.get(final_id)
        if final is not None:
            out.final_checked, out.final_drift, out.final_failed = final.checked, final.drifted, final.failed
        self.notes.append(
            f"reconcilers: {len(during)} reset runs during the drill, {len(reports)} reported, errors "
            f"{sorted(set(errors)) or 'none'}; lease row: {watch.samples} samples read ({watch.unreadable} "
            f"unreadable), held in {sum(watch.held.values())} ({dict(watch.held)}), holders not a running "
            f"reconciler: {sorted(watch.others) or 'none'}; final reset run: "
            + (f"checked {final.checked}, drifted {final.drifted}, failed {final.failed}, error {final.error}"
               if final is not None else "no report in 120 s"))


# --------------------------------------------------------------------------------------------------
# PostgreSQL that a drill may restart


class RestartablePostgres:
    """A throwaway PostgreSQL server (as :mod:`tests.support.pg` starts one) that can be stopped and
    started again on its data dir and port."""

    def __init__(self) -> None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (run `make system-deps`)")
        self._bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="kmsbridge-pg-drill-"))
        self._data = self.root / "data"
        self._log = self.root / "server.log"
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o755)
        self.port = free_port()
        _run([str(bin_dir / "initdb"), "-D", str(self._data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
              "--no-instructions"])
        self.url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        self.start()

    def _ctl(self, *args: str) -> None:
        _run([str(self._bin / "pg_ctl"), "-D", str(self._data), *args])

    def start(self) -> float:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._ctl("-l", str(self._log), "-o", options, "-w", "-t", "60", "start")
        return time.monotonic()

    def stop(self) -> float:
        """Fast shutdown: open sessions are ended, as a database failover or restart ends them."""
        self._ctl("-m", "fast", "-w", "stop")
        return time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The translator without its transaction (the control of the exactly-once count)


class PlainTranslator(TransactionalTranslator):
    """The translator's loop and handlers with the transaction taken out: outputs are produced and
    flushed, then the batch's offsets are stored for the consumer's auto-commit. At least once."""

    def _init_transactions(self) -> bool:
        return True

    def _process_batch(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self._process_one(msg)
        while self._producer.flush(10) > 0:
            log.warning("outputs not delivered yet; flushing again")
        self._consumer.store_offsets(offsets=positions_after(msgs))
        self.batches_committed += 1


def _run_plain_translator() -> None:
    from kmsbridge.cli.common import cli_settings
    from kmsbridge.wiring import build_translator

    settings = cli_settings()
    transactional = build_translator(settings)  # its handlers, codec and config; its clients are unused
    group = settings.group_id("translator")
    kafka = settings.kafka_config()
    consumer = make_consumer(consumer_config(kafka, group, instance_id=settings.instance_id("translator")))
    producer = make_producer(producer_config(kafka))
    translator = PlainTranslator(consumer, producer, transactional._codec, transactional._handlers,
                                 transactional._cfg)
    translator._dead_letters = DeadLetters(producer, PROCESS)
    transactional._consumer.close()
    signal.signal(signal.SIGTERM, lambda *_: translator.request_stop())
    log.warning("plain translator started: no transactions (a test-only control)")
    translator.run()


if __name__ == "__main__":
    if sys.argv[1:] != [PLAIN_TRANSLATOR]:
        sys.exit(f"usage: python -m tests.support.cluster {PLAIN_TRANSLATOR}")
    _run_plain_translator()
