"""Executor vs the concurrency limit: commands/s of ``kmsbridge run executor`` against N / L.

With the simulator answering after L ms and at most N KMS calls in flight
(``KMSBRIDGE_EXECUTOR__MAX_INFLIGHT=N``), Little's law bounds the executor at N / L commands per
second; the CPU bounds it too. For each N one executor process runs (as a user runs it: subprocess,
SQLite ledger, real Kafka, SOAP over HTTP to the simulator in its own process); for each L of the
grid the simulator's latency is set, a batch of SYNC_ENTITLEMENTS commands is produced and the rate is
read from the simulator's audit (``at`` of every applied call, steady 10-90 % window).

Baselines measured in the same run:

- **the SOAP client alone at the same N and L** (no Kafka, no ledger), before each point: what the
  KMS path itself allows, since each call costs L plus the HTTP round trip and the simulator's own
  work (Little's law with L alone overstates the bound at small L);

- **CPU limit of the client**: ``SoapKmsClient.execute`` alone (no Kafka, no ledger) at L = 0,
  64 in flight: calls per CPU-second of this process (``python -m bench.kms_http`` compares HTTP
  clients in one run);
- **CPU limit of the executor**: the executor at L = 0 with N = 64: commands/s and CPU per command;
  the grid's ratio is reported against N / L and against min(N / L, that limit).

Per-secure-client order is verified in the same runs: every card gets several commands, produced in
rounds with increasing ``subscription_version``; the audit's ``seq`` order per card must equal that
order (checked for every card of every run).

Target: at least 80 % of N / L until the CPU is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    BenchEnv,
    command_values,
    cpu_seconds,
    print_table,
    produce_values,
    steady_rate,
    write_result,
)
from tests.support.pipeline import terminate
from tests.support.simulator import AuditTail, SimulatorProcess, at_seconds

__all__ = ["main"]

TARGET_RATIO = 0.80
#: (L ms, N) points of the full grid; L = 0 with the largest N is the saturation run.
FULL_GRID: dict[int, list[int]] = {5: [1, 2, 4, 8, 16], 20: [4, 8, 16, 32], 100: [16, 32, 64, 128]}
QUICK_GRID: dict[int, list[int]] = {5: [2], 20: [4], 100: [8]}
SATURATION_N = 64


# --- the client alone ---------------------------------------------------------------------------------


async def _client_calls(sim: SimulatorProcess, *, concurrency: int, calls: int) -> dict[str, float]:
    from kms_adapter.soap_client import SoapKmsClient
    from schemas.records import KmsCommand, Operation, Product, Source

    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    commands = [KmsCommand(idempotency_key=f"cb:{run}:{i}", operation=Operation.SYNC_ENTITLEMENTS,
                           secure_client_id=f"CB{i % 500}", products=[Product(product_id="P100", valid_from=now),
                                                                      Product(product_id="P200")],
                           source=Source(process_name="bench"), created_at=now) for i in range(calls)]
    async with SoapKmsClient(sim.endpoint, "ALUX", sim.token, max_connections=concurrency) as client:
        await client.ping()
        pending = iter(commands)

        async def worker() -> None:
            for command in pending:
                await client.execute(command)

        sim_cpu, wall, cpu = sim.cpu_seconds(), time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sim_cpu = sim.cpu_seconds() - sim_cpu
    return {"calls_per_second": calls / wall, "client_cpu_us_per_call": cpu / calls * 1e6,
            "client_calls_per_cpu_second": calls / cpu, "simulator_cpu_us_per_call": sim_cpu / calls * 1e6}


def client_baseline(sim: SimulatorProcess, calls: int) -> dict[str, dict[str, float]]:
    sim.set_latency(0)
    out = {"lean": asyncio.run(_client_calls(sim, concurrency=64, calls=calls))}
    sim.reset()
    return out


# --- one point of the grid ----------------------------------------------------------------------------


def _run_point(env: BenchEnv, topic: str, executor_pid: int, *, n: int, latency_ms: int, count: int,
               timeout: float) -> dict[str, Any]:
    sim = env.simulator
    sim.set_latency(latency_ms)
    # the physical baseline of this point: the SOAP client alone (no Kafka, no ledger) at the same N and L
    expected = n / (latency_ms / 1000) if latency_ms else 2000.0
    alone = asyncio.run(_client_calls(sim, concurrency=n,
                                      calls=int(min(max(expected * 2, 4 * n, 50), 3000))))
    cards = max(4 * n, 64)
    per_card = max(2, math.ceil(count / cards))
    run = uuid.uuid4().hex[:6]
    values = command_values(cards, per_card, run=run)
    total = len(values)
    tail = sim.tail_audit()
    cpu0 = cpu_seconds(executor_pid)
    produce_values(env.bootstrap, topic, values)
    entries = _wait_applied(tail, f"b:{run}:", total, timeout)
    cpu = cpu_seconds(executor_pid) - cpu0
    rate = steady_rate([at_seconds(e) for e in entries])
    bound = n / (latency_ms / 1000) if latency_ms else float("inf")
    return {"n": n, "latency_ms": latency_ms, "commands": total, "cards": cards, "commands_per_card": per_card,
            "commands_per_second": rate, "little_bound": bound if latency_ms else None,
            "ratio_to_little": rate / bound if latency_ms else None,
            "client_alone_calls_per_second": alone["calls_per_second"],
            "ratio_to_client_alone": rate / alone["calls_per_second"],
            "executor_cpu_us_per_command": cpu / total * 1e6, "order": _check_order(entries, per_card)}


def _wait_applied(tail: AuditTail, prefix: str, total: int, timeout: float) -> list[dict[str, Any]]:
    """Audit entries of this run's keys until every key was applied once (duplicates kept out)."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(seen):,} of {total:,} commands applied after {timeout:.0f} s")
        for entry in tail.poll():
            key = str(entry["idempotency_key"])
            if key.startswith(prefix) and not entry["duplicate"] and key not in seen:
                seen.add(key)
                entries.append(entry)
        time.sleep(0.05)
    return entries


