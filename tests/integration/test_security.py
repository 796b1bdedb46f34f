"""Security: Kafka SASL/SCRAM through settings, failing closed on refused credentials or an
untrusted broker certificate (over TLS for real: test_kafka_tls.py), the KMS over HTTPS with verification
on by default, secrets only from settings, and no secret or personal data in logs, metrics, DLQ headers
or results.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import string
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from confluent_kafka import KafkaError
from events import activation
from pydantic import SecretStr
from tls import write_ca_and_server_cert

from kafka_edge.errors import FatalKafkaError, KafkaAuthenticationFailed, KafkaTlsFailed
from kafka_edge.kafka_clients import KafkaErrorHandler, is_fatal
from kms_adapter.errors import KmsUnavailable
from kms_adapter.simulator.app import create_app
from kms_adapter.simulator.state import SimulatorState
from kmsbridge.logs import setup_logging
from kmsbridge.settings import ApiSettings, KmsSettings, Settings, load_settings
from localdev.local_broker import BrokerHandle, free_port
from schemas.records import (
    KmsResult,
    MessageKind,
    RequestType,
    ServiceRequest,
    TextMode,
)
from tests.support.chaos import read_all, reencode
from tests.support.pipeline import Pipeline, wait_until
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

PIN = "4711"
PIN_RE = re.compile(r"(?<!\d)4711(?!\d)")  # the PIN as a number of its own (ports like 47113 are not it)
MESSAGE_TEXT = "Zebra quartz lullaby for the night owl"


def sasl_env(handle: BrokerHandle, user: str, password: str) -> dict[str, str]:
    assert handle.sasl_bootstrap is not None
    return {"KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": handle.sasl_bootstrap,
            "KMSBRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KMSBRIDGE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "KMSBRIDGE_KAFKA__SASL_USERNAME": user,
            "KMSBRIDGE_KAFKA__SASL_PASSWORD": password}


def letters(n: int = 10) -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(n))


@pytest.fixture
def scram_pipeline(scram_broker: tuple[BrokerHandle, str, str], kms_simulator: SimulatorHandle,
                   tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline on the SCRAM broker; the test harness itself talks to its PLAINTEXT listener."""
    handle, _user, _password = scram_broker
    pipe = Pipeline(handle.bootstrap, kms_simulator.url, kms_simulator.token, tmp_path, prefix=f"{letters()}.")
    yield pipe
    pipe.close()


# --- Kafka SASL/SCRAM ---------------------------------------------------------------------------------


def test_translator_and_executor_work_over_sasl_scram_with_credentials_from_settings(
        scram_pipeline: Pipeline, scram_broker: tuple[BrokerHandle, str, str],
        kms_simulator: SimulatorHandle) -> None:
    handle, user, password = scram_broker
    env = sasl_env(handle, user, password)  # the processes know only the SASL listener
    scram_pipeline.spawn("translator", env=env)
    scram_pipeline.spawn("executor", env=env)

    scram_pipeline.produce("subscriptions", [activation("SC-1", "5100001")])

    wait_until("applied through SCRAM-authenticated clients",
               lambda: (kms_simulator.client_state("5100001") or {}).get("paired_chipset") == "STB-5100001", 90)


@pytest.mark.parametrize("process", ["translator", "executor"])
def test_a_wrong_kafka_password_fails_closed_with_a_clear_error(
        scram_pipeline: Pipeline, scram_broker: tuple[BrokerHandle, str, str], process: str) -> None:
    handle, user, _password = scram_broker
    wrong = f"wrong-{letters(12)}"
    proc = scram_pipeline.spawn(process, env=sasl_env(handle, user, wrong))

    code = proc.wait(60)  # librdkafka alone would retry forever; we must not spin

    log = (scram_pipeline.workdir / f"{process}.log").read_text(errors="replace")
    assert code == 1
    assert "Kafka authentication failed" in log
    assert "KMSBRIDGE_KAFKA__SASL_PASSWORD" in log
    assert wrong not in log


def test_the_kafka_error_handler_raises_an_authentication_failure_once_and_logs_the_rest() -> None:
    handler = KafkaErrorHandler("consumer")

    handler(KafkaError(KafkaError._TRANSPORT, "broker down"))  # transient: logged only
    with pytest.raises(KafkaAuthenticationFailed, match="KMSBRIDGE_KAFKA__SASL_USERNAME"):
        handler(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials"))
    handler(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "again"))  # already failing: no second raise

    assert isinstance(handler.fatal, KafkaAuthenticationFailed)


