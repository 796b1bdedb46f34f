"""The request-log benchmark never rots: ``python -m bench.request_log --quick`` end to end.

Tiny sizes (20,000 rows, 1,000 events) on the session's broker; no thresholds. What is checked is that
the log was seeded and every query ran on both databases next to its primary-key baseline, and that
the projector and the request-log writer both consumed the same events (their groups committed them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_request_log_benchmark_seeds_queries_and_measures_the_writer(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    env = {**os.environ, "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "bench.request_log", "--quick", "--results-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Request log on sqlite, 20,000 rows" in done.stdout and "Writer on sqlite" in done.stdout
    result = json.loads((tmp_path / "request_log.json").read_text())
    for db, measured in result["databases"].items():
        if "skipped" in measured:
            assert db == "postgresql"
            continue
        queries = measured["queries"]["queries"]
        assert "baseline: primary-key lookup" in queries and "history of a box" in queries
        assert all(q["p50_ms"] > 0 for q in queries.values()), db
    writer = result["databases"]["sqlite"]["writer"]
    assert {"projector_events", "log_events", "log_commands", "log_results"} <= set(writer)
