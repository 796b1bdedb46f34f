"""The aggregate outcome of a request (producers.outcomes) and how requests are built and keyed."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from api_fakes import PROVIDER, result_for
from pydantic import SecretStr

from producers.outcomes import (
    OutcomeStore,
    RequestState,
    expected_results,
    planning_expectation,
    settle,
)
from producers.requests import new_request
from provisioning.text import TextLimits
from schemas.keys import record_key, request_key
from schemas.records import (
    Device,
    KmsResult,
    MessageKind,
    ReconcileReport,
    RequestType,
    ResultState,
    ServiceRequest,
    TextMode,
)

HOUSEHOLD = [Device(distributor="MAIN", secure_client_id="100"), Device(distributor="TWIN1", secure_client_id="200")]


class Directory:
    def __init__(self, devices: dict[str, list[Device]]) -> None:
        self.devices = devices

    def devices_of(self, subscription_id: str) -> Sequence[Device] | None:
        return self.devices.get(subscription_id)


def message(**target: object) -> ServiceRequest:
    return new_request(RequestType.SEND_MESSAGE, kind=MessageKind.MAIL, text_mode=TextMode.ANSI, text="hello",
                       **target)  # type: ignore[arg-type]


def report(run_id: str, **fields: object) -> ReconcileReport:
    now = datetime.now(UTC)
    return ReconcileReport(run_id=run_id, preview=False, started_at=now, finished_at=now, **fields)  # type: ignore[arg-type]


# --- expected results: the translator's own planning ----------------------------------------------------


def test_a_subscription_target_expects_one_result_per_device_of_the_directory() -> None:
    req = message(subscription_id="S-1")

    assert expected_results(req, PROVIDER, TextLimits(), Directory({"S-1": HOUSEHOLD})) == 2


def test_without_a_directory_a_subscription_target_expects_the_one_rejection_the_translator_makes() -> None:
    assert expected_results(message(subscription_id="S-1"), PROVIDER, TextLimits()) == 1


@pytest.mark.parametrize("req", [
    message(secure_client_id="100"),
    message(all_=True),
    new_request(RequestType.SET_PIN, secure_client_id="100", pin=SecretStr("12")),  # rejected: one result
    new_request(RequestType.RESET_PIN, secure_client_id="100"),
])
def test_a_single_card_global_or_rejected_request_expects_one_result(req: ServiceRequest) -> None:
    assert expected_results(req, PROVIDER, TextLimits()) == 1


def test_a_reset_expects_a_report_not_a_count() -> None:
    assert expected_results(new_request(RequestType.RESET_SUBSCRIPTION, subscription_id="S-1"),
                            PROVIDER, TextLimits()) is None


# --- the aggregate state -------------------------------------------------------------------------------


def test_a_subscription_request_completes_when_every_device_has_its_result() -> None:
    req = message(subscription_id="S-1")
    store = OutcomeStore(planning_expectation(PROVIDER, TextLimits(), Directory({"S-1": HOUSEHOLD})))
    store.track(req)

    store.add_result(result_for(req, "100", operation="SEND_MAIL"))
    store.add_result(result_for(req, "100", operation="SEND_MAIL"))  # a redelivered duplicate counts once
    halfway = store.get(req.request_id)
    store.add_result(result_for(req, "200", operation="SEND_MAIL"))
    done = store.get(req.request_id)

    assert halfway is not None and halfway.state is RequestState.PENDING
    assert done is not None and done.state is RequestState.COMPLETED
    assert [r.secure_client_id for r in done.results] == ["100", "200"]


def test_one_rejected_result_rejects_the_request_at_once() -> None:
    req = message(subscription_id="S-1")
    results = [result_for(req, "100", state=ResultState.REJECTED, code="UNKNOWN_CLIENT", operation="SEND_MAIL")]

    assert settle(results, expected=2) is RequestState.REJECTED


def test_a_request_with_an_unknown_expectation_settles_on_its_first_result() -> None:
    store = OutcomeStore()
    req = message(secure_client_id="100")

    store.add_result(result_for(req))

    outcome = store.get(req.request_id)
    assert outcome is not None and outcome.state is RequestState.COMPLETED
    assert outcome.expected is None


def _command_result(run_id: str, card: str, state: ResultState = ResultState.COMPLETED) -> KmsResult:
    return KmsResult(idempotency_key=f"run:{run_id}:{card}:SYNC_ENTITLEMENTS", operation="SYNC_ENTITLEMENTS",
                     run_id=run_id, secure_client_id=card, state=state,
                     error_code="UNKNOWN_CLIENT" if state is ResultState.REJECTED else None,
                     executed_at=datetime.now(UTC))


def test_a_reset_completes_only_once_the_kms_applied_every_command_it_published() -> None:
    store = OutcomeStore()
    req = new_request(RequestType.RESET_SUBSCRIPTION, subscription_id="S-1")
    store.track(req)

    store.add_report(report(req.request_id, checked=1, drifted=1, commands_published=2))
    published = store.get(req.request_id)
    store.add_result(_command_result(req.request_id, "100"))
    store.add_result(_command_result(req.request_id, "100"))  # a redelivered duplicate counts once
    halfway = store.get(req.request_id)
    store.add_result(_command_result(req.request_id, "200"))
    applied = store.get(req.request_id)

    assert published is not None and published.state is RequestState.PENDING
    assert halfway is not None and halfway.state is RequestState.PENDING
    assert applied is not None and applied.state is RequestState.COMPLETED


def test_a_reset_one_of_whose_commands_the_kms_rejects_is_rejected() -> None:
    store = OutcomeStore()
    req = new_request(RequestType.RESET_SUBSCRIPTION, subscription_id="S-1")
    store.track(req)

    store.add_result(_command_result(req.request_id, "100", ResultState.REJECTED))
    store.add_report(report(req.request_id, checked=1, drifted=1, commands_published=1))

    outcome = store.get(req.request_id)
    assert outcome is not None and outcome.state is RequestState.REJECTED


def test_a_reset_that_found_nothing_to_repair_completes_on_its_report() -> None:
    store = OutcomeStore()
    run_id = str(uuid.uuid4())

    store.add_report(report(run_id, checked=1, in_sync=1))

    outcome = store.get(run_id)
    assert outcome is not None and outcome.state is RequestState.COMPLETED


def test_a_reset_whose_report_counts_failures_is_rejected_with_reset_failed() -> None:
    store = OutcomeStore()
    run_id = str(uuid.uuid4())

    store.add_report(report(run_id, checked=2, failed=1))

    outcome = store.get(run_id)
    assert outcome is not None and outcome.state is RequestState.REJECTED
    assert outcome.errors == [("RESET_FAILED", "1 subscription(s) failed")]


def test_a_reset_of_an_unknown_subscription_is_rejected_with_unknown_subscription() -> None:
    store = OutcomeStore()
    run_id = str(uuid.uuid4())

    store.add_report(report(run_id, checked=0, unknown_subscriptions=["S-404"]))

    outcome = store.get(run_id)
    assert outcome is not None and outcome.state is RequestState.REJECTED
    assert outcome.errors == [("UNKNOWN_SUBSCRIPTION", "not in the desired-state store: S-404")]


def test_results_of_subscription_events_and_communications_are_not_kept() -> None:
    store = OutcomeStore()

    store.add_result(KmsResult(idempotency_key="evt:1:100:SYNC", operation="SYNC_ENTITLEMENTS", event_id="e-1",
                               state=ResultState.COMPLETED, executed_at=datetime.now(UTC)))

    assert len(store) == 0


def test_the_store_is_bounded_and_forgets_the_least_recently_updated_first() -> None:
    store = OutcomeStore(max_entries=2)
    first, second, third = (message(secure_client_id=str(n)) for n in range(3))
    for req in (first, second):
        store.track(req)
    store.add_result(result_for(first))  # first is now the most recently updated

    store.track(third)

    assert store.get(second.request_id) is None
    assert store.get(first.request_id) is not None and store.get(third.request_id) is not None


# --- waiting ------------------------------------------------------------------------------------------


def test_wait_sync_returns_when_another_thread_adds_the_result() -> None:
    store = OutcomeStore()
    req = message(secure_client_id="100")
    store.track(req)
    waiting = threading.Event()
    got: list[object] = []

    def waiter() -> None:
        waiting.set()
        got.append(store.wait_sync(req.request_id, timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait(5)
    store.add_result(result_for(req))
    thread.join(10)

    outcome = got[0]
    assert getattr(outcome, "state", None) is RequestState.COMPLETED


def test_async_wait_wakes_when_a_result_arrives_from_another_thread() -> None:
    store = OutcomeStore()
    req = message(secure_client_id="100")
    store.track(req)

    async def scenario() -> object:
        task = asyncio.create_task(store.wait(req.request_id, timeout=10))
        await asyncio.sleep(0)  # let the waiter register before the result arrives
        await asyncio.get_running_loop().run_in_executor(None, store.add_result, result_for(req))
        return await task

    outcome = asyncio.run(scenario())
    assert getattr(outcome, "state", None) is RequestState.COMPLETED


def test_waiting_gives_up_at_the_bound_with_the_outcome_so_far() -> None:
    store = OutcomeStore()
    req = message(secure_client_id="100")
    store.track(req)

    outcome = asyncio.run(store.wait(req.request_id, timeout=0.05))

    assert outcome is not None and outcome.state is RequestState.PENDING


# --- building and keying requests -----------------------------------------------------------------------


def test_a_new_request_has_a_uuid4_id_and_is_requested_now() -> None:
    before = datetime.now(UTC)
    req = new_request(RequestType.REAUTHORISE_SECTOR, secure_client_id="100")

    assert uuid.UUID(req.request_id).version == 4
    assert before <= req.requested_at <= datetime.now(UTC)


@pytest.mark.parametrize(("target", "key"), [({"secure_client_id": "100"}, "100"),
                                              ({"subscription_id": "S-1"}, "S-1"), ({"all_": True}, "*")])
def test_a_request_is_keyed_by_its_target_as_the_produce_verb_keys_it(target: dict[str, object], key: str) -> None:
    req = message(**target)

    assert request_key(req) == key == record_key(req)
