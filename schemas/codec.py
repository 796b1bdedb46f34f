"""Avro bytes <-> pydantic records, in both wire framings of docs/architecture.md §3.

Writing:

- without a Schema Registry: Avro *single-object encoding*, ``C3 01`` + the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + the Avro body;
- with a registry: Confluent framing, ``00`` + the 4-byte big-endian schema id + the Avro body. The
  subject follows :class:`RegistryOptions` (Confluent's topic, record or topic-record name strategy);
  the schema id comes from registering the schema (``auto_register``), from the subject's latest
  version (``use_latest_version``, which then is the writer schema), or else from looking the schema
  up, so a production registry that forbids registration works. Ids are cached, so the registry is
  asked once per topic and record type per process.

Reading accepts both framings whatever the mode, and Confluent's schema GUIDs too (magic ``01`` + 16
bytes, in the value or in the ``__value_schema_id`` header). The writer schema comes from the
fingerprint (any schema shipped in ``schemas/``, history included) or from the registry by id or
GUID; the body is then
resolved to the *current* schema of the expected record (Avro schema evolution: fields added with
defaults get them) and validated by its pydantic model. Anything that can never decode raises
``PoisonMessage`` with a machine ``reason``; a registry that cannot be reached raises the retryable
``SchemaRegistryUnavailable`` instead, because the message itself may be fine; a registry that
refuses our credentials (401/403) raises the fatal ``SchemaRegistryRefused``, naming the setting.

Speed: schemas are parsed once per process, writer headers and reader plans are cached per record
type and writer schema, and reading the current schema skips resolution altogether. Each schema gets
a reader and a writer generated for it (``_compile``), with fastavro as the reference that takes
over on any error; ``tests/unit/test_codec_differential.py`` checks them against fastavro over
records generated from every schema, and ``python -m bench.codec`` measures what they save.

PINs are sealed (:mod:`schemas.pin_seal`): a record type listed in :data:`SEALED_PIN_CONTEXT`
writes its PIN as ``pin_sealed`` (AES-GCM under the codec's key ring) and ``pin`` as null, in the
compiled writer and in fastavro's alike; reading opens ``pin_sealed`` back into the model's ``pin``
(a clear ``pin`` written before v2 of those schemas is still read). A codec without a key ring
writes and reads every record that carries no PIN.

Times travel as ``timestamp-millis``: sub-millisecond parts are dropped on the wire.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args, get_origin
from uuid import UUID

import httpx
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    SchemaRegistryError,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from pydantic import BaseModel, SecretStr, ValidationError

from schemas.compat import backward_problems
from schemas.errors import (
    BadMagic,
    EmptyMessage,
    IncompatibleSchema,
    InvalidRecord,
    RecordEncodeError,
    SchemaRegistryRefused,
    SchemaRegistryUnavailable,
    TruncatedMessage,
    UnknownFingerprint,
    UnknownSchemaId,
    WrongRecordType,
    describe_validation_error,
)
from schemas.pin_seal import PinCipher, PinKeyError, SealedPin, UnreadablePin
from schemas.records import RECORD_TYPES, record_to_dict

__all__ = [
    "CONFLUENT_GUID_MAGIC",
    "CONFLUENT_MAGIC",
    "SCHEMA_DIR",
    "SCHEMA_ID_HEADER",
    "SEALED_PIN_CONTEXT",
    "SINGLE_OBJECT_MAGIC",
    "Codec",
    "RegistryOptions",
    "ShippedSchema",
    "SubjectNameStrategy",
    "history_schemas",
    "load_schema",
    "schema_fingerprint",
    "shipped_schemas",
]

R = TypeVar("R", bound=BaseModel)

SCHEMA_DIR = Path(__file__).resolve().parent
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_GUID_MAGIC = b"\x01"
#: The Kafka header in which Confluent's ``header_schema_id_serializer`` puts a value's schema GUID.
SCHEMA_ID_HEADER = "__value_schema_id"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
_CONFLUENT_GUID_HEADER = len(CONFLUENT_GUID_MAGIC) + 16
_NAME_BY_TYPE: dict[type[BaseModel], str] = {cls: name for name, cls in RECORD_TYPES.items()}

#: Record types whose ``pin`` is sealed on the wire, and the field whose value, with the type's
#: name, is the AES-GCM associated data (a sealed PIN opens only in the record it was sealed for).
SEALED_PIN_CONTEXT: dict[str, str] = {"ServiceRequest": "request_id", "KmsCommand": "idempotency_key"}
_PIN = "pin"
_PIN_SEALED = "pin_sealed"


SubjectNameStrategy = Literal["topic", "record", "topic_record"]
_SUBJECT_NAME_STRATEGIES = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic_record": topic_record_subject_name_strategy,
}


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How the codec writes through a Schema Registry (the serializer settings of confluent-kafka).

    ``auto_register`` registers the current schema (Confluent's default, handy for a local stack);
    ``use_latest_version`` writes with the subject's latest version instead of the current schema;
    with neither, the current schema must already be registered under its subject.
    """

    subject_name_strategy: SubjectNameStrategy = "topic"
    auto_register: bool = True
    use_latest_version: bool = False
    #: the setting prefix error messages name (the composition root's environment variables)
    setting: str = "KMSBRIDGE_SCHEMA_REGISTRY__"

    def subject(self, topic: str, record_name: str) -> str:
        """The subject of a value of record ``record_name`` (fully qualified) on ``topic``."""
        strategy = _SUBJECT_NAME_STRATEGIES[self.subject_name_strategy]
        return str(strategy(SerializationContext(topic, MessageField.VALUE), record_name))


