from __future__ import annotations

import pytest

from kmsbridge.settings import Settings, SettingsError, load_settings


def test_kafka_settings_pass_through_to_librdkafka_dotted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SOCKET_KEEPALIVE_ENABLE", "true")

    config = load_settings().kafka_config()

    assert config == {"bootstrap.servers": "b:9092", "security.protocol": "SASL_SSL",
                      "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "hunter2",
                      "socket.keepalive.enable": "true"}


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KMSBRIDGE_KMS__TOKEN", "tok-secret")

    settings = load_settings()

    assert "hunter2" not in repr(settings) and "tok-secret" not in repr(settings)
    assert settings.kms.resolved_token().get_secret_value() == "tok-secret"


def test_a_bad_setting_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_KMS__TIMEOUT_SECONDS", "soon")

    with pytest.raises(SettingsError, match="KMSBRIDGE_KMS__TIMEOUT_SECONDS"):
        load_settings()


def test_missing_kms_token_names_both_ways_to_give_it() -> None:
    with pytest.raises(SettingsError, match="KMSBRIDGE_KMS__TOKEN"):
        Settings().kms.resolved_token()


def test_token_file_is_read_from_a_mounted_secret(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    secret = tmp_path / "token"  # type: ignore[operator]
    secret.write_text("from-file\n")
    monkeypatch.setenv("KMSBRIDGE_KMS__TOKEN_FILE", str(secret))

    assert load_settings().kms.resolved_token().get_secret_value() == "from-file"


def test_topic_prefix_applies_to_every_topic_and_dlq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_TOPIC_PREFIX", "prod.")

    settings = load_settings()

    assert settings.topic("commands") == "prod.kms.commands"
    assert all(t.startswith("prod.") for t in settings.all_topics())
    assert "prod.kms.commands.dlq" in settings.all_topics()
