"""The reconciler's cache around the entitlement rule (``reconciler.drift.DesiredStates``).

A reset run asks for the products of every device of every subscription; the cache evaluates
``provisioning.entitlements.entitled_products`` once per input the rule reads and must never answer
one subscription with another's products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reconciler.drift as drift
from kms_adapter.port import ClientState
from provisioning.entitlements import entitled_products
from provisioning.provider import load_provider
from reconciler.drift import DesiredStates, compare
from reconciler.model import StoredSubscription
from schemas.records import (
    Device,
    EventType,
    Product,
    Service,
    ServiceState,
    SubscriptionEvent,
    SubscriptionState,
)

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
PLUS_ONE = timezone(timedelta(hours=1))
MAIN = Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2")
BASIC = Service(service_code="BASIC", state=ServiceState.ACTIVE)
SPORTS = Service(service_code="SPORTS", state=ServiceState.ACTIVE)


def event(n: int = 1, **fields: Any) -> SubscriptionEvent:
    base: dict[str, Any] = {
        "event_id": f"E-{n}", "event_type": EventType.UPDATED, "occurred_at": AT - DAY, "subscription_id": f"S-{n}",
        "account_id": f"A-{n}", "subscription_type": "RESIDENTIAL", "created_at": AT - n * DAY, "version": n,
        "state": SubscriptionState.ACTIVE, "services": [BASIC, SPORTS],
        "devices": [Device(distributor="MAIN", secure_client_id=f"1{n:04d}", stb_serial=f"B-{n}"),
                    Device(distributor="TWIN1", secure_client_id=f"2{n:04d}", stb_serial=None)],
    }
    base.update(fields)
    return SubscriptionEvent(**base)


def with_zones(products: Sequence[Product]) -> list[tuple[Any, ...]]:
    """Products as compared here: ``Product`` equality takes equal instants in two zones as equal."""
    return [(p.product_id, p.valid_from, p.valid_from and p.valid_from.tzinfo, p.valid_until,
             p.valid_until and p.valid_until.tzinfo) for p in products]


@pytest.fixture
def rule_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The distributors the cache called the rule for, in order."""
    calls: list[str] = []

    def counted(state: Any, distributor: str, *args: Any, **kwargs: Any) -> list[Product]:
        calls.append(distributor)
        return entitled_products(state, distributor, *args, **kwargs)

    monkeypatch.setattr(drift, "entitled_products", counted)
    yield calls


def test_a_run_evaluates_the_rule_once_for_subscriptions_that_differ_only_in_what_it_does_not_read(
    rule_calls: list[str],
) -> None:
    states = DesiredStates(PROVIDER, AT)

    desired = [states.of_valid(event(n)) for n in range(1, 11)]

    assert rule_calls == ["MAIN", "TWIN1"]
    main, twin = (tuple(entitled_products(event(), d, PROVIDER, AT)) for d in ("MAIN", "TWIN1"))
    assert [(d[f"1{n:04d}"].products, d[f"2{n:04d}"].products) for n, d in enumerate(desired, 1)] == [(main, twin)] * 10


#: One variant of ``event()`` per input of the rule: (variant, its distributor, the base's distributor), each
#: with another answer than the base's.
VARIANTS: dict[str, tuple[Callable[[], SubscriptionEvent], str, str]] = {
    "subscription state": (lambda: event(state=SubscriptionState.SUSPENDED), "MAIN", "MAIN"),
    "service code": (lambda: event(services=[BASIC, SPORTS.model_copy(update={"service_code": "MOVIES"})]),
                     "MAIN", "MAIN"),
    "service state": (lambda: event(services=[BASIC, SPORTS.model_copy(update={"state": ServiceState.INACTIVE})]),
                      "MAIN", "MAIN"),
    "valid_from": (lambda: event(services=[BASIC, SPORTS.model_copy(update={"valid_from": AT + DAY})]),
                   "MAIN", "MAIN"),
    "valid_until": (lambda: event(services=[BASIC, SPORTS.model_copy(update={"valid_until": AT + DAY})]),
                    "MAIN", "MAIN"),
    "distributors": (lambda: event(services=[BASIC.model_copy(update={"distributors": ["MAIN"]}), SPORTS]),
                     "TWIN1", "TWIN1"),
    "distributor": (lambda: event(), "TWIN1", "MAIN"),
}


@pytest.mark.parametrize("varied", sorted(VARIANTS))
def test_each_input_the_rule_reads_gets_its_own_answer(varied: str) -> None:
    make, distributor, base_distributor = VARIANTS[varied]
    variant = make()
    expected = entitled_products(variant, distributor, PROVIDER, AT)
    assert expected != entitled_products(event(), base_distributor, PROVIDER, AT)  # the variant changes the answer
    states = DesiredStates(PROVIDER, AT)

    states.products(event(), base_distributor)  # the base answer, now cached

    assert list(states.products(variant, distributor)) == expected


