"""Drift detection: what CRM wants (the stored event) against what the KMS holds. Pure, no I/O.

For one subscription, :func:`compare` evaluates the desired state with the same code the translator
plans with (:func:`provisioning.desired_state` at the run's time ``at``) and compares each card:

**Current devices** (the newest event's ``devices``):

* products: ``missing_products`` (wanted, not held), ``extra_products`` (held, not wanted) and
  ``wrong_dates`` (held with another ``valid_from``/``valid_until``, compared to the millisecond,
  the precision Avro carries). Only *live* KMS entitlements count: one whose ``valid_until`` has
  passed grants nothing, and the KMS keeps listing it until the next overwrite, so treating it as
  drift would "repair" every expired termed service on every run;
* pairing: when CRM knows the box (``stb_serial``), the card must be paired with exactly it;
* PIN: a card the KMS holds (or that is being provisioned now) without any parental PIN gets the
  default one; a PIN that is set is never compared (the household may have changed it).

A card the KMS does not know at all and that should hold nothing (e.g. a suspended subscription's
box) is in sync.

**Cards CRM no longer has.** The store remembers every card any event of the subscription named
(devices and ``removed_devices``), so a card dropped from CRM, with or without a
``removed_devices`` entry, is still known to belong to it; a card that became another
subscription's device is left to that subscription. Such a *retired* card drifts when the KMS still
entitles it (live products) or pairs it with any box: ``unknown_to_crm`` is set and it is cleared and
unpaired, like a removed device in real time. A card the KMS holds that no event of the subscription
ever named cannot be attributed to it and is not looked at.

**A stored state that validation rejects** is compared in the revoking direction only (docs/architecture.md
§5): the devices :func:`provisioning.revocation.revoked_devices` names must hold nothing (their
pairing and PIN are not looked at), retired cards are handled as above, and every other (standing)
device may keep only the live products it holds that the entitlement rule still grants it
(:func:`provisioning.revocation.kept_products`): a product it holds beyond those is ``extra`` and
the device is trimmed (``keep``); a product it lacks is never granted. ``rejection`` carries the
code, so the run reports it.

The result says which cards need which commands; :func:`provisioning.repair.plan_repair` turns it
into commands.

**Speed.** A run compares every subscription, and thousands of them share the same services, so
:class:`DesiredStates` calls :func:`provisioning.entitlements.desired_state_of_valid` for the run's
time with a cache around the entitlement rule, :func:`provisioning.entitlements.entitled_products`.
The rule is a pure function of the provider, the time, the distributor and the two fields of a
:class:`~provisioning.entitlements.SubscriptionLike` (the subscription's state and its services); a
run fixes the first two, so the cache is keyed by the other two and the distributor, each service
with every one of its fields (times with their zones, as the rule's products keep them). Validation
still runs for every subscription.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kms_adapter.port import ClientState
from provisioning.entitlements import DesiredClient, SubscriptionLike, desired_state_of_valid, entitled_products
from provisioning.errors import Rejection
from provisioning.provider import ProviderConfig
from provisioning.revocation import kept_products, revoked_devices
from provisioning.validation import validate_subscription
from reconciler.model import StoredSubscription
from schemas.records import Device, DriftItem, Product, Service, SubscriptionEvent, SubscriptionState

__all__ = ["DesiredStates", "SubscriptionDrift", "cards_to_query", "compare", "rule_input"]

_PIN_MISSING = "no parental PIN set"


@dataclass(frozen=True, slots=True)
class SubscriptionDrift:
    """The differences of one subscription and the cards that need commands.

    ``resync``: current cards whose entitlements (and pairing, for those in ``pair``) are rewritten;
    ``default_pin``: current cards that get the default PIN; ``retired``: cards CRM no longer has,
    each with ``stb_serial`` = the box the KMS pairs it with (``None``: not paired).
    ``rejection`` is set when the stored state fails validation; the cards are then those to clear
    (``resync``), ``retired``, and the standing cards to trim, each with the products it keeps
    (``keep``).
    """

    subscription_id: str
    items: tuple[DriftItem, ...] = ()
    resync: frozenset[str] = frozenset()
    pair: frozenset[str] = frozenset()
    default_pin: frozenset[str] = frozenset()
    retired: tuple[Device, ...] = ()
    rejection: Rejection | None = field(default=None)
    keep: dict[str, tuple[Product, ...]] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.items)


#: A service as a cache key: each of its fields, a list as a tuple, a time with its zone.
_ServiceKey = tuple[object, ...]
_RuleInput = tuple[SubscriptionState, tuple[_ServiceKey, ...], str]


def _service_key(service: Service) -> _ServiceKey:
    return tuple([(v, v.tzinfo) if type(v) is datetime else tuple(v) if type(v) is list else v
                  for v in service.__dict__.values()])


def _services_key(subscription: SubscriptionLike) -> tuple[_ServiceKey, ...]:
    return tuple([_service_key(s) for s in subscription.services])


def rule_input(subscription: SubscriptionLike, distributor: str) -> _RuleInput:
    """What :func:`entitled_products` reads besides the provider and the time, as a hashable key."""
    return subscription.state, _services_key(subscription), distributor


class DesiredStates:
    """The desired state of the subscriptions of one run at ``at``, the entitlement rule cached.

    ``of_valid`` is :func:`provisioning.entitlements.desired_state_of_valid`; each device's products
    come from :func:`~provisioning.entitlements.entitled_products`, evaluated once per run for each
    :func:`rule_input` (at most ``max_entries`` of them are kept; beyond, the rule is called each time).
    """

    def __init__(self, provider: ProviderConfig, at: datetime, *, max_entries: int = 65_536) -> None:
        self.provider = provider
        self.at = at
        self._max = max_entries
        self._products: dict[_RuleInput, tuple[Product, ...]] = {}

    def of_valid(self, event: SubscriptionEvent) -> dict[str, DesiredClient]:
        """Secure client → :class:`DesiredClient` of an event the caller has just validated."""
        services = _services_key(event)  # once per event, not once per device

        def products_of(subscription: SubscriptionEvent, distributor: str) -> tuple[Product, ...]:
            if subscription is not event:
                return self.products(subscription, distributor)
            return self._cached(subscription, distributor, (event.state, services, distributor))

        return desired_state_of_valid(event, self.provider, self.at, products_of=products_of)

    def products(self, subscription: SubscriptionLike, distributor: str) -> tuple[Product, ...]:
        """:func:`entitled_products` of a device on ``distributor``, from the cache when it has them."""
        return self._cached(subscription, distributor, rule_input(subscription, distributor))

    def _cached(self, subscription: SubscriptionLike, distributor: str, key: _RuleInput) -> tuple[Product, ...]:
        products = self._products.get(key)
        if products is None:
            products = tuple(entitled_products(subscription, distributor, self.provider, self.at))
            if len(self._products) < self._max:
                self._products[key] = products
        return products


def cards_to_query(stored: StoredSubscription) -> list[str]:
    """Every card :func:`compare` needs the KMS state of: current devices, then retired cards."""
    return [d.secure_client_id for d in stored.event.devices] + [c.secure_client_id for c in stored.retired]


def compare(stored: StoredSubscription, actual: Mapping[str, ClientState], provider: ProviderConfig,
            at: datetime, *, desired_states: DesiredStates | None = None) -> SubscriptionDrift:
    """The drift of one subscription at ``at`` (see the module docstring). A card missing from
    ``actual`` is taken as unknown to the KMS. Pass one ``desired_states`` for a whole run."""
    event = stored.event
    states = desired_states if desired_states is not None else DesiredStates(provider, at)
    rejection = validate_subscription(event, provider)
    if rejection is None:
        desired = states.of_valid(event)
    else:  # the revoking direction only: these hold nothing, the others are not compared
        desired = {d.secure_client_id: DesiredClient(d.distributor, (), None)
                   for d in revoked_devices(event, provider)}
    items: list[DriftItem] = []
    resync: set[str] = set()
    pair: set[str] = set()
    default_pin: set[str] = set()
    for card, want in desired.items():
        have = actual.get(card) or ClientState(secure_client_id=card, known=False)
        item = _current_card(event.subscription_id, card, want, have, at, pin=rejection is None)
        if item is None:
            continue
        items.append(item)
        if item.missing_products or item.extra_products or item.wrong_dates or item.pairing:
            resync.add(card)
        if item.pairing:
            pair.add(card)
        if item.pin:
            default_pin.add(card)
    keep: dict[str, tuple[Product, ...]] = {}
    if rejection is not None:
        for device in _standing(event, desired, provider):
            item, kept = _trimmed(event.subscription_id, device, actual, provider, at, event)
            if item is not None:
                items.append(item)
                keep[device.secure_client_id] = kept
    retired: list[Device] = []
    current = {d.secure_client_id for d in event.devices}
    for known in stored.retired:
        if known.secure_client_id in current:
            continue
        held = actual.get(known.secure_client_id)
        if held is None or not held.known:
            continue
        extra = sorted({p.product_id for p in _live(held.entitlements, at)})
        if not extra and held.paired_chipset is None:
            continue
        items.append(DriftItem(
            subscription_id=event.subscription_id, secure_client_id=known.secure_client_id, extra_products=extra,
            pairing=f"expected none, found {held.paired_chipset}" if held.paired_chipset else None,
            unknown_to_crm=True))
        retired.append(Device(distributor=known.distributor, secure_client_id=known.secure_client_id,
                              stb_serial=held.paired_chipset))
    return SubscriptionDrift(event.subscription_id, tuple(items), frozenset(resync), frozenset(pair),
                             frozenset(default_pin), tuple(retired), rejection, keep)


def _standing(event: SubscriptionEvent, cleared: Mapping[str, DesiredClient],
              provider: ProviderConfig) -> list[Device]:
    """Current devices of a rejected subscription that are not cleared (configured, each card once)."""
    seen = set(cleared)
    standing = []
    for device in event.devices:
        if device.secure_client_id not in seen and provider.rule(device.distributor) is not None:
            seen.add(device.secure_client_id)
            standing.append(device)
    return standing


def _trimmed(subscription_id: str, device: Device, actual: Mapping[str, ClientState], provider: ProviderConfig,
             at: datetime, event: SubscriptionEvent) -> tuple[DriftItem | None, tuple[Product, ...]]:
    """(drift item, products kept) of a standing device holding more than the rule still grants."""
    held = actual.get(device.secure_client_id)
    live = _live(held.entitlements, at) if held is not None and held.known else []
    kept = kept_products(event, device, provider, at, live)
    if len(kept) == len(live):
        return None, kept
    extra = sorted({p.product_id for p in live} - {p.product_id for p in kept})
    return DriftItem(subscription_id=subscription_id, secure_client_id=device.secure_client_id,
                     extra_products=extra), kept


def _current_card(subscription_id: str, card: str, want: DesiredClient, have: ClientState,
                  at: datetime, *, pin: bool) -> DriftItem | None:
    """The card's drift; ``pin``: whether a missing PIN counts (not for a card being cleared)."""
    live = _live(have.entitlements, at)
    if ((have.pin_set or not pin) and (want.chipset is None or have.paired_chipset == want.chipset)
            and _same(want.products, live)):
        return None  # the common case, decided without building sets
    wanted = {p.product_id: p for p in want.products}
    held = {p.product_id: p for p in live}
    missing = sorted(wanted.keys() - held.keys())
    extra = sorted(held.keys() - wanted.keys())
    wrong = sorted(pid for pid in wanted.keys() & held.keys() if _period(wanted[pid]) != _period(held[pid]))
    pairing = None
    if want.chipset is not None and have.paired_chipset != want.chipset:
        pairing = f"expected {want.chipset}, found {have.paired_chipset or 'none'}"
    drifted = bool(missing or extra or wrong or pairing)
    missing_pin = _PIN_MISSING if pin and not have.pin_set and (have.known or drifted) else None
    if not drifted and missing_pin is None:
        return None
    return DriftItem(subscription_id=subscription_id, secure_client_id=card, missing_products=missing,
                     extra_products=extra, wrong_dates=wrong, pairing=pairing, pin=missing_pin)


def _same(wanted: Sequence[Product], held: Sequence[Product]) -> bool:
    """Same product ids with the same periods (``wanted`` is sorted by id, as planning makes it)."""
    if len(wanted) != len(held):
        return False
    return all(w.product_id == h.product_id and _period(w) == _period(h)
               for w, h in zip(wanted, sorted(held, key=_product_id), strict=True))


def _product_id(product: Product) -> str:
    return product.product_id


def _live(products: Iterable[Product], at: datetime) -> list[Product]:
    return [p for p in products if p.valid_until is None or p.valid_until > at]


def _period(product: Product) -> tuple[datetime | None, datetime | None]:
    return _millis(product.valid_from), _millis(product.valid_until)


def _millis(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(microsecond=moment.microsecond // 1000 * 1000)
