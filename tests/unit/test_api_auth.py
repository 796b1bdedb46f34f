"""Bearer API keys: no key, no access; keys compared as SHA-256 digests; the API refuses to start keyless."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from api_fakes import KEY, auth, build
from pydantic import SecretStr

from kmsbridge.settings import ApiSettings, KafkaSettings, Settings, SettingsError
from kmsbridge.wiring_api import run_api
from producers.api.auth import ApiKeyAuth

PIN_BODY = {"pin": "4821"}


def test_a_request_without_a_key_is_401_with_a_bearer_challenge() -> None:
    api = build()

    response = api.client.post("/v1/secure-clients/100/pin", json=PIN_BODY)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert api.publisher.requests == []


@pytest.mark.parametrize("header", [f"Bearer {KEY}x", "Bearer ", f"Basic {KEY}", KEY, f"bearer-{KEY}"])
def test_a_wrong_key_or_scheme_is_401(header: str) -> None:
    api = build()

    response = api.client.get("/v1/requests/some-id", headers={"Authorization": header})

    assert response.status_code == 401


def test_every_route_under_v1_needs_a_key() -> None:
    api = build()
    calls = [("post", "/v1/secure-clients/1/pin"), ("post", "/v1/secure-clients/1/reauthorise"),
             ("get", "/v1/secure-clients/1"), ("post", "/v1/messages"), ("post", "/v1/subscriptions/S/reset"),
             ("post", "/v1/reconcile-runs"), ("get", "/v1/requests/x")]

    statuses = {path: getattr(api.client, method)(path).status_code for method, path in calls}

    assert set(statuses.values()) == {401}
    assert api.kms.calls == []


def test_keys_from_the_list_and_from_the_secret_file_are_both_accepted(tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("file-key-one\n\n  file-key-two  \n")
    api = build(["listed-key"], api_keys_file=keys_file)

    for key in ("listed-key", "file-key-one", "file-key-two"):
        assert api.client.post("/v1/secure-clients/1/reauthorise", headers=auth(key)).status_code == 202
    assert api.client.post("/v1/secure-clients/1/reauthorise", headers=auth("file-key-three")).status_code == 401


def test_the_caller_is_named_by_a_key_id_that_does_not_reveal_the_key() -> None:
    api = build()

    api.client.post("/v1/secure-clients/1/reauthorise", headers=auth())

    requested_by = api.publisher.requests[0].requested_by
    assert requested_by.startswith("key-") and len(requested_by) == 12
    assert KEY not in requested_by


def test_the_key_store_keeps_digests_only() -> None:
    checker = ApiKeyAuth([SecretStr(KEY)])

    assert KEY not in repr(checker)
    assert all(KEY.encode() not in d for d in checker._digests)
    assert checker.identify(KEY) is not None
    assert checker.identify(KEY.upper()) is None
    assert checker.identify(None) is None


def test_the_app_cannot_be_built_without_a_key() -> None:
    with pytest.raises(ValueError, match="KMSBRIDGE_API__API_KEYS"):
        build([])
    with pytest.raises(ValueError, match="KMSBRIDGE_API__API_KEYS_FILE"):
        build(["   "])


def test_run_api_refuses_to_start_without_a_key_and_names_both_settings() -> None:
    settings = Settings(api=ApiSettings(api_keys=[]), kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))

    with pytest.raises(SettingsError) as raised:
        run_api(settings)

    assert "KMSBRIDGE_API__API_KEYS" in str(raised.value)
    assert "KMSBRIDGE_API__API_KEYS_FILE" in str(raised.value)


def test_probes_and_metrics_need_no_key() -> None:
    api = build()

    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/readyz").status_code == 200
    metrics = api.client.get("/metrics", follow_redirects=False)
    assert metrics.status_code == 200
    assert "kmsbridge_api_requests_total" in metrics.text
    assert api.app.openapi()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_a_rejected_key_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    api = build()
    caplog.set_level(logging.DEBUG)

    api.client.post("/v1/secure-clients/1/reauthorise", headers=auth("guessed-key-123"))
    api.client.post("/v1/secure-clients/1/reauthorise", headers=auth())

    assert "guessed-key-123" not in caplog.text
    assert KEY not in caplog.text
