"""``/v1/run-definitions`` and ``/v1/communications`` over the app (a migrated in-memory database)."""

from __future__ import annotations

from datetime import UTC, datetime

from api_fakes import auth, build

from reconciler.communications_queue import CommunicationQueue
from schemas.records import CommunicationEvent, MessageKind, TextMode

NIGHTLY = {"name": "nightly", "kind": "reset", "schedule": "0 2 * * *", "time_zone": "Europe/Nicosia",
           "created_within_days": 30, "subscription_types": ["RESIDENTIAL"]}


def test_a_definition_is_created_listed_shown_executed_and_then_no_longer_deletable() -> None:
    api = build()
    created = api.client.post("/v1/run-definitions", json=NIGHTLY, headers=auth())
    assert created.status_code == 201, created.text
    assert created.json()["next_due_at"] is not None
    assert api.client.post("/v1/run-definitions", json=NIGHTLY, headers=auth()).status_code == 409
    assert [d["name"] for d in api.client.get("/v1/run-definitions", headers=auth()).json()] == ["nightly"]

    off = api.client.post("/v1/run-definitions/nightly/not-effective", headers=auth())
    assert (off.status_code, off.json()["effective"], off.json()["next_due_at"]) == (200, False, None)
    execution = api.client.post("/v1/run-definitions/nightly/executions?preview=true", headers=auth())
    assert execution.status_code == 202
    assert (execution.json()["state"], execution.json()["preview"]) == ("REQUESTED", True)
    shown = api.client.get("/v1/run-definitions/nightly", headers=auth()).json()
    assert [e["execution_id"] for e in shown["executions"]] == [execution.json()["execution_id"]]

    assert api.client.delete("/v1/run-definitions/nightly", headers=auth()).status_code == 409
    assert api.client.delete("/v1/run-definitions/unknown", headers=auth()).status_code == 404


def test_a_draft_is_deleted() -> None:
    api = build()
    api.client.post("/v1/run-definitions", json=NIGHTLY, headers=auth())
    assert api.client.delete("/v1/run-definitions/nightly", headers=auth()).status_code == 204
    assert api.client.get("/v1/run-definitions/nightly", headers=auth()).status_code == 404


def test_bad_definitions_are_a_422_naming_the_field() -> None:
    api = build()
    for body, field in [({**NIGHTLY, "schedule": "at night"}, "schedule"),
                        ({**NIGHTLY, "time_zone": "Nowhere/Land"}, "time_zone"),
                        ({"name": "mail", "kind": "mail", "external_systems": [""]}, "external_systems"),
                        ({"name": "mail", "kind": "mail"}, "external_systems")]:
        answer = api.client.post("/v1/run-definitions", json=body, headers=auth())
        assert answer.status_code == 422, body
        assert field in answer.text, answer.text


def test_the_queue_is_listed_by_state_and_external_system_without_the_text() -> None:
    api = build()
    queue: CommunicationQueue = api.app.state.communication_queue
    queue.enqueue([CommunicationEvent(communication_id=f"C-{n}", external_system=system, kind=MessageKind.MAIL,
                                      text_mode=TextMode.ANSI, text="Private words", secure_client_id="1",
                                      created_at=datetime.now(UTC)) for n, system in enumerate(["IRDETO", "SMS"])])

    pending = api.client.get("/v1/communications?state=pending&external_system=SMS", headers=auth())

    assert pending.status_code == 200
    assert [(c["communication_id"], c["state"]) for c in pending.json()] == [("C-1", "PENDING")]
    assert "Private words" not in pending.text
    assert api.client.get("/v1/communications?state=completed", headers=auth()).json() == []
