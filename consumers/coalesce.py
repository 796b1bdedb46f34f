"""Which absolute command of a box is newer, and the executor's coalescing of the commands it holds.

An *absolute* command sets one attribute of a secure client whole (:func:`attribute_of`): its
entitlements (``SYNC_ENTITLEMENTS``, ``CLEAR_ENTITLEMENTS``), its pairing with one chipset (``PAIR``,
``UNPAIR``), its parental PIN (``SET_PIN``). Applying the newest one alone leaves the box as applying
all of them in order would, so an older one may be skipped; it then ends COMPLETED with
``superseded_by`` naming the newer command's key. Effects (mail, messages, re-authorisation) and
queries have no attribute and are never skipped.

**Newer** (:func:`is_newer`): of two commands of one subscription that both carry a version, the
higher version; otherwise the later origin time (``created_at``: the event's ``occurred_at``, the
request's ``requested_at``, the reset run's time). Commands of one input share their origin time and
version, so none of them supersedes another (an unpair and a pair of one swap both run).

Two places apply the rule:

1. :class:`Holding` (the executor): when a command's turn comes and the executor already holds a
   newer command for the same box and attribute (polled in the same batch, or waiting in the box's
   queue), the older one is not sent.
2. The ledger (:class:`~consumers.command_runner.CommandRunner`): it keeps, per secure client and
   attribute, the origin of the last applied command; a command older than that is not sent. This is
   what keeps the express and the regular lanes in order: an agent's PIN reset applied first is not
   undone by an older regular ``SET_PIN`` that reaches the KMS after it.

Revocation is never held back by either: a ``CLEAR_ENTITLEMENTS`` or ``UNPAIR`` is skipped only for a
newer command of the same attribute, whose state is then the box's (the newer state is the right one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from schemas.records import KmsCommand, Operation

__all__ = ["ABSOLUTE", "SUPERSEDED", "Holding", "Origin", "attribute_of", "is_newer"]

#: the ``MESSAGES_PROCESSED`` outcome (and log word) of a command skipped for a newer one
SUPERSEDED: Final = "superseded"

#: absolute operations and the attribute of the box each one sets
ABSOLUTE: Final[Mapping[Operation, str]] = {
    Operation.SYNC_ENTITLEMENTS: "entitlements",
    Operation.CLEAR_ENTITLEMENTS: "entitlements",
    Operation.PAIR: "pairing",
    Operation.UNPAIR: "pairing",
    Operation.SET_PIN: "pin",
}


def attribute_of(cmd: KmsCommand) -> str | None:
    """The attribute ``cmd`` sets whole (pairing per chipset), None for effects, queries, globals."""
    attribute = ABSOLUTE.get(cmd.operation)
    if attribute is None or cmd.secure_client_id == "*":
        return None
    if attribute == "pairing":
        return f"pairing:{cmd.chipset or ''}"
    return attribute


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an absolute command comes from, as far as ordering goes."""

    created_at: datetime
    subscription_id: str | None = None
    version: int | None = None
    idempotency_key: str = ""

    @classmethod
    def of(cls, cmd: KmsCommand) -> Origin:
        return cls(cmd.created_at, cmd.subscription_id, cmd.subscription_version, cmd.idempotency_key)


def is_newer(a: Origin, b: Origin) -> bool:
    """True when ``a`` is strictly newer than ``b`` (see the module docstring)."""
    if a.subscription_id is not None and a.subscription_id == b.subscription_id \
            and a.version is not None and b.version is not None:
        return a.version > b.version
    return a.created_at > b.created_at


class Holding:
    """The absolute commands the executor holds (dispatched, not finished), by box and attribute."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], list[KmsCommand]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._held.values())

    def hold(self, cmd: KmsCommand) -> None:
        attribute = attribute_of(cmd)
        if attribute is not None:
            self._held.setdefault((cmd.secure_client_id, attribute), []).append(cmd)

    def release(self, cmd: KmsCommand) -> None:
        attribute = attribute_of(cmd)
        if attribute is None:
            return
        key = (cmd.secure_client_id, attribute)
        held = self._held.get(key)
        if not held:
            return
        for i, other in enumerate(held):
            if other is cmd:
                del held[i]
                break
        if not held:
            del self._held[key]

    def newest_over(self, cmd: KmsCommand) -> KmsCommand | None:
        """The newest held command of ``cmd``'s box and attribute that is newer than ``cmd``, or None."""
        attribute = attribute_of(cmd)
        if attribute is None:
            return None
        best: KmsCommand | None = None
        mine = Origin.of(cmd)
        for other in self._held.get((cmd.secure_client_id, attribute), ()):
            if other is cmd or not is_newer(Origin.of(other), mine):
                continue
            if best is None or is_newer(Origin.of(other), Origin.of(best)):
                best = other
        return best
