"""The entitlement rule: which products a device should hold at a given time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from provisioning.entitlements import DesiredClient, desired_state, entitled_products
from provisioning.errors import TOO_MANY_VIEWING_POINTS, InvalidSubscription, PlanningError
from provisioning.provider import ProviderConfig, provider_from_mapping
from schemas.records import Device, EventType, Product, Service, ServiceState, SubscriptionEvent

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)

PROVIDER = provider_from_mapping({
    "operator_tag": "ALUX",
    "distributors": {
        "MAIN": {"services": "*"},
        "TWIN1": {"services": ["BASIC"], "requires": "MAIN"},
        "TWIN2": {"services": ["BASIC"], "requires": "MAIN"},
    },
    "products": {"BASIC": ["P101", "P100"], "SPORTS": ["P200"], "MOVIES": ["P300"],
                 "PREMIUM": ["P300", "P200"]},
})


def svc(code: str, state: str = "ACTIVE", valid_from: datetime | None = None,
        valid_until: datetime | None = None) -> Service:
    return Service(service_code=code, state=ServiceState(state), valid_from=valid_from,
                   valid_until=valid_until)


def event(**fields: Any) -> SubscriptionEvent:
    base: dict[str, Any] = {
        "event_id": "E-1", "event_type": EventType.UPDATED, "occurred_at": AT,
        "subscription_id": "S-1", "account_id": "A-1", "subscription_type": "RESIDENTIAL",
        "created_at": AT - 300 * DAY, "version": 3, "state": "ACTIVE",
        "services": [svc("BASIC")],
        "devices": [Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")],
    }
    base.update(fields)
    return SubscriptionEvent(**base)


def ids(products: list[Product]) -> list[str]:
    return [p.product_id for p in products]


def products(services: list[Service], distributor: str = "MAIN", provider: ProviderConfig = PROVIDER,
             at: datetime = AT, **fields: Any) -> list[Product]:
    return entitled_products(event(services=services, **fields), distributor, provider, at)


def test_active_service_of_active_subscription_is_entitled_sorted_by_product_id() -> None:
    assert products([svc("BASIC")]) == [Product(product_id="P100"), Product(product_id="P101")]


def test_inactive_service_is_not_entitled() -> None:
    assert ids(products([svc("BASIC"), svc("SPORTS", state="INACTIVE")])) == ["P100", "P101"]


@pytest.mark.parametrize("state", ["SUSPENDED", "CANCELLED"])
def test_subscription_that_is_not_active_entitles_nothing(state: str) -> None:
    assert products([svc("BASIC"), svc("SPORTS")], state=state) == []


def test_twin_only_gets_the_services_its_distributor_allows() -> None:
    services = [svc("BASIC"), svc("SPORTS")]

    assert ids(products(services, distributor="MAIN")) == ["P100", "P101", "P200"]
    assert ids(products(services, distributor="TWIN1")) == ["P100", "P101"]


def test_ended_service_is_not_entitled() -> None:
    assert products([svc("SPORTS", valid_until=AT - DAY)]) == []


def test_service_ending_exactly_now_is_not_entitled() -> None:
    assert products([svc("SPORTS", valid_until=AT)]) == []


def test_future_service_is_sent_with_its_dates_so_the_kms_starts_it_on_time() -> None:
    starts, ends = AT + DAY, AT + 30 * DAY

    assert products([svc("SPORTS", valid_from=starts, valid_until=ends)]) == [
        Product(product_id="P200", valid_from=starts, valid_until=ends)
    ]


def test_running_termed_service_carries_its_end_date() -> None:
    assert products([svc("SPORTS", valid_from=AT - DAY, valid_until=AT + DAY)]) == [
        Product(product_id="P200", valid_from=AT - DAY, valid_until=AT + DAY)
    ]


def test_service_with_an_empty_period_is_never_entitled() -> None:
    assert products([svc("SPORTS", valid_from=AT + DAY, valid_until=AT + DAY)]) == []


def test_product_granted_by_two_services_appears_once_covering_both_periods() -> None:
    services = [
        svc("MOVIES", valid_from=AT - DAY, valid_until=AT + DAY),
        svc("PREMIUM", valid_from=AT - 2 * DAY, valid_until=AT + 2 * DAY),
    ]

    assert products(services) == [
        Product(product_id="P200", valid_from=AT - 2 * DAY, valid_until=AT + 2 * DAY),
        Product(product_id="P300", valid_from=AT - 2 * DAY, valid_until=AT + 2 * DAY),
    ]


def test_open_ended_grant_wins_over_a_termed_one_for_the_same_product() -> None:
    services = [svc("MOVIES"), svc("PREMIUM", valid_from=AT - DAY, valid_until=AT + DAY)]

    assert [p for p in products(services) if p.product_id == "P300"] == [Product(product_id="P300")]


def test_order_of_services_does_not_change_the_result() -> None:
    services = [svc("SPORTS"), svc("BASIC"), svc("MOVIES")]

    assert products(services) == products(list(reversed(services)))


def test_unconfigured_distributor_is_a_caller_error() -> None:
    with pytest.raises(PlanningError, match="TWIN3"):
        products([svc("BASIC")], distributor="TWIN3")


def test_naive_time_is_a_caller_error() -> None:
    with pytest.raises(PlanningError, match="timezone-aware"):
        products([svc("BASIC")], at=datetime(2026, 11, 25, 10, 0))


# --- desired_state ----------------------------------------------------------------------------------


def test_desired_state_lists_every_device_with_its_own_products_and_box() -> None:
    devices = [Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2"),
               Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")]

    state = desired_state(event(services=[svc("BASIC"), svc("SPORTS")], devices=devices), PROVIDER, AT)

    assert list(state) == ["100", "200"]  # MAIN before TWIN1
    assert state["100"] == DesiredClient(
        distributor="MAIN",
        products=tuple(Product(product_id=p) for p in ("P100", "P101", "P200")),
        chipset="B-1",
    )
    assert state["200"] == DesiredClient(
        distributor="TWIN1", products=(Product(product_id="P100"), Product(product_id="P101")),
        chipset="B-2",
    )


def test_desired_state_of_a_suspended_subscription_has_no_products() -> None:
    state = desired_state(event(state="SUSPENDED"), PROVIDER, AT)

    assert state["100"].products == ()


def test_desired_state_refuses_a_subscription_that_validation_rejects() -> None:
    too_many = provider_from_mapping({**PROVIDER.model_dump(mode="python"), "max_viewing_points": 1,
                                      "default_pin": "0001"})
    devices = [Device(distributor="MAIN", secure_client_id="100"),
               Device(distributor="TWIN1", secure_client_id="200")]

    with pytest.raises(InvalidSubscription) as caught:
        desired_state(event(devices=devices), too_many, AT)

    assert caught.value.rejection.code == TOO_MANY_VIEWING_POINTS
