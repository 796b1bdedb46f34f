"""The record codec: both wire framings, schema evolution, and every way a message can be poison."""

from __future__ import annotations

import json
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pytest
from fastavro import parse_schema, schemaless_writer
from pydantic import BaseModel

from schemas.codec import SEALED_PIN_CONTEXT, Codec, history_schemas, load_schema, schema_fingerprint
from schemas.errors import PoisonMessage, SchemaRegistryUnavailable
from schemas.pin_seal import PinKeyRing
from schemas.records import (
    RECORD_TYPES,
    KmsCommand,
    KmsResult,
    ServiceRequest,
    SubscriptionEvent,
    record_to_dict,
)

if TYPE_CHECKING:
    from conftest import FakeSchemaRegistry

NAMES = sorted(RECORD_TYPES)
TOPIC = "crm.subscriptions"
RING = PinKeyRing({"unit-1": bytes(range(32))}, "unit-1")


def _wire_dict(name: str, record: BaseModel) -> dict[str, Any]:
    """What the codec must write for ``record``: ``record_to_dict``, with a PIN sealed under RING."""
    value = record_to_dict(record)
    if name in SEALED_PIN_CONTEXT:
        pin, value["pin"] = value["pin"], None
        context = f"{name}\x00{value[SEALED_PIN_CONTEXT[name]]}".encode()
        value["pin_sealed"] = RING.seal(pin, context)._asdict() if pin is not None else None
    return value


def _avro_body(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, parse_schema(schema), value)
    return out.getvalue()


