"""What a reset run reads from the desired-state store (plain values, no database types).

Kept apart from :mod:`reconciler.store` so the pure drift detection (:mod:`reconciler.drift`) and its
unit tests import no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.records import ReconcileRequest, SubscriptionEvent

__all__ = ["KnownCard", "Selection", "StoredSubscription"]


@dataclass(frozen=True, slots=True)
class KnownCard:
    """A card a subscription's events named, as the newest such event described it."""

    secure_client_id: str
    distributor: str
    stb_serial: str | None


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """One subscription of a reset run: its newest event and the cards CRM no longer lists for it.

    ``retired`` holds cards an earlier event of the subscription listed (as a device or among
    ``removed_devices``) that the newest one does not list as a device, minus cards that are now a
    current device of another subscription (a card moved between subscriptions belongs to its new one).
    """

    event: SubscriptionEvent
    retired: tuple[KnownCard, ...] = ()
    #: Why the stored event fails the record limits (a row written before them): ``event`` then
    #: holds only the subscription id, and a reset run counts the subscription as failed.
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which subscriptions a run covers; every given filter must hold (empty = no filter).

    The creation period is half-open: ``created_from <= created_at < created_to``.
    """

    created_from: datetime | None = None
    created_to: datetime | None = None
    types: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: ReconcileRequest) -> Selection:
        return cls(request.created_from, request.created_to, tuple(request.subscription_types),
                   tuple(request.subscription_ids))
