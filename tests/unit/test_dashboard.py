"""The Grafana dashboard (``helm/kmsbridge/files/dashboard.json``) shows only metrics the product exports.

Every panel query is checked against the collectors registered in ``consumers/metrics.py``, so renaming a
metric there without updating the dashboard fails here; every query must also parse as PromQL (promtool).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_names import exported_series_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "kmsbridge" / "files" / "dashboard.json"

#: title -> (metric every query of that panel family must use, regexes one of its queries must match)
REQUIRED_PANELS: dict[str, tuple[str, list[str]]] = {
    "Consumer lag (messages)": ("kmsbridge_consumer_lag", [r"by \(process, topic, partition\)"]),
    "Consumer lag (seconds)": ("kmsbridge_consumer_lag_seconds", [r"by \(process, topic, partition\)"]),
    "Throughput": ("kmsbridge_messages_processed_total", [r"by \(process, topic\)", r"rate\("]),
    "KMS latency": ("kmsbridge_kms_request_seconds_bucket", [r"histogram_quantile\(", r"by \(le, operation\)"]),
    "KMS outcomes": ("kmsbridge_kms_requests_total", [r"by \(operation, outcome\)"]),
    "KMS breaker": ("kmsbridge_kms_breaker_open", []),
    "DLQ messages": ("kmsbridge_dlq_messages_total", [r"rate\("]),
    "Last successful reset run": ("kmsbridge_reconcile_last_success_timestamp_seconds", []),
}


def _load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def _queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in _panels(_load()["panels"])
            for target in panel.get("targets", [])]


def test_metric_name_parser_finds_names_and_ignores_functions_labels_and_variables() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, operation) (rate(kmsbridge_kms_request_seconds_bucket'
            '{namespace=~"$namespace", operation!="x"}[$__rate_interval]))) > 1e3 and on () up offset 26h')
    assert metric_names(expr) == {"kmsbridge_kms_request_seconds_bucket", "up"}
    with pytest.raises(ValueError, match="unknown PromQL function"):
        metric_names("rte(kmsbridge_messages_consumed_total[5m])")
    exported = exported_series_names()
    assert {"kmsbridge_messages_consumed_total", "kmsbridge_processing_seconds_bucket",
            "kmsbridge_kms_breaker_open"} <= exported
    assert "kmsbridge_processing_seconds" not in exported  # a histogram's bare name is no series
    assert "kmsbridge_messages_consumed" not in exported  # a counter is exposed with _total


def test_dashboard_is_valid_json_with_unique_panel_ids_and_grid_positions() -> None:
    data = _load()
    assert data["title"] == "kmsbridge" and data["uid"] == "kmsbridge"
    panels = list(_panels(data["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"


def test_every_query_uses_the_datasource_variable() -> None:
    for panel in _panels(_load()["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_query_names_only_metrics_the_product_exports() -> None:
    exported = exported_series_names()
    queries = _queries()
    assert queries, "the dashboard has no queries"
    used: set[str] = set()
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"panel {title!r}: query reads no metric: {expr}"
        unknown = names - exported
        assert not unknown, f"panel {title!r} reads metrics the product does not export: {sorted(unknown)}"
        used |= names
    # the dashboard covers every metric of docs/architecture.md §7 (histograms through their buckets)
    expected = {n for n in exported if not n.endswith(("_count", "_sum"))}
    assert expected - used == set(), f"metrics without a panel: {sorted(expected - used)}"


@pytest.mark.parametrize("title", sorted(REQUIRED_PANELS))
def test_required_panel_is_present(title: str) -> None:
    metric, patterns = REQUIRED_PANELS[title]
    exprs = [expr for panel_title, expr in _queries() if panel_title == title]
    assert exprs, f"panel {title!r} missing"
    assert any(metric in metric_names(expr) for expr in exprs), f"panel {title!r} does not read {metric}"
    for pattern in patterns:
        assert any(re.search(pattern, expr) for expr in exprs), f"panel {title!r}: no query matches {pattern!r}"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make system-deps installs it)")
    rules = []
    for i, (_title, expr) in enumerate(_queries()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$process", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    rule_file = tmp_path / "dashboard_queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
