"""Avro bytes <-> pydantic records, in both wire framings of DESIGN.md §3.

Writing:

- without a Schema Registry: Avro *single-object encoding*, ``C3 01`` + the 8-byte little-endian
  CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + the Avro body;
- with a registry: Confluent framing, ``00`` + the 4-byte big-endian schema id + the Avro body, the
  schema registered once per subject ``<topic>-value`` (ids are cached, so the registry is asked once
  per topic and record type per process).

Reading accepts both framings whatever the mode. The writer schema comes from the fingerprint
(any schema shipped in ``schemas/``, history included) or from the registry by id; the body is then
resolved to the *current* schema of the expected record (Avro schema evolution: fields added with
defaults get them) and validated by its pydantic model. Anything that can never decode raises
``PoisonMessage`` with a machine ``reason``; a registry that cannot be reached raises the retryable
``SchemaRegistryUnavailable`` instead, because the message itself may be fine.

Speed: schemas are parsed once per process, writer headers and reader plans are cached per record
type and writer schema, and reading the current schema skips resolution altogether.

Times travel as ``timestamp-millis``: sub-millisecond parts are dropped on the wire.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar, cast, get_args, get_origin

import httpx
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
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
    SchemaRegistryUnavailable,
    TruncatedMessage,
    UnknownFingerprint,
    UnknownSchemaId,
    WrongRecordType,
    describe_validation_error,
)
from schemas.records import RECORD_TYPES, record_to_dict

__all__ = [
    "CONFLUENT_MAGIC",
    "SCHEMA_DIR",
    "SINGLE_OBJECT_MAGIC",
    "Codec",
    "ShippedSchema",
    "history_schemas",
    "load_schema",
    "schema_fingerprint",
    "shipped_schemas",
]

R = TypeVar("R", bound=BaseModel)

SCHEMA_DIR = Path(__file__).resolve().parent
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
_NAME_BY_TYPE: dict[type[BaseModel], str] = {cls: name for name, cls in RECORD_TYPES.items()}


# --- shipped schemas ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShippedSchema:
    """One Avro schema as loaded and parsed once per process."""

    name: str  # unqualified record name, e.g. "SubscriptionEvent"
    source: str  # where it came from: a path under schemas/, or "registry id 7"
    raw: dict[str, Any]  # the JSON as written
    parsed: dict[str, Any]  # fastavro's parsed form, what the reader and writer take
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the Parsing Canonical Form


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
    return ShippedSchema(name, source, raw, parsed, schema_fingerprint(raw))


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


# --- the codec ----------------------------------------------------------------------------------


class Codec:
    """Encodes records to Kafka values and decodes them back; one per process, shared by threads.

    ``registry_url`` switches writing to the Confluent framing; ``registry_config`` holds the other
    ``SchemaRegistryClient`` settings (``basic.auth.user.info``, ``ssl.ca.location``, ...).
    """

    def __init__(self, registry_url: str | None = None, registry_config: dict[str, Any] | None = None) -> None:
        self._current, self._by_fingerprint = _catalog()
        self._registry: SchemaRegistryClient | None = None
        if registry_url:
            self._registry = SchemaRegistryClient({**(registry_config or {}), "url": registry_url})
        self._headers: dict[tuple[str, type[BaseModel]], bytes] = {}  # (topic, type) -> frame header
        self._by_id: dict[int, ShippedSchema] = {}  # registry id -> writer schema
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
        header = self._headers.get((topic, cls))
        if header is None:
            header = self._header(topic, cls)
        schema = self._current[_NAME_BY_TYPE[cls]]
        out = BytesIO()
        out.write(header)
        try:
            schemaless_writer(out, schema.parsed, _to_avro(record))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            # The message of exc may quote a value; keep it in the chain, out of our sentence.
            raise RecordEncodeError(
                f"{schema.name} does not fit {schema.source} ({type(exc).__name__}); the model and the"
                " schema disagree"
            ) from exc
        return out.getvalue()

    def encode_many(self, records: Iterable[BaseModel], topic: str) -> list[bytes]:
        """``encode`` of each record, in order."""
        encode = self.encode
        return [encode(record, topic) for record in records]

    def _header(self, topic: str, cls: type[BaseModel]) -> bytes:
        name = _NAME_BY_TYPE.get(cls)
        if name is None:
            raise RecordEncodeError(
                f"{cls.__name__} has no Avro schema; records with one: {', '.join(sorted(RECORD_TYPES))}"
            )
        schema = self._current[name]
        if self._registry is None:
            header = SINGLE_OBJECT_MAGIC + schema.fingerprint
        else:
            schema_id = self._register(f"{topic}-value", schema)
            self._by_id[schema_id] = schema  # our own messages then decode without a registry call
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        self._headers[(topic, cls)] = header
        return header

    def _register(self, subject: str, schema: ShippedSchema) -> int:
        assert self._registry is not None
        try:
            return int(self._registry.register_schema(subject, Schema(json.dumps(schema.raw), "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422):  # incompatible or invalid: retrying will not help
                raise RecordEncodeError(
                    f"the Schema Registry refused {schema.source} under subject {subject!r}:"
                    f" {exc.error_message}"
                ) from exc
            raise SchemaRegistryUnavailable(
                f"registering {schema.name} under subject {subject!r} failed with HTTP"
                f" {exc.http_status_code}: {exc.error_message}"
            ) from exc
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailable(
                f"the Schema Registry cannot be reached to register {subject!r}: {exc}"
            ) from exc

    # --- reading --------------------------------------------------------------------------------

    def decode(self, data: bytes | None, expected: type[R]) -> R:
        """The ``expected`` record in ``data`` (either framing), resolved to its current schema.

        Raises ``PoisonMessage`` (terminal) or ``SchemaRegistryUnavailable`` (retryable).
        """
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
        raise BadMagic(
            f"first byte 0x{first:02X} is neither 0x00 (Confluent Schema Registry framing) nor 0xC3"
            " (Avro single-object encoding)"
        )

    def _fetch(self, schema_id: int) -> ShippedSchema:
        if self._registry is None:
            raise UnknownSchemaId(
                f"message is framed for Schema Registry id {schema_id} but no registry is configured"
                " (KMSBRIDGE_SCHEMA_REGISTRY_URL)"
            )
        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaId(f"the Schema Registry has no schema with id {schema_id}") from None
            raise SchemaRegistryUnavailable(
                f"fetching schema id {schema_id} failed with HTTP {exc.http_status_code}: {exc.error_message}"
            ) from exc
        except httpx.HTTPError as exc:
            raise SchemaRegistryUnavailable(
                f"the Schema Registry cannot be reached to fetch schema id {schema_id}: {exc}"
            ) from exc
        if (registered.schema_type or "AVRO") != "AVRO" or not registered.schema_str:
            raise UnknownSchemaId(f"schema id {schema_id} is a {registered.schema_type} schema, not Avro")
        try:
            raw = json.loads(registered.schema_str)
            fetched = _ship(raw, f"registry id {schema_id}")
        except Exception:
            raise UnknownSchemaId(f"schema id {schema_id} is not a valid Avro record schema") from None
        # Share the shipped parse when the registry holds one of our schemas: same fingerprint,
        # same reader plan, and the no-resolution fast path for the current one.
        writer = self._by_fingerprint.get(fetched.fingerprint, fetched)
        self._by_id[schema_id] = writer
        return writer

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

    @staticmethod
    def _read(
        data: bytes, offset: int, writer: ShippedSchema, reader: dict[str, Any] | None, expected: type[R]
    ) -> R:
        # ``from None`` below: the causes (UnicodeDecodeError, ValidationError) quote payload bytes
        # and field values, PINs included, and must not reach a log through the traceback.
        stream = BytesIO(data)
        stream.seek(offset)
        try:
            value = schemaless_reader(stream, writer.parsed, reader)
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
        try:
            return expected.model_validate(value)
        except ValidationError as exc:
            raise InvalidRecord(f"{writer.name} is invalid: {describe_validation_error(exc)}") from None
