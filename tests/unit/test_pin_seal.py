"""Sealed PINs: no PIN in the bytes the codec writes, on every write path; opened only where it was sealed."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import BaseModel, SecretStr

import schemas.codec as codec_module
from schemas.codec import SEALED_PIN_CONTEXT, Codec, history_schemas, load_schema, schema_fingerprint
from schemas.errors import PoisonMessage, RecordEncodeError
from schemas.pin_seal import MASKED_PINS, PinKeyError, PinKeyRing, UnreadablePin
from schemas.records import KmsCommand, ServiceRequest, record_to_dict

if TYPE_CHECKING:
    from conftest import FakeSchemaRegistry

OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(100, 132))
RING = PinKeyRing({"k1": OLD_KEY}, "k1")
ROTATED = PinKeyRing({"k1": OLD_KEY, "k2": NEW_KEY}, "k2")
CANARY = "7391"
TOPICS = {"ServiceRequest": "kms.requests", "KmsCommand": "kms.commands"}
SEALED_TYPES = sorted(SEALED_PIN_CONTEXT)


def _with_pin(sample_records: dict[str, BaseModel], name: str, pin: str = CANARY) -> BaseModel:
    return sample_records[name].model_copy(update={"pin": SecretStr(pin)})


def _body(data: bytes, name: str) -> dict[str, Any]:
    """The Avro body as a foreign reader sees it: fastavro with the current schema, no codec."""
    value = schemaless_reader(BytesIO(data[10:]), parse_schema(load_schema(name)), None)
    assert isinstance(value, dict)
    return value


def _single_object(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, parse_schema(schema), value)
    return b"\xc3\x01" + schema_fingerprint(schema) + out.getvalue()


def _clear_forms(pin: str) -> list[bytes]:
    return [pin.encode("ascii"), pin.encode("utf-16-le"), pin.encode("utf-16-be")]


@pytest.fixture(params=["compiled", "fastavro"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways the codec writes and reads: its compiled functions, and fastavro alone."""
    if request.param == "fastavro":
        monkeypatch.setattr(codec_module, "_compiled", lambda schema, reader: None)
    yield request.param


# --- what goes on the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEALED_TYPES)
def test_the_pin_is_sealed_on_the_wire_and_opens_again(
    name: str, write_path: str, sample_records: dict[str, BaseModel]
) -> None:
    record = _with_pin(sample_records, name)
    data = Codec(pins=RING).encode(record, TOPICS[name])

    for form in _clear_forms(CANARY):
        assert form not in data
    body = _body(data, name)
    assert body["pin"] is None
    assert body["pin_sealed"]["key_id"] == "k1" and len(body["pin_sealed"]["nonce"]) == 12
    decoded = Codec(pins=RING).decode(data, type(record))
    assert decoded == record
    assert decoded.pin.get_secret_value() == CANARY  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SEALED_TYPES)
def test_the_confluent_framing_seals_the_pin_too(
    name: str, sample_records: dict[str, BaseModel], schema_registry: FakeSchemaRegistry
) -> None:
    record = _with_pin(sample_records, name)
    data = Codec(schema_registry.url, pins=RING).encode(record, TOPICS[name])
    assert data[:1] == b"\x00"
    for form in _clear_forms(CANARY):
        assert form not in data
    assert Codec(schema_registry.url, pins=RING).decode(data, type(record)) == record


@pytest.mark.parametrize("name", SEALED_TYPES)
def test_sealing_is_deterministic_per_record_and_pin(name: str, sample_records: dict[str, BaseModel]) -> None:
    # A replayed translator batch must produce byte-identical commands; another PIN, another nonce.
    codec = Codec(pins=RING)
    first = codec.encode(_with_pin(sample_records, name), TOPICS[name])
    assert codec.encode(_with_pin(sample_records, name), TOPICS[name]) == first
    other = _body(codec.encode(_with_pin(sample_records, name, "1234"), TOPICS[name]), name)
    assert other["pin_sealed"]["nonce"] != _body(first, name)["pin_sealed"]["nonce"]


def test_a_record_without_a_pin_needs_no_key(sample_records: dict[str, BaseModel]) -> None:
    command = sample_records["KmsCommand"].model_copy(update={"pin": None})
    data = Codec().encode(command, "kms.commands")
    assert _body(data, "KmsCommand")["pin_sealed"] is None
    assert Codec().decode(data, KmsCommand) == command


def test_writing_a_pin_without_a_key_ring_fails_naming_the_setting(sample_records: dict[str, BaseModel]) -> None:
    with pytest.raises(RecordEncodeError, match="KMSBRIDGE_PIN_KEYS__FILE") as caught:
        Codec().encode(_with_pin(sample_records, "ServiceRequest"), "kms.requests")
    assert CANARY not in str(caught.value)


# --- reading -----------------------------------------------------------------------------------------


