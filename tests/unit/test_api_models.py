"""The Web API's bodies, answers and process_immediately, on the real app with fakes behind it.

The publisher is a recording fake; the outcome store is the real one; the KMS is the in-memory fake.
Where a test needs "the pipeline answered", the fake publisher puts the result in the store, as the
outcome feed does from ``kms.results``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from api_fakes import KEY, ApiUnderTest, auth, build, result_for

from kms_adapter.errors import KmsUnavailable
from kms_adapter.fake import InMemoryKms
from kms_adapter.port import QUERY_SECTIONS
from producers.api.models import Section
from schemas.records import (
    KmsResult,
    MessageKind,
    ReconcileReport,
    ReconcileRequest,
    RequestType,
    ResultState,
    ServiceRequest,
    TextMode,
)

PIN = "4821"


@pytest.fixture
def api() -> ApiUnderTest:
    return build()


def answer_with(api: ApiUnderTest, **kwargs: Any) -> None:
    """Make the fake pipeline answer every published request with one result."""
    def then(record: ServiceRequest | ReconcileRequest) -> None:
        assert isinstance(record, ServiceRequest)
        api.store.add_result(result_for(record, **kwargs))

    api.publisher.then = then


# --- PIN ---------------------------------------------------------------------------------------------


def test_a_three_digit_pin_is_422_naming_pin_and_the_value_is_not_echoed(api: ApiUnderTest) -> None:
    response = api.client.post("/v1/secure-clients/100/pin", json={"pin": "482"}, headers=auth())

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "pin"]
    assert "4 ASCII digits" in error["msg"]
    assert "482" not in response.text
    assert api.publisher.requests == []


FULL_WIDTH_PIN = "\uff14\uff18\uff12\uff11"  # digits, but not ASCII ones


@pytest.mark.parametrize("pin", ["48210", "48a1", FULL_WIDTH_PIN, 4821, "4821\n"])
def test_a_pin_that_is_not_four_ascii_digits_is_422_without_echo(api: ApiUnderTest, pin: object) -> None:
    response = api.client.post("/v1/secure-clients/100/pin", json={"pin": pin}, headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "pin"]
    assert "input" not in response.json()["detail"][0]
    assert str(pin).strip() not in response.text


@pytest.mark.parametrize("body", [{}, {"pin": PIN, "default": True}, {"default": False}])
def test_the_pin_body_needs_exactly_one_of_pin_and_default(api: ApiUnderTest, body: dict[str, Any]) -> None:
    response = api.client.post("/v1/secure-clients/100/pin", json=body, headers=auth())

    assert response.status_code == 422
    assert "pin" in response.json()["detail"][0]["msg"]
    assert PIN not in response.text


def test_setting_a_pin_publishes_set_pin_and_answers_202_pending_without_the_pin(api: ApiUnderTest) -> None:
    response = api.client.post("/v1/secure-clients/100/pin", json={"pin": PIN}, headers=auth())

    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "PENDING"
    assert body["status_url"] == f"/v1/requests/{body['request_id']}"
    assert PIN not in response.text
    [req] = api.publisher.requests
    assert (req.type, req.secure_client_id, req.request_id) == (RequestType.SET_PIN, "100", body["request_id"])
    assert req.pin is not None and req.pin.get_secret_value() == PIN


def test_default_true_publishes_a_reset_pin_request_without_a_pin(api: ApiUnderTest) -> None:
    response = api.client.post("/v1/secure-clients/100/pin", json={"default": True}, headers=auth())

    assert response.status_code == 202
    [req] = api.publisher.requests
    assert req.type is RequestType.RESET_PIN
    assert req.pin is None


def test_the_pin_is_not_logged(api: ApiUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    api.client.post("/v1/secure-clients/100/pin", json={"pin": PIN}, headers=auth())
    api.client.post("/v1/secure-clients/100/pin", json={"pin": PIN[:3]}, headers=auth())

    assert caplog.records, "the API logs its requests"
    assert PIN not in caplog.text
    assert PIN[:3] not in caplog.text


# --- process_immediately -----------------------------------------------------------------------------


def test_process_immediately_answers_200_with_the_completed_outcome(api: ApiUnderTest) -> None:
    answer_with(api)

    response = api.client.post("/v1/secure-clients/100/pin?process_immediately=true", json={"pin": PIN},
                               headers=auth())

    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "COMPLETED"
    assert body["commands_expected"] == 1
    assert [r["secure_client_id"] for r in body["results"]] == ["100"]
    assert PIN not in response.text


def test_process_immediately_answers_200_rejected_with_the_error_code_and_description(api: ApiUnderTest) -> None:
    answer_with(api, state=ResultState.REJECTED, code="TEXT_NOT_ENCODABLE",
                description="ANSI text has character U+0416 at position 0", operation="SEND_MESSAGE")
    body = {"secure_client_id": "100", "kind": "MAIL", "text_mode": "ANSI", "text": "Жди"}

    response = api.client.post("/v1/messages?process_immediately=true", json=body, headers=auth())

    assert response.status_code == 200
    assert response.json()["state"] == "REJECTED"
    assert response.json()["errors"] == [{"code": "TEXT_NOT_ENCODABLE",
                                          "description": "ANSI text has character U+0416 at position 0"}]
    assert "Жди" not in response.text


def test_process_immediately_answers_202_pending_when_the_bound_passes_first() -> None:
    api = build(wait_seconds=0.05)

    response = api.client.post("/v1/secure-clients/100/reauthorise?process_immediately=true", headers=auth())

    assert response.status_code == 202
    assert response.json()["state"] == "PENDING"


def test_without_process_immediately_the_answer_is_202_even_when_the_result_is_known(api: ApiUnderTest) -> None:
    answer_with(api, operation="REAUTHORISE_SECTOR")

    response = api.client.post("/v1/secure-clients/100/reauthorise", headers=auth())

    assert response.status_code == 202


def test_a_request_is_pending_then_completed_through_get_requests(api: ApiUnderTest) -> None:
    request_id = api.client.post("/v1/secure-clients/100/reauthorise", headers=auth()).json()["request_id"]

    pending = api.client.get(f"/v1/requests/{request_id}", headers=auth())
    api.store.add_result(result_for(api.publisher.requests[0], operation="REAUTHORISE_SECTOR"))
    done = api.client.get(f"/v1/requests/{request_id}", headers=auth())

    assert (pending.status_code, pending.json()["state"]) == (200, "PENDING")
    assert (done.status_code, done.json()["state"]) == (200, "COMPLETED")
    assert done.json()["type"] == "REAUTHORISE_SECTOR"


def test_an_unknown_request_id_is_404(api: ApiUnderTest) -> None:
    assert api.client.get("/v1/requests/never-submitted", headers=auth()).status_code == 404


def test_a_publishing_failure_is_503_and_nothing_is_pending(api: ApiUnderTest) -> None:
    api.publisher.fail = True

    response = api.client.post("/v1/secure-clients/100/reauthorise", headers=auth())

    assert response.status_code == 503
    assert "could not be queued" in response.json()["detail"]


# --- messages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [{}, {"secure_client_id": "100", "all": True},
                                    {"secure_client_id": "100", "subscription_id": "S-1"}])
def test_a_message_needs_exactly_one_target(api: ApiUnderTest, target: dict[str, Any]) -> None:
    body = {"kind": "MAIL", "text_mode": "ANSI", "text": "hello", **target}

    response = api.client.post("/v1/messages", json=body, headers=auth())

    assert response.status_code == 422
    assert "exactly one of secure_client_id, subscription_id, all" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("field", "value"), [("kind", "SMS"), ("text_mode", "UTF8")])
def test_an_unknown_kind_or_text_mode_is_422_naming_the_field(api: ApiUnderTest, field: str, value: str) -> None:
    body = {"all": True, "kind": "MAIL", "text_mode": "ANSI", "text": "hello", field: value}

    response = api.client.post("/v1/messages", json=body, headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_kind_and_text_mode_are_case_insensitive_and_a_global_message_is_published(api: ApiUnderTest) -> None:
    body = {"all": True, "kind": "message", "text_mode": "unicode", "text": "Καλησπέρα"}

    response = api.client.post("/v1/messages", json=body, headers=auth())

    assert response.status_code == 202
    [req] = api.publisher.requests
    assert (req.all, req.kind, req.text_mode, req.text) == (True, MessageKind.MESSAGE, TextMode.UNICODE, "Καλησπέρα")
    assert "Καλησπέρα" not in response.text


def test_a_text_its_mode_cannot_carry_is_accepted_and_left_to_the_pipeline_to_reject(api: ApiUnderTest) -> None:
    # the translator answers TEXT_NOT_ENCODABLE / TEXT_EMPTY / TEXT_TOO_LONG on kms.results (integration tests)
    for text in ("Жди", "", "x" * 5000):
        body = {"secure_client_id": "100", "kind": "MAIL", "text_mode": "ANSI", "text": text}
        assert api.client.post("/v1/messages", json=body, headers=auth()).status_code == 202
    assert len(api.publisher.requests) == 3


def test_a_subscription_message_expects_the_results_the_translator_will_plan(api: ApiUnderTest) -> None:
    body = {"subscription_id": "S-1", "kind": "MAIL", "text_mode": "ANSI", "text": "hello"}

    response = api.client.post("/v1/messages", json=body, headers=auth())

    # no device directory here: planned as UNKNOWN_SUBSCRIPTION, one (rejected) result expected
    assert api.store.get(response.json()["request_id"]).expected == 1  # type: ignore[union-attr]


# --- query -------------------------------------------------------------------------------------------


def test_a_query_calls_the_kms_port_with_the_sections_asked_for(api: ApiUnderTest) -> None:
    response = api.client.get("/v1/secure-clients/100?section=pairing&section=security", headers=auth())

    assert response.status_code == 200
    assert set(response.json()["sections"]) == {"pairing", "security"}
    assert response.json()["secure_client_id"] == "100"
    assert [(c.method, c.secure_client_id, c.sections) for c in api.kms.calls] == [
        ("query_client", "100", ("pairing", "security"))]
    assert api.publisher.requests == []  # a read: nothing goes through Kafka


def test_a_query_without_sections_returns_all_nine(api: ApiUnderTest) -> None:
    response = api.client.get("/v1/secure-clients/100", headers=auth())

    assert list(response.json()["sections"]) == list(QUERY_SECTIONS)


def test_an_unknown_section_is_422_naming_section(api: ApiUnderTest) -> None:
    response = api.client.get("/v1/secure-clients/100?section=wallet", headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["query", "section"]
    assert api.kms.calls == []


def test_a_secure_client_the_kms_does_not_know_is_404() -> None:
    api = build(kms=InMemoryKms(strict_clients=True))

    response = api.client.get("/v1/secure-clients/999", headers=auth())

    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "UNKNOWN_CLIENT"


def test_a_kms_that_does_not_answer_is_503(api: ApiUnderTest) -> None:
    api.kms.fail_next(1, KmsUnavailable("timeout"))

    assert api.client.get("/v1/secure-clients/100", headers=auth()).status_code == 503


def test_the_section_names_are_the_ports_nine_sections() -> None:
    assert tuple(s.value for s in Section) == QUERY_SECTIONS


# --- resets ------------------------------------------------------------------------------------------


def _report(run_id: str, **counts: Any) -> ReconcileReport:
    now = datetime.now(UTC)
    return ReconcileReport(run_id=run_id, preview=False, started_at=now, finished_at=now, **counts)


def test_a_subscription_reset_is_a_reset_request_that_settles_on_its_report_and_its_commands(
        api: ApiUnderTest) -> None:
    request_id = api.client.post("/v1/subscriptions/S-1/reset", headers=auth()).json()["request_id"]
    [req] = api.publisher.requests
    assert (req.type, req.subscription_id) == (RequestType.RESET_SUBSCRIPTION, "S-1")

    pending = api.client.get(f"/v1/requests/{request_id}", headers=auth()).json()
    api.store.add_report(_report(request_id, checked=1, drifted=1, commands_published=2))
    published = api.client.get(f"/v1/requests/{request_id}", headers=auth()).json()
    for card in ("100", "200"):
        api.store.add_result(KmsResult(idempotency_key=f"run:{request_id}:{card}:SYNC_ENTITLEMENTS",
                                       operation="SYNC_ENTITLEMENTS", run_id=request_id, secure_client_id=card,
                                       state=ResultState.COMPLETED, executed_at=datetime.now(UTC)))
    done = api.client.get(f"/v1/requests/{request_id}", headers=auth()).json()

    assert pending["state"] == "PENDING"
    assert published["state"] == "PENDING"  # the KMS has not applied the repair yet
    assert done["state"] == "COMPLETED"
    assert done["report"]["commands_published"] == 2


def test_a_reconcile_run_is_published_and_process_immediately_returns_its_report(api: ApiUnderTest) -> None:
    def reconciler(record: ServiceRequest | ReconcileRequest) -> None:
        assert isinstance(record, ReconcileRequest)
        api.store.add_report(_report(record.run_id, checked=3, in_sync=2, drifted=1))  # a preview publishes nothing

    api.publisher.then = reconciler
    body = {"subscription_types": ["RESIDENTIAL"], "created_from": "2026-01-01T00:00:00Z", "preview": True}

    response = api.client.post("/v1/reconcile-runs?process_immediately=true", json=body, headers=auth())

    assert response.status_code == 200
    [run] = api.publisher.runs
    assert (run.subscription_types, run.preview, run.requested_by.startswith("key-")) == (["RESIDENTIAL"], True, True)
    assert response.json()["request_id"] == run.run_id
    assert response.json()["state"] == "COMPLETED"
    assert response.json()["report"]["checked"] == 3


def test_a_reconcile_run_whose_report_has_an_error_is_rejected(api: ApiUnderTest) -> None:
    run_id = api.client.post("/v1/reconcile-runs", headers=auth()).json()["request_id"]

    api.store.add_report(_report(run_id, error="desired-state database unreachable"))
    body = api.client.get(f"/v1/requests/{run_id}", headers=auth()).json()

    assert body["state"] == "REJECTED"
    assert body["errors"] == [{"code": "RESET_FAILED", "description": "desired-state database unreachable"}]


def test_the_openapi_document_lists_every_route() -> None:
    paths = build().app.openapi()["paths"]

    client = "/v1/secure-clients/{secure_client_id}"
    assert set(paths) == {f"{client}/pin", f"{client}/reauthorise", client, "/v1/messages",
                          "/v1/subscriptions/{subscription_id}/reset", "/v1/reconcile-runs",
                          "/v1/requests/{request_id}", "/v1/provisioning-requests", f"{client}/history",
                          "/v1/run-definitions", "/v1/run-definitions/{name}", "/v1/run-definitions/{name}/effective",
                          "/v1/run-definitions/{name}/not-effective", "/v1/run-definitions/{name}/executions",
                          "/v1/communications"}
    assert "process_immediately" in {p["name"] for p in paths["/v1/messages"]["post"]["parameters"]}
    assert KEY not in str(paths)


def test_a_query_parameter_given_twice_is_a_422_naming_it() -> None:
    api = build()

    response = api.client.get("/v1/communications?external_system=A&external_system=B", headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "external_system"]
