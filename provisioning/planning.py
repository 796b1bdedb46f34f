"""Subscription event → KMS commands (docs/architecture.md §1 feature 2, §5): the translator's whole job.

:func:`plan_subscription` is pure: the same event and provider always give ``==`` commands, so a
redelivered event is recognised downstream by its idempotency keys. Every command is absolute
(overwrite, clear, pair, unpair, set PIN), which is what lets duplicates and replays converge.

Rules, in order:

1. **Validate** (:func:`~provisioning.validation.validate_subscription`); a violation rejects what
   the event *grants* (steps 3-4 are replaced by step 3r), never what it takes away; the plan then
   carries its commands and the rejection.
2. **Removed devices** (``removed_devices``, by distributor then card, each card once):
   CLEAR_ENTITLEMENTS, then UNPAIR from the removed box (only when its ``stb_serial`` is known:
   nothing else was paired). Always, valid or not.
3. **Current devices** of a valid event (by distributor then card): a *new* device gets PAIR (when
   ``stb_serial`` is given; chipset = ``stb_serial``) and SET_PIN with the provider's default PIN;
   then every device gets SYNC_ENTITLEMENTS with exactly its entitled products at ``occurred_at``
   when the subscription is ACTIVE (so RESUMED restores), else CLEAR_ENTITLEMENTS (SUSPENDED,
   CANCELLED).

3r. **Current devices** of a rejected event: CLEAR_ENTITLEMENTS for each device
   :func:`~provisioning.revocation.revoked_devices` names (every device of a SUSPENDED or CANCELLED
   subscription; of an ACTIVE one, those the rules cannot entitle, e.g. a TWIN1 without a MAIN);
   nothing for the others, which keep their KMS state. A card step 2 cleared is not cleared twice.

A device is **new** when the event is ACTIVATED, or it is in ``added_devices``, or the event is
DEVICES_CHANGED and a removed device had the same distributor (a swap), or its card is itself in
``removed_devices`` (taken off and put back, e.g. a new box for the same card: step 2 has just
unpaired it, so it must be paired again).

Removal commands carry the key discriminator ``removed`` so they never share a key with the same
card's commands in step 3.

:func:`plan_reset` is the same rule for a reconcile run: absolute commands for the current state,
keyed by the run id (the event's own keys are already COMPLETED in the executor's ledger, and a
reset must reach the KMS); a stored state that validation rejects is reset in the revoking
direction only (step 3r).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from provisioning.commands import CommandFactory
from provisioning.entitlements import DesiredClient, ProductsOf, desired_state_of_valid, entitled_products
from provisioning.keys import KeySource
from provisioning.plan import Plan
from provisioning.provider import ProviderConfig
from provisioning.revocation import removed_cards, revoked_devices
from provisioning.validation import sorted_devices, validate_subscription
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Operation,
    Product,
    Source,
    SubscriptionEvent,
    SubscriptionState,
)

__all__ = ["REMOVED", "Plan", "new_devices", "plan_reset", "plan_subscription", "removal_commands"]

#: Key discriminator of the commands sent to a removed device.
REMOVED = "removed"


def plan_subscription(
    event: SubscriptionEvent,
    provider: ProviderConfig,
    process_name: str = "translator",
    topic: str | None = None,
) -> Plan:
    """The commands that bring the KMS in line with ``event`` (see the module docstring)."""
    rejection = validate_subscription(event, provider)
    make = CommandFactory(
        key_source=KeySource.EVENT,
        source_id=event.event_id,
        source=_event_source(process_name, topic, event.event_id),
        created_at=event.occurred_at,
        subscription_id=event.subscription_id,
        subscription_version=event.version,
    )
    commands: list[KmsCommand] = []
    removed = removed_cards(event)
    for device in removed:
        commands.extend(removal_commands(make, device))
    if rejection is not None:
        cleared = {d.secure_client_id for d in removed}
        commands.extend(_clear(make, d) for d in revoked_devices(event, provider)
                        if d.secure_client_id not in cleared)
        return Plan(tuple(commands), rejection)
    desired = desired_state_of_valid(event, provider, at=event.occurred_at,  # validated above
                                     products_of=_products_memo(event, provider))
    fresh = new_devices(event)
    for device in sorted_devices(event.devices):
        if device.secure_client_id in fresh:
            commands.extend(_installation(make, device, provider))
        commands.append(_entitlements(make, device, desired[device.secure_client_id], event.state))
    return Plan(tuple(commands))


def plan_reset(
    event: SubscriptionEvent,
    provider: ProviderConfig,
    *,
    run_id: str,
    at: datetime,
    process_name: str = "reconciler",
    topic: str | None = None,
    secure_client_ids: Collection[str] | None = None,
    pair: Collection[str] = (),
) -> Plan:
    """Re-synchronisation of a subscription's current state by a reconcile run (docs/architecture.md §1, 3-4).

    ``event`` is the latest state the projector stored. Each current device (or only those in
    ``secure_client_ids``) gets SYNC_ENTITLEMENTS evaluated at ``at`` (CLEAR_ENTITLEMENTS when the
    subscription is not ACTIVE); cards in ``pair`` whose box is known are PAIRed first. The PIN is
    never reset: a household may have changed it. Keys are ``run:<run_id>:...``; ``created_at`` is
    ``at``. When validation rejects ``event``, only the devices step 3r clears are reset (CLEAR,
    no PAIR) and the plan carries the rejection.
    """
    rejection = validate_subscription(event, provider)
    make = CommandFactory(
        key_source=KeySource.RUN,
        source_id=run_id,
        source=Source(process_name=process_name, topic=topic, run_id=run_id),
        created_at=at,
        subscription_id=event.subscription_id,
        subscription_version=event.version,
    )
    wanted = secure_client_ids
    if rejection is not None:
        return Plan(tuple(_clear(make, d) for d in revoked_devices(event, provider)
                          if wanted is None or d.secure_client_id in wanted), rejection)
    desired = desired_state_of_valid(event, provider, at=at)  # validated above
    commands: list[KmsCommand] = []
    for device in sorted_devices(event.devices):
        if wanted is not None and device.secure_client_id not in wanted:
            continue
        if device.secure_client_id in pair and device.stb_serial:
            commands.append(_pair(make, device))
        commands.append(_entitlements(make, device, desired[device.secure_client_id], event.state))
    return Plan(tuple(commands))


def new_devices(event: SubscriptionEvent) -> frozenset[str]:
    """Secure client ids of the current devices that must be paired and given the default PIN."""
    if event.event_type is EventType.ACTIVATED:
        return frozenset(d.secure_client_id for d in event.devices)
    if not event.added_devices and not event.removed_devices:
        return frozenset()  # nothing put on, taken off or swapped (most events: a service change)
    added = {d.secure_client_id for d in event.added_devices}
    readded = {d.secure_client_id for d in event.removed_devices}
    swapped_distributors = (
        {d.distributor for d in event.removed_devices}
        if event.event_type is EventType.DEVICES_CHANGED
        else set()
    )
    return frozenset(
        d.secure_client_id
        for d in event.devices
        if d.secure_client_id in added | readded or d.distributor in swapped_distributors
    )


def _event_source(process_name: str, topic: str | None, event_id: str) -> Source:
    """The ``source`` of an event's commands; its values are the validated event's and the caller's
    own, so the record is built without validating them again unless one is not a plain string."""
    if process_name.__class__ is str and (topic is None or topic.__class__ is str) and event_id.__class__ is str:
        return Source.trusted({"process_name": process_name, "topic": topic, "event_id": event_id,
                               "request_id": None, "communication_id": None, "run_id": None})
    return Source(process_name=process_name, topic=topic, event_id=event_id)


#: (provider, its answers): the entitlement rule's answers for the last provider planned with, keyed by
#: distributor and the subscription's state and services (:func:`_products_memo`).
_MEMO: list[tuple[ProviderConfig, dict[tuple[object, ...], tuple[Product, ...]]]] = []
#: answers kept per provider; past it the memo starts again (a campaign repeats a few service sets)
_MEMO_SIZE = 4096


def _products_memo(event: SubscriptionEvent, provider: ProviderConfig) -> ProductsOf | None:
    """The entitlement rule's answer for ``event``'s devices, remembered across events.

    The rule (:func:`~provisioning.entitlements.entitled_products`) reads the subscription's state,
    its services, the distributor, the provider and the time; a service with a ``valid_until``
    makes the answer depend on the time, so such an event is not remembered (None: the rule runs).
    Otherwise the key holds every field of every service the rule reads, the zones of their dates
    included (equal instants in different zones print differently), and the provider is held by
    identity, so an answer is reused only for an identical question. Planning tests and the property
    tests compare every plan against the rule's own answers."""
    services = event.services
    for service in services:
        if service.valid_until is not None:
            return None
    signature = (event.state, *[(s.service_code, s.state, s.valid_from, s.valid_from and s.valid_from.tzinfo,
                                 None if s.distributors is None else tuple(s.distributors)) for s in services])
    if _MEMO and _MEMO[0][0] is provider:
        answers = _MEMO[0][1]
    else:
        answers = {}
        _MEMO[:] = [(provider, answers)]
    at = event.occurred_at

    def products_of(e: SubscriptionEvent, distributor: str) -> tuple[Product, ...]:
        key = (distributor, signature)
        try:
            return answers[key]
        except KeyError:
            pass
        if len(answers) >= _MEMO_SIZE:
            answers.clear()
        found = answers[key] = tuple(entitled_products(e, distributor, provider, at))
        return found

    return products_of


