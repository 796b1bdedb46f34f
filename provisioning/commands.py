"""Building ``KmsCommand`` records: the fields every command of one input shares, in one place.

A :class:`CommandFactory` is made once per input (event, request, communication, reset run) with
the source, key space and times, and then called once per command. It guarantees that every command
of a plan carries the same ``source``, ``created_at`` and subscription fields and a key made by
:func:`provisioning.keys.idempotency_key`, so equal inputs give equal (``==``) commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import SecretStr

from provisioning.keys import KeySource, idempotency_key
from schemas.records import KmsCommand, Message, Operation, Priority, Product, Source

__all__ = ["GLOBAL_CLIENT", "CommandFactory"]

#: ``secure_client_id`` (and Kafka key) of global operations (DESIGN.md §3).
GLOBAL_CLIENT = "*"


@dataclass(frozen=True, slots=True)
class CommandFactory:
    """Makes the commands of one input; see the module docstring."""

    key_source: KeySource
    source_id: str
    source: Source
    created_at: datetime
    subscription_id: str | None = None
    subscription_version: int | None = None
    priority: Priority = Priority.REGULAR
    not_before: datetime | None = None

    def __call__(
        self,
        operation: Operation,
        secure_client_id: str,
        *,
        distributor: str | None = None,
        products: Sequence[Product] = (),
        chipset: str | None = None,
        pin: SecretStr | None = None,
        message: Message | None = None,
        discriminator: str | None = None,
    ) -> KmsCommand:
        return KmsCommand(
            idempotency_key=idempotency_key(
                self.key_source, self.source_id, secure_client_id, operation, discriminator
            ),
            operation=operation,
            secure_client_id=secure_client_id,
            subscription_id=self.subscription_id,
            subscription_version=self.subscription_version,
            distributor=distributor,
            products=list(products),
            chipset=chipset,
            pin=pin,
            message=message,
            source=self.source,
            priority=self.priority,
            not_before=self.not_before,
            created_at=self.created_at,
        )
