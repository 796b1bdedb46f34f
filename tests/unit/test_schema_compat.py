"""Schema evolution: every shipped schema reads every frozen version, and the checker catches bad changes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from schemas.codec import SCHEMA_DIR, history_schemas, load_schema, schema_fingerprint
from schemas.compat import backward_problems
from schemas.records import RECORD_TYPES

NAMES = sorted(RECORD_TYPES)
HISTORY = [(name, version) for name in NAMES for version in history_schemas(name)]


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _nested(schema: dict[str, Any], field: str) -> dict[str, Any]:
    """The record definition inside an array field, e.g. Device inside devices."""
    items: dict[str, Any] = _field(schema, field)["type"]["items"]
    return items


# --- the shipped schemas ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), HISTORY, ids=[f"{n}-{v}" for n, v in HISTORY])
def test_current_schema_reads_data_written_with_every_history_version(name: str, version: str) -> None:
    assert backward_problems(history_schemas(name)[version], load_schema(name)) == []


@pytest.mark.parametrize("name", NAMES)
def test_current_schema_is_frozen_as_the_newest_history_version(name: str) -> None:
    # Without the freeze, the next release could not find this release's fingerprint and would
    # treat everything written today as poison.
    history = history_schemas(name)
    assert history, f"schemas/history/{name}/ is empty"
    newest = history[max(history, key=lambda label: int(label.lstrip("v")))]
    assert schema_fingerprint(newest) == schema_fingerprint(load_schema(name))


def test_every_schema_file_is_a_record_type() -> None:
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc")) == NAMES


def test_v0_subscription_event_is_older_without_added_devices() -> None:
    v0 = history_schemas("SubscriptionEvent")["v0"]
    assert "added_devices" not in [f["name"] for f in v0["fields"]]
    # ... so the current schema's default for it is what keeps v0 readable:
    without_default = load_schema("SubscriptionEvent")
    del _field(without_default, "added_devices")["default"]
    assert backward_problems(v0, without_default) == [
        "SubscriptionEvent.added_devices: new field without a default (old data has no value for it)"
    ]


# --- the checker catches what breaks readers ----------------------------------------------------


@pytest.fixture
def old() -> dict[str, Any]:
    return load_schema("SubscriptionEvent")


@pytest.fixture
def new(old: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(old)


def test_unchanged_schema_has_no_problems(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert backward_problems(old, new) == []


def test_new_field_without_default_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    new["fields"].append({"name": "region", "type": "string"})
    assert backward_problems(old, new) == [
        "SubscriptionEvent.region: new field without a default (old data has no value for it)"
    ]


def test_new_field_with_default_is_allowed(old: dict[str, Any], new: dict[str, Any]) -> None:
    new["fields"].append({"name": "region", "type": ["null", "string"], "default": None})
    assert backward_problems(old, new) == []


def test_new_field_in_a_nested_record_without_default_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _nested(new, "devices")["fields"].append({"name": "model", "type": "string"})
    assert backward_problems(old, new) == [
        "SubscriptionEvent.devices[].model: new field without a default (old data has no value for it)"
    ]


def test_default_that_does_not_fit_the_first_union_branch_is_caught(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    new["fields"].append({"name": "region", "type": ["string", "null"], "default": None})
    problems = backward_problems(old, new)
    assert len(problems) == 1 and problems[0].startswith("SubscriptionEvent.region: default None does not fit")


def test_type_change_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "version")["type"] = "string"
    assert backward_problems(old, new) == ["SubscriptionEvent.version: type changed from long to string"]


def test_narrowing_is_caught_but_promotion_is_allowed(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "version")["type"] = "int"
    assert backward_problems(old, new) == ["SubscriptionEvent.version: type changed from long to int"]
    _field(new, "version")["type"] = "double"
    assert backward_problems(old, new) == []


def test_making_a_nullable_field_required_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(_nested(new, "devices"), "stb_serial").update(type="string", default="")
    assert backward_problems(old, new) == ["SubscriptionEvent.devices[].stb_serial: type changed from null to string"]


def test_removed_enum_symbol_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "event_type")["type"]["symbols"].remove("RESUMED")
    assert backward_problems(old, new) == [
        "SubscriptionEvent.event_type: enum EventType lost symbols RESUMED and has no default symbol"
    ]


def test_removed_enum_symbol_with_an_enum_default_is_allowed(old: dict[str, Any], new: dict[str, Any]) -> None:
    enum = _field(new, "event_type")["type"]
    enum["symbols"].remove("RESUMED")
    enum["default"] = "UPDATED"
    assert backward_problems(old, new) == []


def test_added_enum_symbol_is_allowed(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "event_type")["type"]["symbols"].append("MIGRATED")
    assert backward_problems(old, new) == []


def test_removed_field_is_allowed(old: dict[str, Any], new: dict[str, Any]) -> None:
    new["fields"] = [f for f in new["fields"] if f["name"] != "account_id"]
    assert backward_problems(old, new) == []


def test_renamed_field_needs_an_alias(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "account_id")["name"] = "customer_id"
    assert backward_problems(old, new) == [
        "SubscriptionEvent.customer_id: new field without a default (old data has no value for it)"
    ]
    _field(new, "customer_id")["aliases"] = ["account_id"]
    assert backward_problems(old, new) == []


def test_logical_type_change_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _field(new, "occurred_at")["type"]["logicalType"] = "timestamp-micros"
    assert backward_problems(old, new) == [
        "SubscriptionEvent.occurred_at: logical type changed from timestamp-millis to timestamp-micros"
    ]


def test_renamed_nested_record_is_caught(old: dict[str, Any], new: dict[str, Any]) -> None:
    _nested(new, "devices")["name"] = "Box"
    for name in ("removed_devices", "added_devices"):
        _field(new, name)["type"]["items"] = "io.kmsbridge.Box"
    assert "SubscriptionEvent.devices[]: record renamed from Device to Box" in backward_problems(old, new)


def test_map_value_change_is_caught() -> None:
    old = load_schema("KmsResult")
    new = copy.deepcopy(old)
    _field(new, "client_info")["type"][1]["values"]["values"] = "long"
    assert backward_problems(old, new) == ["KmsResult.client_info{}{}: type changed from string to long"]