def removal_commands(make: CommandFactory, device: Device) -> list[KmsCommand]:
    commands = [
        make(Operation.CLEAR_ENTITLEMENTS, device.secure_client_id,
             distributor=device.distributor, discriminator=REMOVED)
    ]
    if device.stb_serial:
        commands.append(
            make(Operation.UNPAIR, device.secure_client_id, distributor=device.distributor,
                 chipset=device.stb_serial, discriminator=REMOVED)
        )
    return commands


def _installation(make: CommandFactory, device: Device, provider: ProviderConfig) -> list[KmsCommand]:
    commands = [_pair(make, device)] if device.stb_serial else []
    commands.append(
        make(Operation.SET_PIN, device.secure_client_id, distributor=device.distributor,
             pin=provider.default_pin)
    )
    return commands


def _pair(make: CommandFactory, device: Device) -> KmsCommand:
    return make(Operation.PAIR, device.secure_client_id, distributor=device.distributor,
                chipset=device.stb_serial)


def _entitlements(
    make: CommandFactory, device: Device, wanted: DesiredClient, state: SubscriptionState
) -> KmsCommand:
    if state is SubscriptionState.ACTIVE:
        return make(Operation.SYNC_ENTITLEMENTS, device.secure_client_id,
                    distributor=device.distributor, products=wanted.products)
    return _clear(make, device)


def _clear(make: CommandFactory, device: Device) -> KmsCommand:
    return make(Operation.CLEAR_ENTITLEMENTS, device.secure_client_id, distributor=device.distributor)
