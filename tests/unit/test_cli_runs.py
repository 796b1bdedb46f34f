"""``kmsbridge runs`` and ``kmsbridge communications list`` over a SQLite database: output, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kmsbridge.cli import main


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"KMSBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
            "KMSBRIDGE_STACK_DIR": str(tmp_path / "no-stack")}


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_reset_definition_is_defined_listed_and_shown_with_its_rolling_period(env: dict[str, str]) -> None:
    defined = cli(env, "runs", "define", "reset", "nightly", "--schedule", "0 2 * * *", "--time-zone",
                  "Europe/Nicosia", "--created-within-days", "30", "--type", "RESIDENTIAL")
    assert defined.exit_code == 0, defined.output

    [listed] = json.loads(cli(env, "runs", "list", "--json").stdout)
    assert (listed["name"], listed["created_within_days"], listed["subscription_types"]) == (
        "nightly", 30, ["RESIDENTIAL"])
    assert listed["next_due_at"] is not None
    assert "nightly" in cli(env, "runs", "list").stdout


@pytest.mark.parametrize(("args", "named"), [
    (["reset", "bad", "--schedule", "every night"], "schedule"),
    (["reset", "bad", "--created-within-days", "7", "--created-from", "2026-01-01"], "created_within_days"),
    (["mail", "bad", "--external-system", ""], "external_systems"),
])
def test_a_bad_definition_exits_2_naming_the_field(env: dict[str, str], args: list[str], named: str) -> None:
    result = cli(env, "runs", "define", *args)

    assert result.exit_code == 2
    assert named in result.output
    assert json.loads(cli(env, "runs", "list", "--json").stdout) == []


def test_an_executed_definition_cannot_be_deleted_but_made_not_effective(env: dict[str, str]) -> None:
    cli(env, "runs", "define", "mail", "irdeto", "--external-system", "IRDETO")
    requested = json.loads(cli(env, "runs", "execute", "irdeto", "--json").stdout)
    assert (requested["state"], requested["trigger"]) == ("REQUESTED", "manual")

    refused = cli(env, "runs", "delete", "irdeto")
    assert refused.exit_code == 1
    assert cli(env, "runs", "not-effective", "irdeto").exit_code == 0
    shown = json.loads(cli(env, "runs", "show", "irdeto", "--json").stdout)
    assert shown["effective"] is False
    assert [e["execution_id"] for e in shown["executions"]] == [requested["execution_id"]]
    assert cli(env, "runs", "show", "unknown").exit_code == 2


def test_an_empty_queue_lists_nothing(env: dict[str, str]) -> None:
    result = cli(env, "communications", "list", "--state", "pending", "--json")

    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
