"""What a mutating :class:`~schemas.records.KmsCommand` asks of the KMS, checked once for every adapter.

Both the SOAP client and the in-memory fake turn a command into :class:`CommandFields` here, and
check the cards of a query with :func:`check_xml_safe`, so they accept and refuse exactly the same
commands and queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.records import KmsCommand, Product

from .errors import KmsRejected
from .port import MUTATING_OPERATIONS

__all__ = ["GLOBAL_OPERATIONS", "CommandFields", "check_xml_safe", "command_fields"]

# Characters XML 1.0 cannot carry (C0 controls but tab/CR/LF, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: Operations addressed to every subscriber rather than one card.
GLOBAL_OPERATIONS: frozenset[str] = frozenset({"SEND_MAIL_GLOBAL", "SEND_MESSAGE_GLOBAL"})


@dataclass(frozen=True, slots=True)
class CommandFields:
    """The values one KMS call needs. ``pin`` is the plain PIN: never log this object's fields."""

    operation: str
    idempotency_key: str
    card: str | None  # None for the global operations
    products: tuple[Product, ...] = ()
    chipset: str | None = None
    pin: str | None = None
    text: str | None = None
    text_mode: str | None = None

    def __repr__(self) -> str:  # never show the PIN or the text
        return (f"CommandFields(operation={self.operation!r}, idempotency_key={self.idempotency_key!r}, "
                f"card={self.card!r})")


def command_fields(command: KmsCommand) -> CommandFields:
    """Check a mutating command has what its operation needs; raise terminal ``KmsRejected`` if not.

    Codes: ``UNSUPPORTED_OPERATION`` (a query passed to ``execute``), ``INVALID_COMMAND`` (a required
    value is missing: chipset for PAIR/UNPAIR, pin for SET_PIN, message for the SEND_* operations; or
    a value holds characters XML cannot carry, such as NUL or other control characters).
    """
    op = command.operation.value
    if op not in MUTATING_OPERATIONS:
        raise KmsRejected("UNSUPPORTED_OPERATION",
                          f"{op} is not a mutating operation; use query_client/query_clients", operation=op)

    def missing(what: str) -> KmsRejected:
        return KmsRejected("INVALID_COMMAND", f"{op} needs {what}", operation=op)

    text = text_mode = None
    if op in GLOBAL_OPERATIONS or op in ("SEND_MAIL", "SEND_MESSAGE"):
        if command.message is None:
            raise missing("a message")
        text, text_mode = command.message.text, command.message.text_mode.value
    chipset = None
    if op in ("PAIR", "UNPAIR"):
        if not command.chipset:
            raise missing("a chipset")
        chipset = command.chipset
    pin = None
    if op == "SET_PIN":
        if command.pin is None:
            raise missing("a pin")
        pin = command.pin.get_secret_value()
    fields = CommandFields(
        operation=op,
        idempotency_key=command.idempotency_key,
        card=None if op in GLOBAL_OPERATIONS else command.secure_client_id,
        products=tuple(command.products) if op == "SYNC_ENTITLEMENTS" else (),
        chipset=chipset,
        pin=pin,
        text=text,
        text_mode=text_mode,
    )
    check_xml_safe(op, [("idempotency key", fields.idempotency_key), ("secure client id", fields.card),
                        ("chipset", fields.chipset), ("pin", fields.pin), ("message text", fields.text),
                        *(("product id", p.product_id) for p in fields.products)])
    return fields


def check_xml_safe(operation: str, named: Iterable[tuple[str, str | None]]) -> None:
    """Raise terminal ``KmsRejected("INVALID_COMMAND")`` for the first value XML cannot carry.

    ``named`` pairs a description (``"secure client id"``) with a value; ``None`` values are skipped.
    The records refuse such values at the edge already (:mod:`schemas.limits`); this keeps a value
    that got past them (a row stored before the limits) from ever reaching lxml, whose ``ValueError``
    would otherwise escape the adapter. The message names the value's role, never the value.
    """
    named = list(named)
    if not _NOT_XML.search("\n".join(value for _, value in named if value is not None)):
        return  # one search over all of them (a line feed is one of XML's characters)
    for name, value in named:
        if value is not None and _NOT_XML.search(value):
            raise KmsRejected("INVALID_COMMAND", f"the {name} holds characters XML cannot carry",
                              operation=operation)
