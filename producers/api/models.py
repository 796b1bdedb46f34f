"""Request and response bodies of the Web API (pydantic; FastAPI turns them into the OpenAPI document).

Validation errors are 422 with ``loc`` naming the field; the error list never carries the input
(see :func:`producers.api.app.validation_error`), so a bad PIN is not echoed. The PIN is a ``SecretStr``
and no response model has a PIN field.

Ids, names, texts and lists obey the shared limits of :mod:`schemas.limits` (the records' own rule),
and booleans must be JSON booleans: ``"all": 0`` is a 422, not ``false``.

Only what is wrong on its face is a 422 (a PIN that is not four ASCII digits, a missing or double
target, an unknown kind or text mode). Whether a text fits its text mode and length limit is the
pipeline's decision (the same ``validate_text`` for the API, the CLI and mail runs): such a request is
accepted and ends REJECTED with ``TEXT_NOT_ENCODABLE``, ``TEXT_EMPTY`` or ``TEXT_TOO_LONG``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    field_validator,
    model_validator,
)

from producers.outcomes import Outcome, RequestState
from provisioning.pin import PIN_RULE, is_valid_pin
from schemas.limits import MAX_ID_LIST, Identifier, Name, Text
from schemas.records import KmsResult, MessageKind, ReconcileReport, TextMode

__all__ = [
    "ClientInfo",
    "ErrorBody",
    "ErrorView",
    "KmsErrorBody",
    "MessageBody",
    "PinBody",
    "ReconcileRunBody",
    "ReportView",
    "RequestOutcome",
    "ResultView",
    "Section",
    "outcome_view",
]

def _iso_text(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time with a zone, as a string")
    return value


#: A date-time given as ISO 8601 text with a zone (pydantic alone would take a number as epoch seconds).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Section(StrEnum):
    """The nine information sections of a secure client (``kms_adapter.port.QUERY_SECTIONS``)."""

    pairing = "pairing"
    entitlements = "entitlements"
    basic = "basic"
    security = "security"
    anchoring = "anchoring"
    tms_attributes = "tms_attributes"
    sector = "sector"
    pvr = "pvr"
    device_domain = "device_domain"


class PinBody(_Body):
    """``{"pin": "1234"}`` sets the PIN; ``{"default": true}`` resets it to the provider's default."""

    pin: SecretStr | None = Field(default=None, description=f"the new parental PIN; {PIN_RULE}; never echoed",
                                  json_schema_extra={"format": "password", "pattern": "^[0-9]{4}$"})
    default: StrictBool = Field(default=False, description="reset to the provider's default PIN (0001 when none)")

    @field_validator("pin")
    @classmethod
    def _four_digits(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_valid_pin(value.get_secret_value()):
            raise ValueError(f"PIN {PIN_RULE}")
        return value

    @model_validator(mode="after")
    def _pin_or_default(self) -> PinBody:
        if self.pin is not None and self.default:
            raise ValueError("give either pin or default, not both")
        if self.pin is None and not self.default:
            raise ValueError('give pin (four digits) or "default": true')
        return self


class MessageBody(_Body):
    """A Mail or on-screen Message to exactly one target: a secure client, a subscription or everyone."""

    secure_client_id: Identifier | None = None
    subscription_id: Identifier | None = None
    all: StrictBool = Field(default=False, description="every subscriber (the KMS's global operation)")
    kind: MessageKind = Field(description="MAIL (set-top box mailbox) or MESSAGE (on-screen display)")
    text_mode: TextMode = Field(description="ANSI (Windows-1252), UNICODE, or RAW (hexadecimal bytes)")
    text: Text = Field(description="the text; never logged")

    @field_validator("kind", "text_mode", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_target(self) -> MessageBody:
        chosen = [n for n, on in (("secure_client_id", self.secure_client_id),
                                  ("subscription_id", self.subscription_id), ("all", self.all)) if on]
        if len(chosen) != 1:
            raise ValueError("exactly one of secure_client_id, subscription_id, all must name the target"
                             f" (got {', '.join(chosen) or 'none'})")
        return self


class ReconcileRunBody(_Body):
    """A reset run (or its preview) over the subscriptions created in a period and of some types."""

    created_from: Timestamp | None = None
    created_to: Timestamp | None = None
    subscription_types: list[Name] = Field(default_factory=list, max_length=MAX_ID_LIST)
    subscription_ids: list[Identifier] = Field(default_factory=list, max_length=MAX_ID_LIST)
    preview: StrictBool = Field(default=False, description="report what would be reset, send nothing")


class ResultView(BaseModel):
    """One ``KmsResult`` of a request (one command, or the translator's rejection)."""

    secure_client_id: str | None
    operation: str
    state: str
    error_code: str | None = None
    error_description: str | None = None
    provider_error_code: str | None = None
    provider_error_description: str | None = None
    executed_at: datetime
    duplicate: bool = False

    @classmethod
    def of(cls, r: KmsResult) -> ResultView:
        return cls(secure_client_id=r.secure_client_id, operation=r.operation, state=r.state.value,
                   error_code=r.error_code, error_description=r.error_description,
                   provider_error_code=r.provider_error_code,
                   provider_error_description=r.provider_error_description, executed_at=r.executed_at,
                   duplicate=r.duplicate)


class ErrorView(BaseModel):
    code: str
    description: str


class ErrorBody(BaseModel):
    """An error answer (401, 404, 413, 429, 503, ...): what went wrong in words, never an internal message."""

    detail: str


class KmsErrorBody(BaseModel):
    """The KMS refused a query: its business error code and description."""

    detail: ErrorView


class ReportView(BaseModel):
    """The counts of a reset run's ``ReconcileReport``."""

    preview: bool
    checked: int
    in_sync: int
    drifted: int
    commands_published: int
    failed: int
    unknown_subscriptions: list[str] = Field(default_factory=list)
    rejected: int = 0  # subscriptions validation rejects, repaired in the revoking direction only
    rejections: dict[str, str] = Field(default_factory=dict)  # subscription -> rejection code
    error: str | None = None

    @classmethod
    def of(cls, r: ReconcileReport) -> ReportView:
        return cls(preview=r.preview, checked=r.checked, in_sync=r.in_sync, drifted=r.drifted,
                   commands_published=r.commands_published, failed=r.failed,
                   unknown_subscriptions=r.unknown_subscriptions, rejected=r.rejected,
                   rejections=dict(r.rejections), error=r.error)


class RequestOutcome(BaseModel):
    """Where a request stands: PENDING, COMPLETED or REJECTED (with every error code and description)."""

    request_id: str
    state: RequestState
    type: str | None = None
    commands_expected: int | None = Field(default=None, description="results that complete it, when known")
    results: list[ResultView] = Field(default_factory=list)
    errors: list[ErrorView] = Field(default_factory=list)
    report: ReportView | None = None
    submitted_at: datetime | None = None
    status_url: str


class ClientInfo(BaseModel):
    """The information sections of one secure client, as the KMS returned them."""

    secure_client_id: str
    sections: dict[str, dict[str, str]]


def outcome_view(outcome: Outcome | None, request_id: str, request_type: str | None = None) -> RequestOutcome:
    """The response body of a request (``None``: nothing known yet, i.e. PENDING)."""
    status_url = f"/v1/requests/{request_id}"
    if outcome is None:
        return RequestOutcome(request_id=request_id, state=RequestState.PENDING, type=request_type,
                              status_url=status_url)
    return RequestOutcome(
        request_id=request_id, state=outcome.state, type=outcome.request_type or request_type,
        commands_expected=outcome.expected, results=[ResultView.of(r) for r in outcome.results],
        errors=[ErrorView(code=c, description=d) for c, d in outcome.errors],
        report=ReportView.of(outcome.report) if outcome.report is not None else None,
        submitted_at=outcome.submitted_at, status_url=status_url,
    )
