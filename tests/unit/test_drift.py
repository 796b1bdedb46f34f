"""Drift detection (pure) and the repair commands planned from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kms_adapter.port import ClientState
from provisioning.provider import load_provider
from provisioning.repair import plan_repair
from reconciler.drift import SubscriptionDrift, cards_to_query, compare
from reconciler.model import KnownCard, StoredSubscription
from schemas.records import (
    Device,
    DriftItem,
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
MAIN = Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")
TWIN1 = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2")
BASIC = (Product(product_id="P100"), Product(product_id="P101"))
SPORTS = Product(product_id="P200")


def event(**fields: Any) -> SubscriptionEvent:
    base: dict[str, Any] = {
        "event_id": "E-1", "event_type": EventType.UPDATED, "occurred_at": AT - DAY, "subscription_id": "S-1",
        "account_id": "A-1", "subscription_type": "RESIDENTIAL", "created_at": AT - 300 * DAY, "version": 7,
        "state": "ACTIVE", "services": [Service(service_code="BASIC", state=ServiceState.ACTIVE),
                                        Service(service_code="SPORTS", state=ServiceState.ACTIVE)],
        "devices": [MAIN, TWIN1],
    }
    base.update(fields)
    return SubscriptionEvent(**base)


def held(card: str, products: tuple[Product, ...] = (), chipset: str | None = None, pin: bool = True) -> ClientState:
    return ClientState(secure_client_id=card, known=True, entitlements=products, paired_chipset=chipset, pin_set=pin)


def in_sync_kms() -> dict[str, ClientState]:
    return {"100": held("100", (*BASIC, SPORTS), "B-1"), "200": held("200", BASIC, "B-2")}


def drift_of(kms: dict[str, ClientState], ev: SubscriptionEvent | None = None,
             retired: tuple[KnownCard, ...] = ()) -> SubscriptionDrift:
    return compare(StoredSubscription(ev or event(), retired), kms, PROVIDER, AT)


def test_a_kms_that_matches_crm_is_in_sync() -> None:
    drift = drift_of(in_sync_kms())

    assert not drift.drifted
    assert drift == SubscriptionDrift("S-1")


def test_a_missing_and_an_extra_product_are_reported_per_card_and_both_cards_resynced() -> None:
    kms = in_sync_kms() | {"100": held("100", BASIC, "B-1"), "200": held("200", (*BASIC, SPORTS), "B-2")}

    drift = drift_of(kms)

    assert drift.items == (
        DriftItem(subscription_id="S-1", secure_client_id="100", missing_products=["P200"]),
        DriftItem(subscription_id="S-1", secure_client_id="200", extra_products=["P200"]),
    )
    assert drift.resync == {"100", "200"}
    assert not drift.pair and not drift.default_pin and not drift.retired


def test_a_product_held_with_other_dates_is_a_wrong_date_to_the_millisecond() -> None:
    until = AT + 30 * DAY
    ev = event(services=[Service(service_code="BASIC", state=ServiceState.ACTIVE),
                         Service(service_code="SPORTS", state=ServiceState.ACTIVE, valid_until=until)])
    same = in_sync_kms() | {"100": held("100", (*BASIC, Product(product_id="P200", valid_until=until + timedelta(
        microseconds=400))), "B-1")}
    other = in_sync_kms() | {"100": held("100", (*BASIC, Product(product_id="P200", valid_until=until - DAY)), "B-1")}

    assert not drift_of(same, ev).drifted
    assert drift_of(other, ev).items == (DriftItem(subscription_id="S-1", secure_client_id="100",
                                                  wrong_dates=["P200"]),)


def test_an_unpaired_box_or_a_card_paired_elsewhere_is_paired_with_the_crm_box() -> None:
    unpaired = drift_of(in_sync_kms() | {"200": held("200", BASIC, None)})
    elsewhere = drift_of(in_sync_kms() | {"200": held("200", BASIC, "B-77")})

    assert unpaired.items == (DriftItem(subscription_id="S-1", secure_client_id="200",
                                        pairing="expected B-2, found none"),)
    assert elsewhere.items[0].pairing == "expected B-2, found B-77"
    assert unpaired.pair == elsewhere.pair == {"200"}
    assert unpaired.resync == {"200"}


def test_pairing_is_not_checked_when_crm_does_not_know_the_box() -> None:
    no_box = Device(distributor="TWIN1", secure_client_id="200")

    assert not drift_of(in_sync_kms() | {"200": held("200", BASIC, "B-77")}, event(devices=[MAIN, no_box])).drifted


def test_a_card_without_any_pin_gets_the_default_but_a_set_pin_is_never_compared() -> None:
    drift = drift_of(in_sync_kms() | {"200": held("200", BASIC, "B-2", pin=False)})

    assert drift.items == (DriftItem(subscription_id="S-1", secure_client_id="200", pin="no parental PIN set"),)
    assert drift.default_pin == {"200"}
    assert drift.resync == frozenset()


def test_a_card_the_kms_never_saw_is_provisioned_completely() -> None:
    kms = in_sync_kms()
    del kms["200"]

    drift = drift_of(kms)

    assert drift.items == (DriftItem(subscription_id="S-1", secure_client_id="200", missing_products=["P100", "P101"],
                                     pairing="expected B-2, found none", pin="no parental PIN set"),)
    assert (drift.resync, drift.pair, drift.default_pin) == ({"200"}, {"200"}, {"200"})


def test_a_suspended_subscription_whose_cards_still_hold_products_is_cleared() -> None:
    drift = drift_of(in_sync_kms(), event(state=SubscriptionState.SUSPENDED))

    assert [i.extra_products for i in drift.items] == [["P100", "P101", "P200"], ["P100", "P101"]]
    plan = plan_repair(event(state=SubscriptionState.SUSPENDED), PROVIDER, run_id="R-1", at=AT,
                       secure_client_ids=drift.resync)
    assert [(c.operation.value, c.secure_client_id) for c in plan.commands] == [
        ("CLEAR_ENTITLEMENTS", "100"), ("CLEAR_ENTITLEMENTS", "200")]


def test_an_unknown_card_that_should_hold_nothing_is_in_sync() -> None:
    no_box = Device(distributor="MAIN", secure_client_id="100")

    assert not drift_of({}, event(state=SubscriptionState.SUSPENDED, devices=[no_box])).drifted


def test_expired_kms_entitlements_grant_nothing_and_are_not_drift() -> None:
    expired = Product(product_id="P300", valid_until=AT - DAY)

    assert not drift_of(in_sync_kms() | {"200": held("200", (*BASIC, expired), "B-2")}).drifted


def test_a_card_crm_no_longer_has_is_cleared_and_unpaired_when_the_kms_still_holds_it() -> None:
    gone = KnownCard("300", "TWIN2", "B-3")
    kms = in_sync_kms() | {"300": held("300", BASIC, "B-3")}

    drift = drift_of(kms, retired=(gone,))

    assert drift.items == (DriftItem(subscription_id="S-1", secure_client_id="300", extra_products=["P100", "P101"],
                                     pairing="expected none, found B-3", unknown_to_crm=True),)
    assert drift.retired == (Device(distributor="TWIN2", secure_client_id="300", stb_serial="B-3"),)
    plan = plan_repair(event(), PROVIDER, run_id="R-1", at=AT, secure_client_ids=drift.resync,
                       retired=drift.retired)
    assert [(c.operation.value, c.secure_client_id, c.chipset, c.idempotency_key) for c in plan.commands] == [
        ("CLEAR_ENTITLEMENTS", "300", None, "run:R-1:300:CLEAR_ENTITLEMENTS:removed"),
        ("UNPAIR", "300", "B-3", "run:R-1:300:UNPAIR:removed"),
    ]


def test_a_card_crm_no_longer_has_is_in_sync_once_cleared_or_if_the_kms_forgot_it() -> None:
    gone = KnownCard("300", "TWIN2", "B-3")

    assert not drift_of(in_sync_kms() | {"300": held("300", (), None)}, retired=(gone,)).drifted
    assert not drift_of(in_sync_kms(), retired=(gone,)).drifted


def test_an_invalid_subscription_is_compared_in_the_revoking_direction_only() -> None:
    # TWIN1 without MAIN: its box may not stay entitled; a missing PIN is not a reason to touch it
    drift = drift_of({"200": held("200", BASIC, "B-2", pin=False)}, event(devices=[TWIN1]))

    assert drift.rejection is not None
    assert drift.rejection.code == "REQUIRED_DISTRIBUTOR_MISSING"
    assert drift.items == (DriftItem(subscription_id="S-1", secure_client_id="200", extra_products=["P100", "P101"]),)
    assert (drift.resync, drift.pair, drift.default_pin) == (frozenset({"200"}), frozenset(), frozenset())
    plan = plan_repair(event(devices=[TWIN1]), PROVIDER, run_id="R-1", at=AT, secure_client_ids=drift.resync,
                       pair=drift.pair, default_pin=drift.default_pin, retired=drift.retired)
    assert [(c.operation.value, c.secure_client_id) for c in plan.commands] == [("CLEAR_ENTITLEMENTS", "200")]
    assert plan.rejection == drift.rejection


def test_an_invalid_subscription_whose_boxes_hold_nothing_is_in_sync_with_its_rejection() -> None:
    drift = drift_of({"200": held("200", (), None)}, event(devices=[TWIN1]))

    assert drift.rejection is not None and not drift.drifted


def _rejected_main(*services: tuple[str, ServiceState]) -> SubscriptionEvent:
    """MAIN alone (it stands), with KARAOKE, which has no product mapping: the grant is rejected."""
    return event(devices=[MAIN], services=[Service(service_code=code, state=state)
                                           for code, state in [("KARAOKE", ServiceState.ACTIVE), *services]])


def test_a_standing_box_of_an_invalid_subscription_holding_only_what_it_may_keep_is_in_sync() -> None:
    # SPORTS is entitled but missing: a reset of a rejected subscription does not grant it
    ev = _rejected_main(("BASIC", ServiceState.ACTIVE), ("SPORTS", ServiceState.ACTIVE))
    drift = drift_of({"100": held("100", BASIC, "B-1")}, ev)

    assert drift.rejection is not None and drift.rejection.code == "UNMAPPED_SERVICE"
    assert not drift.drifted


def test_a_standing_box_of_an_invalid_subscription_loses_what_it_no_longer_pays_for_and_gains_nothing() -> None:
    ev = _rejected_main(("BASIC", ServiceState.ACTIVE), ("SPORTS", ServiceState.INACTIVE),
                        ("MOVIES", ServiceState.ACTIVE))
    drift = drift_of({"100": held("100", (*BASIC, SPORTS), None, pin=False)}, ev)

    assert drift.items == (DriftItem(subscription_id="S-1", secure_client_id="100", extra_products=["P200"]),)
    assert drift.keep == {"100": BASIC}
    plan = plan_repair(ev, PROVIDER, run_id="R-1", at=AT, secure_client_ids=drift.resync, pair=drift.pair,
                       default_pin=drift.default_pin, retired=drift.retired, keep=drift.keep)
    assert [(c.operation.value, c.secure_client_id, tuple(c.products)) for c in plan.commands] == [
        ("SYNC_ENTITLEMENTS", "100", BASIC)]  # no PAIR, no PIN, no MOVIES


def test_a_suspended_invalid_subscription_clears_every_box_it_names() -> None:
    twin9 = Device(distributor="TWIN9", secure_client_id="900")
    ev = event(state=SubscriptionState.SUSPENDED, devices=[TWIN1, twin9])
    drift = drift_of({"200": held("200", BASIC, "B-2"), "900": held("900", (SPORTS,), None)}, ev)

    assert drift.rejection is not None and drift.rejection.code == "UNKNOWN_DISTRIBUTOR"
    assert drift.resync == frozenset({"200", "900"})


def test_the_cards_to_query_are_the_current_devices_then_the_retired_ones() -> None:
    stored = StoredSubscription(event(), (KnownCard("300", "TWIN2", None),))

    assert cards_to_query(stored) == ["100", "200", "300"]


def test_a_repair_pairs_resyncs_and_sets_the_default_pin_with_run_keys_and_never_touches_in_sync_cards() -> None:
    kms = in_sync_kms() | {"200": held("200", BASIC, None, pin=False)}
    drift = drift_of(kms)

    plan = plan_repair(event(), PROVIDER, run_id="R-9", at=AT, secure_client_ids=drift.resync, pair=drift.pair,
                       default_pin=drift.default_pin, topic="kms.commands")

    assert [(c.operation.value, c.secure_client_id) for c in plan.commands] == [
        ("PAIR", "200"), ("SYNC_ENTITLEMENTS", "200"), ("SET_PIN", "200")]
    assert all(c.idempotency_key.startswith("run:R-9:200:") for c in plan.commands)
    assert plan.commands[2].pin is not None and plan.commands[2].pin.get_secret_value() == "0001"
    assert {c.subscription_version for c in plan.commands} == {7}

