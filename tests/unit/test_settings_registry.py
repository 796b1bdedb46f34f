"""Schema Registry settings: credentials from the environment or a mounted file, the CA, the
serializer options, and a codec built from them that authenticates to the registry."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import BaseModel

from kmsbridge.settings import SettingsError, load_settings
from kmsbridge.wiring import build_codec
from schemas.codec import RegistryOptions
from schemas.errors import SchemaRegistryRefused

USER, PASSWORD = "svc-kmsbridge", "registry-pw-1"


class _AuthRegistry(BaseHTTPRequestHandler):
    """Answers a lookup or registration with id 7 when the basic-auth header is right, else 401."""

    def do_POST(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = self.headers.get("Authorization") == expected
        body = json.dumps({"id": 7, "subject": "s", "version": 1, "schema": "{}"} if ok
                          else {"error_code": 40101, "message": "Unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthRegistry)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_settings_default_to_lookup_only_with_the_topic_strategy() -> None:
    settings = load_settings()

    assert settings.schema_registry.options() == RegistryOptions(auto_register=False)
    assert settings.schema_registry.client_config() == {}


def test_registry_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__USERNAME", USER)
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__CA_LOCATION", "/etc/registry/ca.pem")
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY", "topic_record")
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__USE_LATEST_VERSION", "true")

    registry = load_settings().schema_registry

    assert registry.client_config() == {"basic.auth.user.info": f"{USER}:{PASSWORD}",
                                        "ssl.ca.location": "/etc/registry/ca.pem"}
    assert registry.options() == RegistryOptions("topic_record", auto_register=False, use_latest_version=True)


def test_registry_password_never_shows_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__USERNAME", USER)
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD", PASSWORD)

    assert PASSWORD not in repr(load_settings())


@pytest.mark.parametrize(("env", "named"), [
    ({"KMSBRIDGE_SCHEMA_REGISTRY__AUTO_REGISTER": "true", "KMSBRIDGE_SCHEMA_REGISTRY__USE_LATEST_VERSION": "true"},
     "KMSBRIDGE_SCHEMA_REGISTRY"),
    ({"KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD": PASSWORD}, "USERNAME"),
    ({"KMSBRIDGE_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY": "by_topic"}, "SUBJECT_NAME_STRATEGY"),
])
def test_bad_registry_settings_stop_start_up_naming_them(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError, match=named) as caught:
        load_settings()
    assert PASSWORD not in str(caught.value)


def test_the_built_codec_authenticates_to_the_registry(
    monkeypatch: pytest.MonkeyPatch, registry_url: str, sample_records: dict[str, BaseModel]
) -> None:
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY_URL", registry_url)
    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__USERNAME", USER)
    record = sample_records["KmsResult"]

    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD", "wrong")
    with pytest.raises(SchemaRegistryRefused, match="HTTP 401"):
        build_codec(load_settings(), pins="none").encode(record, "kms.results")

    monkeypatch.setenv("KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD", PASSWORD)
    data = build_codec(load_settings(), pins="none").encode(record, "kms.results")
    assert data[:5] == b"\x00\x00\x00\x00\x07"
