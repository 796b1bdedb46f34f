"""The chart scales executors on the express lane's lag too: the executor's ScaledObject carries a second
Kafka trigger on the express group, named as the product names it (``helm template``, ``helm lint``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kmsbridge.settings import load_settings
from kmsbridge.wiring import express_group

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kmsbridge"
CI_VALUES = CHART / "ci" / "default-values.yaml"
K8S_VERSION = "1.33.0"
PROMETHEUS = "http://prometheus-operated.monitoring:9090"
KEDA_ON = ("executor.keda.enabled=true", f"executor.keda.breakerGate.prometheusServerAddress={PROMETHEUS}")


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = os.environ.get("HELM") or str(ROOT / ".cache" / "bin" / "helm")
    if not Path(helm).is_file():
        pytest.fail(f"helm not found at {helm}: run `make helm`, or set $HELM to a helm 3 binary")
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def _executor_scaler(*sets: str) -> dict[str, Any]:
    args = ["template", "rel", str(CHART), "--namespace", "kms", "--kube-version", K8S_VERSION,
            "-f", str(CI_VALUES), "-s", "templates/scaledobject-executor.yaml"]
    for item in (*KEDA_ON, *sets):
        args += ["--set", item]
    result = _helm(*args)
    assert result.returncode == 0, result.stderr
    scaler: dict[str, Any] = yaml.safe_load(result.stdout)
    return scaler


def _kafka(scaler: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in scaler["spec"]["triggers"] if t["type"] == "kafka"]


def test_the_executor_scaler_has_a_kafka_trigger_on_the_express_group_named_as_the_product_names_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scaler = _executor_scaler("groupPrefix=acme", "topicPrefix=prod.", "executor.keda.breakerGate.enabled=false")
    regular, express = _kafka(scaler)
    monkeypatch.setenv("KMSBRIDGE_GROUP_PREFIX", "acme")
    monkeypatch.setenv("KMSBRIDGE_TOPIC_PREFIX", "prod.")
    settings = load_settings()
    assert regular["metadata"]["consumerGroup"] == settings.group_id("executor")
    assert express["metadata"]["consumerGroup"] == express_group(settings) == "acme-executor-express"
    assert express["metadata"]["topic"] == settings.topic("commands_express") == "prod.kms.commands.express"
    assert express["metadata"]["lagThreshold"] == "20"  # executor.keda.expressLagThreshold
    assert {k: v for k, v in express["metadata"].items() if k not in ("consumerGroup", "topic", "lagThreshold")} \
        == {k: v for k, v in regular["metadata"].items() if k not in ("consumerGroup", "topic", "lagThreshold")}


def test_behind_the_breaker_gate_replicas_follow_the_larger_of_the_two_lanes_needs() -> None:
    scaler = _executor_scaler("executor.keda.lagThreshold=300", "executor.keda.expressLagThreshold=30")
    triggers = {t["name"]: t for t in scaler["spec"]["triggers"]}
    assert set(triggers) == {"breaker_open", "lag", "express_lag"}
    modifiers = scaler["spec"]["advanced"]["scalingModifiers"]
    # the express lag weighed to the regular target (300 / 30): 30 agents' commands waiting count as
    # much as 300 regular ones; an open breaker still reports no need at all
    assert modifiers["formula"] == "breaker_open > 0 ? 0 : (lag > express_lag * 10 ? lag : express_lag * 10)"
    assert modifiers["target"] == "300"


def test_without_the_express_lane_the_executor_scales_on_its_one_group() -> None:
    scaler = _executor_scaler("executor.trafficControl.expressLane=false")
    (regular,) = _kafka(scaler)
    assert regular["metadata"]["consumerGroup"] == "kmsbridge-executor"
    assert scaler["spec"]["advanced"]["scalingModifiers"]["formula"] == "breaker_open > 0 ? 0 : lag"


def test_the_express_threshold_is_in_the_schema_and_lint_stays_clean() -> None:
    sets = [arg for item in KEDA_ON for arg in ("--set", item)]
    ok = _helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES), *sets, "--kube-version", K8S_VERSION)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES), *sets, "--set",
                "executor.keda.expressLagThreshold=soon", "--kube-version", K8S_VERSION)
    assert bad.returncode != 0
    assert "expressLagThreshold" in bad.stdout + bad.stderr
