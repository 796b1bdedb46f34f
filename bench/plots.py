"""PNG plots of the benchmark results into ``docs/img/`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import IMG_DIR

__all__ = ["plot_executor", "plot_latency", "plot_memory"]


def _out(img_dir: Path | None, name: str) -> Path:
    folder = img_dir or IMG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def plot_executor(result: dict[str, Any], img_dir: Path | None = None) -> Path:
    """Commands/s against N for each latency L, with Little's bound N/L and the CPU limit."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cap = result["saturation"]["commands_per_second"]
    by_latency: dict[int, list[dict[str, Any]]] = {}
    for p in result["points"]:
        by_latency.setdefault(p["latency_ms"], []).append(p)
    for i, (latency, points) in enumerate(sorted(by_latency.items())):
        points.sort(key=lambda p: p["n"])
        ns = [p["n"] for p in points]
        color = f"C{i}"
        ax.plot(ns, [p["commands_per_second"] for p in points], "o-", color=color, label=f"measured, L = {latency} ms")
        ax.plot(ns, [n * 1000 / latency for n in ns], "--", color=color, alpha=0.6, label=f"N / L, L = {latency} ms")
    ax.axhline(cap, color="black", linestyle=":", label=f"CPU limit (L = 0): {cap:,.0f}/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (KMS calls in flight, KMSBRIDGE_EXECUTOR__MAX_INFLIGHT)")
    ax.set_ylabel("commands / s")
    ax.set_title("Executor throughput vs concurrency (Little's law N/L)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = _out(img_dir, "executor_throughput.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(runs: list[tuple[dict[str, Any], list[float]]], img_dir: Path | None = None) -> Path:
    """Histogram of the highest rate the pipeline kept up with, and the CDF of every rate, of end-to-end
    latencies (event produced -> KMS applied); runs that built a backlog are marked in the legend."""
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.4))
    kept_up = [(s, lat) for s, lat in runs if not s["backlog_grew"]]
    shown, latencies = (kept_up or runs)[-1]
    hist.hist(latencies, bins=60, color="C0", alpha=0.8)
    for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-.")):
        hist.axvline(shown[f"{q}_ms"], color="grey", linestyle=style, label=f"{q} {shown[f'{q}_ms']:,.0f} ms")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("events")
    hist.set_title(f"{shown['rate']:,.0f} events/s" + (" (backlog grew)" if shown["backlog_grew"] else ""))
    hist.legend(fontsize=8)
    for i, (summary, values) in enumerate(runs):
        ordered = sorted(values)
        n = len(ordered)
        label = f"{summary['rate']:,.0f}/s" + (" (backlog grew)" if summary["backlog_grew"] else "")
        cdf.plot(ordered, [(k + 1) / n for k in range(n)], color=f"C{i}", label=label)
    target = runs[0][0]["target_p99_ms"]
    cdf.axvline(target, color="red", alpha=0.5, label=f"target p99 {target:.0f} ms")
    cdf.axhline(0.99, color="grey", linestyle=":", alpha=0.6)
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms, log)")
    cdf.set_ylabel("fraction of events")
    cdf.set_title("CDF per offered rate")
    cdf.legend(fontsize=8)
    for ax in (hist, cdf):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"End-to-end latency, event produced -> KMS applied (simulator at {shown['kms_latency_ms']} ms)")
    path = _out(img_dir, "latency.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(series: dict[str, list[tuple[float, float]]], img_dir: Path | None = None,
                file_name: str = "memory.png") -> Path:
    """RSS (MB) of each process against the messages it had processed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, points) in enumerate(sorted(series.items())):
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], "-", color=f"C{i}", label=name)
    ax.set_xlabel("messages processed by the process")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("Resident memory over a long run")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = _out(img_dir, file_name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
