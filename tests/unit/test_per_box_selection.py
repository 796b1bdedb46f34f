"""Per-box channel selection (docs/architecture.md §1 item 12, §3 ``services[].distributors``) and schema v1 events."""

from __future__ import annotations

import io
from typing import Any

import pytest
from example_household import AT, MAIN, PROVIDER, TWIN1, svc
from example_household import event as household
from fastavro import parse_schema, schemaless_writer

from provisioning import errors
from provisioning.entitlements import entitled_products
from provisioning.planning import plan_reset, plan_subscription
from schemas.codec import Codec, history_schemas, load_schema, schema_fingerprint
from schemas.compat import backward_problems
from schemas.jsonio import parse_jsonl, to_json
from schemas.records import Device, EventType, KmsCommand, SubscriptionEvent, record_to_dict


def event(**fields: Any) -> SubscriptionEvent:
    """The example household with BASIC and SPORTS for every box (a SERVICES_CHANGED)."""
    fields.setdefault("services", [svc("BASIC"), svc("SPORTS")])
    return household(EventType.SERVICES_CHANGED, **fields)


def products_by_card(commands: tuple[KmsCommand, ...]) -> dict[str, list[str]]:
    return {c.secure_client_id: [p.product_id for p in c.products]
            for c in commands if c.operation.value == "SYNC_ENTITLEMENTS"}


# --- the rule ------------------------------------------------------------------------------------


def test_a_service_chosen_for_one_box_is_entitled_on_that_box_only() -> None:
    household = event(services=[svc("BASIC"), svc("MOVIES", ["MAIN"])],
                      devices=[MAIN, Device(distributor="TWIN2", secure_client_id="300")])
    plan = plan_subscription(household, PROVIDER)

    assert plan.rejection is None
    assert products_by_card(plan.commands) == {"100": ["P100", "P101", "P300"], "300": ["P100", "P101"]}


def test_a_service_chosen_for_no_main_box_leaves_main_without_it() -> None:
    # BASIC for the bedroom only: the living-room box gets SPORTS alone
    plan = plan_subscription(event(services=[svc("BASIC", ["TWIN1"]), svc("SPORTS", ["MAIN"])]), PROVIDER)

    assert products_by_card(plan.commands) == {"100": ["P200"], "200": ["P100", "P101"]}


def test_a_service_for_every_box_is_still_filtered_by_what_the_distributor_allows() -> None:
    # distributors null: SPORTS is meant for every box, TWIN1 may not carry it: dropped there, no rejection
    plan = plan_subscription(event(services=[svc("BASIC"), svc("SPORTS")]), PROVIDER)

    assert plan.rejection is None
    assert products_by_card(plan.commands) == {"100": ["P100", "P101", "P200"], "200": ["P100", "P101"]}


def test_an_empty_choice_grants_the_service_to_no_box() -> None:
    plan = plan_subscription(event(services=[svc("BASIC"), svc("SPORTS", [])]), PROVIDER)

    assert plan.rejection is None
    assert products_by_card(plan.commands) == {"100": ["P100", "P101"], "200": ["P100", "P101"]}


def test_the_entitlement_rule_reads_the_choice() -> None:
    sub = event(services=[svc("BASIC", ["TWIN1"])])

    assert entitled_products(sub, "MAIN", PROVIDER, AT) == []
    assert [p.product_id for p in entitled_products(sub, "TWIN1", PROVIDER, AT)] == ["P100", "P101"]


def test_a_reset_grants_the_same_per_box_selection_as_real_time() -> None:
    chosen = event(services=[svc("BASIC"), svc("SPORTS", ["MAIN"])])

    reset = plan_reset(chosen, PROVIDER, run_id="R-1", at=AT)

    assert products_by_card(reset.commands) == products_by_card(plan_subscription(chosen, PROVIDER).commands)


# --- rejections of the grant ---------------------------------------------------------------------