def _single_object(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    """Bytes as another producer would write them with ``schema``: written by hand, not by Codec."""
    return b"\xc3\x01" + schema_fingerprint(schema) + _avro_body(schema, value)


def _confluent(schema_id: int, schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + _avro_body(schema, value)


def _poison(data: bytes | None, expected: type[BaseModel], codec: Codec | None = None) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as caught:
        (codec or Codec(pins=RING)).decode(data, expected)
    assert caught.value.retryable is False
    return caught.value


# --- single-object encoding ---------------------------------------------------------------------


def test_fingerprint_is_the_avro_spec_crc64_in_little_endian_order() -> None:
    # Avro's own test vector: the Parsing Canonical Form "int" has CRC-64-AVRO 0x7275d51a3f395c8f
    # (8247732601305521295); single-object encoding stores it little-endian.
    assert schema_fingerprint("int") == (0x7275D51A3F395C8F).to_bytes(8, "little")


@pytest.mark.parametrize("name", NAMES)
def test_every_record_round_trips_in_single_object_encoding(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    record = sample_records[name]
    data = Codec(pins=RING).encode(record, TOPIC)

    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema_fingerprint(load_schema(name))
    assert Codec(pins=RING).decode(data, RECORD_TYPES[name]) == record


@pytest.mark.parametrize("name", NAMES)
def test_codec_writes_the_same_body_as_record_to_dict(name: str, sample_records: dict[str, BaseModel]) -> None:
    # The codec's fast dump must not drift from record_to_dict, the reference (PINs sealed).
    record = sample_records[name]
    assert Codec(pins=RING).encode(record, TOPIC)[10:] == _avro_body(load_schema(name), _wire_dict(name, record))


@pytest.mark.parametrize("name", NAMES)
def test_decode_any_returns_the_record_type_its_writer_schema_names(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    record = sample_records[name]
    decoded = Codec(pins=RING).decode_any(Codec(pins=RING).encode(record, TOPIC))
    assert type(decoded) is RECORD_TYPES[name]
    assert decoded == record


def test_pin_survives_the_avro_round_trip(sample_records: dict[str, BaseModel]) -> None:
    codec = Codec(pins=RING)
    request = codec.decode(codec.encode(sample_records["ServiceRequest"], "kms.requests"), ServiceRequest)
    command = codec.decode(codec.encode(sample_records["KmsCommand"], "kms.commands"), KmsCommand)
    assert request.pin is not None and request.pin.get_secret_value() == "4711"
    assert command.pin is not None and command.pin.get_secret_value() == "0000"


def test_many_helpers_keep_order(sample_records: dict[str, BaseModel]) -> None:
    event = sample_records["SubscriptionEvent"]
    assert isinstance(event, SubscriptionEvent)
    events = [event.model_copy(update={"version": v}) for v in range(5)]
    codec = Codec(pins=RING)
    decoded = codec.decode_many(codec.encode_many(events, TOPIC), SubscriptionEvent)
    assert [e.version for e in decoded] == [0, 1, 2, 3, 4]


# --- schema evolution ---------------------------------------------------------------------------


def _v0_event(sample_records: dict[str, BaseModel]) -> dict[str, Any]:
    value = record_to_dict(sample_records["SubscriptionEvent"])
    del value["added_devices"]  # v0 did not know it
    return value


def test_subscription_event_written_with_v0_reads_with_no_added_devices(
    sample_records: dict[str, BaseModel],
) -> None:
    data = _single_object(history_schemas("SubscriptionEvent")["v0"], _v0_event(sample_records))

    event = Codec(pins=RING).decode(data, SubscriptionEvent)

    assert event.added_devices == []
    assert event.devices == sample_records["SubscriptionEvent"].devices  # type: ignore[attr-defined]


def test_subscription_event_written_with_v0_through_the_registry_reads_with_no_added_devices(
    schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    v0 = history_schemas("SubscriptionEvent")["v0"]
    schema_id = schema_registry.register(f"{TOPIC}-value", json.dumps(v0))
    data = _confluent(schema_id, v0, _v0_event(sample_records))

    event = Codec(schema_registry.url, pins=RING).decode(data, SubscriptionEvent)

    assert event.added_devices == []
    assert event.version == 3


# --- Confluent framing --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_record_round_trips_in_confluent_framing(
    name: str, schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    record = sample_records[name]
    data = Codec(schema_registry.url, pins=RING).encode(record, "some.topic")

    schema_id = int.from_bytes(data[1:5], "big")
    assert data[0] == 0
    assert schema_registry.subjects == {"some.topic-value": [schema_id]}
    # A fresh codec (as in another process) must fetch the writer schema by id to read it.
    assert Codec(schema_registry.url, pins=RING).decode(data, RECORD_TYPES[name]) == record
    assert schema_registry.count("GET", f"/schemas/ids/{schema_id}") == 1


def test_schema_id_is_registered_once_per_topic_and_record_type(
    schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    codec = Codec(schema_registry.url, pins=RING)
    for _ in range(3):
        codec.encode(sample_records["KmsCommand"], "kms.commands")
        codec.encode(sample_records["KmsResult"], "kms.results")

    assert schema_registry.count("POST", r"/subjects/.*/versions") == 2
    assert set(schema_registry.subjects) == {"kms.commands-value", "kms.results-value"}


def test_registry_codec_reads_single_object_messages_too(
    schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    record = sample_records["KmsResult"]
    data = Codec(pins=RING).encode(record, "kms.results")
    assert Codec(schema_registry.url, pins=RING).decode(data, KmsResult) == record
    assert schema_registry.requests == []


def test_unreachable_registry_is_retryable_not_poison(
    schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    data = Codec(schema_registry.url, pins=RING).encode(sample_records["KmsResult"], "kms.results")
    schema_registry.fail_with = 503
    reader = Codec(schema_registry.url, {"max.retries": 0}, pins=RING)

    with pytest.raises(SchemaRegistryUnavailable) as caught:
        reader.decode(data, KmsResult)
    assert caught.value.retryable is True
    assert not isinstance(caught.value, PoisonMessage)


# --- poison messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, b""])
def test_empty_value_is_poison(data: bytes | None) -> None:
    assert _poison(data, SubscriptionEvent).reason == "empty"


def test_body_cut_short_is_truncated(sample_records: dict[str, BaseModel]) -> None:
    data = Codec(pins=RING).encode(sample_records["SubscriptionEvent"], TOPIC)
    error = _poison(data[:-3], SubscriptionEvent)
    assert error.reason == "truncated"


@pytest.mark.parametrize("data", [b"\xc3\x01\x8a\xbf", b"\xc3", b"\x00\x00\x01"])
def test_header_cut_short_is_truncated(data: bytes) -> None:
    assert _poison(data, SubscriptionEvent).reason == "truncated"


def test_unknown_fingerprint_is_poison(sample_records: dict[str, BaseModel]) -> None:
    data = bytearray(Codec(pins=RING).encode(sample_records["SubscriptionEvent"], TOPIC))
    data[2:10] = bytes(8)
    error = _poison(bytes(data), SubscriptionEvent)
    assert error.reason == "unknown_fingerprint"
    assert "0000000000000000" in str(error)


def test_confluent_framing_without_a_registry_is_an_unknown_schema_id() -> None:
    error = _poison(b"\x00\x00\x00\x00\x07" + b"\x02", SubscriptionEvent)
    assert error.reason == "unknown_schema_id"
    assert "7" in str(error)


def test_schema_id_the_registry_does_not_know_is_poison(schema_registry: FakeSchemaRegistry) -> None:
    error = _poison(b"\x00\x00\x00\x03\xe7" + b"\x02", SubscriptionEvent, Codec(schema_registry.url, pins=RING))
    assert error.reason == "unknown_schema_id"
    assert "999" in str(error)


@pytest.mark.parametrize("data", [b'{"event_id": "e"}', b"\xc3\x02" + bytes(8) + b"\x02", b"\x02abc"])
def test_wrong_magic_byte_is_poison(data: bytes) -> None:
    error = _poison(data, SubscriptionEvent)
    assert error.reason == "bad_magic"
    assert "event_id" not in str(error)  # names the magic, never quotes the payload


def test_record_breaking_its_model_is_invalid_and_names_the_field(sample_records: dict[str, BaseModel]) -> None:
    value = record_to_dict(sample_records["SubscriptionEvent"])
    value["version"] = -1
    error = _poison(_single_object(load_schema("SubscriptionEvent"), value), SubscriptionEvent)
    assert error.reason == "invalid_record"
    assert "version" in str(error)


def test_invalid_record_message_never_quotes_the_pin(sample_records: dict[str, BaseModel]) -> None:
    value = record_to_dict(sample_records["ServiceRequest"])  # a clear PIN, as v1 writers wrote it
    value["request_id"] = ""
    error = _poison(_single_object(history_schemas("ServiceRequest")["v1"], value), ServiceRequest)
    assert error.reason == "invalid_record"
    assert "request_id" in str(error)
    assert "4711" not in str(error) and error.__cause__ is None


def test_record_of_another_type_is_poison(sample_records: dict[str, BaseModel]) -> None:
    data = Codec(pins=RING).encode(sample_records["KmsResult"], "kms.results")
    error = _poison(data, SubscriptionEvent)
    assert error.reason == "wrong_record_type"
    assert "KmsResult" in str(error)


def test_bytes_after_the_record_are_corrupt(sample_records: dict[str, BaseModel]) -> None:
    data = Codec(pins=RING).encode(sample_records["KmsResult"], "kms.results")
    assert _poison(data + b"\x00", KmsResult).reason == "corrupt"


def test_writer_schema_incompatible_with_the_current_one_is_poison(
    schema_registry: FakeSchemaRegistry, sample_records: dict[str, BaseModel]
) -> None:
    bad = load_schema("SubscriptionEvent")
    next(f for f in bad["fields"] if f["name"] == "version")["type"] = "string"
    value = record_to_dict(sample_records["SubscriptionEvent"]) | {"version": "three"}
    schema_id = schema_registry.register(f"{TOPIC}-value", json.dumps(bad))

    error = _poison(_confluent(schema_id, bad, value), SubscriptionEvent, Codec(schema_registry.url, pins=RING))

    assert error.reason == "incompatible_schema"
    assert "SubscriptionEvent.version" in str(error)
