"""Properties of fail-safe revocation and per-box selection over generated events, invalid ones included.

Each plan is applied to a KMS in which every card starts holding every product (the worst case: a
box that was entitled to everything before the event), and the end state is checked.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_planning_properties import AT, CARDS, CODES, providers, serials

from kms_adapter.port import ClientState
from provisioning.entitlements import service_is_current
from provisioning.planning import plan_reset, plan_subscription
from provisioning.provider import DISTRIBUTOR_NAMES, ProviderConfig
from provisioning.repair import plan_repair
from provisioning.validation import validate_subscription
from reconciler.drift import compare
from reconciler.model import StoredSubscription
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Operation,
    Product,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)

Case = tuple[SubscriptionEvent, ProviderConfig]
#: Many examples; generation time depends on the machine's load, which is no failure of the rules.
EXAMPLES = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
NAMES = [*DISTRIBUTOR_NAMES, "TWIN9"]
# Weighted towards households that can be entitled, so rejected grants next to standing boxes are common.
dates = st.one_of(st.none(), st.none(), st.integers(-5, 5).map(lambda d: AT + timedelta(days=d)))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Any provider and an event that may break every rule: unknown or shared distributors, repeated
    cards, missing requirements, unmapped services, choices of boxes that do not exist or may not
    carry the service."""
    provider = draw(providers())
    device = st.builds(Device, distributor=st.sampled_from(NAMES), secure_client_id=st.sampled_from(CARDS),
                       stb_serial=serials)
    choice = st.one_of(st.none(), st.none(), st.lists(st.sampled_from(NAMES), max_size=3))
    service = st.builds(Service, service_code=st.sampled_from([*CODES, "UNMAPPED"]),
                        state=st.sampled_from([ServiceState.ACTIVE, ServiceState.ACTIVE, ServiceState.INACTIVE]),
                        valid_from=dates, valid_until=dates, distributors=choice)
    current = draw(st.lists(device, max_size=5))
    event = SubscriptionEvent(
        event_id=draw(st.uuids()).hex, event_type=draw(st.sampled_from(list(EventType))), occurred_at=AT,
        subscription_id="S-1", account_id="A-1", subscription_type="RESIDENTIAL",
        created_at=AT - timedelta(days=300), version=draw(st.integers(0, 50)),
        state=draw(st.sampled_from([SubscriptionState.ACTIVE, SubscriptionState.ACTIVE, *SubscriptionState])),
        services=draw(st.lists(service, max_size=5, unique_by=lambda s: s.service_code)),
        devices=current, removed_devices=draw(st.lists(device, max_size=3)),
        added_devices=draw(st.lists(st.sampled_from(current), max_size=2)) if current else [],
    )
    return event, provider


