"""Subscription event → KMS commands: validation, the command rules, ordering, shared fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioning import errors
from provisioning.keys import MAX_KEY_LENGTH, KeySource, idempotency_key, rejection_key
from provisioning.planning import plan_reset, plan_subscription
from provisioning.provider import load_provider, provider_from_mapping
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Operation,
    Priority,
    Product,
    Service,
    ServiceState,
    Source,
    SubscriptionEvent,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "provider.yaml"
PROVIDER = load_provider(EXAMPLE)  # MAIN "*", TWIN1/TWIN2 [BASIC] require MAIN, TWIN3 [BASIC] requires TWIN2
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)

MAIN = Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2")
TWIN2 = Device(distributor="TWIN2", secure_client_id="300", stb_serial="B-3")
TWIN3 = Device(distributor="TWIN3", secure_client_id="400", stb_serial="B-4")
BASIC = [Product(product_id="P100"), Product(product_id="P101")]
BASIC_SPORTS = [*BASIC, Product(product_id="P200")]
OP = Operation


def svc(code: str, state: str = "ACTIVE", **dates: datetime | None) -> Service:
    return Service(service_code=code, state=ServiceState(state), **dates)


def event(event_type: EventType = EventType.SERVICES_CHANGED, **fields: Any) -> SubscriptionEvent:
    base: dict[str, Any] = {
        "event_id": "E-1", "event_type": event_type, "occurred_at": AT,
        "subscription_id": "S-1", "account_id": "A-1", "subscription_type": "RESIDENTIAL",
        "created_at": AT - 300 * DAY, "version": 7, "state": "ACTIVE",
        "services": [svc("BASIC"), svc("SPORTS")], "devices": [MAIN],
    }
    base.update(fields)
    return SubscriptionEvent(**base)


def steps(commands: tuple[KmsCommand, ...]) -> list[tuple[str, str]]:
    """(operation, secure client) of each command, in order."""
    return [(c.operation.value, c.secure_client_id) for c in commands]


def rejection_code(**fields: Any) -> str | None:
    plan = plan_subscription(event(**fields), PROVIDER)
    if plan.rejection is None:
        return None
    # a rejected event grants nothing: what it plans only takes away
    assert {c.operation for c in plan.commands} <= {Operation.CLEAR_ENTITLEMENTS, Operation.UNPAIR}
    return plan.rejection.code


# --- validation --------------------------------------------------------------------------------------


def test_twin_without_main_is_rejected() -> None:
    assert rejection_code(devices=[TWIN1]) == errors.REQUIRED_DISTRIBUTOR_MISSING


def test_twin3_without_the_twin2_it_requires_is_rejected() -> None:
    plan = plan_subscription(event(devices=[MAIN, TWIN3]), PROVIDER)

    assert plan.rejection is not None
    assert plan.rejection.code == errors.REQUIRED_DISTRIBUTOR_MISSING
    assert "TWIN3" in plan.rejection.description and "TWIN2" in plan.rejection.description


def test_more_devices_than_viewing_points_is_rejected() -> None:
    two_points = provider_from_mapping({**_example_mapping(), "max_viewing_points": 2})

    plan = plan_subscription(event(devices=[MAIN, TWIN1, TWIN2]), two_points)

    assert plan.rejection is not None and plan.rejection.code == errors.TOO_MANY_VIEWING_POINTS
    assert plan.commands == ()


def test_a_fifth_viewing_point_is_rejected() -> None:
    fifth = Device(distributor="TWIN1", secure_client_id="500")

    assert rejection_code(devices=[MAIN, TWIN1, TWIN2, TWIN3, fifth]) == errors.TOO_MANY_VIEWING_POINTS


def test_two_devices_on_one_distributor_are_rejected() -> None:
    other_main = Device(distributor="MAIN", secure_client_id="101")

    assert rejection_code(devices=[MAIN, other_main]) == errors.DUPLICATE_DISTRIBUTOR


def test_the_same_card_twice_is_rejected() -> None:
    same_card = Device(distributor="TWIN1", secure_client_id=MAIN.secure_client_id)

    assert rejection_code(devices=[MAIN, same_card]) == errors.DUPLICATE_SECURE_CLIENT


def test_distributor_that_does_not_exist_is_rejected() -> None:
    assert rejection_code(devices=[Device(distributor="TWIN9", secure_client_id="9")]) == (
        errors.UNKNOWN_DISTRIBUTOR
    )


def test_distributor_the_provider_does_not_configure_is_rejected() -> None:
    data = _example_mapping()
    del data["distributors"]["TWIN3"]
    without_twin3 = provider_from_mapping(data)

    plan = plan_subscription(event(devices=[MAIN, TWIN2, TWIN3]), without_twin3)

    assert plan.rejection is not None and plan.rejection.code == errors.UNKNOWN_DISTRIBUTOR


@pytest.mark.parametrize("state", ["ACTIVE", "INACTIVE"])
def test_service_without_product_mapping_is_rejected(state: str) -> None:
    assert rejection_code(services=[svc("BASIC"), svc("KARAOKE", state)]) == errors.UNMAPPED_SERVICE


@pytest.mark.parametrize("sub_state", ["SUSPENDED", "CANCELLED"])
def test_suspension_with_an_unmapped_service_still_clears_every_box(sub_state: str) -> None:
    plan = plan_subscription(event(state=sub_state, services=[svc("BASIC"), svc("KARAOKE")]), PROVIDER)

    assert plan.rejection is None
    assert plan.commands and all(c.operation.value == "CLEAR_ENTITLEMENTS" for c in plan.commands
                                 if c.secure_client_id == MAIN.secure_client_id)


def test_added_device_missing_from_devices_is_rejected() -> None:
    assert rejection_code(devices=[MAIN], added_devices=[TWIN1]) == errors.INCONSISTENT_DEVICES


def test_removed_device_listed_twice_is_rejected() -> None:
    gone = Device(distributor="TWIN1", secure_client_id="900")

    assert rejection_code(removed_devices=[gone, gone]) == errors.INCONSISTENT_DEVICES


def test_valid_household_is_not_rejected() -> None:
    plan = plan_subscription(event(devices=[TWIN3, TWIN2, TWIN1, MAIN]), PROVIDER)

    assert plan.rejection is None
    assert len(plan.commands) == 4


# --- ACTIVE subscriptions ----------------------------------------------------------------------------


def test_activation_pairs_sets_the_default_pin_and_syncs_every_device() -> None:
    plan = plan_subscription(event(EventType.ACTIVATED, devices=[TWIN1, MAIN]), PROVIDER)

    assert steps(plan.commands) == [
        ("PAIR", "100"), ("SET_PIN", "100"), ("SYNC_ENTITLEMENTS", "100"),
        ("PAIR", "200"), ("SET_PIN", "200"), ("SYNC_ENTITLEMENTS", "200"),
    ]
    pair, set_pin, sync = plan.commands[:3]
    assert pair.chipset == "B-1"
    assert set_pin.pin is not None and set_pin.pin.get_secret_value() == "0001"
    assert sync.products == BASIC_SPORTS
    assert plan.commands[5].products == BASIC  # TWIN1 carries BASIC only


def test_set_pin_uses_the_configured_default_pin() -> None:
    provider = provider_from_mapping({**_example_mapping(), "default_pin": "9876"})

    plan = plan_subscription(event(EventType.ACTIVATED), provider)

    (set_pin,) = [c for c in plan.commands if c.operation is OP.SET_PIN]
    assert set_pin.pin is not None and set_pin.pin.get_secret_value() == "9876"


def test_new_device_without_box_serial_gets_pin_and_entitlements_but_no_pairing() -> None:
    card_only = Device(distributor="MAIN", secure_client_id="100")

    plan = plan_subscription(event(EventType.ACTIVATED, devices=[card_only]), PROVIDER)

    assert steps(plan.commands) == [("SET_PIN", "100"), ("SYNC_ENTITLEMENTS", "100")]


def test_service_change_only_syncs_existing_devices() -> None:
    plan = plan_subscription(event(devices=[MAIN, TWIN1]), PROVIDER)

    assert steps(plan.commands) == [("SYNC_ENTITLEMENTS", "100"), ("SYNC_ENTITLEMENTS", "200")]


def test_sync_carries_exactly_the_products_entitled_at_event_time() -> None:
    services = [
        svc("BASIC"),
        svc("SPORTS", valid_until=AT - DAY),  # ended before the event
        svc("MOVIES", valid_from=AT + DAY, valid_until=AT + 8 * DAY),  # starts later: sent with dates
    ]

    (sync,) = plan_subscription(event(services=services), PROVIDER).commands

    movies = Product(product_id="P300", valid_from=AT + DAY, valid_until=AT + 8 * DAY)
    assert sync.products == [*BASIC, movies]


def test_active_subscription_without_entitled_services_syncs_to_nothing() -> None:
    (sync,) = plan_subscription(event(services=[svc("BASIC", "INACTIVE")]), PROVIDER).commands

    assert sync.operation is OP.SYNC_ENTITLEMENTS and sync.products == []


# --- SUSPENDED / CANCELLED / RESUMED -----------------------------------------------------------------


@pytest.mark.parametrize(("event_type", "state"), [(EventType.SUSPENDED, "SUSPENDED"),
                                                   (EventType.CANCELLED, "CANCELLED")])
def test_suspension_and_cancellation_clear_every_device(event_type: EventType, state: str) -> None:
    plan = plan_subscription(event(event_type, state=state, devices=[MAIN, TWIN1]), PROVIDER)

    assert steps(plan.commands) == [("CLEAR_ENTITLEMENTS", "100"), ("CLEAR_ENTITLEMENTS", "200")]
    assert all(c.products == [] for c in plan.commands)


def test_resumption_restores_entitlements_with_a_sync() -> None:
    plan = plan_subscription(event(EventType.RESUMED, devices=[MAIN]), PROVIDER)

    assert steps(plan.commands) == [("SYNC_ENTITLEMENTS", "100")]
    assert plan.commands[0].products == BASIC_SPORTS


# --- device changes ----------------------------------------------------------------------------------


def test_added_device_is_paired_and_given_the_default_pin() -> None:
    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, devices=[MAIN, TWIN1], added_devices=[TWIN1]), PROVIDER
    )

    assert steps(plan.commands) == [
        ("SYNC_ENTITLEMENTS", "100"),
        ("PAIR", "200"), ("SET_PIN", "200"), ("SYNC_ENTITLEMENTS", "200"),
    ]


def test_removed_device_is_cleared_then_unpaired_from_its_box() -> None:
    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, devices=[MAIN], removed_devices=[TWIN1]), PROVIDER
    )

    assert steps(plan.commands) == [
        ("CLEAR_ENTITLEMENTS", "200"), ("UNPAIR", "200"), ("SYNC_ENTITLEMENTS", "100"),
    ]
    assert plan.commands[1].chipset == "B-2"
    assert plan.commands[0].distributor == "TWIN1"


def test_removed_device_without_box_serial_is_only_cleared() -> None:
    card_only = Device(distributor="TWIN1", secure_client_id="200")

    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, devices=[MAIN], removed_devices=[card_only]), PROVIDER
    )

    assert steps(plan.commands) == [("CLEAR_ENTITLEMENTS", "200"), ("SYNC_ENTITLEMENTS", "100")]


def test_swap_on_the_same_distributor_installs_the_new_device() -> None:
    old_main = Device(distributor="MAIN", secure_client_id="099", stb_serial="B-0")

    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, devices=[MAIN], removed_devices=[old_main]), PROVIDER
    )

    assert steps(plan.commands) == [
        ("CLEAR_ENTITLEMENTS", "099"), ("UNPAIR", "099"),
        ("PAIR", "100"), ("SET_PIN", "100"), ("SYNC_ENTITLEMENTS", "100"),
    ]
    assert [c.chipset for c in plan.commands] == [None, "B-0", "B-1", None, None]


def test_removal_outside_devices_changed_is_not_treated_as_a_swap() -> None:
    old_main = Device(distributor="MAIN", secure_client_id="099", stb_serial="B-0")

    plan = plan_subscription(event(EventType.UPDATED, devices=[MAIN], removed_devices=[old_main]), PROVIDER)

    assert steps(plan.commands) == [
        ("CLEAR_ENTITLEMENTS", "099"), ("UNPAIR", "099"), ("SYNC_ENTITLEMENTS", "100"),
    ]


def test_card_moved_to_a_new_box_is_unpaired_from_the_old_and_paired_with_the_new() -> None:
    old_box = MAIN.model_copy(update={"stb_serial": "B-OLD"})

    plan = plan_subscription(event(EventType.UPDATED, devices=[MAIN], removed_devices=[old_box]), PROVIDER)

    assert steps(plan.commands) == [
        ("CLEAR_ENTITLEMENTS", "100"), ("UNPAIR", "100"),
        ("PAIR", "100"), ("SET_PIN", "100"), ("SYNC_ENTITLEMENTS", "100"),
    ]
    assert [c.chipset for c in plan.commands[1:3]] == ["B-OLD", "B-1"]
    assert len({c.idempotency_key for c in plan.commands}) == 5


def test_removed_card_still_gets_cleared_when_the_subscription_is_suspended() -> None:
    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, state="SUSPENDED", devices=[MAIN], removed_devices=[TWIN1]),
        PROVIDER,
    )

    assert steps(plan.commands) == [
        ("CLEAR_ENTITLEMENTS", "200"), ("UNPAIR", "200"), ("CLEAR_ENTITLEMENTS", "100"),
    ]


# --- ordering and shared fields ----------------------------------------------------------------------


def test_device_order_in_the_event_does_not_change_the_plan() -> None:
    forward = event(EventType.ACTIVATED, devices=[MAIN, TWIN1, TWIN2, TWIN3])
    backward = event(EventType.ACTIVATED, devices=[TWIN3, TWIN2, TWIN1, MAIN])

    assert plan_subscription(forward, PROVIDER) == plan_subscription(backward, PROVIDER)


def test_every_command_carries_the_subscription_source_and_event_time() -> None:
    plan = plan_subscription(
        event(EventType.ACTIVATED, devices=[MAIN, TWIN1]), PROVIDER,
        process_name="translator-2", topic="crm.subscriptions",
    )

    for command in plan.commands:
        assert command.subscription_id == "S-1"
        assert command.subscription_version == 7
        assert command.created_at == AT
        assert command.priority is Priority.REGULAR
        assert command.not_before is None
        assert command.source == Source(
            process_name="translator-2", topic="crm.subscriptions", event_id="E-1"
        )
    assert [c.distributor for c in plan.commands] == ["MAIN"] * 3 + ["TWIN1"] * 3


def test_keys_are_readable_and_derived_from_event_card_and_operation() -> None:
    plan = plan_subscription(
        event(EventType.DEVICES_CHANGED, devices=[MAIN], removed_devices=[TWIN1]), PROVIDER
    )

    assert [c.idempotency_key for c in plan.commands] == [
        "ev:E-1:200:CLEAR_ENTITLEMENTS:removed",
        "ev:E-1:200:UNPAIR:removed",
        "ev:E-1:100:SYNC_ENTITLEMENTS",
    ]


def test_the_same_event_planned_twice_gives_identical_commands() -> None:
    first = plan_subscription(event(EventType.ACTIVATED, devices=[MAIN, TWIN1]), PROVIDER)
    again = plan_subscription(event(EventType.ACTIVATED, devices=[MAIN, TWIN1]), PROVIDER)

    assert first.commands == again.commands
    assert [c.model_dump_json() for c in first.commands] == [c.model_dump_json() for c in again.commands]


def test_another_event_gets_other_keys() -> None:
    first = plan_subscription(event(), PROVIDER)
    second = plan_subscription(event(event_id="E-2"), PROVIDER)

    assert first.commands[0].idempotency_key != second.commands[0].idempotency_key


# --- keys and error codes ----------------------------------------------------------------------------


def test_long_or_separator_bearing_ids_are_hashed_into_a_bounded_key() -> None:
    key = idempotency_key(KeySource.REQUEST, "x" * 500, "card:1", Operation.SET_PIN)

    assert key.startswith("req:~") and key.endswith(":SET_PIN")
    assert len(key) <= MAX_KEY_LENGTH
    assert key.count(":") == 3


def test_empty_key_part_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="secure_client_id"):
        idempotency_key(KeySource.EVENT, "E-1", "", Operation.PAIR)


def test_rejection_key_is_stable_and_never_a_command_key() -> None:
    assert rejection_key(KeySource.EVENT, "E-1") == "ev:E-1:REJECTED"
    assert rejection_key(KeySource.EVENT, "E-1") != idempotency_key(KeySource.EVENT, "E-1", "REJECTED", OP.PAIR)


def test_every_error_code_constant_is_in_the_catalogue_with_a_meaning() -> None:
    constants = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}

    assert constants == set(errors.ERROR_CODES)
    assert all(meaning for meaning in errors.ERROR_CODES.values())
    with pytest.raises(ValueError, match="unknown rejection code"):
        errors.Rejection("NOT_A_CODE", "made up")


# --- reset runs (reconciler) -------------------------------------------------------------------------


def test_reset_syncs_every_device_keyed_by_the_run() -> None:
    plan = plan_reset(event(devices=[MAIN, TWIN1]), PROVIDER, run_id="R-1", at=AT + DAY, topic="kms.commands")

    assert steps(plan.commands) == [("SYNC_ENTITLEMENTS", "100"), ("SYNC_ENTITLEMENTS", "200")]
    assert [c.idempotency_key for c in plan.commands] == [
        "run:R-1:100:SYNC_ENTITLEMENTS", "run:R-1:200:SYNC_ENTITLEMENTS",
    ]
    assert plan.commands[0].source == Source(process_name="reconciler", topic="kms.commands", run_id="R-1")
    assert plan.commands[0].created_at == AT + DAY
    assert plan.commands[0].subscription_version == 7


def test_reset_evaluates_entitlements_at_the_run_time_not_the_event_time() -> None:
    services = [svc("BASIC"), svc("SPORTS", valid_until=AT + DAY)]

    at_event = plan_subscription(event(services=services), PROVIDER).commands[0]
    at_run = plan_reset(event(services=services), PROVIDER, run_id="R-1", at=AT + 2 * DAY).commands[0]

    assert [p.product_id for p in at_event.products] == ["P100", "P101", "P200"]
    assert at_run.products == BASIC


def test_reset_never_resets_the_pin_and_pairs_only_the_cards_asked_for() -> None:
    plan = plan_reset(event(devices=[MAIN, TWIN1]), PROVIDER, run_id="R-1", at=AT, pair={"200"})

    assert steps(plan.commands) == [
        ("SYNC_ENTITLEMENTS", "100"), ("PAIR", "200"), ("SYNC_ENTITLEMENTS", "200"),
    ]


def test_reset_can_be_limited_to_drifted_cards() -> None:
    plan = plan_reset(event(devices=[MAIN, TWIN1]), PROVIDER, run_id="R-1", at=AT, secure_client_ids={"200"})

    assert steps(plan.commands) == [("SYNC_ENTITLEMENTS", "200")]


def test_reset_of_a_cancelled_subscription_clears_it() -> None:
    plan = plan_reset(event(EventType.CANCELLED, state="CANCELLED"), PROVIDER, run_id="R-1", at=AT)

    assert steps(plan.commands) == [("CLEAR_ENTITLEMENTS", "100")]


def test_reset_of_an_invalid_subscription_only_clears_the_box_that_cannot_stand() -> None:
    plan = plan_reset(event(devices=[TWIN1]), PROVIDER, run_id="R-1", at=AT)

    assert steps(plan.commands) == [("CLEAR_ENTITLEMENTS", TWIN1.secure_client_id)]
    assert plan.commands[0].idempotency_key == idempotency_key(
        KeySource.RUN, "R-1", TWIN1.secure_client_id, OP.CLEAR_ENTITLEMENTS)
    assert plan.rejection is not None and plan.rejection.code == errors.REQUIRED_DISTRIBUTOR_MISSING


def _example_mapping() -> dict[str, Any]:
    data = PROVIDER.model_dump(mode="python")
    data["default_pin"] = PROVIDER.default_pin.get_secret_value()
    return data
