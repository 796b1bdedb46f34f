"""Planning remembers the entitlement rule's answers across events (``provisioning.planning``): a plan
made with a warm memo equals the plan made with none, whatever events came before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_planning_properties import EXAMPLES, cases

from provisioning import planning
from provisioning.planning import plan_subscription
from provisioning.provider import ProviderConfig
from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent, SubscriptionState

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def cold(event: SubscriptionEvent, provider: ProviderConfig) -> planning.Plan:
    planning._MEMO.clear()
    return plan_subscription(event, provider)


@EXAMPLES
@given(st.lists(cases(), min_size=2, max_size=4))
def test_a_plan_made_after_other_events_equals_the_plan_made_first(events: list[tuple[SubscriptionEvent,
                                                                                         ProviderConfig]]) -> None:
    provider = events[0][1]  # one provider, so the memo carries over from event to event
    expected = [cold(event, provider) for event, _ in events]
    planning._MEMO.clear()

    warm = [plan_subscription(event, provider) for event, _ in events]

    assert warm == expected
    assert [[c.model_dump_json() for c in p.commands] for p in warm] == \
        [[c.model_dump_json() for c in p.commands] for p in expected]


def event(services: list[Service], *, state: SubscriptionState = SubscriptionState.ACTIVE) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id="E-1", event_type=EventType.SERVICES_CHANGED, occurred_at=AT, subscription_id="S-1",
        account_id="A-1", subscription_type="RESIDENTIAL", created_at=AT - timedelta(days=9), version=2,
        state=state, services=services, devices=[Device(distributor="MAIN", secure_client_id="C1")])


@pytest.fixture
def provider() -> ProviderConfig:
    from provisioning.provider import provider_from_mapping

    return provider_from_mapping({"operator_tag": "ALUX", "distributors": {"MAIN": {"services": "*"}},
                                  "products": {"BASIC": ["P1"], "SPORTS": ["P2"]}})


@pytest.mark.parametrize("second", [
    [Service(service_code="BASIC", state=ServiceState.ACTIVE, valid_from=AT + timedelta(days=1))],
    [Service(service_code="BASIC", state=ServiceState.INACTIVE)],
    [Service(service_code="BASIC", state=ServiceState.ACTIVE, distributors=["TWIN1"])],
    [Service(service_code="SPORTS", state=ServiceState.ACTIVE)],
    # the same instant in another zone: printed differently, so a different product
    [Service(service_code="BASIC", state=ServiceState.ACTIVE, valid_from=AT.astimezone(timezone(timedelta(hours=2))))],
])
def test_an_event_that_differs_in_any_field_the_rule_reads_gets_its_own_answer(
        provider: ProviderConfig, second: list[Service]) -> None:
    first = [Service(service_code="BASIC", state=ServiceState.ACTIVE, valid_from=AT)]
    plan_subscription(event(first), provider)  # warms the memo

    warm = plan_subscription(event(second), provider)
    expected = cold(event(second), provider)

    assert warm == expected
    assert [c.model_dump_json() for c in warm.commands] == [c.model_dump_json() for c in expected.commands]
