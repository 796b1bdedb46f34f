"""``schemas/compat.py`` agrees with Apache Avro's own compatibility checker on every history pair.

Each ordered pair of versions of a record (the frozen ones in ``schemas/history/`` and the current
one) is checked both ways, writer older and writer newer. Every shipped pair is compatible both ways,
so the current schemas are also read with readers changed the ways a schema must not change (a field
added without a default, a type changed, an enum symbol dropped, the record renamed) and one way it
may (a field added with a default): the two checkers must agree on those too.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.codec import history_schemas, load_schema
from schemas.compat import backward_problems
from schemas.records import RECORD_TYPES


def _versions(name: str) -> dict[str, dict[str, Any]]:
    return {**history_schemas(name), "current": load_schema(name)}


PAIRS = [
    (name, writer, reader)
    for name in sorted(RECORD_TYPES)
    for writer, reader in itertools.permutations(_versions(name), 2)
]


def _add_field(default: bool) -> Callable[[dict[str, Any]], None]:
    def change(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "x_added", "type": "string", **({"default": ""} if default else {})})
    return change


def _retype_first_string(schema: dict[str, Any]) -> None:
    next(f for f in schema["fields"] if f["type"] == "string")["type"] = "int"


def _drop_an_enum_symbol(schema: dict[str, Any]) -> None:
    enum = next(f["type"] for f in schema["fields"] if isinstance(f["type"], dict) and f["type"]["type"] == "enum")
    enum["symbols"] = enum["symbols"][:-1]
    enum.pop("default", None)


def _rename(schema: dict[str, Any]) -> None:
    schema["name"] = "Renamed"


CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "field_with_default": _add_field(default=True),
    "field_without_default": _add_field(default=False),
    "string_to_int": _retype_first_string,
    "enum_symbol_dropped": _drop_an_enum_symbol,
    "renamed": _rename,
}
CHANGED = [
    (name, change)
    for name in sorted(RECORD_TYPES)
    for change in CHANGES
    if change != "enum_symbol_dropped"
    or any(isinstance(f["type"], dict) and f["type"]["type"] == "enum" for f in load_schema(name)["fields"])
]


def _avro_says_readable(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    return bool(result.compatibility is SchemaCompatibilityType.compatible)


def test_every_record_has_pairs_to_compare() -> None:
    assert {name for name, _, _ in PAIRS} == set(RECORD_TYPES)


@pytest.mark.parametrize(("name", "writer", "reader"), PAIRS, ids=[f"{n}:{w}->{r}" for n, w, r in PAIRS])
def test_compat_agrees_with_apache_avro(name: str, writer: str, reader: str) -> None:
    versions = _versions(name)
    ours = backward_problems(versions[writer], versions[reader])

    assert (not ours) == _avro_says_readable(versions[writer], versions[reader]), ours


@pytest.mark.parametrize(("name", "change"), CHANGED, ids=[f"{n}:{c}" for n, c in CHANGED])
def test_compat_agrees_with_apache_avro_on_changed_readers(name: str, change: str) -> None:
    writer = load_schema(name)
    reader = copy.deepcopy(writer)
    CHANGES[change](reader)
    ours = backward_problems(writer, reader)

    assert (not ours) == _avro_says_readable(writer, reader), ours
    assert (not ours) == (change == "field_with_default")
