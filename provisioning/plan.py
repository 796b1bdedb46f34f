"""What planning returns: the commands to publish, or why nothing is published.

A :class:`Plan` holds either commands or a :class:`~provisioning.errors.Rejection`, never both:
a rejected input plans nothing (DESIGN.md §5). An empty plan without a rejection is a valid answer
("nothing to send", e.g. a QUERY_CLIENT request). A :class:`Skip` is the third answer of a mail run:
the input is not ours to handle (another external system) and is neither sent nor rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioning.errors import Rejection
from schemas.records import KmsCommand

__all__ = ["Plan", "Skip"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Commands in the order they must be applied, or the rejection of the whole input."""

    commands: tuple[KmsCommand, ...] = ()
    rejection: Rejection | None = None

    def __post_init__(self) -> None:
        if self.rejection is not None and self.commands:
            raise ValueError("a rejected plan carries no commands")

    @property
    def rejected(self) -> bool:
        return self.rejection is not None

    @classmethod
    def reject(cls, rejection: Rejection) -> Plan:
        return cls(rejection=rejection)


@dataclass(frozen=True, slots=True)
class Skip:
    """The input is deliberately not handled; ``reason`` says why (for logs and metrics)."""

    reason: str
