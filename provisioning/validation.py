"""The rules a subscription must satisfy before anything is granted to it (docs/architecture.md §1, §5).

:func:`validate_subscription` is the single gate: planning calls it first and, on the first
violation, rejects what the event grants (no box is paired, given a PIN or entitlements), while what
the event takes away is still planned (:mod:`provisioning.revocation`).
:func:`~provisioning.entitlements.desired_state` refuses a subscription it rejects, so the
translator and the reconciler can never disagree about what is valid.

Checks, in this order (the first violation is the answer; devices are visited sorted by distributor
then secure client so the answer does not depend on the order CRM listed them):

1. ``UNKNOWN_DISTRIBUTOR``: a device's distributor is not configured in the provider file;
2. ``TOO_MANY_VIEWING_POINTS``: more devices than ``max_viewing_points``;
3. ``DUPLICATE_SECURE_CLIENT``: one card listed twice;
4. ``DUPLICATE_DISTRIBUTOR``: two devices on one distributor;
5. ``REQUIRED_DISTRIBUTOR_MISSING``: e.g. a TWIN1 without a MAIN;
6. ``INCONSISTENT_DEVICES``: ``added_devices`` names a card that is not among ``devices``, or
   ``removed_devices`` lists one card twice;
7. ``UNMAPPED_SERVICE``: a service, ACTIVE or not, with no KMS product mapping (a configuration gap
   is reported, not silently ignored). Checked only while the subscription is ACTIVE: a suspension
   or cancellation clears every box whatever the product map says, so a customer who stopped paying
   stops watching even when the configuration has a gap;
8. the per-box channel selection (``services[].distributors``) of every ACTIVE service, services by
   code, the chosen distributors sorted: ``UNKNOWN_DISTRIBUTOR`` when a chosen distributor has no
   device in the subscription (whether or not the provider configures it),
   ``SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR`` when the distributor's ``services`` do not include the
   service. Checked only while the subscription is ACTIVE, like 7: a choice only ever grants, and an
   INACTIVE service grants nothing whatever its choice says.

Only current ``devices`` are checked for topology; ``removed_devices`` need no distributor rule to
be cleared and unpaired.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from provisioning.errors import (
    DUPLICATE_DISTRIBUTOR,
    DUPLICATE_SECURE_CLIENT,
    INCONSISTENT_DEVICES,
    REQUIRED_DISTRIBUTOR_MISSING,
    SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR,
    TOO_MANY_VIEWING_POINTS,
    UNKNOWN_DISTRIBUTOR,
    UNMAPPED_SERVICE,
    Rejection,
)
from provisioning.provider import ProviderConfig
from schemas.records import Device, ServiceState, SubscriptionEvent, SubscriptionState

__all__ = ["device_order", "sorted_devices", "validate_subscription"]


def device_order(device: Device) -> tuple[str, str]:
    """The deterministic order of devices everywhere in planning: distributor, then secure client."""
    return (device.distributor, device.secure_client_id)


def sorted_devices(devices: Iterable[Device]) -> list[Device]:
    return sorted(devices, key=device_order)


def validate_subscription(event: SubscriptionEvent, provider: ProviderConfig) -> Rejection | None:
    """``None`` when the subscription may be planned, else the first violated rule."""
    devices = sorted_devices(event.devices)
    return (
        _unknown_distributor(devices, provider)
        or _too_many_viewing_points(devices, provider)
        or _duplicates(devices)
        or _required_distributor_missing(devices, provider)
        or _inconsistent_added(event, devices)
        or (_unmapped_service(event, provider) or _selection(event, devices, provider)
            if event.state is SubscriptionState.ACTIVE else None)
    )


def _unknown_distributor(devices: Sequence[Device], provider: ProviderConfig) -> Rejection | None:
    for device in devices:
        if provider.rule(device.distributor) is None:
            return Rejection(
                UNKNOWN_DISTRIBUTOR,
                f"device {device.secure_client_id} uses distributor {device.distributor!r}, "
                f"which the provider does not configure",
            )
    return None


def _too_many_viewing_points(devices: Sequence[Device], provider: ProviderConfig) -> Rejection | None:
    if len(devices) > provider.max_viewing_points:
        return Rejection(
            TOO_MANY_VIEWING_POINTS,
            f"{len(devices)} devices, at most {provider.max_viewing_points} viewing points allowed",
        )
    return None


def _duplicates(devices: Sequence[Device]) -> Rejection | None:
    # Fast path (nearly every event): no card and no distributor twice. Only a violation pays for the
    # counting below, which finds the same first offender as ever.
    n = len(devices)
    if len({d.secure_client_id for d in devices}) == n and len({d.distributor for d in devices}) == n:
        return None
    cards = Counter(d.secure_client_id for d in devices)
    for device in devices:
        if cards[device.secure_client_id] > 1:
            return Rejection(
                DUPLICATE_SECURE_CLIENT, f"secure client {device.secure_client_id} is listed twice"
            )
    distributors = Counter(d.distributor for d in devices)
    for device in devices:
        if distributors[device.distributor] > 1:
            sharing = ", ".join(d.secure_client_id for d in devices if d.distributor == device.distributor)
            return Rejection(
                DUPLICATE_DISTRIBUTOR, f"distributor {device.distributor} is used by {sharing}"
            )
    return None


def _required_distributor_missing(devices: Sequence[Device], provider: ProviderConfig) -> Rejection | None:
    in_use = {d.distributor for d in devices}
    for device in devices:
        rule = provider.rule(device.distributor)
        if rule is not None and rule.requires is not None and rule.requires not in in_use:
            return Rejection(
                REQUIRED_DISTRIBUTOR_MISSING,
                f"distributor {device.distributor} (device {device.secure_client_id}) requires "
                f"{rule.requires}, which no device of the subscription uses",
            )
    return None


def _inconsistent_added(event: SubscriptionEvent, devices: Sequence[Device]) -> Rejection | None:
    current = {d.secure_client_id for d in devices}
    for added in sorted_devices(event.added_devices):
        if added.secure_client_id not in current:
            return Rejection(
                INCONSISTENT_DEVICES,
                f"added device {added.secure_client_id} is not among the subscription's devices",
            )
    if len({d.secure_client_id for d in event.removed_devices}) == len(event.removed_devices):
        return None  # fast path: no card removed twice
    removed = Counter(d.secure_client_id for d in event.removed_devices)
    for card in sorted(removed):
        if removed[card] > 1:
            return Rejection(INCONSISTENT_DEVICES, f"removed device {card} is listed twice")
    return None


def _unmapped_service(event: SubscriptionEvent, provider: ProviderConfig) -> Rejection | None:
    mapping = provider.products
    if all(s.service_code in mapping for s in event.services):
        return None  # fast path; a gap is reported below for its smallest code, as ever
    for code in sorted({s.service_code for s in event.services}):
        if code not in provider.products:
            return Rejection(UNMAPPED_SERVICE, f"service {code!r} has no KMS product mapping")
    return None


def _selection(event: SubscriptionEvent, devices: Sequence[Device], provider: ProviderConfig) -> Rejection | None:
    chosen = [s for s in event.services if s.distributors is not None and s.state is ServiceState.ACTIVE]
    if not chosen:
        return None  # fast path: every service is meant for every box (all of schema v1)
    in_use = {d.distributor for d in devices}
    for service in sorted(chosen, key=lambda s: s.service_code):
        for name in sorted(set(service.distributors or ())):
            rule = provider.rule(name)
            if name not in in_use or rule is None:
                return Rejection(
                    UNKNOWN_DISTRIBUTOR,
                    f"service {service.service_code!r} is chosen for distributor {name!r}, "
                    f"which no device of the subscription uses",
                )
            if not rule.allows(service.service_code):
                return Rejection(
                    SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR,
                    f"service {service.service_code!r} is chosen for distributor {name}, "
                    f"which may not carry it",
                )
    return None
