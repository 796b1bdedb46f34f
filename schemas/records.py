"""Pydantic twins of every Avro record in ``schemas/*.avsc`` (DESIGN.md §3).

Each model validates a record as it arrives from Kafka, the CLI or the Web API. The Avro schema
file of the same name is the wire contract; ``tests/unit/test_schemas_match_models.py`` keeps the
two in step. Times are timezone-aware ``datetime`` (Avro ``timestamp-millis``).

Sensitive values (the PIN) are ``SecretStr`` so ``repr()``/logs never show them; the codec
unwraps them only when it writes bytes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator

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

NonEmpty = Annotated[str, Field(min_length=1)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


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
    service_code: NonEmpty
    state: ServiceState
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


class Device(_Record):
    distributor: NonEmpty
    secure_client_id: NonEmpty
    stb_serial: str | None = None


class SubscriptionEvent(_Record):
    event_id: NonEmpty
    event_type: EventType
    occurred_at: AwareDatetime
    subscription_id: NonEmpty
    account_id: NonEmpty
    subscription_type: NonEmpty
    created_at: AwareDatetime
    version: int = Field(ge=0)
    state: SubscriptionState
    services: list[Service] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    removed_devices: list[Device] = Field(default_factory=list)
    # Devices put on by this change. Optional (default empty): when absent, ACTIVATED treats every
    # device as new and a DEVICES_CHANGED that removes a box from a distributor treats the box now on
    # that distributor as its swap. Added to DESIGN.md §3 on purpose, see README "Records".
    added_devices: list[Device] = Field(default_factory=list)


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
    communication_id: NonEmpty
    external_system: NonEmpty
    kind: MessageKind
    text_mode: TextMode
    text: str
    secure_client_id: str | None = None
    subscription_id: str | None = None
    all: bool = False
    scheduled_at: AwareDatetime | None = None
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _target(self) -> CommunicationEvent:
        _exactly_one_target(self.secure_client_id, self.subscription_id, self.all)
        return self


# --- ServiceRequest ---------------------------------------------------------------------------------


class ServiceRequest(_Record):
    request_id: NonEmpty
    type: RequestType
    secure_client_id: str | None = None
    subscription_id: str | None = None
    all: bool = False
    pin: SecretStr | None = None
    kind: MessageKind | None = None
    text_mode: TextMode | None = None
    text: str | None = None
    sections: list[str] = Field(default_factory=list)
    process_name: str = "kmsbridge"
    requested_by: str = "unknown"
    requested_at: AwareDatetime


# --- KmsCommand -------------------------------------------------------------------------------------


class Product(_Record):
    product_id: NonEmpty
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


class Message(_Record):
    kind: MessageKind
    text_mode: TextMode
    text: str


class Source(_Record):
    process_name: str
    topic: str | None = None
    event_id: str | None = None
    request_id: str | None = None
    communication_id: str | None = None
    run_id: str | None = None


class KmsCommand(_Record):
    idempotency_key: NonEmpty
    operation: Operation
    secure_client_id: NonEmpty  # "*" for global operations
    subscription_id: str | None = None
    subscription_version: int | None = None
    distributor: str | None = None
    products: list[Product] = Field(default_factory=list)
    chipset: str | None = None  # set-top box serial for PAIR / UNPAIR
    pin: SecretStr | None = None
    message: Message | None = None
    source: Source
    priority: Priority = Priority.REGULAR
    not_before: AwareDatetime | None = None
    created_at: AwareDatetime


Command = KmsCommand


# --- KmsResult --------------------------------------------------------------------------------------


class KmsResult(_Record):
    idempotency_key: NonEmpty
    operation: str  # an Operation, or a request type for rejections made before planning
    secure_client_id: str | None = None
    subscription_id: str | None = None
    event_id: str | None = None
    communication_id: str | None = None
    request_id: str | None = None
    run_id: str | None = None
    state: ResultState
    error_code: str | None = None
    error_description: str | None = None
    provider_error_code: str | None = None
    provider_error_description: str | None = None
    attempts: int = 0
    executed_at: AwareDatetime
    latency_ms: float = 0.0
    duplicate: bool = False
    client_info: dict[str, dict[str, str]] | None = None


# --- Reconcile --------------------------------------------------------------------------------------


class ReconcileRequest(_Record):
    run_id: NonEmpty
    created_from: AwareDatetime | None = None
    created_to: AwareDatetime | None = None
    subscription_types: list[str] = Field(default_factory=list)
    subscription_ids: list[str] = Field(default_factory=list)
    preview: bool = False
    requested_by: str = "unknown"
    requested_at: AwareDatetime | None = None


class DriftItem(_Record):
    subscription_id: str
    secure_client_id: str
    missing_products: list[str] = Field(default_factory=list)
    extra_products: list[str] = Field(default_factory=list)
    wrong_dates: list[str] = Field(default_factory=list)
    pairing: str | None = None  # e.g. "expected STB-1, found none"
    pin: str | None = None  # a description only, never the PIN itself
    unknown_to_crm: bool = False


class ReconcileReport(_Record):
    run_id: NonEmpty
    preview: bool
    checked: int = 0
    in_sync: int = 0
    drifted: int = 0
    commands_published: int = 0
    failed: int = 0
    unknown_subscriptions: list[str] = Field(default_factory=list)  # named by the run, unknown to the store
    items: list[DriftItem] = Field(default_factory=list)
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
