"""The record limits of schemas/limits.py hold in every record model (docs/architecture.md §3, README "Limits").

For each field class (id, name, distributor, idempotency key, topic, text, array) a value just
inside the limit is accepted and one just outside is refused, with the error located at the field;
a walk over every model checks that no text field or array is left unbounded.
"""

from __future__ import annotations

import copy
import types
import typing
from datetime import UTC, datetime
from typing import Any

import pytest
from annotated_types import MaxLen
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas.codec import Codec
from schemas.errors import InvalidRecord
from schemas.limits import (
    DISTRIBUTOR_MAX_LENGTH,
    ID_MAX_LENGTH,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    MAX_DEVICES,
    MAX_ID_LIST,
    MAX_PRODUCTS,
    MAX_REMOVED_DEVICES,
    MAX_SECTIONS,
    MAX_SERVICES,
    NAME_MAX_LENGTH,
    TEXT_MAX_LENGTH,
    TOPIC_MAX_LENGTH,
)
from schemas.records import RECORD_TYPES, SubscriptionEvent

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).isoformat()
DEVICE = {"distributor": "MAIN", "secure_client_id": "4120051539", "stb_serial": "B-1"}
PRODUCT = {"product_id": "P100", "valid_from": None, "valid_until": None}

SAMPLES: dict[str, dict[str, Any]] = {
    "SubscriptionEvent": {
        "event_id": "E-1", "event_type": "UPDATED", "occurred_at": NOW, "subscription_id": "S-1",
        "account_id": "A-1", "subscription_type": "RESIDENTIAL", "created_at": NOW, "version": 1,
        "state": "ACTIVE", "services": [{"service_code": "BASIC", "state": "ACTIVE", "distributors": ["MAIN"]}],
        "devices": [dict(DEVICE)], "removed_devices": [dict(DEVICE)], "added_devices": [dict(DEVICE)]},
    "CommunicationEvent": {
        "communication_id": "C-1", "external_system": "IRDETO", "kind": "MAIL", "text_mode": "ANSI",
        "text": "Hello", "subscription_id": "S-1", "created_at": NOW},
    "ServiceRequest": {
        "request_id": "R-1", "type": "QUERY_CLIENT", "secure_client_id": "4120051539", "text": "Hi",
        "sections": ["basic"], "process_name": "api", "requested_by": "agent-7", "requested_at": NOW},
    "KmsCommand": {
        "idempotency_key": "ev:E-1:4120051539:SYNC_ENTITLEMENTS", "operation": "SYNC_ENTITLEMENTS",
        "secure_client_id": "4120051539", "subscription_id": "S-1", "distributor": "MAIN",
        "products": [PRODUCT], "chipset": "B-1", "message": {"kind": "MAIL", "text_mode": "ANSI", "text": "Hi"},
        "source": {"process_name": "translator", "topic": "crm.subscriptions", "event_id": "E-1",
                   "request_id": "R-1", "communication_id": "C-1", "run_id": "run-1"},
        "created_at": NOW},
    "KmsResult": {
        "idempotency_key": "ev:E-1:REJECTED", "operation": "SYNC_ENTITLEMENTS", "secure_client_id": "4120051539",
        "subscription_id": "S-1", "event_id": "E-1", "communication_id": "C-1", "request_id": "R-1",
        "run_id": "run-1", "state": "COMPLETED", "executed_at": NOW},
    "ReconcileRequest": {
        "run_id": "run-1", "subscription_types": ["RESIDENTIAL"], "subscription_ids": ["S-1"],
        "requested_by": "cron"},
    "ReconcileReport": {
        "run_id": "run-1", "preview": True, "unknown_subscriptions": ["S-9"],
        "items": [{"subscription_id": "S-1", "secure_client_id": "4120051539", "missing_products": ["P100"],
                   "extra_products": ["P200"], "wrong_dates": ["P300"]}],
        "started_at": NOW, "finished_at": NOW},
}

Path = tuple[str | int, ...]

