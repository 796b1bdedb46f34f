"""The Confluent-framed path against confluent-kafka's own serdes and registry client.

Records written by ``AvroSerializer`` are read by the codec and the codec's records are read by
``AvroDeserializer``, through one ``mock://`` registry (confluent-kafka's ``MockSchemaRegistryClient``,
the same client code paths as a real registry). The registry settings (subject name strategies,
``auto.register.schemas`` off, ``use.latest.version``) and the fatal 401/403 are checked here too;
``tests/unit/test_codec.py`` covers the rest of the codec over a loopback fake registry.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    header_schema_id_serializer,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import BaseModel

from schemas.codec import SCHEMA_ID_HEADER, SEALED_PIN_CONTEXT, Codec, RegistryOptions, history_schemas, load_schema
from schemas.errors import SchemaRegistryRefused, SchemaRegistryUnavailable
from schemas.pin_seal import PinKeyRing
from schemas.records import RECORD_TYPES, SubscriptionEvent, record_to_dict

RING = PinKeyRing({"unit-1": bytes(range(32))}, "unit-1")
# Records with a PIN are sealed by the codec: confluent's serializer, which knows nothing of our
# sealing, exchanges those types only without a PIN (the codec's own tests cover the sealed ones).
NAMES = sorted(RECORD_TYPES)
TOPIC = "interop.topic"


def _mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})


def _without_pin(record: BaseModel) -> BaseModel:
    if "pin" in type(record).model_fields and getattr(record, "pin", None) is not None:
        return record.model_copy(update={"pin": None})
    return record


def _confluent_value(name: str, record: BaseModel) -> dict[str, Any]:
    value = record_to_dict(record)
    if name in SEALED_PIN_CONTEXT:
        value["pin_sealed"] = None
    return value


def _ctx(headers: list[tuple[str, bytes]] | None = None) -> SerializationContext:
    return SerializationContext(TOPIC, MessageField.VALUE, headers)


@pytest.mark.parametrize("name", NAMES)
def test_records_written_by_confluents_avro_serializer_are_read_by_the_codec(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    registry = _mock_registry()
    record = _without_pin(sample_records[name])
    serializer = AvroSerializer(registry, json.dumps(load_schema(name)),
                                to_dict=lambda value, ctx: _confluent_value(name, value))

    data = serializer(record, _ctx())

    assert data is not None and data[:1] == b"\x00"
    assert Codec(registry_client=registry, pins=RING).decode(data, RECORD_TYPES[name]) == record


@pytest.mark.parametrize("name", NAMES)
def test_records_written_by_the_codec_are_read_by_confluents_avro_deserializer(
    name: str, sample_records: dict[str, BaseModel]
) -> None:
    registry = _mock_registry()
    record = _without_pin(sample_records[name])
    data = Codec(registry_client=registry, pins=RING).encode(record, TOPIC)

    value = AvroDeserializer(registry)(data, _ctx())

    assert value is not None
    value.pop("pin_sealed", None)
    assert RECORD_TYPES[name].model_validate(value) == record


def test_a_schema_guid_in_the_value_header_is_read(sample_records: dict[str, BaseModel]) -> None:
    registry = _mock_registry()
    record = sample_records["SubscriptionEvent"]
    serializer = AvroSerializer(registry, json.dumps(load_schema("SubscriptionEvent")),
                                to_dict=lambda value, ctx: record_to_dict(value),
                                conf={"schema.id.serializer": header_schema_id_serializer})
    headers: list[tuple[str, bytes]] = []

    body = serializer(record, _ctx(headers))

    (key, guid), = headers
    assert key == SCHEMA_ID_HEADER and guid[:1] == b"\x01"
    codec = Codec(registry_client=registry, pins=RING)
    assert codec.decode(body, SubscriptionEvent, schema_id_header=guid) == record
    assert codec.decode(guid + body, SubscriptionEvent) == record  # magic 1 framing in the value itself


@pytest.mark.parametrize(("strategy", "confluent"), [
    ("record", record_subject_name_strategy),
    ("topic_record", topic_record_subject_name_strategy),
])
def test_subject_name_strategies_name_subjects_as_confluents(
    strategy: str, confluent: Any, sample_records: dict[str, BaseModel]
) -> None:
    registry = _mock_registry()
    options = RegistryOptions(subject_name_strategy=strategy)  # type: ignore[arg-type]
    Codec(registry_client=registry, pins=RING, registry_options=options).encode(
        sample_records["KmsResult"], TOPIC)

    assert registry.get_subjects() == [confluent(_ctx(), "io.kmsbridge.KmsResult")]


def test_without_auto_register_the_codec_writes_only_a_registered_schema(
    sample_records: dict[str, BaseModel]
) -> None:
    registry = _mock_registry()
    record = sample_records["KmsResult"]
    options = RegistryOptions(auto_register=False)

    with pytest.raises(SchemaRegistryRefused, match="KMSBRIDGE_SCHEMA_REGISTRY__AUTO_REGISTER"):
        Codec(registry_client=registry, pins=RING, registry_options=options).encode(record, TOPIC)
    assert registry.get_subjects() == []

    schema_id = registry.register_schema(f"{TOPIC}-value", Schema(json.dumps(load_schema("KmsResult")), "AVRO"))
    data = Codec(registry_client=registry, pins=RING, registry_options=options).encode(record, TOPIC)
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    assert registry.get_subjects() == [f"{TOPIC}-value"]


def test_use_latest_version_writes_with_the_subjects_latest_schema(sample_records: dict[str, BaseModel]) -> None:
    registry = _mock_registry()
    v0 = history_schemas("SubscriptionEvent")["v0"]
    schema_id = registry.register_schema(f"{TOPIC}-value", Schema(json.dumps(v0), "AVRO"))
    record = sample_records["SubscriptionEvent"].model_copy(update={"added_devices": []})
    options = RegistryOptions(auto_register=False, use_latest_version=True)

    data = Codec(registry_client=registry, pins=RING, registry_options=options).encode(record, TOPIC)

    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    written = AvroDeserializer(registry)(data, _ctx())
    assert written is not None and "added_devices" not in written  # v0's fields, not the current ones
    assert Codec(registry_client=registry, pins=RING).decode(data, SubscriptionEvent) == record


class _Refusing(SchemaRegistryClient):
    """A registry client whose every call answers ``status``, as a real registry's REST layer does."""

    def __init__(self, status: int) -> None:
        super().__init__({"url": "http://127.0.0.1:9"})
        self.status = status

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        raise SchemaRegistryError(self.status, self.status * 100, "refused by the drill")

    register_schema = lookup_schema = get_latest_version = get_schema = get_schema_by_guid = _refuse


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_fatal_and_name_the_settings(
    status: int, sample_records: dict[str, BaseModel]
) -> None:
    codec = Codec(registry_client=_Refusing(status), pins=RING)

    with pytest.raises(SchemaRegistryRefused, match="KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD") as writing:
        codec.encode(sample_records["KmsResult"], TOPIC)
    with pytest.raises(SchemaRegistryRefused, match=str(status)):
        codec.decode(b"\x00\x00\x00\x00\x07\x02", SubscriptionEvent)

    assert writing.value.retryable is False
    assert not isinstance(writing.value, SchemaRegistryUnavailable)  # consumers retry that one forever