def test_a_sealed_pin_moved_into_another_record_does_not_open(sample_records: dict[str, BaseModel]) -> None:
    codec = Codec(pins=RING)
    body = _body(codec.encode(_with_pin(sample_records, "KmsCommand"), "kms.commands"), "KmsCommand")
    body["idempotency_key"] = "S-2:1:4120099999:SET_PIN"  # the same ciphertext, another command
    with pytest.raises(UnreadablePin) as caught:
        codec.decode(_single_object(load_schema("KmsCommand"), body), KmsCommand)
    assert caught.value.reason == "sealed_pin" and caught.value.retryable is False
    assert CANARY not in str(caught.value)


def test_an_altered_ciphertext_does_not_open(sample_records: dict[str, BaseModel]) -> None:
    codec = Codec(pins=RING)
    body = _body(codec.encode(_with_pin(sample_records, "ServiceRequest"), "kms.requests"), "ServiceRequest")
    sealed = body["pin_sealed"]
    sealed["ciphertext"] = bytes([sealed["ciphertext"][0] ^ 1]) + sealed["ciphertext"][1:]
    with pytest.raises(UnreadablePin, match="altered"):
        codec.decode(_single_object(load_schema("ServiceRequest"), body), ServiceRequest)


def test_rotation_seals_with_the_current_key_and_opens_with_old_ones(sample_records: dict[str, BaseModel]) -> None:
    record = _with_pin(sample_records, "KmsCommand")
    sealed_by_k1 = Codec(pins=RING).encode(record, "kms.commands")
    assert Codec(pins=ROTATED).decode(sealed_by_k1, KmsCommand) == record
    sealed_by_k2 = Codec(pins=ROTATED).encode(record, "kms.commands")
    assert _body(sealed_by_k2, "KmsCommand")["pin_sealed"]["key_id"] == "k2"
    with pytest.raises(UnreadablePin, match="key id 'k2'") as caught:
        Codec(pins=RING).decode(sealed_by_k2, KmsCommand)  # a ring that lost the key
    assert base64.b64encode(NEW_KEY).decode() not in str(caught.value)


def test_a_process_without_a_key_ring_cannot_read_a_sealed_pin(sample_records: dict[str, BaseModel]) -> None:
    data = Codec(pins=RING).encode(_with_pin(sample_records, "ServiceRequest"), "kms.requests")
    with pytest.raises(UnreadablePin, match="no PIN key ring"):
        Codec().decode(data, ServiceRequest)


def test_masked_pins_read_every_sealed_pin_as_a_mask(sample_records: dict[str, BaseModel]) -> None:
    data = Codec(pins=RING).encode(_with_pin(sample_records, "KmsCommand"), "kms.commands")
    decoded = Codec(pins=MASKED_PINS).decode_any(data)
    assert isinstance(decoded, KmsCommand) and decoded.pin is not None
    assert decoded.pin.get_secret_value() == "****"
    with pytest.raises(RecordEncodeError):
        Codec(pins=MASKED_PINS).encode(decoded, "kms.commands")


def test_a_clear_pin_written_before_sealing_still_reads(sample_records: dict[str, BaseModel]) -> None:
    record = _with_pin(sample_records, "ServiceRequest")
    data = _single_object(history_schemas("ServiceRequest")["v1"], record_to_dict(record))  # the upgrade path
    assert Codec(pins=RING).decode(data, ServiceRequest) == record


def test_a_clear_pin_in_a_schema_that_seals_is_poison(sample_records: dict[str, BaseModel]) -> None:
    value = record_to_dict(_with_pin(sample_records, "KmsCommand"))  # pin in clear, pin_sealed null
    with pytest.raises(PoisonMessage, match="clear PIN") as caught:
        Codec(pins=RING).decode(_single_object(load_schema("KmsCommand"), value), KmsCommand)
    assert CANARY not in str(caught.value)


# --- the key ring ------------------------------------------------------------------------------------


def test_the_ring_repr_names_key_ids_only() -> None:
    text = repr(ROTATED)
    assert "k1" in text and "k2" in text
    assert base64.b64encode(OLD_KEY).decode() not in text and str(OLD_KEY) not in text


@pytest.mark.parametrize(
    ("keys", "current", "problem"),
    [
        ({"k1": base64.b64encode(bytes(16)).decode()}, "k1", "16 bytes"),
        ({"k1": "not base64!"}, "k1", "not base64"),
        ({"k1": base64.b64encode(OLD_KEY).decode()}, "k9", "'k9' is not among the keys"),
        ({"bad id": base64.b64encode(OLD_KEY).decode()}, "bad id", "key id 'bad id'"),
    ],
)
def test_a_bad_ring_is_refused_without_quoting_a_key(keys: dict[str, str], current: str, problem: str) -> None:
    with pytest.raises(PinKeyError, match=problem) as caught:
        PinKeyRing.from_base64(keys, current)
    for text in keys.values():
        assert text not in str(caught.value)
