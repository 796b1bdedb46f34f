"""Pydantic twins of every Avro record in ``schemas/*.avsc`` (docs/architecture.md §3).

Each model validates a record as it arrives from Kafka, the CLI or the Web API. The Avro schema
file of the same name is the wire contract; ``tests/unit/test_schemas_match_models.py`` keeps the
two in step. Times are timezone-aware ``datetime`` (Avro ``timestamp-millis``).

Sensitive values (the PIN) are ``SecretStr`` so ``repr()``/logs never show them; the codec
seals the PIN when it writes bytes and opens it when it reads them (``schemas/pin_seal.py``).

Every id, name, text and array obeys the limits of :mod:`schemas.limits` (XML-safe characters,
lengths within the database columns, a ceiling on every array), so the Web API, the CLI and every
consumer refuse the same records.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas.limits import (
    MAX_DEVICES,
    MAX_ID_LIST,
    MAX_PRODUCTS,
    MAX_REMOVED_DEVICES,
    MAX_REPORT_ITEMS,
    MAX_SECTIONS,
    MAX_SERVICES,
    Distributor,
    IdempotencyKey,
    Identifier,
    Name,
    Text,
    Topic,
)

__all__ = [
    "RECORD_TYPES",
    "Command",
    "CommunicationEvent",
    "Device",
    "DriftItem",
    "EventType",
    "KmsCommand",
    "KmsResult",
    "Message",
    "MessageKind",
    "Operation",
    "Priority",
    "Product",
    "ReconcileReport",
    "ReconcileRequest",
    "RequestType",
    "ResultState",
    "Service",
    "ServiceRequest",
    "ServiceState",
    "Source",
    "SubscriptionEvent",
    "SubscriptionState",
    "TextMode",
    "record_to_dict",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    @classmethod
    def trusted(cls, values: dict[str, Any]) -> Self:
        """A record of ``values`` without validation, for hot paths that build records from values
        already validated (fields of a decoded record, the provider's settings, keys made by
        :mod:`provisioning.keys`). ``values`` holds every field, in declaration order and of the
        field's own type, exactly as validation would store it: the record then equals (``==``) and
        dumps like ``cls(**values)``, which ``tests/unit/test_trusted_records.py`` checks. About a
        quarter of the cost of ``cls(**values)`` (pydantic's ``model_construct`` costs more than
        validating here). Input from outside the process is validated, never passed here."""
        record = cls.__new__(cls)
        _set = object.__setattr__
        _set(record, "__dict__", values)
        _set(record, "__pydantic_fields_set__", set(values))
        _set(record, "__pydantic_extra__", None)
        _set(record, "__pydantic_private__", None)
        return record


# --- enums (closed sets; Avro enums of the same symbols) ------------------------------------------


class EventType(StrEnum):
    ACTIVATED = "ACTIVATED"
    UPDATED = "UPDATED"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"
    CANCELLED = "CANCELLED"
    SERVICES_CHANGED = "SERVICES_CHANGED"
    DEVICES_CHANGED = "DEVICES_CHANGED"


class SubscriptionState(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    CANCELLED = "CANCELLED"


class ServiceState(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class MessageKind(StrEnum):
    MAIL = "MAIL"
    MESSAGE = "MESSAGE"


class TextMode(StrEnum):
    ANSI = "ANSI"
    UNICODE = "UNICODE"
    RAW = "RAW"


class RequestType(StrEnum):
    SET_PIN = "SET_PIN"
    RESET_PIN = "RESET_PIN"
    REAUTHORISE_SECTOR = "REAUTHORISE_SECTOR"
    SEND_MESSAGE = "SEND_MESSAGE"
    RESET_SUBSCRIPTION = "RESET_SUBSCRIPTION"
    QUERY_CLIENT = "QUERY_CLIENT"


class Operation(StrEnum):
    SYNC_ENTITLEMENTS = "SYNC_ENTITLEMENTS"
    CLEAR_ENTITLEMENTS = "CLEAR_ENTITLEMENTS"
    PAIR = "PAIR"
    UNPAIR = "UNPAIR"
    SET_PIN = "SET_PIN"
    SEND_MAIL = "SEND_MAIL"
    SEND_MESSAGE = "SEND_MESSAGE"
    SEND_MAIL_GLOBAL = "SEND_MAIL_GLOBAL"
    SEND_MESSAGE_GLOBAL = "SEND_MESSAGE_GLOBAL"
    REAUTHORISE_SECTOR = "REAUTHORISE_SECTOR"
    QUERY_CLIENT = "QUERY_CLIENT"
    QUERY_CLIENTS = "QUERY_CLIENTS"


class Priority(StrEnum):
    REGULAR = "REGULAR"
    EXPRESS = "EXPRESS"


class ResultState(StrEnum):
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


# --- SubscriptionEvent ------------------------------------------------------------------------------


class Service(_Record):
    service_code: Name
    state: ServiceState
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    # The distributors whose boxes the service is chosen for; None: every box (schema v2).
    distributors: list[Distributor] | None = Field(default=None, max_length=MAX_DEVICES)


class Device(_Record):
    distributor: Distributor
    secure_client_id: Identifier
    stb_serial: Identifier | None = None


class SubscriptionEvent(_Record):
    event_id: Identifier
    event_type: EventType
    occurred_at: AwareDatetime
    subscription_id: Identifier
    account_id: Identifier
    subscription_type: Name
    created_at: AwareDatetime
    version: int = Field(ge=0)
    state: SubscriptionState
    services: list[Service] = Field(default_factory=list, max_length=MAX_SERVICES)
    devices: list[Device] = Field(default_factory=list, max_length=MAX_DEVICES)
    removed_devices: list[Device] = Field(default_factory=list, max_length=MAX_REMOVED_DEVICES)
    # Devices put on by this change. Optional (default empty): when absent, ACTIVATED treats every
    # device as new and a DEVICES_CHANGED that removes a box from a distributor treats the box now on
    # that distributor as its swap. Added to docs/architecture.md §3 on purpose, see README "Records".
    added_devices: list[Device] = Field(default_factory=list, max_length=MAX_REMOVED_DEVICES)


# --- CommunicationEvent -----------------------------------------------------------------------------


def _exactly_one_target(secure_client_id: str | None, subscription_id: str | None, all_: bool) -> None:
    chosen = [name for name, on in (("secure_client_id", secure_client_id), ("subscription_id",
              subscription_id), ("all", all_)) if on]
    if len(chosen) != 1:
        raise ValueError(
            "exactly one of secure_client_id, subscription_id, all must name the target"
            f" (got {', '.join(chosen) or 'none'})"
        )


class CommunicationEvent(_Record):
    communication_id: Identifier
    external_system: Name
    kind: MessageKind
    text_mode: TextMode
    text: Text
    secure_client_id: Identifier | None = None
    subscription_id: Identifier | None = None
    all: bool = False
    scheduled_at: AwareDatetime | None = None
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _target(self) -> CommunicationEvent:
        _exactly_one_target(self.secure_client_id, self.subscription_id, self.all)
        return self


# --- ServiceRequest ---------------------------------------------------------------------------------


class ServiceRequest(_Record):
    request_id: Identifier
    type: RequestType
    secure_client_id: Identifier | None = None
    subscription_id: Identifier | None = None
    all: bool = False
    pin: SecretStr | None = None
    kind: MessageKind | None = None
    text_mode: TextMode | None = None
    text: Text | None = None
    sections: list[Name] = Field(default_factory=list, max_length=MAX_SECTIONS)
    process_name: Identifier = "kmsbridge"
    requested_by: Identifier = "unknown"
    requested_at: AwareDatetime


# --- KmsCommand -------------------------------------------------------------------------------------


class Product(_Record):
    product_id: Name
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


class Message(_Record):
    kind: MessageKind
    text_mode: TextMode
    text: Text


class Source(_Record):
    process_name: Identifier
    topic: Topic | None = None
    event_id: Identifier | None = None
    request_id: Identifier | None = None
    communication_id: Identifier | None = None
    run_id: Identifier | None = None


class KmsCommand(_Record):
    idempotency_key: IdempotencyKey
    operation: Operation
    secure_client_id: Identifier  # "*" for global operations
    subscription_id: Identifier | None = None
    subscription_version: int | None = None
    distributor: Distributor | None = None
    products: list[Product] = Field(default_factory=list, max_length=MAX_PRODUCTS)
    chipset: Identifier | None = None  # set-top box serial for PAIR / UNPAIR
    pin: SecretStr | None = None
    message: Message | None = None
    source: Source
    priority: Priority = Priority.REGULAR
    not_before: AwareDatetime | None = None
    created_at: AwareDatetime


Command = KmsCommand


# --- KmsResult --------------------------------------------------------------------------------------


class KmsResult(_Record):
    idempotency_key: IdempotencyKey
    operation: Name  # an Operation, or a request type for rejections made before planning
    secure_client_id: Identifier | None = None
    subscription_id: Identifier | None = None
    event_id: Identifier | None = None
    communication_id: Identifier | None = None
    request_id: Identifier | None = None
    run_id: Identifier | None = None
    state: ResultState
    error_code: str | None = None
    error_description: str | None = None
    provider_error_code: str | None = None
    provider_error_description: str | None = None
    attempts: int = 0
    executed_at: AwareDatetime
    latency_ms: float = 0.0
    duplicate: bool = False
    # COMPLETED without a KMS call: the key of the newer absolute command for the same secure client and
    # attribute whose state the box has (coalesced in the executor, or older than the last applied)
    superseded_by: IdempotencyKey | None = None
    client_info: dict[str, dict[str, str]] | None = None


# --- Reconcile --------------------------------------------------------------------------------------


class ReconcileRequest(_Record):
    run_id: Identifier
    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None
    subscription_types: list[Name] = Field(default_factory=list, max_length=MAX_ID_LIST)
    subscription_ids: list[Identifier] = Field(default_factory=list, max_length=MAX_ID_LIST)
    preview: bool = False
    requested_by: Identifier = "unknown"
    requested_at: AwareDatetime | None = None


class DriftItem(_Record):
    subscription_id: Identifier
    secure_client_id: Identifier
    missing_products: list[Name] = Field(default_factory=list, max_length=MAX_PRODUCTS)
    extra_products: list[Name] = Field(default_factory=list, max_length=MAX_PRODUCTS)
    wrong_dates: list[Name] = Field(default_factory=list, max_length=MAX_PRODUCTS)
    pairing: str | None = None  # e.g. "expected STB-1, found none"
    pin: str | None = None  # a description only, never the PIN itself
    unknown_to_crm: bool = False


class ReconcileReport(_Record):
    run_id: Identifier
    preview: bool
    checked: int = 0
    in_sync: int = 0
    drifted: int = 0
    commands_published: int = 0
    failed: int = 0
    # named by the run, unknown to the store
    unknown_subscriptions: list[Identifier] = Field(default_factory=list, max_length=MAX_ID_LIST)
    # Subscriptions whose stored state validation rejects (repaired in the revoking direction only):
    # their count, and subscription → rejection code of the first ones (capped like ``items``).
    rejected: int = 0
    rejections: dict[str, Name] = Field(default_factory=dict, max_length=MAX_REPORT_ITEMS)
    items: list[DriftItem] = Field(default_factory=list, max_length=MAX_REPORT_ITEMS)
    items_omitted: int = 0
    started_at: AwareDatetime
    finished_at: AwareDatetime
    duration_seconds: float = 0.0
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """The run finished, every subscription was checked, and every one it named was known."""
        return not (self.error or self.failed or self.unknown_subscriptions)


RECORD_TYPES: dict[str, type[_Record]] = {
    "SubscriptionEvent": SubscriptionEvent,
    "CommunicationEvent": CommunicationEvent,
    "ServiceRequest": ServiceRequest,
    "KmsCommand": KmsCommand,
    "KmsResult": KmsResult,
    "ReconcileRequest": ReconcileRequest,
    "ReconcileReport": ReconcileReport,
}


def record_to_dict(record: BaseModel) -> dict[str, Any]:
    """Plain dict of a record for Avro/JSON writers: enums as strings, secrets revealed.

    The only place a ``SecretStr`` is unwrapped; callers write the result to the wire, never to logs.
    """
    return _plain(record.model_dump(mode="python"))


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value
    return value
