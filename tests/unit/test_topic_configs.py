"""The topic table (``producers/topics.py``): every topic the product uses gets its cleanup policy,
retention and ``min.insync.replicas`` from one plan, timed by the ``KMSBRIDGE_TOPICS__*`` settings."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsbridge.cli.io import planned_topics, topics_group
from kmsbridge.settings import ENV_PREFIX, Settings, load_settings
from producers.topics import DLQ, TOPIC_TABLE, TopicPolicy, min_insync_replicas_for, plan_topics

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(tmp_path))  # no local stack state: no stack defaults
    yield monkeypatch


def _plan(settings: Settings) -> dict[str, dict[str, str]]:
    return {p.name: p.config for p in planned_topics(settings)}


def test_every_topic_the_product_uses_is_planned_once(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    plans = planned_topics(settings)
    assert [p.name for p in plans] == settings.all_topics()
    assert {p.kind for p in plans} == set(TOPIC_TABLE)


def test_subscriptions_are_compacted_by_key_and_keep_every_version_a_week(clean_env: pytest.MonkeyPatch) -> None:
    config = _plan(load_settings())["crm.subscriptions"]
    assert config == {"cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * DAY_MS),
                      "delete.retention.ms": str(7 * DAY_MS), "min.insync.replicas": "1"}


def test_other_topics_are_deleted_by_time_only_each_with_its_retention(clean_env: pytest.MonkeyPatch) -> None:
    plan = _plan(load_settings())
    del plan["crm.subscriptions"]
    assert {c["cleanup.policy"] for c in plan.values()} == {"delete"}
    assert {c["retention.bytes"] for c in plan.values()} == {"-1"}
    days = {name: int(c["retention.ms"]) / DAY_MS for name, c in plan.items()}
    assert days["kms.commands"] == days["kms.requests"] == 4
    assert days["kms.results"] == 14 > days["kms.commands"]
    assert days["reconcile.requests"] == days["reconcile.reports"] == days["crm.communications"] == 7
    assert {days[name] for name in plan if name.endswith(".dlq")} == {30}


def test_retention_settings_change_the_plan_and_the_prefix_names_the_topics(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KMSBRIDGE_TOPIC_PREFIX", "prod.")
    clean_env.setenv("KMSBRIDGE_TOPICS__COMMANDS_RETENTION_HOURS", "12")
    clean_env.setenv("KMSBRIDGE_TOPICS__DLQ_RETENTION_HOURS", "2160")
    clean_env.setenv("KMSBRIDGE_TOPICS__SUBSCRIPTIONS_MIN_COMPACTION_LAG_HOURS", "48")
    clean_env.setenv("KMSBRIDGE_TOPICS__SUBSCRIPTIONS_DELETE_RETENTION_HOURS", "6")
    plan = _plan(load_settings())
    assert plan["prod.kms.commands"]["retention.ms"] == str(12 * HOUR_MS)
    assert plan["prod.kms.commands.dlq"]["retention.ms"] == str(90 * DAY_MS)
    assert plan["prod.kms.requests"]["retention.ms"] == str(4 * DAY_MS)
    assert plan["prod.crm.subscriptions"]["min.compaction.lag.ms"] == str(2 * DAY_MS)
    assert plan["prod.crm.subscriptions"]["delete.retention.ms"] == str(6 * HOUR_MS)


@pytest.mark.parametrize(("replication", "expected"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_follows_the_replication_factor_unless_set(replication: int, expected: int) -> None:
    assert min_insync_replicas_for(replication) == expected
    (plan,) = plan_topics({"t": "commands"}, TopicPolicy(), replication)
    assert plan.config["min.insync.replicas"] == str(expected)
    (plan,) = plan_topics({"t": "commands"}, TopicPolicy(min_insync_replicas=1), replication)
    assert plan.config["min.insync.replicas"] == "1"


def test_more_in_sync_replicas_than_replicas_is_refused_naming_the_settings(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="above the replication factor"):
        plan_topics({"t": "commands"}, TopicPolicy(min_insync_replicas=3), 2)
    clean_env.setenv("KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS", "2")
    result = CliRunner().invoke(topics_group, ["create", "--dry-run"])
    assert result.exit_code == 2
    assert "KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS" in result.output


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        plan_topics({"t": "audit"}, TopicPolicy(), 1)


def test_dry_run_prints_the_plan_with_partitions_and_replication(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KMSBRIDGE_TOPICS__PARTITIONS", "12")
    clean_env.setenv("KMSBRIDGE_TOPICS__REPLICATION_FACTOR", "3")
    result = CliRunner().invoke(topics_group, ["create", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["topic"] for line in lines] == load_settings().all_topics()
    by_topic = {line["topic"]: line for line in lines}
    assert by_topic["crm.subscriptions"]["config"]["cleanup.policy"] == "compact"
    assert by_topic["kms.commands.dlq"]["kind"] == DLQ
    assert {(line["partitions"], line["replication"]) for line in lines} == {(12, 3)}
    assert {line["config"]["min.insync.replicas"] for line in lines} == {"2"}