def _check_order(entries: list[dict[str, Any]], per_card: int) -> dict[str, int]:
    """Cards whose commands the KMS applied out of produced order (must be 0), and cards checked."""
    by_card: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in entries:
        _b, _run, card, j = str(e["idempotency_key"]).split(":")
        by_card[card].append((int(e["seq"]), int(j)))
    out_of_order = sum(1 for seq_j in by_card.values() if [j for _, j in sorted(seq_j)] != list(range(per_card)))
    return {"cards_checked": len(by_card), "cards_out_of_order": out_of_order}


def _warm_up(env: BenchEnv, topic: str) -> None:
    """A few commands at L = 0 until applied: the executor has joined its group and connected."""
    env.simulator.set_latency(0)
    run = uuid.uuid4().hex[:6]
    tail = env.simulator.tail_audit()
    values = command_values(16, 1, run=run)
    produce_values(env.bootstrap, topic, values)
    _wait_applied(tail, f"b:{run}:", len(values), 120)


# --- profile ------------------------------------------------------------------------------------------

#: (label, file suffix or "~" for C functions, function names) of the executor's stages in a cProfile.
_PROFILE_ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("KMS call (SoapKmsClient.execute)", "kms_adapter/soap_client.py", ("execute",)),
    ("ledger.lookup (dedup and stale-guard reads)", "consumers/ledger.py", ("lookup",)),
    ("ledger.record_many (group commit: upserts + commit)", "consumers/ledger.py", ("record_many",)),
    ("decode command (Codec.decode)", "schemas/codec.py", ("decode",)),
    ("encode result (Codec.encode)", "schemas/codec.py", ("encode",)),
    ("KmsResult construction (_result)", "consumers/command_runner.py", ("_result",)),
    ("produce (Producer.produce)", "~", ("<method 'produce' of 'cimpl.Producer' objects>",)),
    ("poll (Producer.poll)", "~", ("<method 'poll' of 'cimpl.Producer' objects>",)),
    ("store offsets (_store_offsets)", "consumers/executor.py", ("_store_offsets",)),
    ("metrics (prometheus_client)", "prometheus_client/metrics.py", ("inc", "observe", "labels", "set")),
    ("event loop select (idle wait)", "selectors.py", ("select",)),
]


#: The executor under cProfile, profiling only between SIGUSR1 (start) and SIGUSR2 (stop, write the
#: stats to ``argv[1]``): the measured commands, without start-up, imports, group join and warm-up.
_PROFILED_EXECUTOR = """
import cProfile, os, runpy, signal, sys
out, profiler = sys.argv[1], cProfile.Profile()
def stop(*_):
    profiler.disable()
    profiler.dump_stats(out + ".part")
    os.replace(out + ".part", out)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["kmsbridge", "run", "executor"]
runpy.run_module("kmsbridge.cli", run_name="__main__")
"""


