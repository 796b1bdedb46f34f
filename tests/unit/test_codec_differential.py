"""The codec's compiled Avro reader and writer against fastavro, over records generated from each schema.

The codec serves every shipped schema through functions it generates (``schemas.codec._compile``)
and keeps fastavro as the reference. These properties hold for every schema in ``schemas/``, the
frozen history included (a registry's latest version may be one of those, and is then the writer):

* the compiled writer writes fastavro's ``schemaless_writer`` bytes, byte for byte;
* the compiled reader reads fastavro's bytes to what ``schemaless_reader`` returns, and ends where
  the body ends;
* a record written by the compiled writer and read by the compiled reader comes back as written
  (times to the millisecond, in UTC, as ``timestamp-millis`` carries them);
* whatever damaged bytes the compiled reader reads to their end (the only answer the codec trusts
  without asking fastavro), fastavro reads to the same value.

The values are generated from the ``.avsc`` itself (every union branch, optional field, array, map,
enum symbol and logical type), not from the pydantic models, so a branch the models happen not to
use is covered too. The writer is called directly, without the codec's fastavro fallback, so a
compiled function that raises fails here instead of quietly costing speed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.codec import Codec, history_schemas, shipped_schemas
from schemas.codec import _compile as compile_schema
from schemas.pin_seal import PinKeyRing

_CURRENT = shipped_schemas()
SCHEMAS: dict[str, dict[str, Any]] = {
    **{name: shipped.parsed for name, shipped in _CURRENT.items()},
    **{f"{name}/{version}": cast(dict[str, Any], parse_schema(raw))
       for name in _CURRENT for version, raw in history_schemas(name).items()},
}
CURRENT_NAMES = sorted(_CURRENT)
ALL_NAMES = sorted(SCHEMAS)
PIN_SEALED = "pin_sealed"
RING = PinKeyRing({"unit-1": bytes(range(32))}, "unit-1")

# Each current schema gets the full budget; each frozen version, which differs from it by a field or two,
# a quarter of it. deadline=None: the first example of a schema builds its strategies.
CURRENT_EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HISTORY_EXAMPLES = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- values generated from an Avro schema -------------------------------------------------------------


def _strings() -> st.SearchStrategy[str]:
    # short texts, and texts of 64 or more characters, whose length takes a second varint byte
    return st.text(max_size=8) | st.text(min_size=64, max_size=70)


_LONGS = st.integers(-64, 63) | st.integers(-(2**63), 2**63 - 1)
_OFFSETS = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
_ZONES = st.just(UTC) | st.builds(timezone, _OFFSETS)
# within a day of datetime's own range, so every instant has a UTC datetime to read back into
_TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_ZONES)
_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": _LONGS,
    "float": st.floats(width=32),
    "double": st.floats(),
    "string": _strings(),
    "bytes": st.binary(max_size=8) | st.binary(min_size=64, max_size=80),
}


def _named(schema: dict[str, Any]) -> dict[str, Any]:
    """Every named type of a parsed schema by full name (fastavro writes each out once, then names it)."""
    return dict(schema.get("__named_schemas", {}))


def _deref(schema: Any, named: dict[str, Any]) -> Any:
    return named[schema] if isinstance(schema, str) and schema in named else schema


def values_of(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Avro values of ``schema`` as fastavro takes them: dicts for records, ``datetime`` for times."""
    schema = _deref(schema, named)
    if isinstance(schema, str):
        return _PRIMITIVES[schema]
    if isinstance(schema, list):
        return st.one_of(*(values_of(branch, named) for branch in schema))
    logical = schema.get("logicalType")
    if logical is not None:
        if logical == "timestamp-millis" and schema["type"] == "long":
            return _TIMES
        raise AssertionError(f"no strategy for logical type {logical!r}: add one, the codec must be checked on it")
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: values_of(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        lists = st.lists(values_of(schema["items"], named), max_size=3)
        if _deref(schema["items"], named) == "string":  # a block count of two varint bytes, of short items
            lists |= st.lists(st.sampled_from(["", "a", "\u00e9"]), min_size=64, max_size=66)
        return lists
    if kind == "map":
        return st.dictionaries(_strings(), values_of(schema["values"], named), max_size=3)
    return _PRIMITIVES[kind]


def as_record(schema: Any, value: Any, named: dict[str, Any]) -> Any:
    """``value`` as the compiled writer reads it: records are objects with attributes, as pydantic's are."""
    schema = _deref(schema, named)
    if isinstance(schema, list):
        if value is None:
            return None
        (branch,) = [b for b in schema if b != "null"]  # the compiled writer knows only [null, X]
        return as_record(branch, value, named)
    if not isinstance(schema, dict):
        return value
    kind = schema["type"]
    if kind == "record":
        return SimpleNamespace(**{f["name"]: as_record(f["type"], value[f["name"]], named) for f in schema["fields"]})
    if kind == "array":
        return [as_record(schema["items"], item, named) for item in value]
    if kind == "map":
        return {key: as_record(schema["values"], item, named) for key, item in value.items()}
    return value


def as_read(schema: Any, value: Any, named: dict[str, Any]) -> Any:
    """What reading ``value`` back must give: each time in UTC, cut to the millisecond below it."""
    schema = _deref(schema, named)
    if isinstance(schema, list):
        if value is None:
            return None
        (branch,) = [b for b in schema if b != "null"]
        return as_read(branch, value, named)
    if not isinstance(schema, dict):
        return value
    if schema.get("logicalType") == "timestamp-millis":
        utc = value.astimezone(UTC)
        return utc - timedelta(microseconds=utc.microsecond % 1000)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: as_read(f["type"], value[f["name"]], named) for f in schema["fields"]}
    if kind == "array":
        return [as_read(schema["items"], item, named) for item in value]
    if kind == "map":
        return {key: as_read(schema["values"], item, named) for key, item in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Deep equality in which a double equals only the same bits (NaN equals NaN, -0.0 is not 0.0) and a
    time only the same instant in the same zone."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    return type(a) is type(b) and bool(a == b)


@st.composite
def cases(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], Any, Any]:
    """(what fastavro writes, the record the compiled writer is given, the ``sealed`` it is given)."""
    schema = SCHEMAS[name]
    named = _named(schema)
    value = draw(values_of(schema, named))
    record = as_record(schema, value, named)
    sealed = None
    if PIN_SEALED in value:  # the wire holds the sealed PIN and a null pin, whatever the record's pin is
        sealed = as_record(_field(schema, PIN_SEALED), value[PIN_SEALED], named)
        record.pin = draw(st.none() | _strings())
        value["pin"] = None
    return value, record, sealed


