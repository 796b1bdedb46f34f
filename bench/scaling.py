"""Replicas on a three-node cluster: what 1, 2 and 3 translators and 1 and 2 executors do together.

Everything runs on a three-node KRaft cluster that this script starts (:func:`localdev.cluster.start_cluster`),
with the pipeline's topics at replication factor 3 and ``min.insync.replicas=2``
(:func:`tests.support.cluster.cluster_pipeline`), as production runs them. The baseline of each figure
is measured in the same run, on the same cluster:

1. **Translator, N = 1, 2, 3 replicas.** ``--events`` campaign events (:func:`bench.common.campaign_values`)
   are produced once to ``crm.subscriptions`` (``--partitions``, 6 by default as the product's topics).
   For each N, **N passthroughs** (:mod:`bench.translator`'s passthrough child: the translator's
   transactional loop with the work taken out, each its own transactional id) and then **N translators**
   (``kmsbridge run translator``, ``POD_NAME`` ``translator-<i>``) read the whole topic from the start in
   a fresh consumer group. The rate is the group's committed offsets per second from the first sample
   after the group is stable with N members and the input wholly assigned, to 90 % of the
   events (the joins and the tail left out); CPU per event is the replicas' own process CPU over the
   same window. The figure to read is the translator's rate over the passthrough's at the same N.
2. **Executor, N = 1, 2 replicas** (not with ``--no-executor``), at L = 0 against the simulator with
   ``MAX_INFLIGHT`` 64 (:mod:`bench.executor`'s saturation point), on one PostgreSQL ledger they share
   (SQLite and N = 1 only, when no PostgreSQL binaries are installed): once every replica holds
   partitions of ``kms.commands`` and has applied a warm-up command, a backlog of SYNC_ENTITLEMENTS
   commands is produced at once and its rate read from the simulator's audit (steady 10-90 % window);
   per-card order is checked on every card. The baseline is the SOAP client alone at L = 0 with 64
   calls in flight (:func:`bench.executor.client_baseline`), in the same run.

For each window the CPU of the cluster's three JVMs and the share of the machine's cores that were busy
are recorded too: on a machine where broker, replicas, simulator and database share few cores, that
share says whether another replica had a core to run on.

Command line::

    python -m bench.scaling [--events 120000] [--partitions 6] [--no-executor] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    ROOT,
    BenchEnv,
    GroupProgress,
    campaign_values,
    command_values,
    cpu_seconds,
    print_table,
    produce_values,
    steady_rate,
    write_result,
)
from bench.executor import SATURATION_N, _check_order, _wait_applied, _warm_up, client_baseline
from localdev.cluster import LocalCluster, start_cluster
from tests.support.cluster import cluster_pipeline
from tests.support.pipeline import Pipeline, terminate, wait_until
from tests.support.simulator import at_seconds

__all__ = ["ClusterBenchEnv", "main", "run"]

TRANSLATOR_REPLICAS = (1, 2, 3)
EXECUTOR_REPLICAS = (1, 2)
DEFAULT_EVENTS = 120_000
#: the smoke size: enough for a steady window after the joins at N = 1 and 2 (the figures mean nothing)
QUICK_EVENTS = 8_000
DEFAULT_COMMANDS = 12_000
QUICK_COMMANDS = 600
_BOOTSTRAP_ENV = "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"
_JVM_OPTS_ENV = "KMSBRIDGE_LOCAL_BROKER_JVM_OPTS"


# --- the environment: BenchEnv on a cluster -----------------------------------------------------------


class ClusterBenchEnv(BenchEnv):
    """:class:`~bench.common.BenchEnv` on a three-node cluster it starts and stops; its pipelines have
    replication factor 3 and ``min.insync.replicas=2``. ``KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS`` is not
    used: a single broker named there could not hold these topics."""

    def __init__(self, name: str, *, simulator: bool = True, keep: bool = False) -> None:
        super().__init__(name, simulator=simulator, keep=keep)
        self._cluster: LocalCluster | None = None

    @property
    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            raise RuntimeError("the cluster starts when the environment is entered")
        return self._cluster

    def __enter__(self) -> ClusterBenchEnv:
        named = os.environ.pop(_BOOTSTRAP_ENV, None)
        try:
            super().__enter__()
        finally:
            if named is not None:
                os.environ[_BOOTSTRAP_ENV] = named
        return self

    def _start_broker(self) -> str:
        os.environ.setdefault(_JVM_OPTS_ENV, "-XX:TieredStopAtLevel=4")  # the brokers' full JIT, as BenchEnv
        print(f"[{self.name}] starting a three-node Kafka cluster ...", flush=True)
        began = time.monotonic()
        self._cluster = start_cluster(self.workdir / "cluster")
        self._stack.callback(self._cluster.close)
        self.broker_started = True
        print(f"[{self.name}] cluster ready in {time.monotonic() - began:.0f} s: {self.cluster.bootstrap}", flush=True)
        return str(self.cluster.bootstrap)

    def pipeline(self, run: str, *, partitions: int = 6, database_url: str | None = None,
                 extra_env: dict[str, str] | None = None) -> Pipeline:
        sim = self.simulator if self._want_simulator else None
        pipe = cluster_pipeline(self.cluster, sim.url if sim else "http://127.0.0.1:9", sim.token if sim else "unused",
                                self.workdir / run, partitions=partitions, database_url=database_url)
        pipe.extra_env.update(extra_env or {})
        self._stack.callback(pipe.close)
        return pipe

    def broker_cpu_seconds(self) -> float:
        """CPU seconds of the cluster's JVMs so far."""
        return sum(cpu_seconds(node.pid) for node in self.cluster.nodes if node.pid)


