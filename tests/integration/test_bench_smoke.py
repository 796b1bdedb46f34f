"""The benchmarks never rot: ``python -m bench.run_all --quick`` runs every script end to end.

Tiny sizes on the session's broker; no thresholds (timings on a shared machine prove nothing here).
What is checked is that each benchmark ran its real processes, printed its table with a baseline and
a ratio, wrote its JSON and its plots, and that the figures are numbers that could only come from a
run that did the work (every command applied, the per-client order checked on every card).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    results, images = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("img")
    env = {**os.environ, "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--results-dir", str(results),
                           "--img-dir", str(images)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout, results, images


def _load(results: Path, name: str) -> dict[str, Any]:
    return json.loads((results / f"{name}.json").read_text())


@pytest.mark.timeout(1500)
def test_every_benchmark_prints_its_table_and_the_summary(quick_run: tuple[str, Path, Path]) -> None:
    out, _, _ = quick_run
    for title in ("Translator vs passthrough", "SOAP client alone", "Executor vs N/L", "End-to-end latency",
                  "Baseline: one Kafka hop", "Projector (", "Memory over", "Summary (quick"):
        assert title in out, f"missing table {title!r}"


@pytest.mark.timeout(1500)
def test_translator_figures_compare_the_real_translator_with_the_passthrough(quick_run: tuple[str, Path, Path]) -> None:
    _, results, _ = quick_run
    r = _load(results, "translator")
    assert r["passthrough"]["events_per_second"] > 0 and r["translator"]["events_per_second"] > 0
    assert math.isclose(r["ratio"], r["translator"]["events_per_second"] / r["passthrough"]["events_per_second"])
    assert r["commands_per_event"] > 1  # the translator planned real commands from the campaign events


@pytest.mark.timeout(1500)
def test_executor_applied_every_command_in_order_and_plotted_it(quick_run: tuple[str, Path, Path]) -> None:
    _, results, images = quick_run
    r = _load(results, "executor")
    assert r["points"] and all(p["commands_per_second"] > 0 and p["little_bound"] > 0 for p in r["points"])
    assert all(p["order"]["cards_checked"] > 0 for p in r["points"])
    assert r["order_violations"] == 0
    assert r["client_alone"]["lean"]["calls_per_second"] > 0
    assert (images / "executor_throughput.png").stat().st_size > 0


@pytest.mark.timeout(1500)
def test_latency_projector_and_memory_wrote_their_figures(quick_run: tuple[str, Path, Path]) -> None:
    _, results, images = quick_run
    latency = _load(results, "latency")
    run = latency["runs"][0]
    assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert latency["baseline_kafka_hop"]["messages"] > 0
    assert (images / "latency.png").stat().st_size > 0
    projector = _load(results, "projector")["databases"]
    assert projector["sqlite"]["projector"]["events_per_second"] > 0
    assert "skipped" in projector["postgresql"] or projector["postgresql"]["projector"]["events_per_second"] > 0
    memory = _load(results, "memory")["processes"]
    assert set(memory) == {"translator", "executor", "projector"}
    assert all(m["peak_rss_mb"] > 0 and m["messages"] > 0 for m in memory.values())
    assert (images / "memory.png").stat().st_size > 0
    assert _load(results, "summary")["failed"] == []
