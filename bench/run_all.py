"""``make bench``: every benchmark of issue 8 on one broker, each with its baseline and ratio.

Runs, in order: translator vs passthrough, executor vs N/L, end-to-end latency, projector (SQLite and
PostgreSQL), memory. Each prints its tables and writes ``bench/results/<name>.json``; plots go to
``docs/img/``; this script ends with the summary table (also ``bench/results/summary.json``).

One local Kafka broker (full JIT) is started for the whole suite unless
``KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS`` names one. ``--quick`` runs tiny sizes (the smoke test,
``tests/integration/test_bench_smoke.py``): the figures then only prove the scripts work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import machine, print_table, write_result

__all__ = ["main"]

BENCHMARKS = ("translator", "executor", "latency", "projector", "memory")
_BOOTSTRAP_ENV = "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"


@contextlib.contextmanager
def _shared_broker() -> Iterator[None]:
    """One broker for the whole suite (the benchmarks' own ``BenchEnv`` then uses it)."""
    if os.environ.get(_BOOTSTRAP_ENV):
        yield
        return
    from kmsbridge.local_broker import JVM_OPTS_ENV, start_broker, stop_broker

    os.environ.setdefault(JVM_OPTS_ENV, "-XX:TieredStopAtLevel=4")
    with tempfile.TemporaryDirectory(prefix="kmsbridge-bench-kafka-") as tmp:
        print("starting a local Kafka broker for the suite ...", flush=True)
        handle = start_broker(Path(tmp))
        os.environ[_BOOTSTRAP_ENV] = handle.bootstrap
        try:
            yield
        finally:
            del os.environ[_BOOTSTRAP_ENV]
            stop_broker(handle.pid)


def _plans(quick: bool, results_dir: Path | None, img_dir: Path | None,
           compare_tree: Path | None = None) -> dict[str, Callable[[], dict[str, Any]]]:
    from bench import executor, latency, memory, projector, translator

    return {
        "translator": lambda: translator.run(3000 if quick else 60_000, twin_share=0.3, profile=not quick,
                                             results_dir=results_dir,
                                             batch_sizes=(500,) if quick else (500, 5000),
                                             compare_tree=compare_tree),
        "executor": lambda: executor.run(executor.QUICK_GRID if quick else executor.FULL_GRID,
                                         seconds=0.5 if quick else 5.0, client_calls=300 if quick else 3000,
                                         results_dir=results_dir, img_dir=img_dir, profile=not quick,
                                         compare_tree=compare_tree),
        "latency": lambda: latency.run([100.0] if quick else [100.0, 250.0, 1000.0], seconds=2.0 if quick else 20.0,
                                       twin_share=0.3, results_dir=results_dir, img_dir=img_dir),
        "projector": lambda: projector.run(2000 if quick else 40_000, results_dir=results_dir),
        "memory": lambda: memory.run(1500 if quick else 40_000, twin_share=0.3, interval=0.2 if quick else 1.0,
                                     results_dir=results_dir, img_dir=img_dir),
    }


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per figure: what, measured, baseline, ratio, target, verdict."""
    rows: list[list[Any]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if "translator" in results:
        r = results["translator"]
        tr, pt = r["translator"], r["passthrough"]
        rows.append(["translator events/s", tr["events_per_second"], f"passthrough {pt['events_per_second']:,.0f}",
                     r["ratio"], ">= 40 %", verdict(r["met"]["ratio"])])
        rows.append(["translator events/s per process", tr["events_per_second"], "-", None, ">= 30,000",
                     verdict(r["met"]["events_per_second"])])
    if "executor" in results:
        r = results["executor"]
        sat = r["saturation"]
        rows.append(["executor CPU limit (L=0) cmds/s", sat["commands_per_second"],
                     f"client alone {r['client_alone']['lean']['calls_per_second']:,.0f} calls/s", None, "-", "-"])
        for p in r["points"]:
            rows.append([f"executor L={p['latency_ms']}ms N={p['n']} cmds/s", p["commands_per_second"],
                         f"N/L {p['little_bound']:,.0f}", p["ratio_to_little"],
                         ">= 80 % of min(N/L, CPU)", verdict(p["ratio_to_expected"] >= 0.8)])
        rows.append(["per-client order violations", r["order_violations"], "-", None, "0",
                     verdict(r["order_violations"] == 0)])
    if "latency" in results:
        r = results["latency"]
        hop = r["baseline_kafka_hop"]
        for run in r["runs"]:
            rows.append([f"latency p99 ms at {run['rate']:,.0f} ev/s", run["p99_ms"],
                         f"1 Kafka hop p99 {hop['p99_ms']:,.0f}", None,
                         "< 250 ms at 1,000/s" if run["rate"] == 1000 else "-",
                         verdict(run["p99_ms"] < 250) if run["rate"] == 1000 else "-"])
    if "projector" in results:
        for db, r in results["projector"]["databases"].items():
            if "skipped" in r:
                rows.append([f"projector {db} events/s", None, "-", None, "-", "skipped"])
                continue
            rows.append([f"projector {db} events/s", r["projector"]["events_per_second"],
                         f"store alone {r['store_only']['events_per_second']:,.0f}", r["ratio"], "-", "-"])
    if "memory" in results:
        for name, r in results["memory"]["processes"].items():
            rows.append([f"{name} peak RSS MB", r["peak_rss_mb"], f"{r['growth_mb_per_million']:+.1f} MB/M events",
                         None, "flat", verdict(r["flat"])])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: prove the scripts run (no figures)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)")
    parser.add_argument("--results-dir", type=Path, help="default bench/results")
    parser.add_argument("--img-dir", type=Path, help="default docs/img")
    parser.add_argument("--compare-tree", type=Path,
                        help="also run translator and executor from this source tree (before/after figures)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"machine: {machine()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    with _shared_broker():
        plans = _plans(args.quick, args.results_dir, args.img_dir, args.compare_tree)
        for name in args.only or BENCHMARKS:
            print(f"\n=== {name} ===", flush=True)
            try:
                results[name] = plans[name]()
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                failed.append(name)
                print(f"{name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    rows = summary_rows(results)
    print_table(f"Summary ({'quick, sizes too small for figures' if args.quick else 'make bench'}, "
                f"{time.monotonic() - started:.0f} s)", ["figure", "measured", "baseline", "ratio", "target",
                                                         "verdict"], rows)
    write_result("summary", {"quick": args.quick, "failed": failed, "seconds": time.monotonic() - started,
                             "rows": rows}, args.results_dir)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
