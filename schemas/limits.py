"""Limits every record obeys at the edge (DESIGN.md §3): id characters and lengths, array sizes.

One rule for the Web API, the CLI and every consumer: the pydantic twins in :mod:`schemas.records`
use these types, so a record that breaks a limit fails validation wherever it enters (a 4xx naming
the field, a CLI error naming the line and field, or a DLQ entry) and never reaches a database
column, an XML document or the KMS.

* **Ids** (secure client, subscription, event, request, run, ...) are 1 to :data:`ID_MAX_LENGTH`
  characters with no control character (C0, DEL, C1) and no code point XML 1.0 cannot carry, so an id
  always fits the tables' ``String(128)`` columns and a SOAP envelope.
* **Names** (distributor, service code, product id, subscription type) are at most
  :data:`NAME_MAX_LENGTH` characters of the same alphabet.
* **Arrays** have a fixed ceiling each, far above what a real subscription holds, so one event can
  never fan out into an unbounded number of commands.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

__all__ = [
    "ID_MAX_LENGTH",
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "MAX_DEVICES",
    "MAX_ID_LIST",
    "MAX_PRODUCTS",
    "MAX_REMOVED_DEVICES",
    "MAX_SECTIONS",
    "MAX_SERVICES",
    "NAME_MAX_LENGTH",
    "Identifier",
    "IdempotencyKey",
    "Name",
    "SAFE_TEXT_PATTERN",
]

#: Longest id: the width of the id columns of the ledger and the desired-state tables.
ID_MAX_LENGTH = 128
#: Longest idempotency key: the ledger's key column.
IDEMPOTENCY_KEY_MAX_LENGTH = 255
#: Longest distributor, service code, product id or subscription type.
NAME_MAX_LENGTH = 64

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

#: No C0 control, DEL or C1 control and no U+FFFE/U+FFFF: every character XML 1.0 can carry except
#: tab, line feed and carriage return, which no id contains. (pydantic refuses a lone surrogate itself:
#: it is not a valid unicode string.)
SAFE_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\x{FFFE}\x{FFFF}]+$"

Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)
]
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=SAFE_TEXT_PATTERN)]