def _pin_context(name: str, record_id: str) -> bytes:
    return f"{name}\x00{record_id}".encode()


# --- shipped schemas ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShippedSchema:
    """One Avro schema as loaded and parsed once per process."""

    name: str  # unqualified record name, e.g. "SubscriptionEvent"
    source: str  # where it came from: a path under schemas/, or "registry id 7"
    raw: dict[str, Any]  # the JSON as written
    parsed: dict[str, Any]  # fastavro's parsed form, what the reader and writer take
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the Parsing Canonical Form
    seals_pin: bool = False  # has a pin_sealed field: its writers never write a clear pin


def schema_fingerprint(schema: dict[str, Any] | str) -> bytes:
    """CRC-64-AVRO fingerprint of ``schema``'s Parsing Canonical Form, little-endian as on the wire.

    The Avro specification's single-object encoding stores the fingerprint little-endian (the Java
    ``SchemaNormalization.fingerprint("CRC-64-AVRO", ...)`` bytes); fastavro's hex string is already
    in that byte order (``"int"`` gives ``8f5c393f1ad57572``, the long ``0x7275d51a3f395c8f``).
    """
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


def _ship(raw: dict[str, Any], source: str) -> ShippedSchema:
    name = str(raw["name"]).rsplit(".", 1)[-1]
    parsed = cast(dict[str, Any], parse_schema(raw))
    seals_pin = any(field.get("name") == _PIN_SEALED for field in raw.get("fields", []))
    return ShippedSchema(name, source, raw, parsed, schema_fingerprint(raw), seals_pin)


@functools.cache
def _catalog() -> tuple[dict[str, ShippedSchema], dict[bytes, ShippedSchema]]:
    """(current schema by record name, every shipped schema by fingerprint), loaded once."""
    current: dict[str, ShippedSchema] = {}
    by_fingerprint: dict[bytes, ShippedSchema] = {}
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        shipped = _ship(json.loads(path.read_text(encoding="utf-8")), f"schemas/{path.name}")
        current[shipped.name] = shipped
        by_fingerprint[shipped.fingerprint] = shipped
    for path in sorted(SCHEMA_DIR.glob("history/*/*.avsc")):
        shipped = _ship(json.loads(path.read_text(encoding="utf-8")), str(path.relative_to(SCHEMA_DIR.parent)))
        # A frozen copy of a current schema has its fingerprint; keep the current entry for it so
        # reading it takes the no-resolution fast path.
        by_fingerprint.setdefault(shipped.fingerprint, shipped)
    return current, by_fingerprint


def shipped_schemas() -> dict[str, ShippedSchema]:
    """The current schema of every record type, by unqualified name."""
    return dict(_catalog()[0])


def load_schema(name: str) -> dict[str, Any]:
    """The current schema of record ``name`` as JSON (a fresh copy, safe to modify)."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))
    return schema


def history_schemas(name: str) -> dict[str, dict[str, Any]]:
    """Frozen earlier versions of record ``name`` by version label (``"v0"``, ``"v1"``, ...)."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((SCHEMA_DIR / "history" / name).glob("*.avsc"))
    }


def _secret_fields(cls: type[BaseModel]) -> tuple[str, ...] | None:
    """Top-level fields of ``cls`` that may hold a ``SecretStr``; None if a nested model holds one."""
    top: list[str] = []
    for name, field in cls.model_fields.items():
        kinds = _types_in(field.annotation)
        if SecretStr in kinds:
            if set(kinds) - {SecretStr, type(None)} or get_origin(field.annotation) in (list, dict):
                return None  # a secret inside a list or map: let record_to_dict find it
            top.append(name)
        elif any(isinstance(k, type) and issubclass(k, BaseModel) and _secret_fields(k) != () for k in kinds):
            return None
    return tuple(top)