def test_a_server_error_stays_retryable(sample_records: dict[str, BaseModel]) -> None:
    with pytest.raises(SchemaRegistryUnavailable):
        Codec(registry_client=_Refusing(503), pins=RING).encode(sample_records["KmsResult"], TOPIC)


def test_the_consumers_read_a_record_whose_schema_guid_travels_in_its_header(
        sample_records: dict[str, BaseModel], tmp_path: Any) -> None:
    from confluent_kafka import Message

    from kafka_edge.kafka_clients import schema_id_header
    from reconciler.projector import Projector, ProjectorConfig

    registry = _mock_registry()
    record = sample_records["SubscriptionEvent"]
    serializer = AvroSerializer(registry, json.dumps(load_schema("SubscriptionEvent")),
                                to_dict=lambda value, ctx: record_to_dict(value),
                                conf={"schema.id.serializer": header_schema_id_serializer})
    headers: list[tuple[str, bytes]] = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    body = serializer(record, _ctx(headers))
    msg = Message(topic=TOPIC, partition=0, offset=0, key=b"k", value=body, headers=headers)
    projector = Projector(None, None, Codec(registry_client=registry, pins=RING), None,  # type: ignore[arg-type]
                          ProjectorConfig(topic=TOPIC, dlq_topic=f"{TOPIC}.dlq"))

    decoded, outcomes = projector._decode([msg])  # the decode step every consumer shares

    assert schema_id_header(msg) == dict(headers)[SCHEMA_ID_HEADER]
    assert outcomes == ["ok"] and decoded == [(0, record)]
    plain = Message(topic=TOPIC, partition=0, offset=1, key=b"k", value=b"x", headers=None)
    assert schema_id_header(plain) is None
