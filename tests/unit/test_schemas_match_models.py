"""Every Avro schema says what its pydantic twin says: same fields, order, types, nullability, defaults."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import StrEnum
from typing import Any

import pytest
from pydantic import AwareDatetime, BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from schemas.codec import SEALED_PIN_CONTEXT, load_schema
from schemas.records import RECORD_TYPES

NAMES = sorted(RECORD_TYPES)


class _Names:
    """Named types seen so far in one schema file, so later references by name can be followed."""

    def __init__(self) -> None:
        self.defined: dict[str, dict[str, Any]] = {}

    def resolve(self, avro: Any) -> Any:
        if isinstance(avro, str) and avro not in ("null", "boolean", "int", "long", "float", "double", "string"):
            return self.defined[avro.rsplit(".", 1)[-1]]
        if isinstance(avro, dict) and avro.get("type") in ("record", "enum"):
            self.defined.setdefault(avro["name"], avro)
        return avro


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(annotation without None, whether None was allowed)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, f"unexpected union {annotation}"
        return args[0], True
    return annotation, False


def _check_type(annotation: Any, avro: Any, names: _Names, path: str) -> None:
    avro = names.resolve(avro)
    if typing.get_origin(annotation) is typing.Annotated:  # a limited type (schemas.limits): its base
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        assert isinstance(avro, dict) and avro["type"] == "record", path
        _check_record(annotation, avro, names, path)
    elif isinstance(annotation, type) and issubclass(annotation, StrEnum):
        assert avro["type"] == "enum" and avro["name"] == annotation.__name__, path
        assert avro["symbols"] == [member.value for member in annotation], f"{path}: enum symbols differ"
    elif annotation in (datetime, AwareDatetime):
        assert avro == {"type": "long", "logicalType": "timestamp-millis"}, path
    elif typing.get_origin(annotation) is list:
        assert avro["type"] == "array", path
        _check_type(typing.get_args(annotation)[0], avro["items"], names, f"{path}[]")
    elif typing.get_origin(annotation) is dict:
        key, value = typing.get_args(annotation)
        assert key is str and avro["type"] == "map", path
        _check_type(value, avro["values"], names, f"{path}{{}}")
    else:
        expected = {str: "string", SecretStr: "string", int: "long", float: "double", bool: "boolean"}[annotation]
        assert avro == expected, f"{path}: {avro} is not {expected}"


def _check_record(model: type[BaseModel], avro: dict[str, Any], names: _Names, path: str) -> None:
    assert avro["name"].rsplit(".", 1)[-1] == model.__name__, path
    assert [f["name"] for f in avro["fields"]] == list(model.model_fields), f"{path}: field names or order differ"
    for avro_field, (name, info) in zip(avro["fields"], model.model_fields.items(), strict=True):
        field_path = f"{path}.{name}"
        annotation, nullable = _optional(info.annotation)
        avro_type = avro_field["type"]
        if nullable:
            assert isinstance(avro_type, list) and avro_type[0] == "null" and len(avro_type) == 2, field_path
            avro_type = avro_type[1]
        else:
            assert not isinstance(avro_type, list), f"{field_path}: nullable in Avro, required in the model"
        _check_type(annotation, avro_type, names, field_path)

        if info.is_required():
            assert "default" not in avro_field, f"{field_path}: Avro default on a required model field"
        else:
            default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
            assert default is not PydanticUndefined
            default = default.value if isinstance(default, StrEnum) else default
            assert "default" in avro_field, f"{field_path}: model has a default, Avro has none"
            assert avro_field["default"] == default, f"{field_path}: defaults differ"


@pytest.mark.parametrize("name", NAMES)
def test_schema_fields_match_the_pydantic_model(name: str) -> None:
    schema = load_schema(name)
    assert schema["namespace"] == "io.kmsbridge"
    if name in SEALED_PIN_CONTEXT:  # pin_sealed is the wire form of the model's pin: the codec's alone
        schema["fields"] = [f for f in schema["fields"] if f["name"] != "pin_sealed"]
    _check_record(RECORD_TYPES[name], schema, _Names(), name)


@pytest.mark.parametrize("name", sorted(SEALED_PIN_CONTEXT))
def test_sealed_pin_records_carry_a_nullable_sealed_pin_next_to_the_pin(name: str) -> None:
    fields = load_schema(name)["fields"]
    names = [f["name"] for f in fields]
    sealed = fields[names.index("pin") + 1]
    assert sealed["name"] == "pin_sealed" and sealed["default"] is None
    null, record = sealed["type"]
    assert null == "null"
    assert [(f["name"], f["type"]) for f in record["fields"]] == [
        ("key_id", "string"), ("nonce", "bytes"), ("ciphertext", "bytes")]


def test_checker_notices_a_field_missing_from_the_schema() -> None:
    schema = load_schema("KmsCommand")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "chipset"]
    with pytest.raises(AssertionError, match="field names or order differ"):
        _check_record(RECORD_TYPES["KmsCommand"], schema, _Names(), "KmsCommand")


def test_checker_notices_a_different_enum_symbol() -> None:
    schema = load_schema("KmsResult")
    next(f for f in schema["fields"] if f["name"] == "state")["type"]["symbols"] = ["COMPLETED", "FAILED"]
    with pytest.raises(AssertionError, match="enum symbols differ"):
        _check_record(RECORD_TYPES["KmsResult"], schema, _Names(), "KmsResult")
