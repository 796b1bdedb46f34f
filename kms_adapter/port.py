"""The KMS port (docs/architecture.md §4): what the executor, the reconciler and the Web API need of a KMS.

Implementations: :class:`kms_adapter.soap_client.SoapKmsClient` (the real thing over SOAP) and
:class:`kms_adapter.fake.InMemoryKms` (unit tests). Both raise only :mod:`kms_adapter.errors` types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from schemas.records import KmsCommand, Product

__all__ = [
    "EFFECT_OPERATIONS",
    "MUTATING_OPERATIONS",
    "QUERY_SECTIONS",
    "ClientState",
    "KmsOutcome",
    "KmsPort",
]

#: The nine information sections of a secure client query, in the order the KMS returns them.
QUERY_SECTIONS: tuple[str, ...] = (
    "pairing",
    "entitlements",
    "basic",
    "security",
    "anchoring",
    "tms_attributes",
    "sector",
    "pvr",
    "device_domain",
)

#: Operations :meth:`KmsPort.execute` accepts (every ``Operation`` but the two queries).
MUTATING_OPERATIONS: frozenset[str] = frozenset(
    {
        "SYNC_ENTITLEMENTS",
        "CLEAR_ENTITLEMENTS",
        "PAIR",
        "UNPAIR",
        "SET_PIN",
        "SEND_MAIL",
        "SEND_MESSAGE",
        "SEND_MAIL_GLOBAL",
        "SEND_MESSAGE_GLOBAL",
        "REAUTHORISE_SECTOR",
    }
)

#: Mutating operations that are effects, not absolute states (docs/architecture.md §4): sending one twice shows
#: the message twice on a KMS that does not deduplicate by idempotency key. Every other operation
#: converges when repeated, so an adapter may resend it; an effect it never resends on its own.
EFFECT_OPERATIONS: frozenset[str] = frozenset({"SEND_MAIL", "SEND_MESSAGE", "SEND_MAIL_GLOBAL", "SEND_MESSAGE_GLOBAL"})


@dataclass(frozen=True, slots=True)
class KmsOutcome:
    """A mutating call the KMS accepted.

    ``duplicate`` is true when the KMS said it had already applied this idempotency key (it then
    returns the first answer and applies nothing).
    """

    provider_code: str = "OK"
    provider_text: str = ""
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the KMS holds for one secure client, as the reconciler compares it with CRM.

    ``known`` is false when the KMS has no record of the card (never provisioned); the other fields
    are then empty. The PIN itself is never returned, only whether one is set.
    """

    secure_client_id: str
    known: bool
    entitlements: tuple[Product, ...] = ()
    paired_chipset: str | None = None
    pin_set: bool = False


@runtime_checkable
class KmsPort(Protocol):
    """The KMS as the product sees it."""

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        """Apply a mutating command (every ``Operation`` but QUERY_CLIENT/QUERY_CLIENTS).

        Raises :class:`~kms_adapter.errors.KmsUnavailable` / :class:`~kms_adapter.errors.KmsAuthError`
        (retry) or :class:`~kms_adapter.errors.KmsRejected` (terminal).
        """
        ...

    async def query_client(
        self, secure_client_id: str, sections: Sequence[str] = ()
    ) -> dict[str, dict[str, str]]:
        """The information sections of one device (all of :data:`QUERY_SECTIONS` when empty)."""
        ...

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        """Entitlements, pairing and PIN state of many devices (batched), keyed by secure client."""
        ...

    async def ping(self) -> None:
        """A cheap call that succeeds only when the KMS answers and accepts our credentials."""
        ...

    async def aclose(self) -> None:
        """Release connections. The port is unusable afterwards."""
        ...