def test_a_time_in_another_zone_gets_products_in_that_zone() -> None:
    # The same instant, written in two zones: the rule's products keep the zone they were given.
    until = AT + DAY
    utc = event(services=[BASIC, SPORTS.model_copy(update={"valid_until": until})])
    plus_one = event(2, services=[BASIC, SPORTS.model_copy(update={"valid_until": until.astimezone(PLUS_ONE)})])
    states = DesiredStates(PROVIDER, AT)

    states.products(utc, "MAIN")

    rule = with_zones(entitled_products(plus_one, "MAIN", PROVIDER, AT))
    assert with_zones(states.products(plus_one, "MAIN")) == rule
    assert with_zones(states.of_valid(plus_one)["10002"].products) == rule


def test_one_cache_shared_by_a_run_reports_each_subscription_by_its_own_services() -> None:
    # S-1 chooses BASIC for its MAIN box only, S-2 for every box: the same codes and states, other boxes.
    main_only = event(1, services=[BASIC.model_copy(update={"distributors": ["MAIN"]}), SPORTS])
    every_box = event(2, services=[BASIC, SPORTS])
    all_three = (Product(product_id="P100"), Product(product_id="P101"), Product(product_id="P200"))

    def held(card: str, products: tuple[Product, ...] = (), chipset: str | None = None) -> ClientState:
        return ClientState(secure_client_id=card, known=True, entitlements=products, paired_chipset=chipset,
                           pin_set=True)

    kms = {"10001": held("10001", all_three, "B-1"), "20001": held("20001"),
           "10002": held("10002", all_three, "B-2"), "20002": held("20002")}
    states = DesiredStates(PROVIDER, AT)

    first = compare(StoredSubscription(main_only), kms, PROVIDER, AT, desired_states=states)
    second = compare(StoredSubscription(every_box), kms, PROVIDER, AT, desired_states=states)

    assert not first.drifted
    assert [(i.secure_client_id, i.missing_products) for i in second.items] == [("20002", ["P100", "P101"])]


def test_beyond_its_bound_the_cache_calls_the_rule_each_time(rule_calls: list[str]) -> None:
    states = DesiredStates(PROVIDER, AT, max_entries=1)
    suspended = event(state=SubscriptionState.SUSPENDED)

    answers = [states.products(e, "MAIN") for e in (event(), suspended, event(), suspended)]

    assert rule_calls == ["MAIN", "MAIN", "MAIN"]  # the first input is kept, the second is not
    assert answers[0] == answers[2] and answers[1] == answers[3] == ()


# --- a property over subscriptions that share parts of their input -------------------------------------

_TIMES = st.sampled_from([None, AT - DAY, AT + DAY, (AT + DAY).astimezone(PLUS_ONE), AT + 2 * DAY])
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "service_code": st.sampled_from(["BASIC", "SPORTS", "MOVIES"]),
    "state": st.sampled_from(ServiceState),
    "valid_from": _TIMES,
    "valid_until": _TIMES,
    "distributors": st.sampled_from([None, ["MAIN"], ["TWIN1"], ["MAIN", "TWIN1"], []]),
}


@st.composite
def families(draw: st.DrawFn) -> list[SubscriptionEvent]:
    """Subscriptions that each differ from the first in one input of the rule: a cache keyed on less errs."""
    services = draw(st.lists(st.fixed_dictionaries(_FIELDS).map(lambda f: Service(**f)), min_size=1, max_size=3))
    family = [event(1, services=services)]
    for n in range(2, draw(st.integers(2, 8)) + 1):
        if draw(st.booleans()):
            family.append(event(n, services=services, state=draw(st.sampled_from(SubscriptionState))))
            continue
        at = draw(st.integers(0, len(services) - 1))
        name = draw(st.sampled_from(sorted(_FIELDS)))
        changed = services[at].model_copy(update={name: draw(_FIELDS[name])})
        family.append(event(n, services=[*services[:at], changed, *services[at + 1:]]))
    return family


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_a_shared_cache_answers_every_device_with_the_rules_products_for_it(events: list[SubscriptionEvent]) -> None:
    states = DesiredStates(PROVIDER, AT)
    for subscription in [*events, *events]:  # the second pass is answered from the cache
        desired = states.of_valid(subscription)
        for device in subscription.devices:
            rule = with_zones(entitled_products(subscription, device.distributor, PROVIDER, AT))
            assert with_zones(desired[device.secure_client_id].products) == rule
            assert with_zones(states.products(subscription, device.distributor)) == rule
