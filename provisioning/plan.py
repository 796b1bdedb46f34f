"""What planning returns: the commands to publish, and why a part of the input was refused.

A :class:`Plan` holds commands, a :class:`~provisioning.errors.Rejection`, or both: a subscription
event whose grant is rejected still plans what it takes away (docs/architecture.md §5 "Revocation is never
held back"), so its plan carries the revoking commands *and* the rejection; the translator publishes
the commands and a REJECTED result. Requests and communications are refused whole (a rejection, no
commands). An empty plan without a rejection is a valid answer ("nothing to send", e.g. a
QUERY_CLIENT request). A :class:`Skip` is the third answer of a mail run: the input is not ours to
handle (another external system) and is neither sent nor rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioning.errors import Rejection
from schemas.records import KmsCommand

__all__ = ["Plan", "Skip"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Commands in the order they must be applied, and the rejection of what was refused, if any."""

    commands: tuple[KmsCommand, ...] = ()
    rejection: Rejection | None = None

    @property
    def rejected(self) -> bool:
        return self.rejection is not None

    @classmethod
    def reject(cls, rejection: Rejection) -> Plan:
        """The whole input is refused: nothing is planned."""
        return cls(rejection=rejection)


@dataclass(frozen=True, slots=True)
class Skip:
    """The input is deliberately not handled; ``reason`` says why (for logs and metrics)."""

    reason: str