IDS: list[tuple[str, Path]] = [
    ("SubscriptionEvent", ("event_id",)), ("SubscriptionEvent", ("subscription_id",)),
    ("SubscriptionEvent", ("account_id",)), ("SubscriptionEvent", ("devices", 0, "secure_client_id")),
    ("SubscriptionEvent", ("devices", 0, "stb_serial")),
    ("SubscriptionEvent", ("removed_devices", 0, "secure_client_id")),
    ("SubscriptionEvent", ("added_devices", 0, "secure_client_id")),
    ("CommunicationEvent", ("communication_id",)), ("CommunicationEvent", ("subscription_id",)),
    ("ServiceRequest", ("request_id",)), ("ServiceRequest", ("secure_client_id",)),
    ("ServiceRequest", ("process_name",)), ("ServiceRequest", ("requested_by",)),
    ("KmsCommand", ("secure_client_id",)), ("KmsCommand", ("subscription_id",)), ("KmsCommand", ("chipset",)),
    ("KmsCommand", ("source", "process_name")), ("KmsCommand", ("source", "event_id")),
    ("KmsCommand", ("source", "request_id")), ("KmsCommand", ("source", "communication_id")),
    ("KmsCommand", ("source", "run_id")),
    ("KmsResult", ("secure_client_id",)), ("KmsResult", ("subscription_id",)), ("KmsResult", ("event_id",)),
    ("KmsResult", ("communication_id",)), ("KmsResult", ("request_id",)), ("KmsResult", ("run_id",)),
    ("ReconcileRequest", ("run_id",)), ("ReconcileRequest", ("subscription_ids", 0)),
    ("ReconcileRequest", ("requested_by",)),
    ("ReconcileReport", ("run_id",)), ("ReconcileReport", ("unknown_subscriptions", 0)),
    ("ReconcileReport", ("items", 0, "subscription_id")), ("ReconcileReport", ("items", 0, "secure_client_id")),
]
NAMES: list[tuple[str, Path]] = [
    ("SubscriptionEvent", ("subscription_type",)), ("SubscriptionEvent", ("services", 0, "service_code")),
    ("CommunicationEvent", ("external_system",)), ("ServiceRequest", ("sections", 0)),
    ("KmsCommand", ("products", 0, "product_id")), ("KmsResult", ("operation",)),
    ("ReconcileRequest", ("subscription_types", 0)), ("ReconcileReport", ("items", 0, "missing_products", 0)),
    ("ReconcileReport", ("items", 0, "extra_products", 0)), ("ReconcileReport", ("items", 0, "wrong_dates", 0)),
]
DISTRIBUTORS: list[tuple[str, Path]] = [
    ("SubscriptionEvent", ("devices", 0, "distributor")), ("SubscriptionEvent", ("services", 0, "distributors", 0)),
    ("KmsCommand", ("distributor",)),
]
KEYS: list[tuple[str, Path]] = [("KmsCommand", ("idempotency_key",)), ("KmsResult", ("idempotency_key",))]
TOPICS: list[tuple[str, Path]] = [("KmsCommand", ("source", "topic"))]
TEXTS: list[tuple[str, Path]] = [
    ("CommunicationEvent", ("text",)), ("ServiceRequest", ("text",)), ("KmsCommand", ("message", "text")),
]
# (record, array, ceiling, one valid element)
ARRAYS: list[tuple[str, str, int, Any]] = [
    ("SubscriptionEvent", "services", MAX_SERVICES, {"service_code": "BASIC", "state": "ACTIVE"}),
    ("SubscriptionEvent", "devices", MAX_DEVICES, DEVICE),
    ("SubscriptionEvent", "removed_devices", MAX_REMOVED_DEVICES, DEVICE),
    ("SubscriptionEvent", "added_devices", MAX_REMOVED_DEVICES, DEVICE),
    ("ServiceRequest", "sections", MAX_SECTIONS, "basic"),
    ("KmsCommand", "products", MAX_PRODUCTS, PRODUCT),
    ("ReconcileRequest", "subscription_ids", MAX_ID_LIST, "S-1"),
    ("ReconcileRequest", "subscription_types", MAX_ID_LIST, "RESIDENTIAL"),
    ("ReconcileReport", "unknown_subscriptions", MAX_ID_LIST, "S-1"),
]

