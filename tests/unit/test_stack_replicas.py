"""``kmsbridge stack up --replicas N``: the processes the stack plans for N, the POD_NAME each replica gets
(and the Kafka static membership the product derives from it), the database it runs on, and the refusals
that come before anything starts (no broker runs in these tests)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmsbridge.cli import main as kmsbridge
from kmsbridge.settings import Settings
from kmsbridge.stack_state import StackState, load_state, save_state
from localdev import stack

ALL = stack.PROCESSES  # translator, executor, projector, reconciler, api, request-log


@pytest.fixture
def stack_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "stack"
    folder.mkdir()
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", str(folder))
    for name in ("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "KMSBRIDGE_DATABASE_URL", "KMSBRIDGE_PROVIDER_FILE"):
        monkeypatch.delenv(name, raising=False)
    return folder


def running_stack(folder: Path, **fields: object) -> StackState:
    """A state file whose broker and translator are this (alive) test process: a running stack."""
    state = StackState(bootstrap="127.0.0.1:9", broker_pid=os.getpid(),
                       processes={"translator": {"pid": os.getpid(), "port": 1}}, **fields)  # type: ignore[arg-type]
    save_state(state, folder)
    return state


def test_one_replica_plans_each_process_once_under_its_plain_name_with_the_environments_pod_name() -> None:
    planned = stack.plan(ALL, 1)

    assert [(r.name, r.process, r.pod_name) for r in planned] == [(p, p, None) for p in ALL]


def test_two_replicas_plan_two_of_each_scaled_process_two_reconcilers_and_one_api_and_request_log() -> None:
    planned = stack.plan(ALL, 2)

    assert [(r.name, r.process, r.pod_name) for r in planned] == [
        ("translator-0", "translator", "translator-0"), ("translator-1", "translator", "translator-1"),
        ("executor-0", "executor", "executor-0"), ("executor-1", "executor", "executor-1"),
        ("projector-0", "projector", "projector-0"), ("projector-1", "projector", "projector-1"),
        ("reconciler-0", "reconciler", "reconciler-0"), ("reconciler-1", "reconciler", "reconciler-1"),
        ("api", "api", None), ("request-log", "request-log", None)]


def test_three_replicas_plan_three_translators_executors_projectors_and_still_two_reconcilers() -> None:
    planned = stack.plan(ALL, 3)

    by_process: dict[str, list[str]] = {}
    for r in planned:
        by_process.setdefault(r.process, []).append(r.name)
    assert by_process == {
        "translator": ["translator-0", "translator-1", "translator-2"],
        "executor": ["executor-0", "executor-1", "executor-2"],
        "projector": ["projector-0", "projector-1", "projector-2"],
        "reconciler": ["reconciler-0", "reconciler-1"], "api": ["api"], "request-log": ["request-log"]}
    assert len({r.pod_name for r in planned if r.pod_name}) == 11  # every replica a POD_NAME of its own


def test_replicas_of_a_chosen_process_only_plan_that_process() -> None:
    assert [r.name for r in stack.plan(("executor",), 2)] == ["executor-0", "executor-1"]


def test_no_replica_count_below_one_is_planned() -> None:
    with pytest.raises(stack.StackConflict, match="at least 1"):
        stack.plan(ALL, 0)


def test_replicas_of_one_process_get_distinct_static_membership_and_transactional_ids(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"KMSBRIDGE_GROUP_INSTANCE_ID": "shared", "kmsbridge_group_instance_id": "shared", "POD_NAME": "host"}
    ids = []
    for replica in stack.plan(("executor",), 3):
        env = stack.replica_env(base, replica)
        assert not any(k.upper() == "KMSBRIDGE_GROUP_INSTANCE_ID" for k in env)
        monkeypatch.delenv("KMSBRIDGE_GROUP_INSTANCE_ID", raising=False)
        monkeypatch.setenv("POD_NAME", env["POD_NAME"])
        ids.append(Settings().instance_id("executor"))

    assert ids == ["executor-0-executor", "executor-1-executor", "executor-2-executor"]


def test_a_single_process_keeps_the_environment_as_it_is() -> None:
    base = {"KMSBRIDGE_GROUP_INSTANCE_ID": "mine", "POD_NAME": "host"}

    assert stack.replica_env(base, stack.plan(("executor",), 1)[0]) == base


def test_a_different_replica_count_than_the_running_stack_has_is_refused(stack_folder: Path) -> None:
    running_stack(stack_folder)

    result = CliRunner().invoke(kmsbridge, ["stack", "up", "--replicas", "2"])

    assert result.exit_code == 2, result.output
    assert "--replicas 2: the running stack has 1 replica of each process; `kmsbridge stack down` first" \
        in result.output
    assert not (stack_folder / "logs" / "simulator.log").exists()
    state = load_state(stack_folder)
    assert state is not None and state.replicas == 1 and list(state.processes) == ["translator"]


def test_a_replica_count_below_one_is_refused_by_the_cli(stack_folder: Path) -> None:
    result = CliRunner().invoke(kmsbridge, ["stack", "up", "--replicas", "0"])

    assert result.exit_code == 2, result.output
    assert not (stack_folder / "state.json").exists()


def test_another_database_than_the_running_stack_uses_is_refused_without_showing_its_password(
        stack_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running_stack(stack_folder, database_url=f"sqlite:///{stack_folder / stack.DATABASE}")
    monkeypatch.setenv("KMSBRIDGE_DATABASE_URL", "postgresql+psycopg://app:s3cret@db:5432/kms")

    result = CliRunner().invoke(kmsbridge, ["stack", "up"])

    assert result.exit_code == 2, result.output
    assert "KMSBRIDGE_DATABASE_URL is postgresql+psycopg://app:***@db:5432/kms" in result.output
    assert "s3cret" not in result.output


def test_a_stack_that_is_down_runs_on_the_configured_database_else_its_sqlite_file(
        stack_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack._database_url(None, False, stack_folder) == f"sqlite:///{stack_folder / stack.DATABASE}"

    monkeypatch.setenv("KMSBRIDGE_DATABASE_URL", "postgresql+psycopg://app@db/kms")

    assert stack._database_url(None, False, stack_folder) == "postgresql+psycopg://app@db/kms"


def test_replicas_on_the_sqlite_file_are_started_with_one_line_naming_postgresql() -> None:
    url = "sqlite:////tmp/stack/kmsbridge.db"

    shared = stack.database_note(url, stack.plan(ALL, 2))

    assert shared is not None
    assert "10 processes share the SQLite file /tmp/stack/kmsbridge.db" in shared
    assert "PostgreSQL" in shared and "KMSBRIDGE_DATABASE_URL" in shared
    assert stack.database_note(url, stack.plan(ALL, 1)) is None


def test_a_configured_database_is_named_with_its_password_masked() -> None:
    note = stack.database_note("postgresql+psycopg://app:s3cret@db/kms", stack.plan(ALL, 2))

    assert note is not None and "app:***@db/kms" in note and "s3cret" not in note


def test_the_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    save_state(StackState(database_url="postgresql+psycopg://app:s3cret@db/kms"), tmp_path)

    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
