"""JSON for people: JSON Lines in with every bad line named, one-line JSON out with the PIN masked."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from schemas.errors import JsonLinesError
from schemas.jsonio import parse_jsonl, to_json
from schemas.records import RECORD_TYPES, CommunicationEvent, SubscriptionEvent

DESIGN_EXAMPLE = (
    '{"event_id": "0b7e3c1e-8f2a-4c4e-9a51-3f6d2a9d7c10", "event_type": "SERVICES_CHANGED",'
    ' "occurred_at": "2026-11-25T10:00:00Z", "subscription_id": "S-1", "account_id": "A-1",'
    ' "subscription_type": "RESIDENTIAL", "created_at": "2026-01-10T09:00:00Z", "version": 3,'
    ' "state": "ACTIVE",'
    ' "services": [{"service_code": "BASIC", "state": "ACTIVE", "valid_from": null, "valid_until": null},'
    ' {"service_code": "SPORTS", "state": "INACTIVE", "valid_from": null, "valid_until": null}],'
    ' "devices": [{"distributor": "MAIN", "secure_client_id": "4120051539", "stb_serial": "B-1"}],'
    ' "removed_devices": []}'
)


def test_design_example_lines_parse_skipping_blank_lines() -> None:
    events = parse_jsonl([DESIGN_EXAMPLE, "", "   ", DESIGN_EXAMPLE.replace('"version": 3', '"version": 4')],
                         SubscriptionEvent)
    assert [e.version for e in events] == [3, 4]
    assert events[0].devices[0].stb_serial == "B-1"
    assert events[0].added_devices == []


def test_every_bad_line_is_named_with_its_field_and_nothing_is_returned() -> None:
    negative = DESIGN_EXAMPLE.replace('"version": 3', '"version": -1')
    no_client = DESIGN_EXAMPLE.replace('"secure_client_id": "4120051539", ', "")
    naive_time = DESIGN_EXAMPLE.replace('"2026-11-25T10:00:00Z"', '"2026-11-25T10:00:00"')
    lines = [DESIGN_EXAMPLE, negative, "{not json", "", no_client, naive_time]

    with pytest.raises(JsonLinesError) as caught:
        parse_jsonl(lines, SubscriptionEvent)

    problems = caught.value.problems
    assert [p.split(":", 2)[:2] for p in problems] == [
        ["line 2", " version"],
        ["line 3", " not valid JSON"],
        ["line 5", " devices[0].secure_client_id"],
        ["line 6", " occurred_at"],
    ]
    assert "greater than or equal to 0" in problems[0]
    assert "4 invalid lines" in str(caught.value)


def test_record_level_rule_is_reported_for_the_whole_record() -> None:
    line = json.dumps({"communication_id": "C-1", "external_system": "X", "kind": "MAIL", "text_mode": "ANSI",
                       "text": "hi", "created_at": "2026-11-25T10:05:00Z"})
    with pytest.raises(JsonLinesError) as caught:
        parse_jsonl([line], CommunicationEvent)
    assert caught.value.problems[0].startswith("line 1: (record): Value error, exactly one of")


def test_pin_is_masked_in_json(sample_records: dict[str, BaseModel]) -> None:
    for name in ("ServiceRequest", "KmsCommand"):
        text = to_json(sample_records[name])
        assert json.loads(text)["pin"] == "****"
        assert "4711" not in text and "0000" not in text


def test_json_is_one_line_with_iso_times_and_enum_names(sample_records: dict[str, BaseModel]) -> None:
    text = to_json(sample_records["SubscriptionEvent"])
    value = json.loads(text)
    assert "\n" not in text
    assert value["occurred_at"] == "2026-11-25T10:00:00.123Z"
    assert value["created_at"] == "2026-11-25T09:00:00Z"
    assert value["event_type"] == "SERVICES_CHANGED"
    assert value["services"][1] == {"service_code": "SPORTS", "state": "INACTIVE",
                                    "valid_from": "2026-11-25T00:00:00Z", "valid_until": "2026-11-25T23:59:00.999Z",
                                    "distributors": None}


@pytest.mark.parametrize("name", ["SubscriptionEvent", "CommunicationEvent", "KmsResult", "ReconcileReport"])
def test_json_of_a_record_without_secrets_reads_back_equal(name: str, sample_records: dict[str, BaseModel]) -> None:
    record = sample_records[name]
    assert parse_jsonl([to_json(record)], RECORD_TYPES[name]) == [record]
