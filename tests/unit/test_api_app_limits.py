"""The Web API's limits at the app level (FastAPI's TestClient, no broker): body size, rate limit per key,
ids and lists within the shared record limits, closed metric labels, the OpenAPI document off by
default, and error bodies that quote no internals. Over a real socket: ``tests/integration/test_api_limits.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated

import pytest
from api_fakes import KEY, auth, build
from pydantic import Field, TypeAdapter, ValidationError

from kms_adapter.errors import KmsUnavailable
from producers.api.app import API_REQUESTS
from schemas.limits import ID_MAX_LENGTH, MAX_ID_LIST

MIB = 1_048_576


def _labels(method: str | None = None) -> list[dict[str, str]]:
    found = [dict(s.labels) for metric in API_REQUESTS.collect() for s in metric.samples
             if s.name == "kmsbridge_api_requests_total"]
    return [labels for labels in found if method is None or labels["method"] == method]


# --- body size -----------------------------------------------------------------------------------


def test_a_body_over_the_default_limit_is_413_and_nothing_is_queued() -> None:
    api = build()
    text = "x" * MIB

    response = api.client.post("/v1/messages", headers=auth(),
                               json={"all": True, "kind": "MAIL", "text_mode": "ANSI", "text": text})

    assert response.status_code == 413
    assert api.publisher.requests == []


def test_a_chunked_body_without_content_length_is_bounded_too() -> None:
    api = build()

    def chunks() -> Iterator[bytes]:
        yield b'{"all": true, "kind": "MAIL", "text_mode": "ANSI", "text": "'
        for _ in range(64):  # 4 MiB in all, far over the limit
            yield b"x" * 65_536
        yield b'"}'

    response = api.client.post("/v1/messages", headers={**auth(), "Content-Type": "application/json"},
                               content=chunks())

    assert response.status_code == 413
    assert api.publisher.requests == []


def test_a_body_within_the_limit_is_parsed() -> None:
    api = build()

    response = api.client.post("/v1/reconcile-runs", headers=auth(),
                               json={"subscription_ids": [f"S-{i}" for i in range(MAX_ID_LIST)]})

    assert response.status_code == 202
    assert len(api.publisher.runs[0].subscription_ids) == MAX_ID_LIST


# --- rate limit per key --------------------------------------------------------------------------


def test_each_key_has_its_own_rate_limit_and_the_429_says_when_to_retry() -> None:
    api = build([KEY, "second-key-44"], rate_limit="3/minute")

    first = [api.client.post("/v1/secure-clients/1/reauthorise", headers=auth()).status_code for _ in range(4)]
    other = api.client.post("/v1/secure-clients/1/reauthorise", headers=auth("second-key-44"))

    assert first == [202, 202, 202, 429]
    assert len(api.publisher.requests) == 4  # three of the first key, one of the second
    assert other.status_code == 202
    retry = api.client.get("/v1/requests/x", headers=auth())
    assert retry.status_code == 429
    assert 1 <= int(retry.headers["retry-after"]) <= 60


def test_requests_without_a_valid_key_count_for_no_key() -> None:
    api = build(rate_limit="2/minute")

    for _ in range(5):
        assert api.client.get("/v1/requests/x", headers=auth("wrong")).status_code == 401

    assert api.client.get("/v1/requests/x", headers=auth()).status_code == 404


# --- ids and lists -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/secure-clients/C%0B1", "secure_client_id"),
    ("/v1/secure-clients/" + "7" * (ID_MAX_LENGTH + 1), "secure_client_id"),
    ("/v1/requests/R%7F1", "request_id"),
])
def test_an_id_with_a_control_character_or_too_long_is_422_naming_the_field(path: str, field: str) -> None:
    api = build()

    response = api.client.get(path, headers=auth())

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", field]
    assert api.kms.calls == []


@pytest.mark.parametrize("method_path", ["/v1/secure-clients/C%0B1/reauthorise", "/v1/subscriptions/S%001/reset"])
def test_a_write_to_a_bad_id_is_422_and_nothing_is_queued(method_path: str) -> None:
    api = build()

    response = api.client.post(method_path, headers=auth())

    assert response.status_code == 422
    assert api.publisher.requests == []


@pytest.mark.parametrize(("body", "loc"), [
    ({"subscription_ids": [f"S-{i}" for i in range(MAX_ID_LIST + 1)]}, ["body", "subscription_ids"]),
    ({"subscription_types": ["T"] * (MAX_ID_LIST + 1)}, ["body", "subscription_types"]),
    ({"subscription_ids": ["S\x0b1"]}, ["body", "subscription_ids", 0]),
    ({"preview": 0}, ["body", "preview"]),
    ({"created_to": 0}, ["body", "created_to"]),
])
def test_reset_run_lists_are_capped_and_values_typed(body: dict[str, object], loc: list[object]) -> None:
    api = build()

    response = api.client.post("/v1/reconcile-runs", headers=auth(), json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert api.publisher.runs == []


@pytest.mark.parametrize(("body", "loc"), [
    ({"secure_client_id": "C\x0b1", "kind": "MAIL", "text_mode": "ANSI", "text": "hi"}, ["body", "secure_client_id"]),
    ({"all": 1, "kind": "MAIL", "text_mode": "ANSI", "text": "hi"}, ["body", "all"]),
    ({"all": True, "kind": "MAIL", "text_mode": "ANSI", "text": "a\x00b"}, ["body", "text"]),
])
def test_message_targets_and_texts_obey_the_record_limits(body: dict[str, object], loc: list[object]) -> None:
    api = build()

    response = api.client.post("/v1/messages", headers=auth(), json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert api.publisher.requests == []


def test_a_pin_reset_flag_must_be_a_json_boolean() -> None:
    api = build()

    response = api.client.post("/v1/secure-clients/1/pin", headers=auth(), json={"default": 0, "pin": "1234"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "default"]


def test_every_pattern_of_the_openapi_document_means_the_same_to_python_re_as_to_the_api() -> None:
    api = build()
    document = json.dumps(api.app.openapi())
    patterns = set(re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', document))
    samples = ["F1x", "card-{FFFE}", "é€", "a\x0bb", "a\ufffe", "a\x00", "tab\tx"]

    assert patterns
    for pattern in map(json.loads, patterns):
        checker = TypeAdapter(Annotated[str, Field(pattern=pattern)])
        for sample in samples:
            assert (re.search(pattern, sample) is not None) == _accepts(checker, sample), (pattern, sample)


def _accepts(checker: TypeAdapter[str], value: str) -> bool:
    try:
        checker.validate_python(value)
    except ValidationError:
        return False
    return True


# --- metric labels -------------------------------------------------------------------------------


def test_an_unknown_method_is_counted_as_other_and_a_raw_path_never_becomes_a_label() -> None:
    api = build()

    api.client.request("FROBNICATE", "/v1/requests/abc-123", headers=auth())
    api.client.get("/no/such/path/4120051539")

    methods = {labels["method"] for labels in _labels()}
    routes = {labels["route"] for labels in _labels()}
    assert "FROBNICATE" not in methods and "OTHER" in methods
    assert not any("abc-123" in r or "4120051539" in r for r in routes)
    assert "unmatched" in routes


# --- the OpenAPI document --------------------------------------------------------------------------


def test_the_openapi_document_and_its_pages_are_off_by_default() -> None:
    api = build()

    assert [api.client.get(p, headers=auth()).status_code for p in ("/openapi.json", "/docs", "/redoc")] == [404] * 3


def test_with_docs_key_the_document_needs_the_api_key_and_the_pages_stay_off() -> None:
    api = build(docs="key")

    assert api.client.get("/openapi.json").status_code == 401
    assert "/v1/messages" in api.client.get("/openapi.json", headers=auth()).json()["paths"]
    assert api.client.get("/docs").status_code == 404


def test_with_docs_open_the_document_and_its_pages_are_served() -> None:
    api = build(docs="open")

    assert [api.client.get(p).status_code for p in ("/openapi.json", "/docs", "/redoc")] == [200] * 3


# --- error bodies ----------------------------------------------------------------------------------


def test_a_publishing_failure_is_503_without_the_producer_message() -> None:
    api = build()
    api.publisher.fail = True

    responses = [api.client.post("/v1/secure-clients/1/reauthorise", headers=auth()),
                 api.client.post("/v1/reconcile-runs", headers=auth())]

    assert [r.status_code for r in responses] == [503, 503]
    assert all("broker down" not in r.text and "kms.requests" not in r.text for r in responses)


def test_a_kms_failure_on_a_query_is_503_without_the_transport_message() -> None:
    api = build()
    api.kms.fail_next(1, KmsUnavailable("ConnectError: [Errno 111] Connection refused to 10.1.2.3:8089"))

    response = api.client.get("/v1/secure-clients/1", headers=auth())

    assert response.status_code == 503
    assert "10.1.2.3" not in response.text and "Errno" not in response.text
