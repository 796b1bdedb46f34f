"""The Web API's request-log routes and the durable fallback of request outcomes, over a real
in-memory SQLite request log (``log_fakes``) and the fakes of ``api_fakes``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from api_fakes import KEY, PROVIDER, FakePublisher, auth, build
from fastapi.testclient import TestClient
from log_fakes import memory_request_log
from pydantic import SecretStr

from kms_adapter.fake import InMemoryKms
from kmsbridge.settings import ApiSettings, Settings
from producers.api import create_app
from producers.durable_outcomes import DurableOutcomes
from producers.outcomes import OutcomeStore, RequestState, planning_expectation
from provisioning.keys import KeySource, idempotency_key
from provisioning.text import TextLimits
from reconciler.request_log_store import LogBatch, RequestLog
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    Operation,
    RequestType,
    ResultState,
    ServiceRequest,
    Source,
    SubscriptionEvent,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def command(card: str, n: int, op: Operation = Operation.SYNC_ENTITLEMENTS, *, request_id: str | None = None,
            ) -> KmsCommand:
    source = (KeySource.REQUEST, request_id) if request_id else (KeySource.EVENT, f"E-{n}")
    return KmsCommand(idempotency_key=idempotency_key(source[0], source[1], card, op), operation=op,
                      secure_client_id=card, subscription_id="S-1", created_at=T0 + timedelta(seconds=n),
                      source=Source(process_name="translator", request_id=request_id,
                                    event_id=None if request_id else f"E-{n}"))


def done(cmd: KmsCommand, state: ResultState = ResultState.COMPLETED) -> KmsResult:
    return KmsResult(idempotency_key=cmd.idempotency_key, operation=cmd.operation.value,
                     secure_client_id=cmd.secure_client_id, request_id=cmd.source.request_id,
                     event_id=cmd.source.event_id, state=state, executed_at=cmd.created_at + timedelta(seconds=1))


def filled(log: RequestLog) -> list[KmsCommand]:
    cmds = [command("C-1" if n % 2 else "C-2", n) for n in range(7)]
    event = SubscriptionEvent(event_id="E-0", event_type=EventType.ACTIVATED, occurred_at=T0 - timedelta(seconds=1),
                              subscription_id="S-1", account_id="A-1", subscription_type="RES", created_at=T0,
                              version=1, state="ACTIVE", devices=[Device(distributor="MAIN", secure_client_id="C-1")])
    log.write(LogBatch(events=[event], commands=cmds, results=[done(cmds[1], ResultState.REJECTED)]))
    return cmds


def test_provisioning_requests_are_filtered_newest_first_in_keyset_pages() -> None:
    api = build()
    cmds = filled(api.app.state.request_log)

    first = api.client.get("/v1/provisioning-requests", params={"secure_client_id": "C-1", "limit": 2},
                           headers=auth())
    assert first.status_code == 200, first.text
    page = first.json()
    second = api.client.get("/v1/provisioning-requests", params={"secure_client_id": "C-1", "limit": 2,
                                                                 "cursor": page["next_cursor"]}, headers=auth()).json()

    mine = [c.idempotency_key for c in reversed(cmds) if c.secure_client_id == "C-1"]
    assert [e["entry_key"] for e in page["entries"] + second["entries"]] == mine
    assert second["next_cursor"] is None
    rejected = api.client.get("/v1/provisioning-requests", params={"state": "REJECTED"}, headers=auth()).json()
    assert [e["entry_key"] for e in rejected["entries"]] == [cmds[1].idempotency_key]
    window = api.client.get("/v1/provisioning-requests", headers=auth(), params={
        "since": (T0 + timedelta(seconds=2)).isoformat(), "until": (T0 + timedelta(seconds=4)).isoformat()}).json()
    assert [e["entry_key"] for e in window["entries"]] == [cmds[3].idempotency_key, cmds[2].idempotency_key]


def test_bad_cursors_times_and_missing_keys_are_refused() -> None:
    api = build()
    assert api.client.get("/v1/provisioning-requests", params={"cursor": "bogus"}, headers=auth()).status_code == 400
    assert api.client.get("/v1/provisioning-requests", params={"since": "1700000000"},
                          headers=auth()).status_code == 422
    assert api.client.get("/v1/provisioning-requests", params={"since": "2026-02-30T00:00:00Z"},
                          headers=auth()).status_code == 422
    assert api.client.get("/v1/provisioning-requests").status_code == 401


def test_a_boxs_history_is_its_timeline_oldest_first() -> None:
    api = build()
    cmds = filled(api.app.state.request_log)

    got = api.client.get("/v1/secure-clients/C-1/history", headers=auth())

    assert got.status_code == 200
    timeline = got.json()["timeline"]
    assert [(i["what"], i.get("entry_key") or i.get("event_id")) for i in timeline[:4]] == [
        ("event", "E-0"), ("command", cmds[1].idempotency_key), ("result", cmds[1].idempotency_key),
        ("command", cmds[3].idempotency_key)]


def test_without_a_request_log_the_routes_answer_503() -> None:
    api = build()
    api.app.state.request_log = None
    assert api.client.get("/v1/secure-clients/C-1/history", headers=auth()).status_code == 503


def _api_with_durable_outcomes(log: RequestLog) -> tuple[TestClient, OutcomeStore]:
    settings = Settings(api=ApiSettings(api_keys=[SecretStr(KEY)], wait_seconds=0.05))
    memory = OutcomeStore(planning_expectation(PROVIDER, TextLimits()))
    app = create_app(settings, FakePublisher(), DurableOutcomes(memory, log), InMemoryKms())
    return TestClient(app), memory


def test_a_request_the_memory_does_not_hold_is_answered_from_the_log() -> None:
    log = memory_request_log()
    req = ServiceRequest(request_id="R-old", type=RequestType.REAUTHORISE_SECTOR, secure_client_id="C-1",
                         requested_at=T0, process_name="api")
    cmd = command("C-1", 1, Operation.REAUTHORISE_SECTOR, request_id="R-old")
    log.write(LogBatch(requests=[req], commands=[cmd], results=[done(cmd)]))
    client, memory = _api_with_durable_outcomes(log)

    got = client.get("/v1/requests/R-old", headers=auth())

    assert got.status_code == 200, got.text
    assert got.json()["state"] == "COMPLETED"
    assert client.get("/v1/requests/R-never", headers=auth()).status_code == 404
    assert memory.get("R-old") is None  # it came from the log


def test_the_memory_answers_first_and_a_wait_falls_back_to_the_log() -> None:
    log = memory_request_log()
    memory = OutcomeStore()
    outcomes = DurableOutcomes(memory, log)
    fresh = ServiceRequest(request_id="R-new", type=RequestType.SET_PIN, secure_client_id="C-1",
                           pin=SecretStr("1234"), requested_at=T0)
    outcomes.track(fresh)
    log.write(LogBatch(requests=[fresh], results=[done(command("C-1", 2, Operation.SET_PIN, request_id="R-new"),
                                                       ResultState.REJECTED)]))
    tracked = outcomes.get("R-new")
    assert tracked is not None and tracked.state is RequestState.PENDING  # the memory's answer wins

    req = ServiceRequest(request_id="R-gone", type=RequestType.REAUTHORISE_SECTOR, secure_client_id="C-1",
                         requested_at=T0)
    cmd = command("C-1", 3, Operation.REAUTHORISE_SECTOR, request_id="R-gone")
    log.write(LogBatch(requests=[req], commands=[cmd], results=[done(cmd)]))
    waited = asyncio.run(outcomes.wait("R-gone", 0.01))
    assert waited is not None and waited.state is RequestState.COMPLETED
