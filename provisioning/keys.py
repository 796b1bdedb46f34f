"""Deterministic idempotency keys: the ONE place they are made (docs/architecture.md §5).

A key is ``<source kind>:<source id>:<secure client>:<OPERATION>[:<discriminator>]``, e.g.
``ev:0b7e3c1e-8f2a-4c4e-9a51-3f6d2a9d7c10:4120051539:SYNC_ENTITLEMENTS``. It is

* **deterministic**: the same inputs give the same key, so a redelivered event yields byte-identical
  commands and the executor's ledger (and the simulator) recognise the duplicate;
* **injective**: different inputs give different keys. A part is written literally only when it is
  short (≤ :data:`MAX_LITERAL`) and uses the characters ``A-Z a-z 0-9 . _ - *``; any other part
  is written as ``~`` + 32 hex digits of its SHA-256. ``:`` and ``~`` are never literal, so parts
  cannot run into each other and a hashed part never equals a literal one;
* **bounded**: at most :data:`MAX_KEY_LENGTH` characters, whatever the ids look like.

The source kind says which id space the id comes from, so a run id that happens to equal an event
id still gives a different key: a reset run must reach the KMS even though the event's own commands
are already COMPLETED in the ledger.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Final

from schemas.records import Operation

__all__ = ["MAX_KEY_LENGTH", "MAX_LITERAL", "KeySource", "idempotency_key", "rejection_key"]


class KeySource(StrEnum):
    """Where the command came from; the key's first part."""

    EVENT = "ev"  # SubscriptionEvent.event_id
    REQUEST = "req"  # ServiceRequest.request_id
    COMMUNICATION = "comm"  # CommunicationEvent.communication_id
    RUN = "run"  # ReconcileRequest.run_id


#: Longest part written as-is; longer parts are hashed (a UUID, 36 characters, stays readable).
MAX_LITERAL: Final = 64
_HASHED_LENGTH: Final = 1 + 32
_LONGEST_OPERATION: Final = max(len(op.value) for op in Operation)
#: Upper bound of every key this module makes.
MAX_KEY_LENGTH: Final = (
    max(len(s.value) for s in KeySource) + 3 * MAX_LITERAL + _LONGEST_OPERATION + 4
)

_SAFE = re.compile(r"[A-Za-z0-9._*-]+")


def idempotency_key(
    source: KeySource,
    source_id: str,
    secure_client_id: str,
    operation: Operation,
    discriminator: str | None = None,
) -> str:
    """The idempotency key of one command (see the module docstring for the format).

    ``discriminator`` separates two commands that share source, client and operation (e.g. the
    CLEAR_ENTITLEMENTS of a removed card and of the same card when it is re-added). Empty ids are a
    caller bug and raise ``ValueError``.
    """
    parts = [source.value, _part(source_id, "source_id"), _part(secure_client_id, "secure_client_id"),
             Operation(operation).value]
    if discriminator is not None:
        parts.append(_part(discriminator, "discriminator"))
    return ":".join(parts)


def rejection_key(source: KeySource, source_id: str) -> str:
    """The key of the REJECTED ``KmsResult`` of a whole input (``ev:<event_id>:REJECTED``).

    Three parts where a command key has four or five, so it never equals one; deterministic, so a
    redelivered rejected event yields the same result key.
    """
    return ":".join([source.value, _part(source_id, "source_id"), "REJECTED"])


def _part(value: str, name: str) -> str:
    if not value:
        raise ValueError(f"idempotency key part {name} must not be empty")
    if len(value) <= MAX_LITERAL and _SAFE.fullmatch(value):
        return value
    return "~" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]
