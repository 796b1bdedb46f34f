"""The alert rules of the chart (``helm/kmsbridge/files/alerts.yaml``, docs/architecture.md §7).

``promtool check rules`` validates syntax and lint, ``promtool test rules`` runs the unit tests in
``helm/kmsbridge/tests/alerts_test.yaml`` (each alert firing and not firing). The structural checks
here make sure every alert carries what on-call needs and reads only metrics the product exports.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_names import exported_series_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kmsbridge"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = CHART / "tests" / "alerts_test.yaml"

REQUIRED_ALERTS = {
    "KmsbridgeConsumerLagGrowing",
    "KmsbridgeConsumerStalled",
    "KmsbridgeDlqMessages",
    "KmsbridgeKmsBreakerOpen",
    "KmsbridgeKmsErrorRatioHigh",
    "KmsbridgeResetRunOverdue",
}
SEVERITIES = {"info", "warning", "critical"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed; `make system-deps` installs it (Debian package prometheus)")
    return path


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    # promtool resolves rule_files relative to the test file, so the working directory does not matter
    result = subprocess.run([_promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_of_the_design_exist_with_severity_summary_description_and_runbook() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules if "alert" in r} == REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{name}: annotation {key} missing"


def test_alert_expressions_read_only_metrics_the_product_exports() -> None:
    exported = exported_series_names()
    for rule in _rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: expression reads no metric"
        assert names <= exported, f"{rule['alert']}: unknown metrics {sorted(names - exported)}"


def test_every_alert_has_a_firing_and_a_quiet_case_in_the_promtool_tests() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["../files/alerts.yaml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing >= REQUIRED_ALERTS, f"no firing case for {sorted(REQUIRED_ALERTS - firing)}"
    assert quiet >= REQUIRED_ALERTS, f"no quiet case for {sorted(REQUIRED_ALERTS - quiet)}"
