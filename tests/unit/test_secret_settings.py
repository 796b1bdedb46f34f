"""Secrets in settings: pass-through Kafka secrets, credential URLs and PIN keys never show in a repr, an
error message or a start-up log line; the PIN key ring comes from a setting or a mounted file."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import kmsbridge.wiring as wiring
import kmsbridge.wiring_reconciler as wiring_reconciler
from kmsbridge.settings import SettingsError, load_settings, mask_url
from localdev.stack import write_pin_keys
from schemas.pin_seal import KEY_BYTES, generate_key

KEY = generate_key()
OLD_KEY = generate_key()

#: env var -> the secret in it (the part that must never show)
SECRETS = {
    "KMSBRIDGE_KAFKA__SSL_KEY_PEM": "-----BEGIN PRIVATE KEY-----MIIEvQIBADAN",
    "KMSBRIDGE_KAFKA__SSL_KEY_PASSWORD": "pem-pass-4417",
    "KMSBRIDGE_KAFKA__SSL_KEYSTORE_PASSWORD": "store-pass-9921",
    "KMSBRIDGE_KAFKA__SASL_PASSWORD": "scram-pass-3310",
    "KMSBRIDGE_KAFKA__SASL_OAUTHBEARER_CONFIG": "principal=svc clientSecret=oauth-cfg-7712",
    "KMSBRIDGE_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": "client-secret-5590",
    "KMSBRIDGE_KAFKA__SSL_KEYSTORE_KEY_PASSPHRASE": "passphrase-2287",
    "KMSBRIDGE_PIN_KEYS__KEYS": json.dumps({"k1": KEY}),
}
DATABASE_PASSWORD = "db-pass-6631"
REGISTRY_PASSWORD = "sr-pass-8804"
VALUES = [*SECRETS.values(), DATABASE_PASSWORD, REGISTRY_PASSWORD, KEY]


def _hidden(text: str) -> None:
    for value in VALUES:
        if value.startswith("{"):  # the JSON of the key map: its key must not show
            continue
        assert value not in text, f"{value!r} shows in: {text}"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__CURRENT", "k1")  # a key id is no secret
    monkeypatch.setenv("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv("KMSBRIDGE_DATABASE_URL", f"postgresql+psycopg://kms:{DATABASE_PASSWORD}@db:5432/kmsbridge")
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY_URL", f"https://sr-user:{REGISTRY_PASSWORD}@registry:8081")


def test_repr_and_str_of_the_settings_show_no_secret(secret_env: None) -> None:
    settings = load_settings()
    _hidden(repr(settings))
    _hidden(str(settings))
    _hidden(str(settings.model_dump()))
    assert "postgresql+psycopg://kms:***@db:5432/kmsbridge" in repr(settings)  # the host stays visible


def test_the_clients_still_get_every_secret(secret_env: None) -> None:
    settings = load_settings()
    config = settings.kafka_config()
    assert config["ssl.key.pem"] == SECRETS["KMSBRIDGE_KAFKA__SSL_KEY_PEM"]
    assert config["sasl.oauthbearer.config"] == SECRETS["KMSBRIDGE_KAFKA__SASL_OAUTHBEARER_CONFIG"]
    assert config["ssl.keystore.password"] == SECRETS["KMSBRIDGE_KAFKA__SSL_KEYSTORE_PASSWORD"]
    assert DATABASE_PASSWORD in settings.database_url.get_secret_value()
    codec = wiring.build_codec(settings)
    assert codec.uses_registry


def test_a_public_certificate_stays_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SSL_CERTIFICATE_PEM", "-----BEGIN CERTIFICATE-----MIIC")
    assert "BEGIN CERTIFICATE" in repr(load_settings().kafka)


def test_a_validation_error_quotes_no_secret(secret_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_DATABASE_URL", f"kms:{DATABASE_PASSWORD}")  # no scheme: refused
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SECURITY_PROTOCOL", SECRETS["KMSBRIDGE_KAFKA__SASL_PASSWORD"])
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "KMSBRIDGE_DATABASE_URL" in message and "KMSBRIDGE_KAFKA__SECURITY_PROTOCOL" in message
    _hidden(message)


def test_a_pin_key_map_that_is_not_json_is_named_not_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__KEYS", f"k1={KEY}")
    with pytest.raises(SettingsError, match="KMSBRIDGE_PIN_KEYS") as caught:
        load_settings()
    assert KEY not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.parametrize("url", [
    "postgresql://kms:pw-1@db/kmsbridge", "https://sr:pw-1@registry:8081", "https://registry/?token=pw-1&x=1",
])
def test_mask_url_hides_passwords_and_secret_query_values(url: str) -> None:
    masked = mask_url(url)
    assert "pw-1" not in masked and "***" in masked


@pytest.mark.parametrize("url", ["sqlite:///var/kmsbridge.db", "sqlite:////tmp/kmsbridge.db",
                                 "postgresql+psycopg://db:5432/kmsbridge", "http://127.0.0.1:8089/kms"])
def test_mask_url_shows_a_url_without_secrets_as_it_is(url: str) -> None:
    assert mask_url(url) == url


# --- start-up log lines ------------------------------------------------------------------------------


class _Idle:
    def run(self, **_: Any) -> None:
        return None

    def request_stop(self) -> None:
        return None


def test_start_up_log_lines_show_no_secret(secret_env: None, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KMSBRIDGE_KMS__ENDPOINT", f"https://kms:{DATABASE_PASSWORD}@kms.example/kms")
    settings = load_settings()
    idle = _Idle()
    monkeypatch.setattr(wiring_reconciler, "build_projector", lambda *a, **k: idle)
    monkeypatch.setattr(wiring_reconciler, "build_reconciler",
                        lambda *a, **k: SimpleNamespace(runner=idle, run=idle.run))
    monkeypatch.setattr(wiring, "build_translator", lambda *a, **k: idle)

    class _App:
        executor = idle

        async def run(self) -> None:
            return None

    monkeypatch.setattr(wiring, "build_executor", lambda *a, **k: _App())
    caplog.set_level(logging.INFO)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        wiring_reconciler.run_projector(settings)
        wiring_reconciler.run_reconciler(settings)
        wiring.run_translator(settings)
        wiring.run_executor(settings)
    finally:  # the runners install their own SIGTERM/SIGINT handlers
        for number, handler in handlers.items():
            signal.signal(number, handler)

    started = [r.getMessage() for r in caplog.records if " started" in r.getMessage()]
    assert len(started) == 4, started
    assert any("database=postgresql+psycopg://kms:***@db:5432/kmsbridge" in line for line in started)
    assert any("kms=https://kms:***@kms.example/kms" in line for line in started)
    for line in started:
        _hidden(line)


# --- the PIN key ring --------------------------------------------------------------------------------


def test_a_process_that_handles_pins_does_not_start_without_a_key(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("KMSBRIDGE_PROVIDER_FILE", str(Path(__file__).parents[2] / "examples" / "provider.yaml"))
    monkeypatch.setenv("KMSBRIDGE_DATABASE_URL", f"sqlite:///{tmp_path / 'kmsbridge.db'}")
    settings = load_settings()
    with pytest.raises(SettingsError, match="KMSBRIDGE_PIN_KEYS__FILE"):
        wiring.build_translator(settings)
    with pytest.raises(SettingsError, match="KMSBRIDGE_PIN_KEYS__FILE"):
        wiring.build_codec(settings)
    assert wiring.build_codec(settings, pins="none") is not None  # the projector needs none


def test_the_ring_comes_from_a_mounted_file_and_settings_add_to_it(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "pin-keys.json"
    path.write_text(json.dumps({"current": "old", "keys": {"old": OLD_KEY}}))
    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__FILE", str(path))
    assert load_settings().pin_keys.ring().current == "old"

    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__KEYS", json.dumps({"new": KEY}))
    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__CURRENT", "new")
    ring = load_settings().pin_keys.ring()
    assert ring.current == "new" and ring.key_ids == ["new", "old"]


@pytest.mark.parametrize(("content", "problem"), [
    ("not json", "is not JSON"),
    (json.dumps({"current": "a"}), "must hold"),
    (json.dumps({"current": "a", "keys": {"a": "c2hvcnQ="}}), "5 bytes"),
    (json.dumps({"current": "b", "keys": {"a": KEY}}), "'b' is not among"),
])
def test_a_bad_key_file_names_the_setting_and_quotes_no_key(content: str, problem: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pin-keys.json"
    path.write_text(content)
    monkeypatch.setenv("KMSBRIDGE_PIN_KEYS__FILE", str(path))
    with pytest.raises(SettingsError, match=problem) as caught:
        load_settings().pin_keys.ring()
    assert "KMSBRIDGE_PIN_KEYS" in str(caught.value) and KEY not in str(caught.value)


def test_the_local_stack_key_file_is_private_and_kept(tmp_path: Path) -> None:
    path = write_pin_keys(tmp_path / "pin-keys.json")
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    data = json.loads(first)
    assert len(data["keys"]) == 1 and data["current"] in data["keys"]
    assert KEY_BYTES == 32
    assert write_pin_keys(path).read_text() == first  # a restarted stack reads what it sealed