class HostCpu:
    """The share of the machine's cores busy between two readings (every process, ours or not)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t), idle

    def busy_since_last(self) -> float:
        total, idle = self._read()
        d_total, d_idle = total - self._last[0], idle - self._last[1]
        self._last = (total, idle)
        return 1 - d_idle / d_total if d_total > 0 else float("nan")


# --- following N replicas ------------------------------------------------------------------------------


class ReplicasProgress(GroupProgress):
    """:class:`~bench.common.GroupProgress` whose CPU column is the sum over the N replicas' processes."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, pids: Sequence[int]) -> None:
        super().__init__(bootstrap, group, topic, partitions)
        self._pids = list(pids)

    def sample(self) -> int:
        done = self.committed()
        self.samples.append((time.monotonic(), done, sum(cpu_seconds(p) for p in self._pids)))
        return done


def stable_assignment(admin: Any, group: str, topic: str) -> list[int] | None:
    """Partitions of ``topic`` each member of ``group`` holds (most first), when the group is stable."""
    from confluent_kafka import ConsumerGroupState, KafkaException

    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
    except KafkaException:
        return None
    if description.state != ConsumerGroupState.STABLE:
        return None
    return sorted((sum(1 for tp in m.assignment.topic_partitions if tp.topic == topic) for m in description.members),
                  reverse=True)