def test_the_kafka_error_handler_raises_a_tls_failure_naming_the_ca_setting() -> None:
    handler = KafkaErrorHandler("consumer")

    with pytest.raises(KafkaTlsFailed, match="KMSBRIDGE_KAFKA__SSL_CA_LOCATION"):
        handler(KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed"))

    assert isinstance(handler.fatal, KafkaTlsFailed)


def test_a_fatal_consumer_error_is_recognised_even_without_its_fatal_flag() -> None:
    # a fenced static member reaches the application as a message error of code _FATAL, flag unset
    assert is_fatal(KafkaError(KafkaError._FATAL, "Static consumer fenced by other consumer"))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT, "broker down"))
    with pytest.raises(FatalKafkaError, match="fenced"):
        KafkaErrorHandler("consumer")(KafkaError(KafkaError._FATAL, "Static consumer fenced"))


# --- KMS over HTTPS -----------------------------------------------------------------------------------


class TlsSimulator:
    """The simulator app served over HTTPS by uvicorn (``ssl_certfile``/``ssl_keyfile``) in a thread."""

    def __init__(self, folder: Path) -> None:
        certs = write_ca_and_server_cert(folder)
        self.ca = certs.ca
        self.token = secrets.token_urlsafe(16)
        self.state = SimulatorState()
        self.port = free_port()
        app = create_app(self.token, state=self.state)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, ssl_certfile=str(certs.cert),
                                ssl_keyfile=str(certs.key), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="tls-simulator", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}/kms"

    def __enter__(self) -> TlsSimulator:
        self.thread.start()
        wait_until("TLS simulator up", lambda: self.server.started, 10, interval=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def tls_simulator(tmp_path: Path) -> Iterator[TlsSimulator]:
    with TlsSimulator(tmp_path) as sim:
        yield sim


def test_the_kms_client_refuses_an_untrusted_certificate_by_default_and_trusts_the_ca_file_setting(
        tls_simulator: TlsSimulator) -> None:
    import asyncio

    from kmsbridge.kms import soap_adapter

    async def ping(kms: KmsSettings) -> None:
        client = soap_adapter(kms, "ALUX")  # the adapter every process builds from these settings
        try:
            await client.ping()
        finally:
            await client.aclose()

    default = KmsSettings(endpoint=tls_simulator.endpoint, token=SecretStr(tls_simulator.token))
    assert default.verify_tls is True
    with pytest.raises(KmsUnavailable) as refused:
        asyncio.run(ping(default))
    assert refused.value.kind == "connect"

    trusted = KmsSettings(endpoint=tls_simulator.endpoint, token=SecretStr(tls_simulator.token),
                          ca_file=tls_simulator.ca)
    asyncio.run(ping(trusted))  # no error: the handshake verified the server against our CA


def test_an_executor_applies_nothing_over_untrusted_https_and_everything_once_given_the_ca_file(
        tls_simulator: TlsSimulator, kafka_bootstrap: str, tmp_path: Path) -> None:
    pipe = Pipeline(kafka_bootstrap, f"https://127.0.0.1:{tls_simulator.port}", tls_simulator.token, tmp_path)
    try:
        pipe.spawn("translator")
        untrusting = pipe.spawn("executor", log_name="executor-default")
        pipe.produce("subscriptions", [activation("TLS-1", "5200001")])
        wait_until("the executor gives up on the untrusted KMS and opens its breaker",
                   lambda: "circuit breaker open" in (pipe.workdir / "executor-default.log").read_text(), 60)
        assert list(tls_simulator.state.audit) == []
        untrusting.terminate()
        assert untrusting.wait(30) == 0

        pipe.spawn("executor", env={"KMSBRIDGE_KMS__CA_FILE": str(tls_simulator.ca)}, log_name="executor-ca")
        wait_until("applied over verified HTTPS", lambda: "5200001" in tls_simulator.state.clients, 60)
        assert read_all(pipe.bootstrap, pipe.settings.dlq(pipe.settings.topic("commands"))) == []
    finally:
        pipe.close()


# --- secrets only from settings, never shown ----------------------------------------------------------


def test_settings_never_show_a_secret_in_repr_str_or_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "KMSBRIDGE_KMS__TOKEN": "kms-token-aaaa",
        "KMSBRIDGE_KAFKA__SASL_PASSWORD": "sasl-pass-bbbb",
        "KMSBRIDGE_KAFKA__SSL_KEY_PASSWORD": "key-pass-cccc",
        "KMSBRIDGE_KAFKA__SSL_KEYSTORE_PASSWORD": "keystore-pass-dddd",  # a pass-through key
        "KMSBRIDGE_API__API_KEYS": '["api-key-eeee"]',
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json() + repr(settings.kafka)

    for secret in ("kms-token-aaaa", "sasl-pass-bbbb", "key-pass-cccc", "keystore-pass-dddd", "api-key-eeee"):
        assert secret not in shown
    assert settings.kafka.librdkafka()["ssl.keystore.password"] == "keystore-pass-dddd"  # revealed only here
    assert settings.kms.resolved_token().get_secret_value() == "kms-token-aaaa"


def test_secrets_are_read_from_secret_files(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-ffff\n")
    keys_file = tmp_path / "keys"
    keys_file.write_text("key-one-gggg\nkey-two-hhhh\n")

    settings = Settings(kms=KmsSettings(token_file=token_file), api=ApiSettings(api_keys_file=keys_file))

    assert settings.kms.resolved_token().get_secret_value() == "from-a-file-ffff"
    assert [k.get_secret_value() for k in settings.api_keys()] == ["key-one-gggg", "key-two-hhhh"]
    assert "from-a-file-ffff" not in repr(settings)


def test_log_lines_mask_pins_and_configured_secrets_even_in_tracebacks(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file-iiii")
    monkeypatch.setenv("KMSBRIDGE_KMS__TOKEN_FILE", str(token_file))
    monkeypatch.setenv("KMSBRIDGE_KAFKA__SASL_PASSWORD", "kafka-pass-jjjj")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # the originals come back after the test
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("INFO")
    log = logging.getLogger("test.redaction")

    log.info("request for card 5000001 pin=4711 done")
    try:
        raise RuntimeError("connect failed with password kafka-pass-jjjj and token tok-from-file-iiii")
    except RuntimeError:
        log.exception("boom")

    err = capsys.readouterr().err
    assert "card 5000001" in err  # ids stay readable
    assert not PIN_RE.search(err)
    assert "kafka-pass-jjjj" not in err and "tok-from-file-iiii" not in err
    assert "***" in err


# --- nothing leaks -------------------------------------------------------------------------------------


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_no_pin_message_text_token_or_password_leaks_into_logs_metrics_dlq_headers_or_results(
        scram_pipeline: Pipeline, scram_broker: tuple[BrokerHandle, str, str],
        kms_simulator: SimulatorHandle) -> None:
    handle, user, password = scram_broker
    card = "5300001"
    ports = {"translator": free_port(), "executor": free_port()}
    for process, port in ports.items():
        scram_pipeline.spawn(process, env={**sasl_env(handle, user, password), "KMSBRIDGE_LOG_LEVEL": "DEBUG",
                                           "KMSBRIDGE_METRICS_PORT": str(port)})
    now = dt.datetime.now(dt.UTC)
    set_pin = ServiceRequest(request_id="R-pin-a", type=RequestType.SET_PIN, secure_client_id=card,
                             pin=SecretStr(PIN), requested_by="alice", requested_at=now)
    message = ServiceRequest(request_id="R-msg-b", type=RequestType.SEND_MESSAGE, secure_client_id=card,
                             kind=MessageKind.MESSAGE, text_mode=TextMode.ANSI, text=MESSAGE_TEXT,
                             requested_by="alice", requested_at=now)
    topic = scram_pipeline.settings.topic("requests")
    invalid = reencode(scram_pipeline.codec, set_pin.model_copy(update={"request_id": "R-bad-c"}), topic,
                       request_id="")  # breaks its model (empty id) while carrying the PIN
    scram_pipeline.produce("requests", [set_pin, message])
    scram_pipeline.produce_raw("requests", invalid, key=b"R-bad-c")

    def done() -> bool:
        client = kms_simulator.client_state(card) or {}
        return client.get("pin") == PIN and any(m["text"] == MESSAGE_TEXT for m in client.get("messages", []))

    wait_until("PIN set and message shown", done, 90)
    settings = scram_pipeline.settings
    dlq_topics = [settings.dlq(t) for t in (settings.topic("requests"), settings.topic("commands"))]
    wait_until("the invalid request dead-lettered", lambda: read_all(scram_pipeline.bootstrap, dlq_topics[0]), 60)
    results = scram_pipeline.results(lambda rs: {"R-pin-a", "R-msg-b"} <= {r.request_id for r in rs})

    texts = {f"metrics of {p}": scrape(port) for p, port in ports.items()}
    for path in scram_pipeline.workdir.glob("*.log"):
        texts[path.name] = path.read_text(errors="replace")
    for topic_name in dlq_topics:
        for msg in read_all(scram_pipeline.bootstrap, topic_name):
            texts[f"DLQ headers {topic_name}@{msg.offset()}"] = repr(msg.headers())
    texts["results"] = "\n".join(r.model_dump_json() for r in results if isinstance(r, KmsResult))

    assert any("DLQ headers" in name for name in texts)
    assert any("kmsbridge_messages_processed_total" in text for text in texts.values())
    for name, text in texts.items():
        assert not PIN_RE.search(text), f"the PIN leaked into {name}"
        assert MESSAGE_TEXT not in text, f"the message text leaked into {name}"
        assert kms_simulator.token not in text, f"the KMS token leaked into {name}"
        assert password not in text, f"the Kafka password leaked into {name}"
