"""Which KMS products each device of a subscription should hold (docs/architecture.md §3 "entitled").

The single source of the entitlement rule, used by planning (translator) and by the reconciler:

* the subscription is ``ACTIVE`` and the service is ``ACTIVE``;
* the service is chosen for the device's distributor (``distributors`` is null, meaning every box,
  or names it: CRM.COM's "a different selection of channels from each pair");
* the device's distributor allows the service (its ``services`` in the provider file). A service
  chosen for every box is filtered silently by this rule; one chosen explicitly for a distributor
  that may not carry it never gets this far, validation rejects the grant;
* the service's period has not ended at ``at`` (``valid_until`` is exclusive; ``None`` is open);
* a service whose period has **not started yet** is still sent, with its ``valid_from``: the KMS
  honours the dates itself, so a termed service starts and ends on time without another event
  (nothing in the design would emit one at that moment). Likewise every product carries its
  ``valid_until`` so the KMS ends it. A service whose ``valid_from`` is not before its ``valid_until``
  has an empty period and is never entitled;
* one entry per product id, sorted by product id. When two services grant the same product, the
  entry covers both periods (earliest start, latest end; ``None`` wins as "unbounded"). Disjoint
  periods are therefore joined; that over-grants only in the gap, which is rare and the safer side
  for the customer (a single entry per product is what ``overwriteEntitlements`` expects).

``at`` is a parameter, never read from a clock: planning passes the event's ``occurred_at`` so a
replay is byte-identical, the reconciler passes the time of its run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from provisioning.errors import InvalidSubscription, PlanningError
from provisioning.provider import ProviderConfig
from provisioning.validation import sorted_devices, validate_subscription
from schemas.records import Product, Service, ServiceState, SubscriptionEvent, SubscriptionState

__all__ = [
    "DesiredClient",
    "ProductsOf",
    "SubscriptionLike",
    "desired_state",
    "desired_state_of_valid",
    "entitled_products",
    "service_is_chosen",
    "service_is_current",
]


class SubscriptionLike(Protocol):
    """What the entitlement rule reads: a ``SubscriptionEvent`` or any record with these two fields.

    The rule reads nothing else of it, and :class:`reconciler.drift.DesiredStates` caches the rule's
    answers keyed by these two fields and the distributor: a rule that reads more adds it here.
    """

    @property
    def state(self) -> SubscriptionState: ...

    @property
    def services(self) -> Sequence[Service]: ...


@dataclass(frozen=True, slots=True)
class DesiredClient:
    """What one secure client should look like in the KMS."""

    distributor: str
    products: tuple[Product, ...]
    chipset: str | None  # the set-top box it should be paired with, when CRM knows it


def service_is_current(service: Service, at: datetime) -> bool:
    """True when ``service`` is ACTIVE and its period has not ended at ``at`` (it may not have begun)."""
    if service.state is not ServiceState.ACTIVE:
        return False
    if service.valid_until is None:
        return True
    if service.valid_from is not None and service.valid_from >= service.valid_until:
        return False  # an empty period
    return at < service.valid_until


def service_is_chosen(service: Service, distributor: str) -> bool:
    """True when ``service`` is meant for the boxes of ``distributor`` (null: for every box)."""
    return service.distributors is None or distributor in service.distributors


def entitled_products(
    state: SubscriptionLike, distributor: str, provider: ProviderConfig, at: datetime, *, strict: bool = True
) -> list[Product]:
    """The products a device on ``distributor`` should hold at ``at``, deduplicated and sorted.

    Raises :class:`PlanningError` for an unconfigured distributor or an unmapped service and for a
    naive ``at``: validation rejects those inputs first, so reaching them is a caller bug. With
    ``strict=False`` an unmapped service grants nothing instead (a rejected subscription's boxes are
    trimmed to what the rule still entitles, :func:`provisioning.revocation.kept_products`).
    """
    if at.tzinfo is None:
        raise PlanningError("entitlements are evaluated at a timezone-aware time")
    rule = provider.rule(distributor)
    if rule is None:
        raise PlanningError(f"distributor {distributor!r} is not configured")
    if state.state is not SubscriptionState.ACTIVE:
        return []
    mapping = provider.products
    periods: dict[str, list[Service]] = {}
    for service in state.services:
        if not (rule.allows(service.service_code) and service_is_chosen(service, distributor)
                and service_is_current(service, at)):
            continue
        product_ids = mapping.get(service.service_code)
        if product_ids is None:
            if not strict:
                continue
            raise PlanningError(f"service {service.service_code!r} has no product mapping")
        for product_id in product_ids:
            held = periods.get(product_id)
            if held is None:
                periods[product_id] = [service]
            else:
                held.append(service)
    return [_covering(product_id, periods[product_id]) for product_id in sorted(periods)]


def desired_state(
    event: SubscriptionEvent, provider: ProviderConfig, at: datetime
) -> dict[str, DesiredClient]:
    """Secure client id → :class:`DesiredClient` for every current device, in device order.

    Raises :class:`InvalidSubscription` (with its ``rejection``) when validation refuses the event.
    """
    rejection = validate_subscription(event, provider)
    if rejection is not None:
        raise InvalidSubscription(rejection)
    return desired_state_of_valid(event, provider, at)


#: ``(event, distributor) -> products`` of :func:`entitled_products` at a fixed provider and time; the
#: reconciler passes a cache of it (a run evaluates the same few combinations thousands of times).
ProductsOf = Callable[[SubscriptionEvent, str], tuple[Product, ...]]


def desired_state_of_valid(
    event: SubscriptionEvent, provider: ProviderConfig, at: datetime, *, products_of: ProductsOf | None = None
) -> dict[str, DesiredClient]:
    """:func:`desired_state` of an event the caller has just validated (planning validates first and
    must not pay for it twice). ``products_of`` replaces the direct call of :func:`entitled_products`
    (it must give the same answers: a cache of it)."""
    if products_of is None:
        def products_of(e: SubscriptionEvent, distributor: str) -> tuple[Product, ...]:
            return tuple(entitled_products(e, distributor, provider, at))
    return {
        device.secure_client_id: DesiredClient(
            distributor=device.distributor,
            products=products_of(event, device.distributor),
            chipset=device.stb_serial,
        )
        for device in sorted_devices(event.devices)
    }


def _covering(product_id: str, services: list[Service]) -> Product:
    if len(services) == 1:  # the common case: one service grants the product
        only = services[0]
        return _product(product_id, only.valid_from, only.valid_until)
    starts = [s.valid_from for s in services]
    ends = [s.valid_until for s in services]
    return _product(
        product_id,
        None if None in starts else min(d for d in starts if d is not None),
        None if None in ends else max(d for d in ends if d is not None),
    )


def _product(product_id: str, valid_from: datetime | None, valid_until: datetime | None) -> Product:
    """One shared ``Product`` per (id, period): records are frozen, so sharing is safe, and validating a
    new one for every device of every event cost a third of planning's time (most products are the
    same few ids with open periods). The zones are part of the key: equal instants in different zones
    are different values once printed as JSON."""
    return _shared_product(product_id, valid_from, valid_from.tzinfo if valid_from else None,
                           valid_until, valid_until.tzinfo if valid_until else None)


@functools.lru_cache(maxsize=8192)
def _shared_product(product_id: str, valid_from: datetime | None, _from_zone: object,
                    valid_until: datetime | None, _until_zone: object) -> Product:
    return Product(product_id=product_id, valid_from=valid_from, valid_until=valid_until)