def _measure_replicas(env: ClusterBenchEnv, procs: Sequence[subprocess.Popen[bytes]], group: str, topic: str,
                      partitions: int, total: int, timeout: float) -> dict[str, Any]:
    """Follow the group until ``total`` events are committed; the figures of its steady window."""
    from confluent_kafka.admin import AdminClient

    n = len(procs)
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    progress = ReplicasProgress(env.bootstrap, group, topic, partitions, [p.pid for p in procs])
    host = HostCpu()
    assignment: list[int] | None = None
    start: tuple[float, int, float, float] | None = None  # (t, committed, replicas CPU, brokers CPU)
    end: tuple[float, int, float, float] | None = None
    deadline = time.monotonic() + timeout
    busy = float("nan")
    try:
        while True:
            done = progress.sample()
            t, _, cpu = progress.samples[-1]
            if start is None:
                held = stable_assignment(admin, group, topic)
                # stable with every member in and the input wholly assigned; how evenly the assignor
                # spread the input over the members is recorded, not required (it balances all the
                # group's topics together, so a translator may hold none of crm.subscriptions)
                if held is not None and len(held) == n and sum(held) == partitions:
                    assignment = held
                    progress.sample()  # the window starts after the check, which took a moment
                    t, done, cpu = progress.samples[-1]
                    start = (t, done, cpu, env.broker_cpu_seconds())
                    host.busy_since_last()
            elif end is None and done >= total * 0.9:
                end = (t, done, cpu, env.broker_cpu_seconds())
                busy = host.busy_since_last()
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done:,} of {total:,} events committed after {timeout:.0f} s")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a replica under test exited")
            time.sleep(0.05)
    finally:
        progress.close()
    first = next(s for s in progress.samples if s[1] > 0)
    steady = start is not None and end is not None and end[1] - start[1] >= total * 0.2
    if not steady:
        # the group was stable too late for a steady window (too few events for this N): the whole run,
        # joins included, flagged so no table passes it off as a steady rate
        print(f"  no steady window with {n} replicas (stable at {start[1] if start else '-'} of {total:,} "
              f"events): whole-run figures; run with more --events", flush=True)
        last = progress.samples[-1]
        start, end = (*first, float("nan")), (*last, float("nan"))
    assert start is not None and end is not None
    events = end[1] - start[1]
    return {"replicas": n, "events_per_second": events / (end[0] - start[0]),
            "cpu_us_per_event": (end[2] - start[2]) / events * 1e6,
            "broker_cpu_us_per_event": (end[3] - start[3]) / events * 1e6,
            "host_busy_share": busy, "steady_window": steady, "window_events": events, "stable_after_events": start[1],
            "input_partitions_per_replica": assignment, "wall_seconds": progress.samples[-1][0] - first[0]}


def translator_scaling(env: ClusterBenchEnv, *, events: int, partitions: int, replicas: Sequence[int],
                       twin_share: float) -> list[dict[str, Any]]:
    """For each N: N passthroughs, then N translators, on the same pre-produced input."""
    pipe = env.pipeline("translators", partitions=partitions)
    topic_in = pipe.settings.topic("subscriptions")
    out_topic = pipe.settings.topic("results")  # any fresh topic of this run will do
    print(f"producing {events:,} events to {topic_in} ({partitions} partitions, RF 3) ...", flush=True)
    produce_values(env.bootstrap, topic_in, campaign_values(events, twin_share=twin_share, run=uuid.uuid4().hex[:8]))
    timeout = max(180.0, events / 300)
    rows: list[dict[str, Any]] = []
    for n in replicas:
        group = f"{pipe.prefix}passthrough-x{n}"
        print(f"{n} passthrough(s) ...", flush=True)
        procs = [env.adopt(subprocess.Popen(
            [sys.executable, "-m", "bench.translator", "--passthrough-child", env.bootstrap, topic_in, out_topic,
             group, f"{group}-tx-{i}", str(_product_batch())], cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)) for i in range(n)]
        rows.append({"loop": "passthrough", **_measure_replicas(env, procs, group, topic_in, partitions, events,
                                                                timeout)})
        for p in procs:
            terminate(p)
        prefix = f"{pipe.prefix}tr-x{n}"
        print(f"{n} translator(s) ...", flush=True)
        procs = [env.adopt(pipe.spawn("translator", log_name=f"translator-x{n}-{i}",
                                      env={"POD_NAME": f"translator-{i}", "KMSBRIDGE_GROUP_PREFIX": prefix}))
                 for i in range(n)]
        rows.append({"loop": "translator", **_measure_replicas(env, procs, f"{prefix}-translator", topic_in,
                                                               partitions, events, timeout)})
        for p in procs:
            terminate(p)
    return rows


def _product_batch() -> int:
    from kmsbridge.settings import TranslatorSettings

    return TranslatorSettings().batch_size


# --- executors -----------------------------------------------------------------------------------------