# Text fields that are no input id: our own error texts and the KMS's, descriptions the reconciler writes.
UNBOUNDED_ON_PURPOSE = {
    ("KmsResult", "error_code"), ("KmsResult", "error_description"), ("KmsResult", "provider_error_code"),
    ("KmsResult", "provider_error_description"), ("KmsResult", "client_info"), ("ReconcileReport", "error"),
    ("DriftItem", "pairing"), ("DriftItem", "pin"), ("ServiceRequest", "pin"), ("KmsCommand", "pin"),
    ("ReconcileReport", "rejections"),
}


def with_value(record: str, path: Path, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(SAMPLES[record])
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def refused(record: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    with pytest.raises(ValidationError) as info:
        RECORD_TYPES[record].model_validate(data)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


def accepted(record: str, data: dict[str, Any]) -> None:
    RECORD_TYPES[record].model_validate(data)


def cases(fields: list[tuple[str, Path]]) -> Any:
    return pytest.mark.parametrize(("record", "path"), fields, ids=[f"{r}.{'.'.join(map(str, p))}" for r, p in fields])


@pytest.mark.parametrize("record", sorted(SAMPLES))
def test_every_sample_is_a_valid_record(record: str) -> None:
    accepted(record, SAMPLES[record])


@cases(IDS + NAMES + DISTRIBUTORS + KEYS + TOPICS)
@pytest.mark.parametrize("bad", ["C\x0b1", "C\x001", "C\n1", "C\t1", "C\x7f1", "C\x851", "C\ufffe1"],
                         ids=["VT", "NUL", "LF", "TAB", "DEL", "NEL", "FFFE"])
def test_an_id_or_name_with_a_control_character_is_refused_at_the_field(record: str, path: Path, bad: str) -> None:
    assert refused(record, with_value(record, path, bad)) == [(path, "string_pattern_mismatch")]


@cases(IDS + NAMES + DISTRIBUTORS + KEYS + TOPICS)
def test_an_empty_id_or_name_is_refused(record: str, path: Path) -> None:
    assert refused(record, with_value(record, path, "")) == [(path, "string_too_short")]


# (field class, its fields, longest value accepted): ids fit the String(128) columns, idempotency keys
# the ledger's String(255) key, names String(64), distributors String(16), topics Kafka's 249.
LENGTHS = [("id", IDS, ID_MAX_LENGTH), ("name", NAMES, NAME_MAX_LENGTH),
           ("distributor", DISTRIBUTORS, DISTRIBUTOR_MAX_LENGTH), ("key", KEYS, IDEMPOTENCY_KEY_MAX_LENGTH),
           ("topic", TOPICS, TOPIC_MAX_LENGTH)]


@pytest.mark.parametrize(("record", "path", "limit"),
                         [(r, p, limit) for _, fields, limit in LENGTHS for r, p in fields],
                         ids=[f"{kind}-{r}.{'.'.join(map(str, p))}" for kind, fields, _ in LENGTHS for r, p in fields])
def test_a_value_at_its_length_limit_is_accepted_and_one_character_more_is_refused(record: str, path: Path,
                                                                                   limit: int) -> None:
    accepted(record, with_value(record, path, "é" * limit))  # the limit counts characters, not bytes
    assert refused(record, with_value(record, path, "x" * (limit + 1))) == [(path, "string_too_long")]


@cases(TEXTS)
def test_a_text_keeps_tabs_and_line_breaks_and_refuses_what_xml_cannot_carry(record: str, path: Path) -> None:
    accepted(record, with_value(record, path, "line 1\tcol\r\nline 2 \x85 \u2028 é"))
    accepted(record, with_value(record, path, "x" * TEXT_MAX_LENGTH))
    for bad in ("bell\x07", "nul\x00", "vt\x0b", "\ufffe"):
        assert refused(record, with_value(record, path, bad)) == [(path, "string_pattern_mismatch")]
    assert refused(record, with_value(record, path, "x" * (TEXT_MAX_LENGTH + 1))) == [(path, "string_too_long")]


@pytest.mark.parametrize(("record", "array", "ceiling", "element"), ARRAYS,
                         ids=[f"{r}.{a}" for r, a, _, _ in ARRAYS])
def test_an_array_holds_its_ceiling_and_one_more_item_is_refused(record: str, array: str, ceiling: int,
                                                                  element: Any) -> None:
    accepted(record, with_value(record, (array,), [element] * ceiling))
    assert refused(record, with_value(record, (array,), [element] * (ceiling + 1))) == [((array,), "too_long")]


def test_an_event_with_100000_removed_devices_is_refused_before_any_device_is_validated() -> None:
    data = with_value("SubscriptionEvent", ("removed_devices",), [DEVICE] * 100_000)
    assert refused("SubscriptionEvent", data) == [(("removed_devices",), "too_long")]


def test_the_error_says_the_character_rule_in_words_and_never_quotes_the_value() -> None:
    from schemas.errors import describe_validation_error

    with pytest.raises(ValidationError) as info:
        SubscriptionEvent.model_validate(with_value("SubscriptionEvent", ("devices", 0, "secure_client_id"),
                                                    "SECRET\x0b"))
    text = describe_validation_error(info.value)
    assert text == "devices[0].secure_client_id: must not contain control characters or characters XML cannot carry"


def test_the_codec_refuses_a_record_that_breaks_a_limit_as_an_invalid_record() -> None:
    # Written without validation, as another producer could write it: every consumer decodes with the codec.
    event = SubscriptionEvent.model_validate(SAMPLES["SubscriptionEvent"])
    bad = event.model_copy(update={"subscription_id": "S" * (ID_MAX_LENGTH + 1)})
    codec = Codec()
    data = codec.encode(bad, "crm.subscriptions")
    with pytest.raises(InvalidRecord) as info:
        codec.decode(data, SubscriptionEvent)
    assert "subscription_id: String should have at most 128 characters" in str(info.value)


# --- nothing left unbounded -------------------------------------------------------------------------


def _limited(annotation: Any) -> bool:
    """Whether a string/list/dict annotation (optionally ``X | None``) carries a maximum length."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return all(_limited(a) for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Annotated:
        return _has_max(annotation.__metadata__) or _limited(typing.get_args(annotation)[0])
    return False


def _has_max(metadata: typing.Iterable[Any]) -> bool:
    return any(isinstance(m, MaxLen) or (isinstance(m, FieldInfo) and _has_max(m.metadata)) for m in metadata)


def _models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    seen[model.__name__] = model
    for info in model.model_fields.values():
        for inner in _walk(info.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner.__name__ not in seen:
                _models(inner, seen)
    return seen


def _walk(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_walk(arg))
    return out


def _needs_limit(annotation: Any) -> bool:
    kinds = [typing.get_origin(a) or a for a in _walk(annotation)]
    return any(k in (str, list, dict) for k in kinds)


def test_every_text_field_and_array_of_every_record_has_a_limit() -> None:
    models: dict[str, type[BaseModel]] = {}
    for record in RECORD_TYPES.values():
        _models(record, models)
    unbounded = []
    for name, model in models.items():
        for field, info in model.model_fields.items():
            if (name, field) in UNBOUNDED_ON_PURPOSE or not _needs_limit(info.annotation):
                continue
            limited = _has_max(info.metadata) or _limited(info.annotation)
            if not limited or _elements_unlimited(info.annotation):
                unbounded.append(f"{name}.{field}")
    assert unbounded == []


def _elements_unlimited(annotation: Any) -> bool:
    """A list whose items are plain ``str`` (the list is bounded, its items are not)."""
    return any(typing.get_origin(a) is list and typing.get_args(a)[0] is str for a in _walk(annotation))


def test_a_provider_product_id_beyond_the_name_limit_fails_at_start_naming_the_key() -> None:
    # Every command carries the provider's product ids: one no record can hold must stop start-up,
    # not every translation.
    from provisioning.provider import ProviderConfigError, provider_from_mapping

    with pytest.raises(ProviderConfigError) as info:
        provider_from_mapping({"operator_tag": "ALUX", "distributors": {"MAIN": {"services": "*"}},
                               "products": {"BASIC": ["P" * (NAME_MAX_LENGTH + 1)]}})
    assert "products.BASIC[0]" in str(info.value)
