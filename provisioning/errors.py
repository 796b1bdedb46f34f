"""Business rejections of the domain core and the catalogue of their stable error codes.

A :class:`Rejection` is an *answer*, not an exception: planning returns it inside a ``Plan`` and the
translator turns it into a REJECTED ``KmsResult`` (``error_code`` / ``error_description``), never a
DLQ entry (docs/architecture.md §5). The codes are a contract with CRM, dashboards and runbooks: add new ones,
never rename or reuse one.

Descriptions name the offending input (a distributor, a secure client, a service code, a limit) but
never a PIN or a message text (docs/architecture.md §5, STYLE.md "never print a payload").

A distributor's service list *filters* what its device receives (docs/architecture.md §1, feature 1): a
household with MAIN ("*") and TWIN1 ([BASIC]) that buys SPORTS for every box gets SPORTS on MAIN
only. Only a service chosen *explicitly* (``services[].distributors``) for a distributor that may
not carry it is rejected, with ``SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "AMBIGUOUS_TARGET",
    "DUPLICATE_DISTRIBUTOR",
    "DUPLICATE_SECURE_CLIENT",
    "ERROR_CODES",
    "INCONSISTENT_DEVICES",
    "INVALID_PIN",
    "INVALID_RAW_TEXT",
    "MISSING_PARAMETER",
    "MISSING_TARGET",
    "NO_DEVICES",
    "REQUIRED_DISTRIBUTOR_MISSING",
    "SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR",
    "TEXT_EMPTY",
    "TEXT_NOT_ENCODABLE",
    "TEXT_TOO_LONG",
    "TOO_MANY_VIEWING_POINTS",
    "UNKNOWN_DISTRIBUTOR",
    "UNKNOWN_SUBSCRIPTION",
    "UNMAPPED_SERVICE",
    "UNSUPPORTED_TARGET",
    "InvalidSubscription",
    "PlanningError",
    "Rejection",
]

# --- subscription events ---------------------------------------------------------------------------
UNKNOWN_DISTRIBUTOR: Final = "UNKNOWN_DISTRIBUTOR"
TOO_MANY_VIEWING_POINTS: Final = "TOO_MANY_VIEWING_POINTS"
DUPLICATE_SECURE_CLIENT: Final = "DUPLICATE_SECURE_CLIENT"
DUPLICATE_DISTRIBUTOR: Final = "DUPLICATE_DISTRIBUTOR"
REQUIRED_DISTRIBUTOR_MISSING: Final = "REQUIRED_DISTRIBUTOR_MISSING"
INCONSISTENT_DEVICES: Final = "INCONSISTENT_DEVICES"
UNMAPPED_SERVICE: Final = "UNMAPPED_SERVICE"
SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR: Final = "SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR"

# --- requests and communications -------------------------------------------------------------------
INVALID_PIN: Final = "INVALID_PIN"
TEXT_EMPTY: Final = "TEXT_EMPTY"
TEXT_TOO_LONG: Final = "TEXT_TOO_LONG"
TEXT_NOT_ENCODABLE: Final = "TEXT_NOT_ENCODABLE"
INVALID_RAW_TEXT: Final = "INVALID_RAW_TEXT"
MISSING_PARAMETER: Final = "MISSING_PARAMETER"
MISSING_TARGET: Final = "MISSING_TARGET"
AMBIGUOUS_TARGET: Final = "AMBIGUOUS_TARGET"
UNSUPPORTED_TARGET: Final = "UNSUPPORTED_TARGET"
UNKNOWN_SUBSCRIPTION: Final = "UNKNOWN_SUBSCRIPTION"
NO_DEVICES: Final = "NO_DEVICES"

#: Every code with its one-line meaning (docs, the Web API's error list, a test keeps it complete).
ERROR_CODES: Final[dict[str, str]] = {
    UNKNOWN_DISTRIBUTOR: "a device names a distributor the provider file does not configure, or a service is "
                         "chosen for a distributor no device of the subscription uses",
    TOO_MANY_VIEWING_POINTS: "the subscription has more devices than max_viewing_points",
    DUPLICATE_SECURE_CLIENT: "the same secure client appears twice among the subscription's devices",
    DUPLICATE_DISTRIBUTOR: "two devices of the subscription use the same distributor",
    REQUIRED_DISTRIBUTOR_MISSING: "a device's distributor requires another that no device uses",
    INCONSISTENT_DEVICES: "added_devices names a card not among devices, or removed_devices repeats one",
    UNMAPPED_SERVICE: "a service of the subscription has no KMS product mapping",
    SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR: "a service is chosen for a distributor whose services do not include it",
    INVALID_PIN: "a PIN is not exactly four ASCII digits",
    TEXT_EMPTY: "a message text is empty",
    TEXT_TOO_LONG: "a message text exceeds the limit of its text mode",
    TEXT_NOT_ENCODABLE: "an ANSI message text has characters outside Windows-1252",
    INVALID_RAW_TEXT: "a RAW message text is not an even-length hexadecimal string",
    MISSING_PARAMETER: "a request lacks a parameter its type needs (pin, kind, text_mode, text)",
    MISSING_TARGET: "a request or communication names no target",
    AMBIGUOUS_TARGET: "a request names more than one target",
    UNSUPPORTED_TARGET: "the target kind is not possible for this request type (e.g. a global PIN)",
    UNKNOWN_SUBSCRIPTION: "the target subscription is not known, so its devices cannot be found",
    NO_DEVICES: "the target subscription has no devices",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was refused: a stable ``code`` from :data:`ERROR_CODES` and a readable text."""

    code: str
    description: str

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown rejection code {self.code!r}; add it to ERROR_CODES")


class PlanningError(Exception):
    """A caller asked the domain core for something it cannot compute (a programming error)."""


class InvalidSubscription(PlanningError):
    """``desired_state`` was given a subscription that validation rejects; carries the rejection."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.code}: {rejection.description}")
        self.rejection = rejection
