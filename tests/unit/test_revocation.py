"""Revocation is never held back (docs/architecture.md §5): a rejected grant still plans what the event takes away."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from example_household import MAIN, PROVIDER, TWIN1, TWIN2, TWIN3, event, steps

from consumers.translation import HandlerContext, translate_subscription
from kmsbridge.cli.reconcile import format_report
from producers.api.models import ReportView
from provisioning import errors
from provisioning.keys import KeySource, idempotency_key
from provisioning.planning import REMOVED, plan_subscription
from provisioning.provider import provider_from_mapping
from provisioning.text import TextLimits
from schemas.records import Device, EventType, Operation, ReconcileReport, ResultState

CLEAR = "CLEAR_ENTITLEMENTS"


def test_a_cancellation_of_a_twin_without_main_clears_the_twin_and_reports_the_rejection() -> None:
    plan = plan_subscription(event(EventType.CANCELLED, state="CANCELLED", devices=[TWIN1]), PROVIDER)

    assert steps(plan.commands) == [(CLEAR, "200")]
    assert plan.commands[0].idempotency_key == idempotency_key(KeySource.EVENT, "E-1", "200",
                                                               Operation.CLEAR_ENTITLEMENTS)
    assert plan.rejection is not None and plan.rejection.code == errors.REQUIRED_DISTRIBUTOR_MISSING


def test_removing_main_while_twin1_stays_clears_and_unpairs_main_and_clears_twin1() -> None:
    plan = plan_subscription(event(EventType.DEVICES_CHANGED, devices=[TWIN1], removed_devices=[MAIN]), PROVIDER)

    assert steps(plan.commands) == [(CLEAR, "100"), ("UNPAIR", "100"), (CLEAR, "200")]
    assert plan.commands[1].chipset == "B-1"
    assert all(c.idempotency_key.endswith(f":{REMOVED}") for c in plan.commands[:2])
    assert plan.rejection is not None and plan.rejection.code == errors.REQUIRED_DISTRIBUTOR_MISSING


def test_a_box_falls_with_the_distributor_its_requirement_stands_on() -> None:
    # TWIN3 requires TWIN2, which requires MAIN: without MAIN both lose everything
    plan = plan_subscription(event(devices=[TWIN2, TWIN3]), PROVIDER)

    assert steps(plan.commands) == [(CLEAR, "300"), (CLEAR, "400")]
    assert plan.rejection is not None


@pytest.mark.parametrize("state", ["SUSPENDED", "CANCELLED"])
def test_a_stopped_subscription_clears_every_box_it_names_whatever_is_wrong(state: str) -> None:
    twin9 = Device(distributor="TWIN9", secure_client_id="900")
    again = Device(distributor="TWIN2", secure_client_id="200")  # TWIN1's card listed a second time
    plan = plan_subscription(event(state=state, devices=[TWIN1, twin9, again, TWIN3]), PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.UNKNOWN_DISTRIBUTOR
    assert steps(plan.commands) == [(CLEAR, "200"), (CLEAR, "400"), (CLEAR, "900")]  # each card once


def test_two_boxes_on_one_distributor_are_both_cleared_and_the_twin_they_carry_is_kept() -> None:
    other_main = Device(distributor="MAIN", secure_client_id="101")
    plan = plan_subscription(event(devices=[MAIN, other_main, TWIN1]), PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.DUPLICATE_DISTRIBUTOR
    assert steps(plan.commands) == [(CLEAR, "100"), (CLEAR, "101")]


def test_a_card_listed_twice_on_an_active_subscription_is_cleared_once() -> None:
    same_card = Device(distributor="TWIN1", secure_client_id=MAIN.secure_client_id)
    plan = plan_subscription(event(devices=[MAIN, same_card]), PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.DUPLICATE_SECURE_CLIENT
    assert steps(plan.commands) == [(CLEAR, "100")]


def test_a_fifth_viewing_point_grants_nothing_and_takes_nothing_from_the_boxes_that_stand() -> None:
    two_points = provider_from_mapping({**PROVIDER.model_dump(mode="python"), "default_pin": "0001",
                                        "max_viewing_points": 2})
    plan = plan_subscription(event(EventType.DEVICES_CHANGED, devices=[MAIN, TWIN1, TWIN2],
                                   added_devices=[TWIN2]), two_points)

    assert plan.rejection is not None and plan.rejection.code == errors.TOO_MANY_VIEWING_POINTS
    assert plan.commands == ()


def test_a_card_removed_twice_is_cleared_once_and_unpaired_from_the_first_box_listed() -> None:
    twice = Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-9")
    plan = plan_subscription(event(EventType.DEVICES_CHANGED, devices=[MAIN], removed_devices=[twice, TWIN1]),
                             PROVIDER)

    assert plan.rejection is not None and plan.rejection.code == errors.INCONSISTENT_DEVICES
    assert steps(plan.commands) == [(CLEAR, "200"), ("UNPAIR", "200")]
    assert plan.commands[1].chipset == "B-9"  # equal in device order: the first CRM listed


def test_a_removed_card_put_back_by_a_rejected_event_is_cleared_once_and_not_reinstalled() -> None:
    plan = plan_subscription(event(EventType.DEVICES_CHANGED, devices=[TWIN1], removed_devices=[TWIN1]), PROVIDER)

    assert plan.rejection is not None
    assert steps(plan.commands) == [(CLEAR, "200"), ("UNPAIR", "200")]


def test_the_translator_publishes_the_revocations_and_the_rejection_of_one_event() -> None:
    cancelled = event(EventType.CANCELLED, state="CANCELLED", devices=[TWIN1])
    translation = translate_subscription(cancelled, HandlerContext(PROVIDER, TextLimits()), "crm.subscriptions")

    assert steps(tuple(translation.commands)) == [(CLEAR, "200")]
    [result] = translation.results
    assert result.state is ResultState.REJECTED and result.error_code == errors.REQUIRED_DISTRIBUTOR_MISSING
    assert result.event_id == "E-1" and translation.outcome == "rejected"


def test_the_reconcile_report_printout_names_each_rejected_subscription_with_its_code() -> None:
    now = datetime.now(UTC)
    report = ReconcileReport(run_id="R-1", preview=False, checked=2, in_sync=1, drifted=1, rejected=1,
                             rejections={"S-9": "REQUIRED_DISTRIBUTOR_MISSING"}, started_at=now, finished_at=now)

    assert "rejected 1 (repaired in the revoking direction only): S-9 REQUIRED_DISTRIBUTOR_MISSING" in (
        format_report(report))


def test_the_web_api_report_carries_the_rejected_subscriptions() -> None:
    now = datetime.now(UTC)
    report = ReconcileReport(run_id="R-1", preview=False, rejected=1, rejections={"S-9": "UNKNOWN_DISTRIBUTOR"},
                             started_at=now, finished_at=now)

    view = ReportView.of(report)

    assert (view.rejected, view.rejections) == (1, {"S-9": "UNKNOWN_DISTRIBUTOR"})
