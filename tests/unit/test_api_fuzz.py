"""The Web API against its own OpenAPI document: schema-driven fuzzing (schemathesis) and the statuses a
fuzzer cannot provoke.

1. Every operation of the document is fuzzed over ASGI with a valid key: positive and negative
   examples (deterministic, a bounded number each). Every answer must be no 5xx, a status the
   operation declares, with the declared content type, headers and body schema; schema-violating
   input must be refused (4xx).
2. What generated requests never carry (no key, a body that is not UTF-8, a body over the limit,
   a key over its rate limit) is sent by hand to every operation it applies to, and the answer is
   checked by the same schemathesis conformance checks.

The cross-field rules of the bodies (``pin`` xor ``default``, exactly one message target) are not in
the JSON schema, so schemathesis' ``positive_data_acceptance`` check (a schema-valid body must be
accepted) is left out; the unit tests of ``test_api_models.py`` cover those rules.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from api_fakes import ApiUnderTest, auth, build
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import Receive, Scope, Send

CONFIG = schemathesis.Config.from_dict(
    # extra query parameters are ignored by design (FastAPI does), so do not count them as bad input
    {"generation": {"deterministic": True, "allow-extra-parameters": False}}
)
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]


class FreshApi:
    """An ASGI app that is a new API (over fakes) for each lifespan: schemathesis runs one lifespan per
    operation, and the app closes its KMS when a lifespan ends."""

    def __init__(self) -> None:
        self.api = self._build()

    @staticmethod
    def _build() -> ApiUnderTest:
        # process_immediately waits at most 10 ms: no outcome ever comes from the fake publisher
        return build(wait_seconds=0.01, rate_limit="1000000/minute")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.api = self._build()
        await self.api.app(scope, receive, send)


APP = FreshApi()
DOCUMENT = APP.api.app.openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
schema.app = APP


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_only_what_the_document_declares(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=auth(), excluded_checks=[positive_data_acceptance])


# --- 2. statuses a generated request does not provoke ------------------------------------------------


OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]
BODY_OPERATIONS = [(m, p) for m, p in OPERATIONS if "requestBody" in DOCUMENT["paths"][p][m.lower()]]


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _check(api: ApiUnderTest, method: str, path: str, *, headers: dict[str, str] | None = None,
           content: bytes | None = None) -> Any:
    response = api.client.request(method, _url(path), headers=headers or {}, content=content)
    case = schema[path][method].Case(path_parameters={n: "1" for n in re.findall(r"\{([^}]+)\}", path)})
    case.validate_response(response, checks=CONFORMANCE)
    return response


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_request_without_a_key_is_a_declared_401(method: str, path: str) -> None:
    response = _check(build(), method, path)

    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
def test_a_body_that_is_not_utf8_is_a_declared_400(method: str, path: str) -> None:
    response = _check(build(), method, path, headers={**auth(), "Content-Type": "application/json"},
                      content=b'{"text": "\xff\xfe"}')

    assert response.status_code == 400


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
def test_a_body_over_the_limit_is_a_declared_413(method: str, path: str) -> None:
    api = build()
    response = _check(api, method, path, headers={**auth(), "Content-Type": "application/json"},
                      content=b'{"text": "' + b"x" * 1_048_576 + b'"}')

    assert response.status_code == 413
    assert api.publisher.requests == [] and api.publisher.runs == []


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_key_over_its_rate_limit_gets_a_declared_429_with_retry_after(method: str, path: str) -> None:
    api = build(rate_limit="1/minute")
    api.client.request(method, _url(path), headers=auth())

    response = _check(api, method, path, headers=auth())

    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 60
