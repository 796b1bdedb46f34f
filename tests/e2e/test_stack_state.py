"""The local stack starts from one consistent state: a stack brought up again after
``stack down`` has empty Kafka topics, an empty database and an empty simulator, or with ``--keep`` all
three as the last run left them. Either way a reset preview finds no drift."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.support.cli import REPO, kmsbridge

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples"
CARD = "4120051539"  # the MAIN box of examples/subscriptions.jsonl (BASIC, then BASIC and SPORTS)
PROCESSES = ["--process", "translator", "--process", "executor", "--process", "projector", "--process", "reconciler"]


def stack_up(env: dict[str, str], *flags: str) -> dict[str, Any]:
    up = kmsbridge(["stack", "up", "--json", *PROCESSES, *flags], env)
    assert up.returncode == 0, up.stdout + up.stderr
    summary: dict[str, Any] = json.loads(up.stdout.strip().splitlines()[-1])
    return summary


def stack_down(env: dict[str, str]) -> None:
    down = kmsbridge(["stack", "down"], env)
    assert down.returncode == 0, down.stdout + down.stderr


def preview(env: dict[str, str]) -> dict[str, Any]:
    result = kmsbridge(["reconcile", "--preview", "--json", "--wait", "--timeout", "60"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def simulator_clients(env: dict[str, str]) -> dict[str, Any]:
    result = kmsbridge(["simulator", "state", "--json"], env, timeout=60)
    assert result.returncode == 0, result.stderr
    clients: dict[str, Any] = json.loads(result.stdout)["secure_clients"]
    return clients


def records_on(bootstrap: str, topic: str) -> int:
    """How many records the topic's partitions hold (high minus low watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "stack-state-test", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
        return total
    finally:
        consumer.close()


def produce_examples_until_in_sync(env: dict[str, str], timeout: float = 180) -> None:
    """Produce the example subscription and wait (bounded) until the pipeline has applied it: the
    projector stored it and the KMS holds what it entitles (a preview checks one, drifted none)."""
    produced = kmsbridge(["produce", "subscriptions", "--file", str(EXAMPLES / "subscriptions.jsonl")], env)
    assert produced.returncode == 0, produced.stderr
    deadline = time.monotonic() + timeout
    report = preview(env)
    while not (report["checked"] == 1 and report["drifted"] == 0):
        assert time.monotonic() < deadline, f"the example subscription was not applied: {report}"
        report = preview(env)  # each preview is a round trip through Kafka and the reconciler: the pace


def test_a_stack_brought_up_again_starts_empty_and_reports_no_drift(stack_env: dict[str, str]) -> None:
    stack_up(stack_env)
    produce_examples_until_in_sync(stack_env)
    assert CARD in simulator_clients(stack_env)
    stack_down(stack_env)

    again = stack_up(stack_env)

    assert records_on(again["bootstrap"], "crm.subscriptions") == 0
    assert simulator_clients(stack_env) == {}
    report = preview(stack_env)
    assert (report["checked"], report["drifted"]) == (0, 0), report  # the database is empty too
    # and the product can be tried again in the same folder
    produce_examples_until_in_sync(stack_env)


def test_keep_brings_the_last_runs_kafka_database_and_simulator_back_without_drift(
    stack_env: dict[str, str],
) -> None:
    first = stack_up(stack_env)
    produce_examples_until_in_sync(stack_env)
    entitled = {e["product_id"] for e in simulator_clients(stack_env)[CARD]["entitlements"]}
    assert entitled == {"P100", "P101", "P200"}
    stack_down(stack_env)

    kept = stack_up(stack_env, "--keep")

    assert kept["bootstrap"] == first["bootstrap"]  # the broker restarted on its storage and ports
    assert records_on(kept["bootstrap"], "crm.subscriptions") == 2
    assert {e["product_id"] for e in simulator_clients(stack_env)[CARD]["entitlements"]} == entitled
    report = preview(stack_env)
    assert (report["checked"], report["in_sync"], report["drifted"]) == (1, 1, 0), report