def _types_in(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    if not args:
        return [annotation]
    return [kind for arg in args for kind in _types_in(arg)]


@functools.cache
def _dumper(cls: type[BaseModel]) -> Callable[[BaseModel], dict[str, Any]]:
    """The fastest correct way to turn a ``cls`` into what fastavro writes, chosen once per type.

    ``model_dump`` is four times faster than ``record_to_dict`` and its enums are ``StrEnum``, which
    fastavro writes as their symbol; only the secrets must be revealed. When a secret sits in a nested
    model, fall back to ``record_to_dict``, the reference (a unit test pins the two to equal bytes).
    """
    secrets = _secret_fields(cls)
    if secrets is None:
        return record_to_dict

    def dump(record: BaseModel) -> dict[str, Any]:
        value = record.model_dump()
        for name in secrets:
            secret = value[name]
            if secret is not None:
                value[name] = secret.get_secret_value()
        return value

    return dump


def _to_avro(record: BaseModel) -> dict[str, Any]:
    return _dumper(type(record))(record)


# --- compiled fast paths ------------------------------------------------------------------------


class _Unsupported(Exception):
    """The schema uses a construct the compiled paths do not handle: fastavro does it all."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PACK_DOUBLE = struct.Struct("<d").pack
_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


#: ``_SMALL_LONGS[n]`` for -64 <= n < 64 (negative indexes wrap to the second half, as intended).
_SMALL_LONGS: list[bytes] = [_varint(n) for n in range(64)] + [_varint(n) for n in range(-64, 0)]


def _long(n: int) -> bytes:
    """Avro ``long``: zig-zag, then base-128 varint (what fastavro writes, byte for byte)."""
    if -64 <= n < 64:
        return _SMALL_LONGS[n]
    if not -(2**63) <= n < 2**63:
        raise OverflowError("long out of range")
    return _varint(n)


def _text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str):
        return value
    raise TypeError(f"{type(value).__name__} is not a string")


def _millis(value: datetime) -> int:
    """fastavro's ``prepare_timestamp_millis`` for an aware ``datetime`` (naive ones go to fastavro)."""
    if value.__class__ is not datetime or value.tzinfo is None:
        raise TypeError("not an aware datetime")
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _read_long_tail(data: bytes, p: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``first`` had the continuation bit (``p`` is after it)."""
    z = first & 0x7F
    shift = 7
    while True:
        b = data[p]
        p += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            z &= 0xFFFFFFFFFFFFFFFF  # fastavro reads into 64 bits: an overlong 10th byte wraps there too
            return (z >> 1) ^ -(z & 1), p
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")  # fastavro decides what that means


class _Source:
    """Python source being generated, with fresh variable names and constants for ``exec``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def var(self, stem: str = "v") -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value: Any) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str) and schema in named:
        return named[schema]
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis" and schema.get("type") == "long":
            return "timestamp-millis"
        if "logicalType" in schema:
            raise _Unsupported(f"logical type {schema['logicalType']}")
        return str(schema["type"])
    raise _Unsupported(repr(schema))


def _nullable(schema: list[Any]) -> tuple[int, Any]:
    """``(index of null, the other branch)`` of a two-branch union with null, else unsupported."""
    if len(schema) != 2 or "null" not in schema:
        raise _Unsupported("only [null, X] unions are compiled")
    null_at = schema.index("null")
    return null_at, schema[1 - null_at]


def _gen_write(src: _Source, schema: Any, value: str, named: dict[str, Any], ind: int) -> None:
    schema = _resolve(schema, named)
    kind = _kind(schema)
    if kind == "string":
        text = src.var("s")
        src.emit(ind, f"{text} = {value} if {value}.__class__ is str else _text({value})")
        raw = src.var("b")
        size = src.var("n")
        src.emit(ind, f"{raw} = {text}.encode()")
        src.emit(ind, f"{size} = len({raw})")
        src.emit(ind, f"out += _SMALL_LONGS[{size}] if {size} < 64 else _long({size})")
        src.emit(ind, f"out += {raw}")
    elif kind == "bytes":
        size = src.var("n")
        src.emit(ind, f"{size} = len({value})")
        src.emit(ind, f"out += _SMALL_LONGS[{size}] if {size} < 64 else _long({size})")
        src.emit(ind, f"out += {value}")
    elif kind in ("long", "int"):
        src.emit(ind, f"out += _SMALL_LONGS[{value}] if {value}.__class__ is int and -64 <= {value} < 64 "
                      f"else _long({value})")
    elif kind == "timestamp-millis":
        src.emit(ind, f"out += _long(_millis({value}))")
    elif kind == "double":
        src.emit(ind, f"out += _PACK_DOUBLE({value})")
    elif kind == "boolean":
        src.emit(ind, f"out += b'\\x01' if {value} else b'\\x00'")
    elif kind == "enum":
        codes = src.const({symbol: _long(i) for i, symbol in enumerate(schema["symbols"])})
        src.emit(ind, f"out += {codes}[{value}]")
    elif kind == "union":
        null_at, other = _nullable(schema)
        src.emit(ind, f"if {value} is None:")
        src.emit(ind + 1, f"out += {_long(null_at)!r}")
        src.emit(ind, "else:")
        src.emit(ind + 1, f"out += {_long(1 - null_at)!r}")
        _gen_write(src, other, value, named, ind + 1)
    elif kind == "array":
        item = src.var("i")
        src.emit(ind, f"if {value}:")
        src.emit(ind + 1, f"out += _long(len({value}))")
        src.emit(ind + 1, f"for {item} in {value}:")
        _gen_write(src, schema["items"], item, named, ind + 2)
        src.emit(ind, "out += b'\\x00'")
    elif kind == "map":
        key, item = src.var("k"), src.var("m")
        src.emit(ind, f"if {value}:")
        src.emit(ind + 1, f"out += _long(len({value}))")
        src.emit(ind + 1, f"for {key}, {item} in {value}.items():")
        _gen_write(src, "string", key, named, ind + 2)
        _gen_write(src, schema["values"], item, named, ind + 2)
        src.emit(ind, "out += b'\\x00'")
    elif kind == "record":
        _gen_write_fields(src, schema["fields"], value, named, ind)
    else:
        raise _Unsupported(kind)


