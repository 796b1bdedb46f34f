"""Small record factories shared by integration tests."""

from __future__ import annotations

import datetime as dt
import uuid

from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent, SubscriptionState

__all__ = ["activation"]


def activation(sub: str, card: str) -> SubscriptionEvent:
    """An ACTIVATED residential subscription with the BASIC service and one box (card ``card``)."""
    now = dt.datetime.now(dt.UTC)
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id=sub,
        account_id=f"A-{sub}", subscription_type="RESIDENTIAL", created_at=now, version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card, stb_serial=f"STB-{card}")],
    )
