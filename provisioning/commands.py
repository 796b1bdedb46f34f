"""Building ``KmsCommand`` records: the fields every command of one input shares, in one place.

A :class:`CommandFactory` is made once per input (event, request, communication, reset run) with
the source, key space and times, and then called once per command. It guarantees that every command
of a plan carries the same ``source``, ``created_at`` and subscription fields and a key made by
:func:`provisioning.keys.idempotency_key`, so equal inputs give equal (``==``) commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from provisioning.keys import KeySource, idempotency_key
from schemas.limits import MAX_PRODUCTS
from schemas.records import KmsCommand, Message, Operation, Priority, Product, Source

__all__ = ["GLOBAL_CLIENT", "CommandFactory"]

#: ``secure_client_id`` (and Kafka key) of global operations (docs/architecture.md §3).
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
    #: the shared fields are of the types validation would store (:meth:`_shared_fields_trusted`)
    _shared_trusted: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shared_trusted", self._shared_fields_trusted())

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
        values: dict[str, Any] = {
            "idempotency_key": idempotency_key(
                self.key_source, self.source_id, secure_client_id, operation, discriminator
            ),
            "operation": operation,
            "secure_client_id": secure_client_id,
            "subscription_id": self.subscription_id,
            "subscription_version": self.subscription_version,
            "distributor": distributor,
            "products": list(products),
            "chipset": chipset,
            "pin": pin,
            "message": message,
            "source": self.source,
            "priority": self.priority,
            "not_before": self.not_before,
            "created_at": self.created_at,
        }
        if (self._shared_trusted and operation.__class__ is Operation and secure_client_id.__class__ is str
                and (pin is None or pin.__class__ is SecretStr) and (message is None or message.__class__ is Message)
                and _products_trusted(products)):
            return KmsCommand.trusted(values)
        return KmsCommand(**values)

    def _shared_fields_trusted(self) -> bool:
        """True when ``KmsCommand(**values)`` would store this factory's shared fields unchanged.

        The record is then built without validating it again (planning's hot path) when the per-call
        values pass the checks of :meth:`__call__` too. Every other value is a validated record's
        field (the input, the provider) or a key of bounded length; what is checked is what the
        factory's caller could still get wrong: the types of the fields and the enums, a naive time,
        products beyond the record's limit, a message or product that is not a record. A PIN that is
        not a ``SecretStr`` goes through validation, which wraps it, so it never shows in a ``repr``."""
        created, not_before = self.created_at, self.not_before
        return (self.priority.__class__ is Priority and self.source.__class__ is Source
                and created.__class__ is datetime and created.tzinfo is not None
                and (not_before is None or (not_before.__class__ is datetime and not_before.tzinfo is not None))
                and (self.subscription_id is None or self.subscription_id.__class__ is str)
                and (self.subscription_version is None or self.subscription_version.__class__ is int))


def _products_trusted(products: Sequence[Product]) -> bool:
    return len(products) <= MAX_PRODUCTS and all(product.__class__ is Product for product in products)