def _gen_write_fields(src: _Source, fields: list[dict[str, Any]], value: str, named: dict[str, Any], ind: int,
                      wire: dict[str, str] | None = None) -> None:
    """Each field of a record, read as an attribute of ``value`` unless ``wire`` gives its expression."""
    for fld in fields:
        attr = src.var("f")
        name = fld["name"]
        source = wire[name] if wire and name in wire else f"{value}.{name}"
        src.emit(ind, f"{attr} = {source}")
        _gen_write(src, fld["type"], attr, named, ind)


def _emit_read_long(src: _Source, ind: int, into: str) -> None:
    first = src.var("x")
    src.emit(ind, f"{first} = data[p]")
    src.emit(ind, "p += 1")
    src.emit(ind, f"if {first} < 128:")
    src.emit(ind + 1, f"{into} = ({first} >> 1) ^ -({first} & 1)")
    src.emit(ind, "else:")
    src.emit(ind + 1, f"{into}, p = _read_long_tail(data, p, {first})")


def _gen_read(src: _Source, schema: Any, target: str, named: dict[str, Any], ind: int) -> None:
    """Code that reads one value of ``schema`` from ``data`` at ``p`` into the variable ``target``."""
    schema = _resolve(schema, named)
    kind = _kind(schema)
    if kind == "string":
        length, end = src.var("n"), src.var("e")
        _emit_read_long(src, ind, length)
        src.emit(ind, f"{end} = p + {length}")
        src.emit(ind, f"if {length} < 0 or {end} > size:")
        src.emit(ind + 1, "raise EOFError")
        src.emit(ind, f"{target} = data[p:{end}].decode()")
        src.emit(ind, f"p = {end}")
    elif kind == "bytes":
        length, end = src.var("n"), src.var("e")
        _emit_read_long(src, ind, length)
        src.emit(ind, f"{end} = p + {length}")
        src.emit(ind, f"if {length} < 0 or {end} > size:")
        src.emit(ind + 1, "raise EOFError")
        src.emit(ind, f"{target} = data[p:{end}]")
        src.emit(ind, f"p = {end}")
    elif kind in ("long", "int"):
        _emit_read_long(src, ind, target)
    elif kind == "timestamp-millis":
        ms = src.var("t")
        _emit_read_long(src, ind, ms)
        src.emit(ind, f"{target} = _EPOCH + _timedelta(microseconds={ms} * 1000)")
    elif kind == "double":
        src.emit(ind, f"({target},) = _UNPACK_DOUBLE(data, p)")
        src.emit(ind, "p += 8")
    elif kind == "boolean":
        flag = src.var("x")
        src.emit(ind, f"{flag} = data[p]")
        src.emit(ind, "p += 1")
        src.emit(ind, f"if {flag} > 1:")
        src.emit(ind + 1, "raise ValueError('boolean byte')")
        src.emit(ind, f"{target} = {flag} == 1")
    elif kind == "enum":
        index = src.var("x")
        symbols = src.const(tuple(schema["symbols"]))
        _emit_read_long(src, ind, index)
        src.emit(ind, f"if {index} < 0:")
        src.emit(ind + 1, "raise IndexError")
        src.emit(ind, f"{target} = {symbols}[{index}]")
    elif kind == "union":
        null_at, other = _nullable(schema)
        branch = src.var("u")
        src.emit(ind, f"{branch} = data[p]")
        src.emit(ind, "p += 1")
        src.emit(ind, f"if {branch} == {null_at * 2}:")
        src.emit(ind + 1, f"{target} = None")
        src.emit(ind, f"elif {branch} == {(1 - null_at) * 2}:")
        _gen_read(src, other, target, named, ind + 1)
        src.emit(ind, "else:")
        src.emit(ind + 1, "raise ValueError('union branch')")
    elif kind in ("array", "map"):
        count, item, key = src.var("n"), src.var("i"), src.var("k")
        src.emit(ind, f"{target} = {'[]' if kind == 'array' else '{}'}")
        src.emit(ind, "while True:")
        _emit_read_long(src, ind + 1, count)
        src.emit(ind + 1, f"if {count} == 0:")
        src.emit(ind + 2, "break")
        src.emit(ind + 1, f"if {count} < 0:")  # a block that also gives its size in bytes
        src.emit(ind + 2, f"{count} = -{count}")
        _emit_read_long(src, ind + 2, src.var("skip"))
        src.emit(ind + 1, f"for _ in range({count}):")
        if kind == "map":
            _gen_read(src, "string", key, named, ind + 2)
            _gen_read(src, schema["values"], item, named, ind + 2)
            src.emit(ind + 2, f"{target}[{key}] = {item}")
        else:
            _gen_read(src, schema["items"], item, named, ind + 2)
            src.emit(ind + 2, f"{target}.append({item})")
    elif kind == "record":
        fields = []
        for fld in schema["fields"]:
            var = src.var("f")
            fields.append((fld["name"], var))
            _gen_read(src, fld["type"], var, named, ind)
        src.emit(ind, f"{target} = {{" + ", ".join(f"{name!r}: {var}" for name, var in fields) + "}")
    else:
        raise _Unsupported(kind)


