"""``make bench``: every benchmark on one broker, each with its baseline and ratio.

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

BENCHMARKS = ("translator", "executor", "latency", "projector", "memory", "traffic")
_BOOTSTRAP_ENV = "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"


@contextlib.contextmanager
def _shared_broker() -> Iterator[None]:
    """One broker for the whole suite (the benchmarks' own ``BenchEnv`` then uses it)."""
    if os.environ.get(_BOOTSTRAP_ENV):
        yield
        return
    from localdev.local_broker import JVM_OPTS_ENV, start_broker, stop_broker

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
    from bench import executor, latency, memory, projector, traffic, translator

    return {
        "translator": lambda: translator.run(translator.QUICK_EVENTS if quick else 60_000, twin_share=0.3,
                                             profile=not quick,
                                             results_dir=results_dir,
                                             batch_sizes=(500,) if quick else (translator.PRODUCT_BATCH,
                                                                               translator.OTHER_BATCH),
                                             compare_tree=compare_tree),
        "executor": lambda: executor.run(executor.QUICK_GRID if quick else executor.FULL_GRID,
                                         seconds=0.5 if quick else 5.0, client_calls=300 if quick else 3000,
                                         results_dir=results_dir, img_dir=img_dir, profile=not quick,
                                         compare_tree=compare_tree),
        "latency": lambda: latency.run([100.0] if quick else [100.0, 250.0, 1000.0], seconds=2.0 if quick else 20.0,
                                       twin_share=0.3, results_dir=results_dir, img_dir=img_dir),
        "projector": lambda: projector.run(2000 if quick else 40_000, results_dir=results_dir),
        "traffic": lambda: traffic.run(quick=quick, backlog=50_000, results_dir=results_dir),  # 200,000: 10 min more
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
    if "traffic" in results:
        r = results["traffic"]
        ag = r["agents"]
        rows.append([f"agent request p99 s, backlog {ag[0]['backlog']:,}", ag[0]["p99_s"],
                     f"express lane off p99 {ag[1]['p99_s']:,.1f}" if len(ag) > 1 else "-", None, "< 2 s",
                     verdict(r["met"]["agent_p99"])])
        for c in r["catch_up"][:2]:
            rows.append([f"catch-up KMS calls/box (max_buffered {c['max_buffered']:,})", c["calls_per_box"],
                         f"replay every version {r['catch_up'][2]['catch_up_seconds']:,.1f} s",
                         c["vs_replaying_every_version"], "<= 1.05", verdict(c["calls_per_box"] <= 1.05)])
        for h in r["limits"]:
            rows.append([f"KMS calls/s at limit {h['limit_per_second']:,.0f}", h["steady_calls_per_second"],
                         f"limit {h['limit_per_second']:,.0f}", None, "within 5 %", verdict(h["met"])])
    if "memory" in results:
        for name, r in results["memory"]["processes"].items():
            rows.append([f"{name} peak RSS MB", r["peak_rss_mb"], f"{r['growth_mb_per_million']:+.1f} MB/M events",
                         None, "flat", verdict(r["flat"])])
    return rows


def _md(headers: list[str], rows: list[list[Any]]) -> str:
    from bench.common import fmt

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results_dir: Path | None = None) -> str:
    """The tables of ``docs/benchmarks.md`` from the JSON results (``--markdown``)."""
    import json

    from bench.common import RESULTS_DIR

    folder = results_dir or RESULTS_DIR

    def load(name: str) -> dict[str, Any] | None:
        path = folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    out: list[str] = []
    tr = load("translator")
    if tr:
        out.append(f"### translator ({tr['at']}, load {tr['machine']['load_average']})\n")
        out.append(_md(["loop", "batch", "events/s", "CPU µs/event", "vs passthrough (same batch)"],
                       [[x["loop"], x["batch_size"], x["events_per_second"], x["cpu_us_per_event"],
                         x["ratio_to_passthrough_same_batch"]] for x in tr["loops"]]))
        st = tr["stage_cpu_us_per_event"]
        out.append("\n" + _md(["stage (in-process)", "µs/event"],
                              [["decode + validate", st["decode_us"]], ["plan", st["plan_us"]],
                               ["encode commands", st["encode_us"]], ["total", st["total_us"]]]))
        if tr.get("profile"):
            out.append("\n" + _md(["stage (cProfile of the loop)", "share"],
                                  [[k, f"{v['share']:.1%}"] for k, v in tr["profile"]["stages"].items()]))
    ex = load("executor")
    if ex:
        out.append(f"\n### executor ({ex['at']}, load {ex['machine']['load_average']})\n")
        out.append(_md(["SOAP path (client alone, L=0, 64 in flight)", "calls/s", "client CPU µs/call",
                        "calls per CPU-second", "simulator CPU µs/call"],
                       [[k, v["calls_per_second"], v["client_cpu_us_per_call"], v["client_calls_per_cpu_second"],
                         v["simulator_cpu_us_per_call"]] for k, v in ex["client_alone"].items()]))
        sat_rows = [["this tree", ex["saturation"]["commands_per_second"],
                     ex["saturation"]["executor_cpu_us_per_command"]]]
        if ex.get("saturation_before"):
            b = ex["saturation_before"]
            sat_rows.insert(0, ["before", b["commands_per_second"], b["executor_cpu_us_per_command"]])
        out.append("\n" + _md(["executor at L=0, N=64", "commands/s", "CPU µs/command"], sat_rows))
        out.append("\n" + _md(["L ms", "N", "N/L", "commands/s", "vs N/L", "vs min(N/L, CPU limit)", "bound",
                               "client alone calls/s", "vs client alone", "CPU µs/cmd", "cards out of order"],
                              [[p["latency_ms"], p["n"], p["little_bound"], p["commands_per_second"],
                                p["ratio_to_little"], p["ratio_to_expected"], "CPU" if p["cpu_bound"] else "N/L",
                                p.get("client_alone_calls_per_second"), p.get("ratio_to_client_alone"),
                                p["executor_cpu_us_per_command"],
                                f"{p['order']['cards_out_of_order']}/{p['order']['cards_checked']}"]
                               for p in ex["points"]]))
        if ex.get("profile"):
            out.append("\n" + _md(["executor stage (cProfile, L=0)", "µs/command", "share"],
                                  [[k, v["us_per_command"], f"{v['share']:.1%}"]
                                   for k, v in ex["profile"]["stages"].items()]))
    la = load("latency")
    if la:
        hops = [h for h in (la["baseline_kafka_hop"], la.get("baseline_kafka_hop_not_idempotent")) if h]
        out.append(f"\n### latency ({la['at']}, load {la['machine']['load_average']})\n")
        out.append(_md(["baseline: one Kafka hop, acks=all", "p50 ms", "p95 ms", "p99 ms"],
                       [[f"{'idempotent (as the product)' if h.get('idempotent', True) else 'not idempotent'}, "
                         f"{h['rate']:,.0f} msg/s", h["p50_ms"], h["p95_ms"], h["p99_ms"]] for h in hops]))
        out.append("\n" + _md(["events/s", "KMS applied/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "backlog grew",
                               "translator stage p50/p99 ms", "commit+executor p50/p99 ms"],
                              [[r["rate"], r["applied_commands_per_second"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                                r["max_ms"], "yes" if r["backlog_grew"] else "no",
                                f"{r['stages'].get('translator_p50_ms', 0):,.0f} / "
                                f"{r['stages'].get('translator_p99_ms', 0):,.0f}",
                                f"{r['stages'].get('commit_and_executor_p50_ms', 0):,.0f} / "
                                f"{r['stages'].get('commit_and_executor_p99_ms', 0):,.0f}"] for r in la["runs"]]))
    pr = load("projector")
    if pr:
        out.append(f"\n### projector ({pr['at']}, load {pr['machine']['load_average']})\n")
        out.append(_md(["database", "store alone (baseline) events/s", "projector events/s", "ratio",
                        "projector CPU µs/event"],
                       [[db, r["store_only"]["events_per_second"], r["projector"]["events_per_second"], r["ratio"],
                         r["projector"]["cpu_us_per_event"]] if "skipped" not in r else [db, "-", "-", "-", "-"]
                        for db, r in pr["databases"].items()]))
    me = load("memory")
    if me:
        out.append(f"\n### memory ({me['at']}, load {me['machine']['load_average']})\n")
        out.append(_md(["process", "messages", "peak RSS MB", "RSS at half MB", "final RSS MB", "MB per million",
                        "flat"],
                       [[k, v["messages"], v["peak_rss_mb"], v["rss_at_half_mb"], v["final_rss_mb"],
                         v["growth_mb_per_million"], "yes" if v["flat"] else "no"]
                        for k, v in me["processes"].items()]))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: prove the scripts run (no figures)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only these (repeatable)")
    parser.add_argument("--results-dir", type=Path, help="default bench/results")
    parser.add_argument("--img-dir", type=Path, help="default docs/img")
    parser.add_argument("--compare-tree", type=Path,
                        help="also run translator and executor from this source tree (before/after figures)")
    parser.add_argument("--markdown", action="store_true", help="only print the results' tables as Markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(args.results_dir))
        return 0
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