def profile_executor(env: BenchEnv, commands: int, n: int = SATURATION_N, keep: Path | None = None,
                     tree: Path | None = None) -> dict[str, Any]:
    """An executor (from ``tree``, default this one) under cProfile at L = 0, profiled while it runs
    the measured commands only: where a command's CPU goes, and how many ledger reads went to the
    database one command at a time."""
    import pstats
    import signal

    from bench.common import ROOT

    extra = {"KMSBRIDGE_EXECUTOR__MAX_INFLIGHT": str(n), **({"PYTHONPATH": str(tree)} if tree else {})}
    pipe = env.pipeline("profiled-before" if tree else "profiled", extra_env=extra)
    topic = pipe.settings.topic("commands")
    prof_path = pipe.workdir / "executor.prof"
    proc = env.adopt(subprocess.Popen(
        [sys.executable, "-c", _PROFILED_EXECUTOR, str(prof_path)], env=pipe.env(), cwd=tree or ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
    _warm_up(env, topic)
    proc.send_signal(signal.SIGUSR1)
    point = _run_point(env, topic, proc.pid, n=n, latency_ms=0, count=commands, timeout=600)
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 60
    while not prof_path.exists() and time.monotonic() < deadline:  # written whole, then renamed
        time.sleep(0.1)
    terminate(proc, 60)
    stats = pstats.Stats(str(prof_path))
    if keep is not None:
        stats.dump_stats(str(keep))
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values())

    rows: dict[str, dict[str, float]] = {}
    for label, file_suffix, names in _PROFILE_ROWS:
        hits = [v for (file, _line, name), v in table.items()
                if name in names and (file == "~" if file_suffix == "~" else file.endswith(file_suffix))]
        cum = sum(v[3] for v in hits)
        rows[label] = {"seconds": round(cum, 3), "us_per_command": round(cum / point["commands"] * 1e6, 1),
                       "share": round(cum / total, 3) if total else float("nan")}
    reads = _ledger_reads(table, point["commands"])
    top = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    return {"commands": point["commands"], "commands_per_second_under_cprofile": point["commands_per_second"],
            "profiled_seconds": round(total, 2), "stages": rows, "ledger_reads": reads,
            "top_self_time": [{"function": f"{k[0].rsplit('site-packages/', 1)[-1]}:{k[1]}:{k[2]}",
                               "self_seconds": round(v[2], 3), "calls": v[1]} for k, v in top]}


def _ledger_reads(table: dict[tuple[str, int, str], Any], commands: int) -> dict[str, int]:
    """Ledger reads in the profile: the batch reads (``lookup_many``, ``origins_of``) and the single
    reads (``Ledger.lookup``, ``Ledger.origin``: a command no batch read answered)."""
    batch_reads = sum(v[1] for (file, _line, name), v in table.items()
                      if file.endswith("consumers/ledger.py") and name == "lookup_many")
    # ReadAhead and Ledger both define lookup and origin: tell them apart by line (Ledger comes later)
    by_line: dict[str, list[tuple[int, int]]] = {}
    for (file, line, name), v in table.items():
        if file.endswith("consumers/ledger.py") and name in ("lookup", "origin"):
            by_line.setdefault(name, []).append((line, v[1]))
    single = {name: sorted(rows)[-1][1] if len(rows) > 1 else 0 for name, rows in by_line.items()}
    return {"commands": commands, "batch_reads": batch_reads,
            "single_lookups": single.get("lookup", 0), "single_origin_reads": single.get("origin", 0)}


def _executor_from(env: BenchEnv, tree: Path | None, name: str, n: int) -> tuple[Any, str]:
    """An executor process (from ``tree``, default this one) with N = ``n`` on fresh topics, warm."""
    from bench.common import ROOT

    extra = {"KMSBRIDGE_EXECUTOR__MAX_INFLIGHT": str(n), **({"PYTHONPATH": str(tree)} if tree else {})}
    pipe = env.pipeline(name, extra_env=extra)
    topic = pipe.settings.topic("commands")
    proc = env.adopt(subprocess.Popen([sys.executable, "-m", "kmsbridge.cli", "run", "executor"],
                                      env=pipe.env(), cwd=tree or ROOT, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    _warm_up(env, topic)
    return proc, topic


def _compare_rounds(env: BenchEnv, tree: Path, *, n: int, count: int, rounds: int) -> list[dict[str, Any]]:
    """The saturation point (L = 0) of the executor from ``tree`` and of this one, both running, measured
    in turn ``rounds`` times (which goes first alternates)."""
    env.simulator.set_latency(0)
    procs = {"before": _executor_from(env, tree, "before", n), "this": _executor_from(env, None, "this", n)}
    out: list[dict[str, Any]] = []
    for r in range(rounds):
        row: dict[str, Any] = {}
        for name in (("before", "this") if r % 2 == 0 else ("this", "before")):
            proc, topic = procs[name]
            print(f"round {r + 1}/{rounds}: executor {name} N={n} L=0 (saturation) ...", flush=True)
            row[name] = _run_point(env, topic, proc.pid, n=n, latency_ms=0, count=count, timeout=600)
        out.append(row)
    for proc, _topic in procs.values():
        terminate(proc)
    return out


def _median_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point of median CPU per command (its own figures, so rate and CPU stay one run's)."""
    ranked = sorted(points, key=lambda p: p["executor_cpu_us_per_command"])
    return ranked[(len(ranked) - 1) // 2]


# --- orchestration ------------------------------------------------------------------------------------


def run(grid: dict[int, list[int]], *, seconds: float, client_calls: int, results_dir: Path | None,
        img_dir: Path | None, compare_tree: Path | None = None, compare_rounds: int = 3,
        profile: bool = False) -> dict[str, Any]:
    grid_ns = {n for points in grid.values() for n in points}
    sat_n = SATURATION_N if seconds > 1 else max(grid_ns)  # quick: no extra executor for saturation
    ns = [sat_n, *sorted(grid_ns - {sat_n})]  # saturation first: its rate sizes the other points
    points: list[dict[str, Any]] = []
    with BenchEnv("executor") as env:
        print("client alone (CPU limit of the SOAP client) ...", flush=True)
        client = client_baseline(env.simulator, client_calls)
        saturation: dict[str, Any] | None = None
        cap_guess = 500.0
        for n in ns:
            pipe = env.pipeline(f"n{n}", extra_env={"KMSBRIDGE_EXECUTOR__MAX_INFLIGHT": str(n)})
            topic = pipe.settings.topic("commands")
            proc = env.adopt(pipe.spawn("executor"))
            _warm_up(env, topic)
            if n == sat_n:
                print(f"executor N={n} L=0 (saturation) ...", flush=True)
                saturation = _run_point(env, topic, proc.pid, n=n, latency_ms=0, count=int(cap_guess * seconds * 2),
                                        timeout=600)
                cap_guess = saturation["commands_per_second"]
            for latency, members in sorted(grid.items()):
                if n not in members:
                    continue
                expected = min(n / (latency / 1000), cap_guess)
                count = int(min(max(expected * seconds, 120), 8000))
                print(f"executor N={n} L={latency} ms: {count} commands ...", flush=True)
                points.append(_run_point(env, topic, proc.pid, n=n, latency_ms=latency, count=count,
                                         timeout=max(120, 10 * count / max(expected, 1))))
            terminate(proc)
        before: dict[str, Any] | None = None
        rounds: list[dict[str, Any]] = []
        if compare_tree is not None:
            # the saturation point with the executor from another source tree and from this one, in
            # alternating rounds (the machine's load moves; a round compares the two under one load)
            rounds = _compare_rounds(env, compare_tree, n=sat_n, count=int(cap_guess * seconds),
                                     rounds=compare_rounds)
            before = _median_point([r["before"] for r in rounds])
            saturation = _median_point([r["this"] for r in rounds])
        prof = prof_before = None
        if profile:
            print(f"profiled executor N={SATURATION_N} L=0 ...", flush=True)
            prof = profile_executor(env, 3000, keep=None if results_dir is None else results_dir / "executor.prof")
            if compare_tree is not None:
                print(f"profiled executor from {compare_tree} N={SATURATION_N} L=0 (before) ...", flush=True)
                prof_before = profile_executor(env, 3000, tree=compare_tree, keep=None if results_dir is None
                                               else results_dir / "executor-before.prof")
    assert saturation is not None
    cap = saturation["commands_per_second"]
    for p in points:
        p["expected"] = min(p["little_bound"], cap)
        p["ratio_to_expected"] = p["commands_per_second"] / p["expected"]
        p["cpu_bound"] = p["little_bound"] > cap
    ok = [p["ratio_to_expected"] >= TARGET_RATIO for p in points]
    result: dict[str, Any] = {
        "command": "python -m bench.executor" + ("" if seconds > 1 else " --quick")
                   + ("" if grid else " --saturation-only")
                   + (f" --compare-tree {compare_tree}" if compare_tree else ""),
        "client_alone": client, "saturation": saturation, "saturation_before": before,
        "compare_rounds": rounds, "points": points,
        "profile": prof, "profile_before": prof_before,
        "order_violations": sum(p["order"]["cards_out_of_order"] for p in [*points, saturation]),
        "target_ratio": TARGET_RATIO, "met": all(ok),
    }
    path = write_result("executor", result, results_dir)
    report(result)
    from bench.plots import plot_executor

    print(f"plot: {plot_executor(result, img_dir)}")
    print(f"results in {path}")
    return result


def report(result: dict[str, Any]) -> None:
    client = result["client_alone"]
    print_table("SOAP client alone, L = 0, 64 in flight (the CPU limit of the client)",
                ["path", "calls/s", "client CPU us/call", "calls per CPU-second", "simulator CPU us/call"],
                [[name, c["calls_per_second"], c["client_cpu_us_per_call"], c["client_calls_per_cpu_second"],
                  c["simulator_cpu_us_per_call"]] for name, c in client.items()])
    sat = result["saturation"]
    rows = [["this tree", sat["n"], sat["commands_per_second"], sat["executor_cpu_us_per_command"],
             1e6 / sat["executor_cpu_us_per_command"]]]
    before = result.get("saturation_before")
    if before:
        rows.insert(0, ["before (--compare-tree)", before["n"], before["commands_per_second"],
                        before["executor_cpu_us_per_command"], 1e6 / before["executor_cpu_us_per_command"]])
    print_table("Executor CPU limit (L = 0)" + (" (median round)" if result.get("compare_rounds") else ""),
                ["executor", "N", "commands/s", "executor CPU us/command", "commands per CPU-second"], rows)
    if result.get("compare_rounds"):
        print_table("Executor CPU limit, each round (before / this tree)",
                    ["round", "before commands/s", "before CPU us/command", "this commands/s", "this CPU us/command"],
                    [[i + 1, r["before"]["commands_per_second"], r["before"]["executor_cpu_us_per_command"],
                      r["this"]["commands_per_second"], r["this"]["executor_cpu_us_per_command"]]
                     for i, r in enumerate(result["compare_rounds"])])
    rows = []
    for p in result["points"]:
        rows.append([p["latency_ms"], p["n"], p["little_bound"], p["commands_per_second"], p["ratio_to_little"],
                     p["ratio_to_expected"], "CPU" if p["cpu_bound"] else "N/L", p["client_alone_calls_per_second"],
                     p["ratio_to_client_alone"], p["executor_cpu_us_per_command"],
                     f"{p['order']['cards_out_of_order']}/{p['order']['cards_checked']}"])
    for name, title in (("profile_before", "before (--compare-tree)"), ("profile", "this tree")):
        prof = result.get(name)
        if not prof:
            continue
        print_table(f"Profile of the executor at L = 0, {title} (cProfile, {prof['commands']:,} commands)",
                    ["stage", "us/command", "share of process time"],
                    [[k, v["us_per_command"], f"{v['share']:.1%}"] for k, v in prof["stages"].items()])
        reads = prof["ledger_reads"]
        print(f"ledger reads: {reads['batch_reads']:,} batch reads, {reads['single_lookups']:,} single lookups and "
              f"{reads['single_origin_reads']:,} single origin reads for {reads['commands']:,} commands")
    print_table(f"Executor vs N/L (target >= {TARGET_RATIO:.0%} of min(N/L, CPU limit)): "
                + ("met" if result["met"] else "NOT met"),
                ["L ms", "N", "N/L /s", "commands/s", "vs N/L", "vs min(N/L,CPU)", "bound",
                 "client alone /s", "vs client alone", "CPU us/cmd", "cards out of order"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--seconds", type=float, default=5.0, help="target duration of each grid point")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--img-dir", type=Path)
    parser.add_argument("--profile", action="store_true", help="also profile an executor at L = 0 (cProfile)")
    parser.add_argument("--compare-tree", type=Path,
                        help="also run the saturation point with the executor from this source tree (before/after)")
    parser.add_argument("--compare-rounds", type=int, default=3,
                        help="rounds of the before/after saturation comparison (alternating; medians)")
    parser.add_argument("--saturation-only", action="store_true",
                        help="only the CPU limit (L = 0, N = 64) and the client alone, no N/L grid")
    args = parser.parse_args(argv)
    grid = {} if args.saturation_only else QUICK_GRID if args.quick else FULL_GRID
    seconds = 0.5 if args.quick else args.seconds
    run(grid, seconds=seconds, client_calls=300 if args.quick else 3000, results_dir=args.results_dir,
        img_dir=args.img_dir, compare_tree=args.compare_tree, compare_rounds=args.compare_rounds,
        profile=args.profile)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
