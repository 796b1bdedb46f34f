"""``kmsbridge produce`` names the line and field of every input that breaks a record limit, and sends nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kmsbridge.cli import main

EVENT: dict[str, Any] = {
    "event_id": "0b7e3c1e-8f2a-4c4e-9a51-3f6d2a9d7c10", "event_type": "DEVICES_CHANGED",
    "occurred_at": "2026-11-25T10:00:00Z", "subscription_id": "S-1", "account_id": "A-1",
    "subscription_type": "RESIDENTIAL", "created_at": "2026-01-10T09:00:00Z", "version": 3, "state": "ACTIVE",
    "services": [{"service_code": "BASIC", "state": "ACTIVE", "valid_from": None, "valid_until": None}],
    "devices": [{"distributor": "MAIN", "secure_client_id": "4120051539", "stb_serial": "B-1"}],
    "removed_devices": []}
COMMUNICATION: dict[str, Any] = {
    "communication_id": "C-77", "external_system": "IRDETO", "kind": "MAIL", "text_mode": "UNICODE",
    "text": "Line one\u2028line two", "secure_client_id": None, "subscription_id": "S-1", "all": False,
    "scheduled_at": None, "created_at": "2026-11-25T10:05:00Z"}


def produce(tmp_path: Path, kind: str, lines: list[str]) -> Any:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # An unreachable broker: if anything were produced, the command would not end with exit code 2.
    env = {"KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9", "KMSBRIDGE_STACK_STATE": str(tmp_path / "none")}
    return CliRunner().invoke(main, ["produce", kind, "--file", str(path)], env=env)


def line(record: dict[str, Any], **changes: Any) -> str:
    return json.dumps({**record, **changes}, ensure_ascii=False)


def test_produce_names_the_line_and_field_of_each_id_and_array_beyond_its_limit(tmp_path: Path) -> None:
    device = EVENT["devices"][0]
    result = produce(tmp_path, "subscriptions", [
        line(EVENT),
        line(EVENT, devices=[{**device, "secure_client_id": "41200\u000b51539"}]),
        "",
        line(EVENT, subscription_id="S" * 129),
        line(EVENT, removed_devices=[device] * 100_000),
    ])

    assert result.exit_code == 2, result.output
    assert "nothing sent" in result.output
    assert ("line 2: devices[0].secure_client_id: must not contain control characters or characters XML "
            "cannot carry") in result.output
    assert "line 4: subscription_id: String should have at most 128 characters" in result.output
    assert "line 5: removed_devices: List should have at most 16 items" in result.output
    assert "line 1:" not in result.output


@pytest.mark.parametrize("text", ["bell\u0007", "x" * 16_385], ids=["control", "overlong"])
def test_produce_names_a_text_beyond_its_limit_and_counts_lines_as_an_editor_does(tmp_path: Path,
                                                                                   text: str) -> None:
    # Line 1 holds U+2028 (a line break to str.splitlines, plain text to JSON Lines): still line 1.
    result = produce(tmp_path, "communications", [line(COMMUNICATION), line(COMMUNICATION, text=text)])

    assert result.exit_code == 2, result.output
    problems = [row for row in result.output.splitlines() if row.startswith("line ")]
    assert len(problems) == 1 and problems[0].startswith("line 2: text: "), result.output
