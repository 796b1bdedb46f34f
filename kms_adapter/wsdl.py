"""The packaged WSDL and the KMS vocabulary it defines (docs/architecture.md §4).

Shared by the SOAP client and the simulator so the two cannot disagree on names.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MUTATING_SOAP_OPERATIONS",
    "NAMESPACE",
    "OPERATION_OF_SOAP",
    "SOAP_OPERATION_OF",
    "WSDL_PATH",
    "wsdl_bytes",
]

#: The WSDL file shipped in the package (``kms_adapter/*.wsdl`` is package data).
WSDL_PATH = Path(__file__).with_name("irdeto.wsdl")

#: Target namespace of every request and response element.
NAMESPACE = "urn:kmsbridge:irdeto-kms:1"

#: ``Operation`` name (schemas.records) -> SOAP operation (the Irdeto command).
SOAP_OPERATION_OF: dict[str, str] = {
    "SYNC_ENTITLEMENTS": "overwriteEntitlements",
    "CLEAR_ENTITLEMENTS": "deleteAllEntitlements",
    "PAIR": "pairChipSet",
    "UNPAIR": "unpairChipSet",
    "SET_PIN": "createParentalPinCode",
    "SEND_MAIL": "sendMail",
    "SEND_MESSAGE": "sendMessage",
    "SEND_MAIL_GLOBAL": "sendMailGlobal",
    "SEND_MESSAGE_GLOBAL": "sendMessageGlobal",
    "REAUTHORISE_SECTOR": "synchronizeSector",
    "QUERY_CLIENT": "queryClient",
    "QUERY_CLIENTS": "queryClients",
}

#: SOAP operation -> ``Operation`` name.
OPERATION_OF_SOAP: dict[str, str] = {soap: op for op, soap in SOAP_OPERATION_OF.items()}

#: SOAP operations that change state (carry ``idempotencyKey``, answer ``duplicate``).
MUTATING_SOAP_OPERATIONS: frozenset[str] = frozenset(
    soap for op, soap in SOAP_OPERATION_OF.items() if not op.startswith("QUERY_")
)

_cached: bytes | None = None


def wsdl_bytes() -> bytes:
    """The WSDL document (read once)."""
    global _cached
    if _cached is None:
        _cached = WSDL_PATH.read_bytes()
    return _cached
