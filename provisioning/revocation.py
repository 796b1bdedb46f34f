"""What an event takes away, planned whatever else is wrong with it (docs/architecture.md §5).

"Revocation is never held back": validation (:mod:`provisioning.validation`) may reject what an
event *grants*, never what it *takes away*. This module names the boxes that hold nothing after an
event, valid or not, so planning, a reset and drift detection clear the same ones:

* :func:`removed_cards`: every card in ``removed_devices``, once, cleared and unpaired from the box
  its entry names (when CRM lists a card twice: the first entry in device order that names a box; a
  second box of the same card is left to the next reset run, which unpairs the card from the box the
  KMS reports);
* :func:`revoked_devices`: the current devices that are cleared even when the grant is rejected:

  - every device of a SUSPENDED or CANCELLED subscription;
  - of an ACTIVE one, every device whose entitlement the rules cannot establish: a distributor the
    provider does not configure, a card listed twice, a distributor two devices share (one viewing
    point each: at least one of them is not paid for), and a device whose required distributor has
    no standing device (transitively: TWIN2 requiring TWIN1 requiring MAIN falls with MAIN).

  Each card appears once, in device order. A device not named here *stands*: when the grant is
  rejected the translator sends it nothing (without its KMS state it cannot tell what the event
  takes away from what it grants);
* :func:`kept_products`: what a standing device of a rejected subscription may keep, given what the
  KMS holds: the held products the entitlement rule still grants it. A reset run trims the device to
  these, so it loses what the subscription no longer pays for and gains nothing.

Pure, like the rest of ``provisioning``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

from provisioning.entitlements import entitled_products
from provisioning.provider import ProviderConfig
from provisioning.validation import sorted_devices
from schemas.records import Device, Product, SubscriptionEvent, SubscriptionState

__all__ = ["kept_products", "removed_cards", "revoked_devices"]


def removed_cards(event: SubscriptionEvent) -> list[Device]:
    """``removed_devices`` in device order, each card once (an entry naming a box preferred)."""
    ordered = sorted_devices(event.removed_devices)
    boxed = {d.secure_client_id: d for d in reversed(ordered) if d.stb_serial}  # the first that names a box
    return [boxed.get(d.secure_client_id, d) for d in _once_per_card(ordered)]


def revoked_devices(event: SubscriptionEvent, provider: ProviderConfig) -> list[Device]:
    """The current devices cleared whatever validation says (see the module docstring)."""
    devices = sorted_devices(event.devices)
    if event.state is not SubscriptionState.ACTIVE:
        return _once_per_card(devices)
    cards = Counter(d.secure_client_id for d in devices)
    shared = Counter(d.distributor for d in devices)
    standing = _standing_distributors(devices, provider)
    return _once_per_card(
        d for d in devices
        if cards[d.secure_client_id] > 1 or shared[d.distributor] > 1 or d.distributor not in standing
    )


def kept_products(event: SubscriptionEvent, device: Device, provider: ProviderConfig, at: datetime,
                  held: Sequence[Product]) -> tuple[Product, ...]:
    """The products of ``held`` (as the KMS holds them, periods unchanged) whose id the entitlement
    rule still grants ``device`` at ``at``; the device's distributor must be configured."""
    granted = {p.product_id for p in entitled_products(event, device.distributor, provider, at, strict=False)}
    return tuple(p for p in held if p.product_id in granted)


def _standing_distributors(devices: Iterable[Device], provider: ProviderConfig) -> set[str]:
    """Configured distributors in use whose required distributor (if any) is standing too."""
    standing = {d.distributor for d in devices if provider.rule(d.distributor) is not None}
    while True:
        fallen = {name for name in standing if _requires(provider, name) not in (None, *standing)}
        if not fallen:
            return standing
        standing -= fallen


def _requires(provider: ProviderConfig, distributor: str) -> str | None:
    rule = provider.rule(distributor)
    return rule.requires if rule is not None else None


def _once_per_card(devices: Iterable[Device]) -> list[Device]:
    seen: set[str] = set()
    kept: list[Device] = []
    for device in devices:
        if device.secure_client_id not in seen:
            seen.add(device.secure_client_id)
            kept.append(device)
    return kept