def _field(schema: dict[str, Any], name: str) -> Any:
    return next(f["type"] for f in schema["fields"] if f["name"] == name)


# --- the compiled functions and fastavro ----------------------------------------------------------------


_FUNCTIONS: dict[tuple[str, bool], Callable[..., Any]] = {}


def compiled(name: str, *, reader: bool) -> Callable[..., Any]:
    key = (name, reader)
    if key not in _FUNCTIONS:
        fn = compile_schema(SCHEMAS[name], reader)
        assert fn is not None, f"{name} is not compiled: list it here if fastavro alone is meant to serve it"
        _FUNCTIONS[key] = fn
    return _FUNCTIONS[key]


def fastavro_bytes(name: str, value: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, SCHEMAS[name], value)
    return out.getvalue()


def fastavro_read(name: str, data: bytes) -> tuple[Any, int]:
    stream = BytesIO(data)
    value = schemaless_reader(stream, SCHEMAS[name], None)
    return value, stream.tell()


def check_writer_and_reader(name: str, case: tuple[dict[str, Any], Any, Any]) -> None:
    value, record, sealed = case
    reference = fastavro_bytes(name, value)
    written = compiled(name, reader=False)(record, sealed)
    assert written == reference, "the compiled writer disagrees with fastavro"

    expected, end = fastavro_read(name, reference)
    got, got_end = compiled(name, reader=True)(reference, 0)
    assert same(got, expected), "the compiled reader disagrees with fastavro"
    assert got_end == end == len(reference)

    back, back_end = compiled(name, reader=True)(written, 0)
    named = _named(SCHEMAS[name])
    assert same(back, as_read(SCHEMAS[name], value, named)), "a written record does not read back as written"
    assert back_end == len(written)


# the values at the edges of what a byte means: boolean, varint continuation, sign of a zig-zag long
_BYTES = st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0x81, 0xFF]) | st.integers(0, 255)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes overwritten, cut short, or extended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        out[draw(st.integers(0, len(out) - 1))] = draw(_BYTES)
    how = draw(st.sampled_from(["as is", "cut", "extended"]))
    if how == "cut":
        del out[draw(st.integers(0, len(out) - 1)):]
    elif how == "extended":
        out += draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


def check_damaged(name: str, body: bytes) -> None:
    """What the compiled reader reads to the end of ``body`` (the only answer the codec trusts without
    asking fastavro), fastavro reads to the same value."""
    try:
        got, end = compiled(name, reader=True)(body, 0)
    except Exception:
        return  # the codec then asks fastavro, which reads it or says what is wrong with it
    if end != len(body):
        return  # likewise
    expected, expected_end = fastavro_read(name, body)
    assert same(got, expected), "the compiled reader accepts damaged bytes that fastavro reads otherwise"
    assert expected_end == len(body)


@pytest.mark.parametrize("name", CURRENT_NAMES)
@CURRENT_EXAMPLES
@given(data=st.data())
def test_compiled_codec_of_each_current_schema_matches_fastavro(name: str, data: st.DataObject) -> None:
    case = data.draw(cases(name))
    check_writer_and_reader(name, case)
    check_damaged(name, data.draw(damaged(fastavro_bytes(name, case[0]))))


@pytest.mark.parametrize("name", sorted(set(ALL_NAMES) - set(CURRENT_NAMES)))
@HISTORY_EXAMPLES
@given(data=st.data())
def test_compiled_codec_of_each_frozen_schema_version_matches_fastavro(name: str, data: st.DataObject) -> None:
    check_writer_and_reader(name, data.draw(cases(name)))


# --- the pydantic records the processes write -----------------------------------------------------------


@pytest.mark.parametrize("name", CURRENT_NAMES)
def test_compiled_codec_serves_each_sample_record_without_falling_back(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    # The codec falls back to fastavro when a compiled function raises: called directly here, they must
    # not, for records as pydantic holds them (StrEnum members, SecretStr PINs, nested models).
    record = sample_records[name]
    body = Codec(pins=RING).encode(record, "unit")[10:]
    expected, _ = fastavro_read(name, body)
    read, end = compiled(name, reader=True)(body, 0)
    assert same(read, expected)
    assert end == len(body)
    sealed = read.get(PIN_SEALED)  # what the codec sealed (a fresh nonce each time), written again
    assert compiled(name, reader=False)(record, None if sealed is None else SimpleNamespace(**sealed)) == body


@pytest.mark.parametrize("name", CURRENT_NAMES)
def test_no_single_damaged_byte_of_a_sample_record_makes_the_compiled_reader_disagree_with_fastavro(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    # Every byte of the body, set to every value: a deterministic sweep the generated damage samples.
    body = Codec(pins=RING).encode(sample_records[name], "unit")[10:]
    for at in range(len(body)):
        for byte in range(256):
            check_damaged(name, body[:at] + bytes([byte]) + body[at + 1:])