def executor_point(env: ClusterBenchEnv, n: int, *, commands: int, database_url: str | None) -> dict[str, Any]:
    """N executors at L = 0 sharing one ledger, on a backlog produced at once once all of them are ready."""
    from confluent_kafka.admin import AdminClient

    pipe = env.pipeline(f"executors-x{n}", database_url=database_url,
                        extra_env={"KMSBRIDGE_EXECUTOR__MAX_INFLIGHT": str(SATURATION_N)})
    topic = pipe.settings.topic("commands")
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(n):  # one at a time: the first one migrates the ledger's schema
        procs.append(env.adopt(pipe.spawn("executor", env={"POD_NAME": f"executor-{i}"}, log_name=f"executor-{i}")))
        _warm_up(env, topic)
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    group = pipe.settings.group_id("executor")

    def balanced() -> list[int] | None:
        held = stable_assignment(admin, group, topic)
        return held if held is not None and len(held) == n and min(held) > 0 else None

    assignment = wait_until(f"{n} executors holding partitions of {topic}", balanced, timeout=120, interval=0.2)
    _warm_up(env, topic)
    sim = env.simulator
    sim.set_latency(0)
    cards = 256
    per_card = max(2, math.ceil(commands / cards))
    run = uuid.uuid4().hex[:6]
    values = command_values(cards, per_card, run=run)
    tail = sim.tail_audit()
    host = HostCpu()
    cpu0, sim0, brokers0 = sum(cpu_seconds(p.pid) for p in procs), sim.cpu_seconds(), env.broker_cpu_seconds()
    print(f"{n} executor(s), L = 0: {len(values):,} commands ...", flush=True)
    produce_values(env.bootstrap, topic, values)
    entries = _wait_applied(tail, f"b:{run}:", len(values), timeout=max(300.0, len(values) / 20))
    total = len(values)
    cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    out = {"replicas": n, "commands": total, "commands_per_second": steady_rate([at_seconds(e) for e in entries]),
           "cpu_us_per_command": cpu / total * 1e6,
           "simulator_cpu_us_per_command": (sim.cpu_seconds() - sim0) / total * 1e6,
           "broker_cpu_us_per_command": (env.broker_cpu_seconds() - brokers0) / total * 1e6,
           "host_busy_share": host.busy_since_last(), "commands_partitions_per_replica": assignment,
           "order": _check_order(entries, per_card)}
    for p in procs:
        terminate(p)
    return out


def executor_scaling(env: ClusterBenchEnv, *, commands: int, replicas: Sequence[int],
                     client_calls: int) -> dict[str, Any]:
    from tests.support.pg import new_database, start_postgres

    print("SOAP client alone, L = 0, 64 in flight (baseline) ...", flush=True)
    client = client_baseline(env.simulator, client_calls)["lean"]
    pg = start_postgres()
    try:
        ledger = "postgresql" if pg is not None else "sqlite"
        ns = list(replicas) if pg is not None else [n for n in replicas if n == 1]
        points = [executor_point(env, n, commands=commands,
                                 database_url=new_database(pg.url, "scaling") if pg is not None else None)
                  for n in ns]
    finally:
        if pg is not None:
            pg.stop()
    return {"client_alone": client, "ledger": ledger, "points": points,
            **({} if pg is not None else {"note": "no PostgreSQL binaries: one executor on SQLite only"})}


# --- orchestration ------------------------------------------------------------------------------------


def _add_ratios(rows: list[dict[str, Any]], rate: str, baseline: Callable[[dict[str, Any]], float]) -> None:
    one = rows[0][rate]
    for r in rows:
        r["ratio_to_baseline"] = r[rate] / baseline(r)
        r["vs_one_replica"] = r[rate] / one
        r["per_replica_per_second"] = r[rate] / r["replicas"]


