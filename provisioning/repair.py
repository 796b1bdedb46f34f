"""A reset run's repair of one subscription: :func:`plan_reset` plus what it does not cover.

:func:`~provisioning.planning.plan_reset` re-synchronises current devices (SYNC or CLEAR, PAIR). A
repair may also need:

* **retired cards**: cards CRM no longer lists for the subscription but the KMS still entitles or
  pairs. They get exactly what a removed device gets in real time (the same
  ``provisioning.planning`` removal rule: CLEAR_ENTITLEMENTS, then UNPAIR from ``stb_serial``,
  which the caller sets to the box the KMS reports as paired);
* **a missing parental PIN**: a current card the KMS holds without any PIN gets the provider's
  default, as a new device does. A PIN that is set is never touched (the household may have chosen
  it), which is why ``plan_reset`` itself never sends SET_PIN.

Keys are ``run:<run_id>:...`` like ``plan_reset``'s; the retired cards' commands carry the ``removed``
discriminator, so they never share a key with a current card's commands. Pure, like the rest of
``provisioning``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from provisioning.commands import CommandFactory
from provisioning.keys import KeySource
from provisioning.plan import Plan
from provisioning.planning import plan_reset, removal_commands
from provisioning.provider import ProviderConfig
from provisioning.validation import sorted_devices
from schemas.records import Device, KmsCommand, Operation, Product, Source, SubscriptionEvent

__all__ = ["plan_repair"]


def plan_repair(
    event: SubscriptionEvent,
    provider: ProviderConfig,
    *,
    run_id: str,
    at: datetime,
    secure_client_ids: Collection[str],
    pair: Collection[str] = (),
    default_pin: Collection[str] = (),
    retired: Sequence[Device] = (),
    keep: Mapping[str, Sequence[Product]] | None = None,
    process_name: str = "reconciler",
    topic: str | None = None,
) -> Plan:
    """Commands that bring the drifted cards of ``event``'s subscription back in line.

    Order: retired cards (removal first, as in real time), then ``plan_reset`` for the current
    cards in ``secure_client_ids`` (PAIR for those in ``pair``), then SET_PIN (default PIN) for the
    current cards in ``default_pin``. A subscription validation rejects is repaired in the revoking
    direction only: retired cards, then ``plan_reset``'s clearing, then SYNC_ENTITLEMENTS of each
    standing card in ``keep`` to exactly the products given (what it may keep,
    :func:`provisioning.revocation.kept_products`); no PAIR, no PIN; the plan carries the rejection.
    """
    reset = plan_reset(event, provider, run_id=run_id, at=at, process_name=process_name, topic=topic,
                       secure_client_ids=frozenset(secure_client_ids), pair=pair)
    make = CommandFactory(
        key_source=KeySource.RUN,
        source_id=run_id,
        source=Source(process_name=process_name, topic=topic, run_id=run_id),
        created_at=at,
        subscription_id=event.subscription_id,
        subscription_version=event.version,
    )
    commands: list[KmsCommand] = []
    current = {d.secure_client_id for d in event.devices}
    for device in sorted_devices(retired):
        if device.secure_client_id not in current:
            commands.extend(removal_commands(make, device))
    commands.extend(reset.commands)
    if reset.rejection is not None:
        trimmed = keep or {}
        cleared = {c.secure_client_id for c in reset.commands}
        for device in sorted_devices(event.devices):
            card = device.secure_client_id
            if card in trimmed and card not in cleared:
                commands.append(make(Operation.SYNC_ENTITLEMENTS, card, distributor=device.distributor,
                                     products=trimmed[card]))
                cleared.add(card)
        return Plan(tuple(commands), reset.rejection)
    for device in sorted_devices(event.devices):
        if device.secure_client_id in default_pin:
            commands.append(make(Operation.SET_PIN, device.secure_client_id, distributor=device.distributor,
                                 pin=provider.default_pin))
    return Plan(tuple(commands))
