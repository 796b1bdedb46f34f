"""A real Prometheus scrapes the local stack with the chart's alert rules (docs/architecture.md §7).

The stack (`kmsbridge stack up --json`) runs translator, executor and the rest against the session's
broker, with a topic and group prefix of its own. Prometheus scrapes every process's /metrics every
second and evaluates ``helm/kmsbridge/files/alerts.yaml`` with its ``for:`` durations shortened by this
test (the expressions are the shipped ones). During a KMS outage the executor's lag must rise and
``KmsbridgeKmsBreakerOpen`` fire; after recovery both clear. Every wait polls Prometheus' HTTP API with a
deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from localdev.local_broker import free_port
from localdev.stack import load_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "helm" / "kmsbridge" / "files" / "alerts.yaml"
PROMETHEUS = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
SHORT_FOR = "2s"
OUTAGE_SECONDS = 45
BREAKER_QUERY = "max(kmsbridge_kms_breaker_open)"
EXECUTOR_LAG_QUERY = 'sum(max by (process, topic, partition) (kmsbridge_consumer_lag{process="executor"}))'
DETAIL_QUERY = "kmsbridge_consumer_lag or kmsbridge_consumer_lag_seconds"


def _cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmsbridge.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Call ``check`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f}s (last: {last!r})")


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """The local stack on the session broker: ``(stack up --json summary, env for CLI calls)``."""
    run_id = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSBRIDGE_")}
    env.update({
        "KMSBRIDGE_STACK_DIR": str(tmp_path / "stack"),
        "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KMSBRIDGE_TOPIC_PREFIX": f"prom{run_id}.",
        "KMSBRIDGE_GROUP_PREFIX": f"prom{run_id}",
        "KMSBRIDGE_TOPICS__PARTITIONS": "2",
        # the lag gauges update every second in this test (ignored if the setting does not exist)
        "KMSBRIDGE_LAG_INTERVAL_SECONDS": "1",
        # the breaker opens after a few failures and probes every second
        "KMSBRIDGE_EXECUTOR__BREAKER_FAILURE_THRESHOLD": "3",
        "KMSBRIDGE_EXECUTOR__BREAKER_PROBE_SECONDS": "1",
    })
    for key, value in os.environ.items():  # SASL etc. of an external test cluster
        if key.startswith("KMSBRIDGE_KAFKA__"):
            env.setdefault(key, value)
    result = _cli(env, "stack", "up", "--json", timeout=300)
    try:
        assert result.returncode == 0, f"stack up failed:\n{result.stdout}\n{result.stderr}"
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        yield summary, env
    finally:
        down = _cli(env, "stack", "down", timeout=120)
        assert down.returncode == 0, down.stderr


def _rule_file(path: Path) -> Path:
    """The shipped alert rules with every ``for:`` shortened, so alerts fire within a test."""
    data = yaml.safe_load(ALERTS.read_text())
    for group in data["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def prometheus(stack: tuple[dict[str, Any], dict[str, str]], tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping every process of the stack each second; yields its base URL."""
    if not Path(PROMETHEUS).is_file():
        pytest.skip(f"{PROMETHEUS} not installed (`make system-deps` installs Debian's prometheus)")
    summary, _env = stack
    targets = [urlsplit(url).netloc for url in summary["metrics"].values()]
    assert targets, f"the stack exposes no metrics endpoints: {summary}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(_rule_file(tmp_path / "alerts.yaml"))],
        "scrape_configs": [{"job_name": "kmsbridge", "static_configs": [{"targets": targets}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited; see {tmp_path / 'prometheus.log'}"
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _poll("prometheus ready", ready, 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _query(url: str, expr: str) -> float | None:
    """Value of a scalar-like instant query (one series), or None when it returns nothing."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _until(url: str, what: str, expr: str, ok: Callable[[float | None], bool], timeout: float) -> None:
    """Poll the instant query ``expr`` until ``ok(value)``; on timeout name the last value and series."""
    deadline = time.monotonic() + timeout
    value: float | None = None
    while time.monotonic() < deadline:
        value = _query(url, expr)
        if ok(value):
            return
        time.sleep(0.5)
    series = httpx.get(f"{url}/api/v1/query", params={"query": DETAIL_QUERY}, timeout=5).json()["data"]["result"]
    detail = {json.dumps(s["metric"], sort_keys=True): s["value"][1] for s in series}
    pytest.fail(f"{what}: not within {timeout:.0f}s; {expr} = {value!r}; lag series: {detail}")


def _alert_states(url: str, name: str) -> set[str]:
    body = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()
    assert body["status"] == "success", body
    return {a["state"] for a in body["data"]["alerts"] if a["labels"]["alertname"] == name}


def _events_file(path: Path, count: int) -> Path:
    """``count`` ACTIVATED subscriptions, each with its own secure client (fresh ids every run)."""
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = []
    for i in range(count):
        lines.append(json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": "ACTIVATED", "occurred_at": now,
            "subscription_id": f"S-{run}-{i}", "account_id": f"A-{run}-{i}", "subscription_type": "RESIDENTIAL",
            "created_at": now, "version": 1, "state": "ACTIVE",
            "services": [{"service_code": "BASIC", "state": "ACTIVE", "valid_from": None, "valid_until": None}],
            "devices": [{"distributor": "MAIN", "secure_client_id": f"9{run[:6]}{i:04d}", "stb_serial": f"B-{i}"}],
            "removed_devices": [],
        }))
    path.write_text("\n".join(lines) + "\n")
    return path


def _produce(env: dict[str, str], path: Path) -> None:
    result = _cli(env, "produce", "subscriptions", "--file", str(path), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kms_outage_raises_lag_and_fires_the_breaker_alert_and_both_clear_after_recovery(
    stack: tuple[dict[str, Any], dict[str, str]], prometheus: str, tmp_path: Path
) -> None:
    summary, env = stack
    url = prometheus

    # every process is scraped
    def all_up() -> bool:
        targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return len(targets) == len(summary["metrics"]) and all(t["health"] == "up" for t in targets)

    _poll("every stack process scraped", all_up, 60)

    # the pipeline works: events become KMS calls, the breaker is closed, no breaker alert
    _produce(env, _events_file(tmp_path / "warmup.jsonl", 5))
    _poll("KMS calls completed before the outage",
          lambda: (_query(url, 'sum(kmsbridge_kms_requests_total{outcome="completed"})') or 0) >= 5, 120)
    assert _query(url, BREAKER_QUERY) == 0
    assert not _alert_states(url, "KmsbridgeKmsBreakerOpen")

    # outage: commands pile up on kms.commands, the breaker opens, the alert fires
    state = load_state(Path(env["KMSBRIDGE_STACK_DIR"]))
    assert state is not None
    fault = _cli(env, "simulator", "fault", "--url", summary["simulator_url"], "--token-file", state.token_file,
                 "--outage", str(OUTAGE_SECONDS), timeout=30)
    assert fault.returncode == 0, fault.stdout + fault.stderr
    outage_started = time.monotonic()
    _produce(env, _events_file(tmp_path / "during-outage.jsonl", 40))

    _until(url, "breaker open during the outage", BREAKER_QUERY, lambda v: v == 1, OUTAGE_SECONDS)
    _poll("KmsbridgeKmsBreakerOpen firing", lambda: "firing" in _alert_states(url, "KmsbridgeKmsBreakerOpen"),
          OUTAGE_SECONDS)
    left = OUTAGE_SECONDS - (time.monotonic() - outage_started)
    _until(url, "executor lag above 0 during the outage", EXECUTOR_LAG_QUERY, lambda v: (v or 0) > 0,
           max(5.0, left))

    # recovery: the outage window ends by itself; the executor drains, lag and alert clear
    _until(url, "breaker closed after recovery", BREAKER_QUERY, lambda v: v == 0, OUTAGE_SECONDS + 120)
    _until(url, "executor lag back to 0", EXECUTOR_LAG_QUERY, lambda v: v == 0, 120)
    _poll("KmsbridgeKmsBreakerOpen resolved", lambda: not _alert_states(url, "KmsbridgeKmsBreakerOpen"), 60)
    completed = _query(url, 'sum(kmsbridge_kms_requests_total{outcome="completed"})') or 0
    assert completed >= 45, f"only {completed} KMS calls completed after recovery"

