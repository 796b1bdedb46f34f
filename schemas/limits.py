"""Limits every record obeys at the edge (docs/architecture.md §3): id characters and lengths, array sizes.

One rule for the Web API, the CLI and every consumer: the pydantic twins in :mod:`schemas.records`
use these types, so a record that breaks a limit fails validation wherever it enters (a 4xx naming
the field, a CLI error naming the line and field, or a DLQ entry) and never reaches a database
column, an XML document or the KMS.

* **Ids** (secure client, subscription, event, request, run, ...) are 1 to :data:`ID_MAX_LENGTH`
  characters with no control character (C0, DEL, C1) and no code point XML 1.0 cannot carry, so an id
  always fits the tables' ``String(128)`` columns and a SOAP envelope.
* **Names** (distributor, service code, product id, subscription type) are at most
  :data:`NAME_MAX_LENGTH` characters of the same alphabet.
* **Distributors** are at most :data:`DISTRIBUTOR_MAX_LENGTH` characters (the ``distributor``
  column of the desired-state cards table).
* **Topics** (a command's source topic) are at most :data:`TOPIC_MAX_LENGTH` characters, Kafka's own
  limit.
* **Texts** (message texts) are at most :data:`TEXT_MAX_LENGTH` characters that XML 1.0 can carry
  (tab, line feed and carriage return included). The text-mode rules of ``provisioning/text.py``
  stay the business rejection; this bound only keeps a record's size sane.
* **Arrays** have a fixed ceiling each, far above what a real subscription holds, so one event can
  never fan out into an unbounded number of commands.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_core import ErrorDetails

__all__ = [
    "DISTRIBUTOR_MAX_LENGTH",
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "ID_MAX_LENGTH",
    "MAX_DEVICES",
    "MAX_ID_LIST",
    "MAX_PRODUCTS",
    "MAX_REMOVED_DEVICES",
    "MAX_REPORT_ITEMS",
    "MAX_SECTIONS",
    "MAX_SERVICES",
    "NAME_MAX_LENGTH",
    "SAFE_TEXT_PATTERN",
    "TEXT_MAX_LENGTH",
    "TOPIC_MAX_LENGTH",
    "XML_TEXT_PATTERN",
    "Distributor",
    "IdempotencyKey",
    "Identifier",
    "Name",
    "Text",
    "Topic",
    "error_message",
]

#: Longest id: the width of the id columns of the ledger and the desired-state tables.
ID_MAX_LENGTH = 128
#: Longest idempotency key: the ledger's key column.
IDEMPOTENCY_KEY_MAX_LENGTH = 255
#: Longest distributor, service code, product id or subscription type.
NAME_MAX_LENGTH = 64
#: Longest distributor name: the ``distributor`` column of the desired-state cards table.
DISTRIBUTOR_MAX_LENGTH = 16
#: Longest topic name (Kafka refuses longer ones).
TOPIC_MAX_LENGTH = 249
#: Longest message text, in characters: eight times the longest text the rules of
#: ``provisioning/text.py`` accept (RAW: 1024 bytes, 2048 hex digits), so only absurd texts stop here.
TEXT_MAX_LENGTH = 16_384

#: Current devices of one subscription (the provider's ``max_viewing_points`` is at most 4; the
#: record bound leaves room for a business rejection to name the excess).
MAX_DEVICES = 16
#: Devices one change may take off (and, likewise, put on).
MAX_REMOVED_DEVICES = 16
#: Services of one subscription.
MAX_SERVICES = 256
#: Products of one command.
MAX_PRODUCTS = 1024
#: Query sections of one request (the KMS has nine).
MAX_SECTIONS = 16
#: Ids in one list of a request (subscriptions of a reset run, subscription types, ...).
MAX_ID_LIST = 1000
#: Drift items one reconcile report carries (the job caps them lower, counting the rest).
MAX_REPORT_ITEMS = 10_000

#: No C0 control, DEL or C1 control and no U+FFFE/U+FFFF: every character XML 1.0 can carry except
#: tab, line feed and carriage return, which no id contains. (pydantic refuses a lone surrogate itself:
#: it is not a valid unicode string.) Written with ``\uXXXX`` escapes, which pydantic's regex, Python's
#: ``re`` and the ECMA regex of OpenAPI clients all read alike (``\x{...}`` is pydantic's alone).
SAFE_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\uFFFE\uFFFF]+$"

Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)
]
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]
Distributor = Annotated[str, Field(min_length=1, max_length=DISTRIBUTOR_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]
Topic = Annotated[str, Field(min_length=1, max_length=TOPIC_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]

#: Every character XML 1.0 can carry: no C0 control but tab, line feed and carriage return, no
#: U+FFFE/U+FFFF (the same set ``kms_adapter.commands`` refuses before a SOAP call). Empty is allowed:
#: an empty text is the business rejection ``TEXT_EMPTY``.
XML_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\uFFFE\uFFFF]*$"

Text = Annotated[str, Field(max_length=TEXT_MAX_LENGTH, pattern=XML_TEXT_PATTERN)]


_PATTERN_MEANING = {
    SAFE_TEXT_PATTERN: "must not contain control characters or characters XML cannot carry",
    XML_TEXT_PATTERN: "must contain only characters XML can carry (tab and line breaks are allowed)",
}


def error_message(err: ErrorDetails) -> str:
    """The message of one pydantic error, a broken character rule said in words (not as its regex)."""
    if err["type"] == "string_pattern_mismatch":
        meaning = _PATTERN_MEANING.get(str((err.get("ctx") or {}).get("pattern")))
        if meaning is not None:
            return meaning
    return err["msg"]
