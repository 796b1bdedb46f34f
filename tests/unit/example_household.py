"""The example provider and a household on it, shared by the selection and revocation tests.

``examples/provider.yaml``: MAIN "*"; TWIN1, TWIN2 [BASIC] require MAIN; TWIN3 [BASIC] requires
TWIN2; BASIC = P100, P101, SPORTS = P200, MOVIES = P300.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from provisioning.provider import load_provider
from schemas.records import Device, EventType, KmsCommand, Service, ServiceState, SubscriptionEvent

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
MAIN = Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2")
TWIN2 = Device(distributor="TWIN2", secure_client_id="300", stb_serial="B-3")
TWIN3 = Device(distributor="TWIN3", secure_client_id="400", stb_serial="B-4")


def svc(code: str, distributors: list[str] | None = None, state: str = "ACTIVE") -> Service:
    return Service(service_code=code, state=ServiceState(state), distributors=distributors)


def event(event_type: EventType = EventType.UPDATED, **fields: Any) -> SubscriptionEvent:
    """Subscription S-1 (version 7, ACTIVE) with BASIC on MAIN and TWIN1, at ``AT``; ``fields`` override."""
    base: dict[str, Any] = {
        "event_id": "E-1", "event_type": event_type, "occurred_at": AT,
        "subscription_id": "S-1", "account_id": "A-1", "subscription_type": "RESIDENTIAL",
        "created_at": AT - timedelta(days=300), "version": 7, "state": "ACTIVE",
        "services": [svc("BASIC")], "devices": [MAIN, TWIN1],
    }
    base.update(fields)
    return SubscriptionEvent(**base)


def steps(commands: tuple[KmsCommand, ...]) -> list[tuple[str, str]]:
    """(operation, secure client) of each command, in order."""
    return [(c.operation.value, c.secure_client_id) for c in commands]
