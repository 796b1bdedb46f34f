"""Kafka over TLS for real: a dedicated local broker with a SASL_SSL listener
(SCRAM-SHA-512) serving a certificate made at run time, and every process run as a user runs it
(``kmsbridge run PROCESS``) with only ``KMSBRIDGE_KAFKA__*`` settings pointing at that listener.

- a record round-trips over TLS: an event in, its commands out, applied by the KMS simulator;
- a wrong password fails closed for every process, naming ``KMSBRIDGE_KAFKA__SASL_PASSWORD``;
- a CA that did not sign the broker's certificate fails closed for every process, naming
  ``KMSBRIDGE_KAFKA__SSL_CA_LOCATION``.

The test harness itself (topics, producing, reading) talks to the broker's PLAINTEXT listener.
"""

from __future__ import annotations

import secrets
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from events import activation
from tls import ServerCertificate, write_ca, write_ca_and_server_cert

from kmsbridge.cli.common import EXIT_FAILED
from localdev.local_broker import BrokerHandle, BrokerTls, free_port, start_broker, stop_broker
from schemas.records import KmsCommand
from tests.support.pipeline import Pipeline, wait_until
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

PROCESSES = ["translator", "executor", "projector", "reconciler", "api", "request-log"]
#: How long a process may take to notice refused credentials or an untrusted broker and exit.
FAIL_CLOSED_SECONDS = 60


@dataclass(frozen=True)
class TlsBroker:
    handle: BrokerHandle
    user: str
    password: str
    certs: ServerCertificate

    def env(self, *, password: str | None = None, ca: Path | None = None) -> dict[str, str]:
        """The settings a process gets: the SASL_SSL listener only, SCRAM credentials, the CA to trust."""
        assert self.handle.sasl_ssl_bootstrap is not None
        return {"KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.handle.sasl_ssl_bootstrap,
                "KMSBRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "KMSBRIDGE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
                "KMSBRIDGE_KAFKA__SASL_USERNAME": self.user,
                "KMSBRIDGE_KAFKA__SASL_PASSWORD": password if password is not None else self.password,
                "KMSBRIDGE_KAFKA__SSL_CA_LOCATION": str(ca if ca is not None else self.certs.ca)}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A broker of its own (not the session's), its certificate signed by a CA made for this module."""
    folder = tmp_path_factory.mktemp("kafka-tls")
    certs = write_ca_and_server_cert(folder / "certs")
    user, password = "kmsbridge", secrets.token_urlsafe(18)
    handle = start_broker(folder / "broker", scram_users={user: password},
                          tls=BrokerTls(certificate_chain=certs.cert, private_key=certs.key))
    try:
        yield TlsBroker(handle, user, password, certs)
    finally:
        stop_broker(handle.pid)


@pytest.fixture
def tls_pipeline(tls_broker: TlsBroker, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    prefix = "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))
    pipe = Pipeline(tls_broker.handle.bootstrap, kms_simulator.url, kms_simulator.token, tmp_path,
                    prefix=f"{prefix}.",
                    extra_env={"KMSBRIDGE_API__API_KEYS": f'["{secrets.token_urlsafe(16)}"]',
                               "KMSBRIDGE_API__PORT": str(free_port())})
    yield pipe
    pipe.close()


def test_an_event_round_trips_over_sasl_ssl_through_the_translator_and_the_executor(
        tls_pipeline: Pipeline, tls_broker: TlsBroker, kms_simulator: SimulatorHandle) -> None:
    env = tls_broker.env()  # the processes know only the TLS listener
    tls_pipeline.spawn("translator", env=env)
    tls_pipeline.spawn("executor", env=env)

    tls_pipeline.produce("subscriptions", [activation("TLS-SUB-1", "5400001")])

    commands = tls_pipeline.read("commands", lambda records: bool(records), timeout=90)
    assert {c.secure_client_id for c in commands if isinstance(c, KmsCommand)} == {"5400001"}
    wait_until("applied by the executor over TLS",
               lambda: (kms_simulator.client_state("5400001") or {}).get("paired_chipset") == "STB-5400001", 60)


def _run_all_until_they_exit(pipe: Pipeline, env: dict[str, str], label: str) -> dict[str, tuple[int | None, str]]:
    """Every process started at once with ``env``; each one's exit code (None: still running after the
    bound, then killed) and log."""
    procs = {process: pipe.spawn(process, env=env, log_name=f"{process}-{label}") for process in PROCESSES}
    deadline = time.monotonic() + FAIL_CLOSED_SECONDS
    codes: dict[str, int | None] = {}
    for process, proc in procs.items():  # librdkafka alone would retry for ever; no process may
        try:
            codes[process] = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[process] = None
    return {process: (codes[process], (pipe.workdir / f"{process}-{label}.log").read_text(errors="replace"))
            for process in PROCESSES}


def _not_failed_closed(outcomes: dict[str, tuple[int | None, str]], *needles: str) -> dict[str, str]:
    """The processes that did not exit with status 1 (``kmsbridge run``'s failure) with every one of
    ``needles`` in their log, with their log tails."""
    return {process: f"exit {code}: {log[-1500:]}" for process, (code, log) in outcomes.items()
            if code != EXIT_FAILED or not all(needle in log for needle in needles)}


def test_a_wrong_password_fails_closed_in_every_process_naming_the_setting(
        tls_pipeline: Pipeline, tls_broker: TlsBroker) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"

    outcomes = _run_all_until_they_exit(tls_pipeline, tls_broker.env(password=wrong), "wrong-password")

    assert _not_failed_closed(outcomes, "Kafka authentication failed", "KMSBRIDGE_KAFKA__SASL_PASSWORD") == {}
    assert [process for process, (_code, log) in outcomes.items() if wrong in log] == []


def test_a_ca_that_did_not_sign_the_broker_certificate_fails_closed_in_every_process_naming_the_setting(
        tls_pipeline: Pipeline, tls_broker: TlsBroker, tmp_path: Path) -> None:
    stranger = write_ca(tmp_path / "other-ca.pem", common_name="a CA that signed nothing here")

    outcomes = _run_all_until_they_exit(tls_pipeline, tls_broker.env(ca=stranger), "wrong-ca")

    assert _not_failed_closed(outcomes, "Kafka TLS handshake failed", "KMSBRIDGE_KAFKA__SSL_CA_LOCATION") == {}
    assert [process for process, (_code, log) in outcomes.items() if tls_broker.password in log] == []