def run(*, events: int, partitions: int, commands: int, executor: bool, quick: bool, twin_share: float = 0.3,
        results_dir: Path | None = None) -> dict[str, Any]:
    replicas = TRANSLATOR_REPLICAS[:2] if quick else TRANSLATOR_REPLICAS
    with ClusterBenchEnv("scaling", simulator=executor) as env:
        loops = translator_scaling(env, events=events, partitions=partitions, replicas=replicas, twin_share=twin_share)
        executors = (executor_scaling(env, commands=commands, replicas=EXECUTOR_REPLICAS,
                                      client_calls=300 if quick else 3000) if executor else None)

    passthrough = {r["replicas"]: r for r in loops if r["loop"] == "passthrough"}
    translators = [r for r in loops if r["loop"] == "translator"]
    _add_ratios(list(passthrough.values()), "events_per_second", lambda r: r["events_per_second"])
    _add_ratios(translators, "events_per_second", lambda r: passthrough[r["replicas"]]["events_per_second"])
    if executors is not None:
        calls = executors["client_alone"]["calls_per_second"]
        _add_ratios(executors["points"], "commands_per_second", lambda r: calls)
    result: dict[str, Any] = {
        "command": "python -m bench.scaling"
                   + (" --quick" if quick else f" --events {events} --partitions {partitions} --commands {commands}")
                   + ("" if executor else " --no-executor"),
        "cluster": {"nodes": 3, "replication_factor": 3, "min_insync_replicas": 2},
        "events": events, "partitions": partitions, "twin_share": twin_share, "batch_size": _product_batch(),
        "passthrough": list(passthrough.values()), "translator": translators, "executor": executors,
    }
    path = write_result("scaling", result, results_dir)
    report(result)
    print(f"results in {path}")
    return result


def _held(row: dict[str, Any]) -> str:
    held = row["input_partitions_per_replica"]
    return ("/".join(map(str, held)) if held else "-") + ("" if row["steady_window"] else " (no steady window)")


def report(result: dict[str, Any]) -> None:
    pt = {r["replicas"]: r for r in result["passthrough"]}
    print_table(f"Translator replicas on the 3-node cluster ({result['events']:,} events, {result['partitions']} "
                f"partitions, RF 3, batch {result['batch_size']}); baseline: N passthroughs in the same run",
                ["N", "passthrough events/s (baseline)", "translator events/s", "vs passthrough", "vs N=1",
                 "per replica events/s", "CPU us/event", "broker CPU us/event", "cores busy", "partitions/replica"],
                [[r["replicas"], pt[r["replicas"]]["events_per_second"], r["events_per_second"],
                  r["ratio_to_baseline"], r["vs_one_replica"], r["per_replica_per_second"], r["cpu_us_per_event"],
                  r["broker_cpu_us_per_event"], f"{r['host_busy_share']:.0%}",
                  _held(r)] for r in result["translator"]])
    print_table("Passthrough replicas (the baseline)",
                ["N", "events/s", "vs N=1", "CPU us/event", "broker CPU us/event", "cores busy"],
                [[r["replicas"], r["events_per_second"], r["vs_one_replica"], r["cpu_us_per_event"],
                  r["broker_cpu_us_per_event"], f"{r['host_busy_share']:.0%}"] for r in result["passthrough"]])
    ex = result.get("executor")
    if ex:
        client = ex["client_alone"]
        print_table(f"Executor replicas at L = 0, MAX_INFLIGHT {SATURATION_N}, {ex['ledger']} ledger; baseline: the "
                    f"SOAP client alone {client['calls_per_second']:,.0f} calls/s",
                    ["N", "commands/s", "vs client alone", "vs N=1", "per replica commands/s", "CPU us/command",
                     "simulator CPU us/command", "broker CPU us/command", "cores busy", "cards out of order"],
                    [[p["replicas"], p["commands_per_second"], p["ratio_to_baseline"], p["vs_one_replica"],
                      p["per_replica_per_second"], p["cpu_us_per_command"], p["simulator_cpu_us_per_command"],
                      p["broker_cpu_us_per_command"], f"{p['host_busy_share']:.0%}",
                      f"{p['order']['cards_out_of_order']}/{p['order']['cards_checked']}"] for p in ex["points"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--partitions", type=int, default=6, help="partitions of every topic (the product's default 6)")
    parser.add_argument("--commands", type=int, default=DEFAULT_COMMANDS, help="backlog of each executor point")
    parser.add_argument("--no-executor", action="store_true", help="only the translator and passthrough replicas")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, N = 1 and 2: proves the script runs")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    if args.partitions < max(TRANSLATOR_REPLICAS):
        parser.error(f"--partitions must be at least {max(TRANSLATOR_REPLICAS)}: a replica beyond them is idle")
    run(events=QUICK_EVENTS if args.quick else args.events, partitions=args.partitions,
        commands=QUICK_COMMANDS if args.quick else args.commands, executor=not args.no_executor, quick=args.quick,
        results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