def kms_after(commands: tuple[KmsCommand, ...], cards: set[str],
              start: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Card → product ids held once ``commands`` are applied; every card starts with ``start``'s
    products, by default with every product."""
    everything = {"P1", "P2", "P3", "P4", "P5"}
    held = {card: set(everything if start is None else start.get(card, set())) for card in cards}
    for command in commands:
        if command.operation is Operation.SYNC_ENTITLEMENTS:
            held[command.secure_client_id] = {p.product_id for p in command.products}
        elif command.operation is Operation.CLEAR_ENTITLEMENTS:
            held[command.secure_client_id] = set()
    return held


def cards_of(event: SubscriptionEvent) -> set[str]:
    return {d.secure_client_id for d in [*event.devices, *event.removed_devices]}


def lacks_its_requirement(device: Device, event: SubscriptionEvent, provider: ProviderConfig) -> bool:
    rule = provider.rule(device.distributor)
    return rule is None or (rule.requires is not None
                            and rule.requires not in {d.distributor for d in event.devices})


@EXAMPLES
@given(cases())
def test_no_plan_leaves_a_removed_box_entitled(case: Case) -> None:
    event, provider = case
    plan = plan_subscription(event, provider)
    held = kms_after(plan.commands, cards_of(event))
    current = {d.secure_client_id for d in event.devices}

    for removed in event.removed_devices:
        if removed.secure_client_id not in current or plan.rejection is not None:
            assert held[removed.secure_client_id] == set(), removed
        if removed.stb_serial and removed.secure_client_id not in current:
            assert any(c.operation is Operation.UNPAIR and c.secure_client_id == removed.secure_client_id
                       for c in plan.commands)


@EXAMPLES
@given(cases())
def test_no_plan_or_reset_leaves_a_box_of_a_suspended_or_cancelled_subscription_entitled(case: Case) -> None:
    event, provider = case
    if event.state is SubscriptionState.ACTIVE:
        return
    for plan in (plan_subscription(event, provider), plan_reset(event, provider, run_id="R-1", at=AT)):
        held = kms_after(plan.commands, cards_of(event))
        assert all(held[d.secure_client_id] == set() for d in event.devices)


@EXAMPLES
@given(cases())
def test_no_plan_or_reset_leaves_a_box_without_its_required_distributor_entitled(case: Case) -> None:
    event, provider = case
    for plan in (plan_subscription(event, provider), plan_reset(event, provider, run_id="R-1", at=AT)):
        held = kms_after(plan.commands, cards_of(event))
        for device in event.devices:
            if lacks_its_requirement(device, event, provider):
                assert held[device.secure_client_id] == set(), device


@EXAMPLES
@given(cases())
def test_no_box_ever_gets_a_service_not_chosen_for_it_or_not_allowed_on_its_distributor(case: Case) -> None:
    event, provider = case
    for plan in (plan_subscription(event, provider), plan_reset(event, provider, run_id="R-1", at=AT)):
        for command in plan.commands:
            if command.operation is not Operation.SYNC_ENTITLEMENTS:
                continue
            distributor = command.distributor or ""
            rule = provider.rule(distributor)
            assert rule is not None
            granting = {pid for s in event.services
                        if service_is_current(s, AT) and rule.allows(s.service_code)
                        and (s.distributors is None or distributor in s.distributors)
                        for pid in provider.products.get(s.service_code, ())}
            assert {p.product_id for p in command.products} <= granting


@EXAMPLES
@given(cases())
def test_a_rejected_event_reports_its_code_and_plans_only_revocations(case: Case) -> None:
    event, provider = case
    plan = plan_subscription(event, provider)

    if plan.rejection is not None:
        assert {c.operation for c in plan.commands} <= {Operation.CLEAR_ENTITLEMENTS, Operation.UNPAIR}
        assert plan.rejection.code and plan.rejection.description
    keys = [c.idempotency_key for c in plan.commands]
    assert len(keys) == len(set(keys))


held_products = st.lists(st.sampled_from(["P1", "P2", "P3", "P4", "P5"]), unique=True).map(
    lambda ids: tuple(Product(product_id=i) for i in sorted(ids)))


@EXAMPLES
@given(cases(), st.data())
def test_a_reset_of_a_rejected_subscription_only_takes_away(case: Case, data: st.DataObject) -> None:
    event, provider = case
    if validate_subscription(event, provider) is None:
        return
    # what the KMS holds for each card the subscription names, and for a few it does not
    kms = {card: data.draw(held_products) for card in sorted(cards_of(event) | set(data.draw(st.lists(
        st.sampled_from(CARDS), max_size=2))))}
    actual = {card: ClientState(secure_client_id=card, known=True, entitlements=products, pin_set=False)
              for card, products in kms.items()}
    drift = compare(StoredSubscription(event), actual, provider, AT)
    plan = plan_repair(event, provider, run_id="R-1", at=AT, secure_client_ids=drift.resync, pair=drift.pair,
                       default_pin=drift.default_pin, retired=drift.retired, keep=drift.keep)

    assert drift.rejection is not None and plan.rejection == drift.rejection
    assert {c.operation for c in plan.commands} <= {Operation.CLEAR_ENTITLEMENTS, Operation.SYNC_ENTITLEMENTS,
                                                   Operation.UNPAIR}
    before = {card: {p.product_id for p in products} for card, products in kms.items()}
    after = kms_after(plan.commands, cards_of(event) | set(kms), before)
    assert all(after[card] <= before.get(card, set()) for card in after)
    if event.state is not SubscriptionState.ACTIVE:
        assert all(after[d.secure_client_id] == set() for d in event.devices)
    for device in event.devices:
        if lacks_its_requirement(device, event, provider):
            assert after[device.secure_client_id] == set(), device