def _compile(schema: dict[str, Any], reader: bool) -> Callable[..., Any] | None:
    """A function specialised for ``schema`` (parsed), or None when it uses what is not compiled.

    Writer: ``write(record, sealed) -> bytes`` reading the record's attributes (no ``model_dump``) and
    writing fastavro's bytes; in a schema with ``pin_sealed`` that field is ``sealed`` and ``pin`` is
    null, whatever the record holds; reader: ``read(data, p) -> (dict, end)`` returning what ``schemaless_reader``
    returns. fastavro stays the reference: any error in a compiled function sends the call down the
    fastavro path, which then succeeds or raises its usual, classified error.
    """
    named = dict(schema.get("__named_schemas", {}))
    src = _Source()
    try:
        if reader:
            src.emit(1, "size = len(data)")
            _gen_read(src, schema, "result", named, 1)
            src.emit(1, "return result, p")
            head = "def compiled(data, p):"
        else:
            src.emit(1, "out = bytearray()")
            if _kind(schema) != "record":
                raise _Unsupported("top level is not a record")
            fields = schema["fields"]
            sealing = any(fld["name"] == _PIN_SEALED for fld in fields)
            wire = {_PIN: "None", _PIN_SEALED: "sealed"} if sealing else {}
            _gen_write_fields(src, fields, "record", named, 1, wire)
            src.emit(1, "return bytes(out)")
            head = "def compiled(record, sealed):"
    except (_Unsupported, KeyError):
        return None
    scope: dict[str, Any] = {
        "_long": _long, "_SMALL_LONGS": _SMALL_LONGS, "_text": _text, "_millis": _millis, "_PACK_DOUBLE": _PACK_DOUBLE,
        "_UNPACK_DOUBLE": _UNPACK_DOUBLE, "_read_long_tail": _read_long_tail, "_EPOCH": _EPOCH,
        "_timedelta": timedelta, **src.consts,
    }
    exec("\n".join([head, *src.lines]), scope)  # our own source, generated from our own schemas
    return cast(Callable[..., Any], scope["compiled"])


_COMPILED: dict[tuple[bytes, bool], Callable[..., Any] | None] = {}


def _compiled(schema: ShippedSchema, reader: bool) -> Callable[..., Any] | None:
    """The compiled reader or writer of ``schema``, made on first use (None: fastavro only)."""
    key = (schema.fingerprint, reader)
    try:
        return _COMPILED[key]
    except KeyError:
        fn = _COMPILED[key] = _compile(schema.parsed, reader)
        return fn


# --- the codec ----------------------------------------------------------------------------------


