"""Memory: peak RSS of the translator, the executor and the projector over a long run, and whether it
grows with the number of events.

The three run as users run them (``kmsbridge run ...`` subprocesses, product defaults, simulator at
0 ms in its own process) while ``--events`` campaign events are produced to ``crm.subscriptions`` in
the background. Every second the RSS of each process is sampled with its progress (messages the
translator and the projector committed, commands the KMS applied for the executor). Per process:

- peak RSS: ``VmHWM`` at the end (the true high-water mark, not only the sampled maximum);
- growth: the least-squares slope of RSS against messages processed over the second half of the run
  (start-up, imports and the first fills of caches and buffers excluded), in MB per million messages;
  "flat" when that extrapolates to less than ``FLAT_MB_PER_MILLION``.

``make bench`` uses 40,000 events, not the 1,000,000 of a real campaign, so the whole suite stays under 20 minutes:
the executor applies 250-500 commands/s on this shared machine, so a million events (1.3 million
commands) take one to one and a half hours. ``python -m bench.memory --events 1000000`` is the full
run; ``--processes translator,projector`` runs the million events through the two fast processes
alone (minutes), the executor's own long run being sized separately.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchEnv,
    GroupProgress,
    campaign_values,
    linear_slope,
    print_table,
    produce_values,
    write_result,
)

__all__ = ["main"]

FLAT_MB_PER_MILLION = 10.0
PROCESSES = ("translator", "executor", "projector")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(events: int, *, twin_share: float, interval: float, results_dir: Path | None,
        img_dir: Path | None, processes: tuple[str, ...] = PROCESSES) -> dict[str, Any]:
    every = round(1 / twin_share) if twin_share > 0 else 0
    commands = events + (len(range(0, events, every)) if every else 0)
    if "executor" in processes and "translator" not in processes:
        processes = ("translator", *processes)  # the executor's commands come from the translator
    names = tuple(name for name in PROCESSES if name in processes)
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    with BenchEnv("memory") as env:
        pipe = env.pipeline("run")
        topic = pipe.settings.topic("subscriptions")
        env.simulator.set_latency(0)
        procs = {name: env.adopt(pipe.spawn(name)) for name in names}
        ps = {name: psutil.Process(proc.pid) for name, proc in procs.items()}
        translated = GroupProgress(env.bootstrap, pipe.settings.group_id("translator"), topic, pipe.partitions)
        projected = GroupProgress(env.bootstrap, pipe.settings.group_id("projector"), topic, pipe.partitions)
        tail = env.simulator.tail_audit()
        run_id = uuid.uuid4().hex[:8]
        producer = threading.Thread(target=produce_values, name="producer", daemon=True,
                                    args=(env.bootstrap, topic, campaign_values(events, twin_share=twin_share,
                                                                                run=run_id)))
        producer.start()
        applied = 0
        started = time.monotonic()
        deadline = started + max(600.0, commands / 100)
        last_reset = 0
        print(f"{events:,} events through {', '.join(names)}"
              + (f" ({commands:,} commands)" if "executor" in names else "") + " ...", flush=True)
        while True:
            applied += sum(1 for e in tail.poll() if not e["duplicate"])
            done = {"translator": translated.committed(), "projector": projected.committed(), "executor": applied}
            for name in names:
                if procs[name].poll() is not None:
                    raise RuntimeError(f"the {name} exited ({procs[name].returncode}); see {pipe.workdir}")
                series[name].append((float(done[name]), ps[name].memory_info().rss / 2**20))
            if applied - last_reset >= 200_000:
                env.simulator.reset()  # keep the simulator's own state small on long runs (not measured)
                last_reset = applied
            targets = {"translator": events, "projector": events, "executor": commands}
            if all(done[name] >= targets[name] for name in names):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"run not finished after {deadline - started:.0f} s: {done}")
            time.sleep(interval)
        peaks = {name: _peak_rss_mb(proc.pid) for name, proc in procs.items()}
        translated.close()
        projected.close()
        seconds = time.monotonic() - started
    rows = {}
    for name in names:
        points = series[name]
        half = [p for p in points if p[0] >= points[-1][0] / 2]
        slope = linear_slope([x for x, _ in half], [y for _, y in half]) * 1e6 if len(half) > 2 else 0.0
        rows[name] = {"peak_rss_mb": peaks[name], "max_sampled_rss_mb": max(y for _, y in points),
                      "rss_at_half_mb": half[0][1] if half else float("nan"), "final_rss_mb": points[-1][1],
                      "messages": points[-1][0], "growth_mb_per_million": slope,
                      "flat": slope < FLAT_MB_PER_MILLION}
    only = "" if names == PROCESSES else f" --processes {','.join(names)}"
    share = "" if twin_share == 0.3 else f" --twin-share {twin_share:g}"
    result = {"command": f"python -m bench.memory --events {events}{only}{share}", "events": events,
              "commands": commands if "executor" in names else 0,
              "seconds": seconds, "processes": rows, "flat_threshold_mb_per_million": FLAT_MB_PER_MILLION,
              "samples": {name: series[name][:: max(1, len(series[name]) // 400)] for name in names}}
    path = write_result("memory" if names == PROCESSES else f"memory_{'_'.join(names)}", result, results_dir)
    report(result)
    from bench.plots import plot_memory

    image = "memory.png" if names == PROCESSES else f"memory_{'_'.join(names)}.png"
    print(f"plot: {plot_memory(series, img_dir, image)}")
    print(f"results in {path}")
    return result


def report(result: dict[str, Any]) -> None:
    print_table(f"Memory over {result['events']:,} events ({result['commands']:,} commands, "
                f"{result['seconds']:.0f} s); growth over the second half of the run",
                ["process", "messages", "peak RSS MB", "RSS at half MB", "final RSS MB", "MB per million",
                 f"flat (< {FLAT_MB_PER_MILLION:.0f} MB/M)"],
                [[name, r["messages"], r["peak_rss_mb"], r["rss_at_half_mb"], r["final_rss_mb"],
                  r["growth_mb_per_million"], "yes" if r["flat"] else "NO"] for name, r in result["processes"].items()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--twin-share", type=float, default=0.3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--processes", default=",".join(PROCESSES),
                        help="which processes to run and measure (the executor brings the translator along)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--img-dir", type=Path)
    args = parser.parse_args(argv)
    run(1500 if args.quick else args.events, twin_share=args.twin_share,
        interval=0.2 if args.quick else args.interval, results_dir=args.results_dir, img_dir=args.img_dir,
        processes=tuple(args.processes.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