def test_a_service_chosen_for_a_distributor_that_may_not_carry_it_is_rejected() -> None:
    plan = plan_subscription(event(services=[svc("BASIC"), svc("SPORTS", ["MAIN", "TWIN1"])]), PROVIDER)

    assert plan.rejection is not None
    assert plan.rejection.code == errors.SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR
    assert "SPORTS" in plan.rejection.description and "TWIN1" in plan.rejection.description
    assert plan.commands == ()  # nothing to take away: MAIN and TWIN1 both stand, neither is granted


def test_a_service_chosen_for_a_distributor_without_a_box_is_an_unknown_distributor() -> None:
    plan = plan_subscription(event(services=[svc("BASIC", ["TWIN2"])]), PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.UNKNOWN_DISTRIBUTOR
    assert "TWIN2" in plan.rejection.description and "BASIC" in plan.rejection.description


def test_a_choice_naming_an_unconfigured_distributor_is_an_unknown_distributor() -> None:
    plan = plan_subscription(event(services=[svc("BASIC", ["TWIN9"])]), PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.UNKNOWN_DISTRIBUTOR


def test_an_inactive_service_grants_nothing_so_its_choice_is_not_checked() -> None:
    plan = plan_subscription(event(services=[svc("BASIC"), svc("SPORTS", ["TWIN1"], state="INACTIVE")]), PROVIDER)

    assert plan.rejection is None


@pytest.mark.parametrize("state", ["SUSPENDED", "CANCELLED"])
def test_a_stopped_subscription_with_a_bad_choice_clears_every_box_without_rejection(state: str) -> None:
    plan = plan_subscription(event(state=state, services=[svc("SPORTS", ["TWIN1"])]), PROVIDER)

    assert plan.rejection is None
    assert [(c.operation.value, c.secure_client_id) for c in plan.commands] == [
        ("CLEAR_ENTITLEMENTS", "100"), ("CLEAR_ENTITLEMENTS", "200")]


# --- the record, its JSON and schema v1 ----------------------------------------------------------


def test_the_choice_travels_in_json_and_avro() -> None:
    chosen = event(services=[svc("BASIC"), svc("SPORTS", ["MAIN"])])
    codec = Codec()

    assert parse_jsonl([to_json(chosen)], SubscriptionEvent) == [chosen]
    assert codec.decode(codec.encode(chosen, "crm.subscriptions"), SubscriptionEvent) == chosen
    assert '"distributors": ["MAIN"]' in to_json(chosen)


def test_an_event_written_with_schema_v1_decodes_without_a_choice_and_provisions_as_before() -> None:
    v1 = history_schemas("SubscriptionEvent")["v1"]
    assert "distributors" not in str(v1)
    household = event(devices=[MAIN, TWIN1], services=[svc("BASIC"), svc("SPORTS")])
    value = record_to_dict(household)
    for service in value["services"]:
        del service["distributors"]  # what a v1 writer has
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(v1), value)
    data = b"\xc3\x01" + schema_fingerprint(v1) + body.getvalue()

    decoded = Codec().decode(data, SubscriptionEvent)
    plan = plan_subscription(decoded, PROVIDER)

    assert all(s.distributors is None for s in decoded.services)
    assert decoded == household
    assert plan.rejection is None
    assert [(c.operation.value, c.secure_client_id, [p.product_id for p in c.products]) for c in plan.commands] == [
        ("SYNC_ENTITLEMENTS", "100", ["P100", "P101", "P200"]),  # MAIN "*" carries SPORTS
        ("SYNC_ENTITLEMENTS", "200", ["P100", "P101"]),  # TWIN1 [BASIC]: SPORTS filtered, not rejected
    ]


def test_the_choice_is_a_v2_field_whose_null_default_keeps_v1_readable() -> None:
    v1 = history_schemas("SubscriptionEvent")["v1"]
    current = load_schema("SubscriptionEvent")
    service = current["fields"][[f["name"] for f in current["fields"]].index("services")]["type"]["items"]
    choice = next(f for f in service["fields"] if f["name"] == "distributors")

    assert backward_problems(v1, current) == []
    del choice["default"]
    assert backward_problems(v1, current) == [
        "SubscriptionEvent.services[].distributors: new field without a default (old data has no value for it)"]