class Codec:
    """Encodes records to Kafka values and decodes them back; one per process, shared by threads.

    ``registry_url`` switches writing to the Confluent framing; ``registry_config`` holds the other
    ``SchemaRegistryClient`` settings (``basic.auth.user.info``, ``ssl.ca.location``, ...). ``pins``
    seals and opens PINs (a :class:`~schemas.pin_seal.PinKeyRing`, or ``MASKED_PINS`` to show records
    without a key); without it, writing a PIN raises ``RecordEncodeError`` and reading a sealed one
    raises ``UnreadablePin``.
    """

    def __init__(self, registry_url: str | None = None, registry_config: dict[str, Any] | None = None,
                 *, pins: PinCipher | None = None, registry_options: RegistryOptions | None = None,
                 registry_client: SchemaRegistryClient | None = None) -> None:
        self._pins = pins
        self._current, self._by_fingerprint = _catalog()
        self._options = registry_options or RegistryOptions()
        self._registry: SchemaRegistryClient | None = registry_client
        if registry_client is None and registry_url:  # new_client: a mock:// URL gets confluent's mock
            self._registry = SchemaRegistryClient.new_client({**(registry_config or {}), "url": registry_url})
        # (topic, type) -> (frame header, writer schema)
        self._writers: dict[tuple[str, type[BaseModel]], tuple[bytes, ShippedSchema]] = {}
        self._by_id: dict[int | UUID, ShippedSchema] = {}  # registry id or GUID -> writer schema
        # (writer fingerprint, expected type) -> reader schema, or None when writer is current
        self._plans: dict[tuple[bytes, type[BaseModel]], dict[str, Any] | None] = {}

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def close(self) -> None:
        """Close the registry client's HTTP session (nothing to do without a registry)."""
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Codec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------------

    def encode(self, record: BaseModel, topic: str) -> bytes:
        """Avro bytes of ``record`` framed for ``topic`` (single-object, or Confluent with a registry)."""
        cls = type(record)
        writer = self._writers.get((topic, cls))
        if writer is None:
            writer = self._writer_for(topic, cls)
        header, schema = writer
        name = _NAME_BY_TYPE[cls]
        sealed = self._seal(name, record) if name in SEALED_PIN_CONTEXT else None
        fast = _compiled(schema, reader=False)
        if fast is not None:
            try:
                return header + fast(record, sealed)
            except Exception:  # fastavro below writes it, or says what does not fit
                pass
        out = BytesIO()
        out.write(header)
        value = _to_avro(record)
        if name in SEALED_PIN_CONTEXT:
            value[_PIN] = None
            value[_PIN_SEALED] = sealed._asdict() if sealed is not None else None
        try:
            schemaless_writer(out, schema.parsed, value)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            # The message of exc may quote a value; keep it in the chain, out of our sentence.
            raise RecordEncodeError(
                f"{schema.name} does not fit {schema.source} ({type(exc).__name__}); the model and the"
                " schema disagree"
            ) from exc
        return out.getvalue()

    def _seal(self, name: str, record: BaseModel) -> SealedPin | None:
        pin = getattr(record, _PIN)
        if pin is None:
            return None
        if self._pins is None:
            raise RecordEncodeError(
                f"a {name} with a PIN cannot be written without a PIN key ring (KMSBRIDGE_PIN_KEYS__FILE or"
                " KMSBRIDGE_PIN_KEYS__KEYS with KMSBRIDGE_PIN_KEYS__CURRENT)"
            )
        clear = pin.get_secret_value() if isinstance(pin, SecretStr) else str(pin)
        try:
            return self._pins.seal(clear, _pin_context(name, getattr(record, SEALED_PIN_CONTEXT[name])))
        except PinKeyError as exc:
            raise RecordEncodeError(f"a {name} with a PIN cannot be written: {exc}") from None

    def encode_many(self, records: Iterable[BaseModel], topic: str) -> list[bytes]:
        """``encode`` of each record, in order."""
        encode = self.encode
        return [encode(record, topic) for record in records]

    def _writer_for(self, topic: str, cls: type[BaseModel]) -> tuple[bytes, ShippedSchema]:
        name = _NAME_BY_TYPE.get(cls)
        if name is None:
            raise RecordEncodeError(
                f"{cls.__name__} has no Avro schema; records with one: {', '.join(sorted(RECORD_TYPES))}"
            )
        schema = self._current[name]
        if self._registry is None:
            header = SINGLE_OBJECT_MAGIC + schema.fingerprint
        else:
            subject = self._options.subject(topic, schema.parsed["name"])
            if self._options.use_latest_version:
                schema_id, schema = self._latest(subject, name)
            else:
                schema_id = self._schema_id(subject, schema)
            self._by_id[schema_id] = schema  # our own messages then decode without a registry call
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        self._writers[(topic, cls)] = (header, schema)
        return header, schema

    def _schema_id(self, subject: str, schema: ShippedSchema) -> int:
        """The id of the current ``schema`` under ``subject``: registered, or looked up."""
        assert self._registry is not None
        registered = Schema(json.dumps(schema.raw), "AVRO")
        verb = "registering" if self._options.auto_register else "looking up"
        doing = f"{verb} {schema.source} under subject {subject!r}"
        try:
            if self._options.auto_register:
                return int(self._registry.register_schema(subject, registered))
            return int(self._registry.lookup_schema(subject, registered).schema_id or 0)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and not self._options.auto_register:
                raise SchemaRegistryRefused(
                    f"the Schema Registry holds no {schema.source} under subject {subject!r} and"
                    f" {self._options.setting}AUTO_REGISTER is false: register it (or enable the setting)"
                ) from exc
            raise self._registry_error(exc, doing) from exc
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailable(f"the Schema Registry cannot be reached for {doing}: {exc}") from exc

    def _latest(self, subject: str, name: str) -> tuple[int, ShippedSchema]:
        """The latest version of ``subject`` as (id, writer schema), ``use_latest_version``'s writer."""
        assert self._registry is not None
        doing = f"reading the latest version of subject {subject!r}"
        try:
            latest = self._registry.get_latest_version(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaRegistryRefused(
                    f"the Schema Registry has no subject {subject!r} and {self._options.setting}USE_LATEST_VERSION"
                    " is true: register the schema first"
                ) from exc
            raise self._registry_error(exc, doing) from exc
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailable(f"the Schema Registry cannot be reached for {doing}: {exc}") from exc
        writer = self._registered(latest.schema, f"registry id {latest.schema_id}")
        if writer.name != name:
            raise SchemaRegistryRefused(f"the latest version of subject {subject!r} is a {writer.name}, not a {name}")
        if name in SEALED_PIN_CONTEXT and not writer.seals_pin:
            raise SchemaRegistryRefused(
                f"the latest version of subject {subject!r} has no {_PIN_SEALED} field: a PIN would travel in"
                " clear; register the current schema"
            )
        return int(latest.schema_id or 0), writer

    def _registry_error(self, exc: SchemaRegistryError, doing: str) -> Exception:
        """Our error for a registry's error answer: refused (fatal), terminal, or retryable."""
        status = exc.http_status_code
        if status in (401, 403):
            return SchemaRegistryRefused(
                f"the Schema Registry refused {doing} with HTTP {status} ({exc.error_message}): check"
                f" {self._options.setting}USERNAME / {self._options.setting}PASSWORD (or the credentials in"
                " KMSBRIDGE_SCHEMA_REGISTRY_URL) and the account's permissions"
            )
        if status in (409, 422):  # incompatible or invalid: retrying will not help
            return RecordEncodeError(f"the Schema Registry refused {doing}: {exc.error_message}")
        return SchemaRegistryUnavailable(f"{doing} failed with HTTP {status}: {exc.error_message}")

    # --- reading --------------------------------------------------------------------------------

    def decode(self, data: bytes | None, expected: type[R], schema_id_header: bytes | None = None) -> R:
        """The ``expected`` record in ``data`` (either framing), resolved to its current schema.

        ``schema_id_header`` is the value of the message's ``__value_schema_id`` header, if any:
        Confluent's header serializer puts the schema GUID there and the bare Avro body in ``data``.
        Raises ``PoisonMessage`` (terminal), ``SchemaRegistryUnavailable`` (retryable) or
        ``SchemaRegistryRefused`` (fatal).
        """
        if schema_id_header is not None:
            writer, _ = self._writer(schema_id_header)
            offset = 0
        else:
            writer, offset = self._writer(data)
        assert data is not None  # _writer rejected None
        key = (writer.fingerprint, expected)
        try:
            reader = self._plans[key]
        except KeyError:
            reader = self._plan(writer, expected)
        return self._read(data, offset, writer, reader, expected)

    def decode_many(self, values: Iterable[bytes | None], expected: type[R]) -> list[R]:
        """``decode`` of each value, in order; the first poison message raises."""
        decode = self.decode
        return [decode(value, expected) for value in values]

    def decode_any(self, data: bytes | None) -> BaseModel:
        """The record in ``data``, of whichever type its writer schema names (for ``kmsbridge tail``)."""
        writer, _ = self._writer(data)
        expected = RECORD_TYPES.get(writer.name)
        if expected is None:
            raise WrongRecordType(
                f"writer schema {writer.source} is a {writer.name}, which is no kmsbridge record"
            )
        return self.decode(data, expected)

    def _writer(self, data: bytes | None) -> tuple[ShippedSchema, int]:
        """The writer schema of ``data`` and the offset where its Avro body starts."""
        if not data:
            raise EmptyMessage()
        first = data[0]
        if first == 0xC3:
            if len(data) >= 2 and data[1] != 0x01:
                raise BadMagic(
                    f"single-object marker is 0xC3 0x{data[1]:02X}; expected 0xC3 0x01 (Avro single-object"
                    " encoding v1)"
                )
            if len(data) < _SINGLE_OBJECT_HEADER:
                raise TruncatedMessage(
                    f"single-object message of {len(data)} bytes is shorter than its"
                    f" {_SINGLE_OBJECT_HEADER}-byte header"
                )
            fingerprint = data[2:_SINGLE_OBJECT_HEADER]
            writer = self._by_fingerprint.get(fingerprint)
            if writer is None:
                raise UnknownFingerprint(
                    f"no schema shipped in schemas/ (history included) has CRC-64-AVRO fingerprint"
                    f" {fingerprint.hex()}; the writer used a schema this release does not know"
                )
            return writer, _SINGLE_OBJECT_HEADER
        if first == 0x00:
            if len(data) < _CONFLUENT_HEADER:
                raise TruncatedMessage(
                    f"Confluent-framed message of {len(data)} bytes is shorter than its"
                    f" {_CONFLUENT_HEADER}-byte header"
                )
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER], "big")
            writer = self._by_id.get(schema_id)
            if writer is None:
                writer = self._fetch(schema_id)
            return writer, _CONFLUENT_HEADER
        if first == 0x01:
            if len(data) < _CONFLUENT_GUID_HEADER:
                raise TruncatedMessage(
                    f"Confluent GUID-framed message of {len(data)} bytes is shorter than its"
                    f" {_CONFLUENT_GUID_HEADER}-byte header"
                )
            guid = UUID(bytes=bytes(data[1:_CONFLUENT_GUID_HEADER]))
            writer = self._by_id.get(guid)
            if writer is None:
                writer = self._fetch(guid)
            return writer, _CONFLUENT_GUID_HEADER
        raise BadMagic(
            f"first byte 0x{first:02X} is neither 0x00 or 0x01 (Confluent Schema Registry framing by id or"
            " GUID) nor 0xC3 (Avro single-object encoding)"
        )

    def _fetch(self, schema_id: int | UUID) -> ShippedSchema:
        what = f"schema {'GUID' if isinstance(schema_id, UUID) else 'id'} {schema_id}"
        if self._registry is None:
            raise UnknownSchemaId(
                f"message is framed for Schema Registry {what} but no registry is configured"
                " (KMSBRIDGE_SCHEMA_REGISTRY_URL)"
            )
        try:
            if isinstance(schema_id, UUID):
                registered = self._registry.get_schema_by_guid(str(schema_id))
            else:
                registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaId(f"the Schema Registry has no {what}") from None
            raise self._registry_error(exc, f"fetching {what}") from exc
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailable(f"the Schema Registry cannot be reached to fetch {what}: {exc}") from exc
        if registered is None:  # confluent's mock answers None for an unknown GUID
            raise UnknownSchemaId(f"the Schema Registry has no {what}")
        writer = self._registered(registered, what.replace("schema ", "registry ", 1))
        self._by_id[schema_id] = writer
        return writer

    def _registered(self, registered: Schema, source: str) -> ShippedSchema:
        """A registry's schema as a writer schema, sharing the shipped parse when it is one of ours
        (same fingerprint, same reader plan, and the no-resolution fast path for the current one)."""
        if (registered.schema_type or "AVRO") != "AVRO" or not registered.schema_str:
            raise UnknownSchemaId(f"{source} is a {registered.schema_type} schema, not Avro")
        try:
            fetched = _ship(json.loads(registered.schema_str), source)
        except Exception:
            raise UnknownSchemaId(f"{source} is not a valid Avro record schema") from None
        return self._by_fingerprint.get(fetched.fingerprint, fetched)

    def _plan(self, writer: ShippedSchema, expected: type[BaseModel]) -> dict[str, Any] | None:
        """The reader schema for ``writer`` -> ``expected`` (None: writer is current, read as is)."""
        name = _NAME_BY_TYPE.get(expected)
        if name is None:
            raise TypeError(f"{expected.__name__} has no Avro schema in schemas/")
        if writer.name != name:
            raise WrongRecordType(f"expected a {name} but the writer schema ({writer.source}) is a {writer.name}")
        current = self._current[name]
        reader = None if writer.fingerprint == current.fingerprint else current.parsed
        self._plans[(writer.fingerprint, expected)] = reader
        return reader

    def _read(
        self, data: bytes, offset: int, writer: ShippedSchema, reader: dict[str, Any] | None, expected: type[R]
    ) -> R:
        # ``from None`` below: the causes (UnicodeDecodeError, ValidationError) quote payload bytes
        # and field values, PINs included, and must not reach a log through the traceback.
        fast = _compiled(writer, reader=True) if reader is None else None
        if fast is not None:
            try:
                value, end = fast(data, offset)
            except Exception:  # fastavro below reads it, or classifies what is wrong with it
                end = -1
            if end == len(data):
                return self._validate(value, writer, expected)
        stream = BytesIO(data)
        stream.seek(offset)
        try:
            value = cast(dict[str, Any], schemaless_reader(stream, writer.parsed, reader))
        except EOFError:
            raise TruncatedMessage(
                f"{writer.name} body ends early: the message of {len(data)} bytes is cut short"
            ) from None
        except SchemaResolutionError:
            problems = backward_problems(writer.raw, _catalog()[0][writer.name].raw)
            raise IncompatibleSchema(
                f"{writer.name} written with {writer.source} cannot be read with the current schema: "
                + ("; ".join(problems) or "a value has no counterpart in the current schema")
            ) from None
        except Exception as exc:
            raise InvalidRecord(
                f"{writer.name} body is corrupt ({type(exc).__name__} while decoding with {writer.source})",
                reason="corrupt",
            ) from None
        left = len(data) - stream.tell()
        if left:
            raise InvalidRecord(
                f"{left} bytes left after the {writer.name} body; the bytes do not match {writer.source}",
                reason="corrupt",
            )
        return self._validate(value, writer, expected)

    def _validate(self, value: dict[str, Any], writer: ShippedSchema, expected: type[R]) -> R:
        """The ``expected`` record of a decoded ``value``, its sealed PIN opened into ``pin``."""
        if writer.name in SEALED_PIN_CONTEXT:
            self._open(value, writer)
        try:
            return expected.model_validate(value)
        except ValidationError as exc:
            raise InvalidRecord(f"{writer.name} is invalid: {describe_validation_error(exc)}") from None

    def _open(self, value: dict[str, Any], writer: ShippedSchema) -> None:
        sealed = value.pop(_PIN_SEALED, None)
        if writer.seals_pin and value.get(_PIN) is not None:
            raise InvalidRecord(f"{writer.name} carries a clear PIN, which {writer.source} never writes")
        if sealed is None:
            return  # no PIN, or a clear one written before PINs were sealed
        record_id = value.get(SEALED_PIN_CONTEXT[writer.name])
        if not isinstance(record_id, str):
            raise InvalidRecord(f"{writer.name} has a sealed PIN but no {SEALED_PIN_CONTEXT[writer.name]}")
        if self._pins is None:
            raise UnreadablePin(
                f"{writer.name} {record_id!r} has a sealed PIN and this process has no PIN key ring"
                " (KMSBRIDGE_PIN_KEYS__FILE or KMSBRIDGE_PIN_KEYS__KEYS)"
            )
        pin = self._pins.open(SealedPin(**sealed), _pin_context(writer.name, record_id))
        value[_PIN] = pin
