"""A fatal Kafka error ends every process with status 1 and its message, and with no Kafka client alive.

A client still alive when the interpreter exits keeps its librdkafka threads running: against a broker
whose certificate is not trusted they retry the TLS handshake every few milliseconds, and OpenSSL's
exit handler (run by ``exit()``) frees the state they use, so the process dies of SIGSEGV (-11) instead
of exiting with its status. Whether a run crashes depends on where a broker thread is at that moment;
whether a client is still alive at exit does not. So each process here runs as a user runs it
(``kmsbridge run PROCESS``) under a wrapper that, at interpreter exit (``atexit``, after the command
returned and before ``exit()``), counts the threads librdkafka names ``rdk:*``: a closed client has
none left. Each process meets an endpoint whose certificate a CA it does not trust signed (a TLS
listener in this test, no broker needed), the fatal path of
``tests/integration/test_kafka_tls.py::test_a_ca_that_did_not_sign_the_broker_certificate_...``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tls import write_ca, write_ca_and_server_cert

from kmsbridge.cli.common import EXIT_FAILED
from localdev.local_broker import free_port
from localdev.stack import write_pin_keys
from tests.support.pipeline import EXAMPLE_PROVIDER

pytestmark = pytest.mark.integration

PROCESSES = ["translator", "executor", "projector", "reconciler", "api", "request-log"]
#: The reconciler (a runner, a queue reader and a producer they share) runs its fatal path this often.
RECONCILER_RUNS = 6
#: How long a process may take to start, meet the untrusted endpoint and exit.
EXIT_SECONDS = 90
THREADS_AT_EXIT = "librdkafka threads at exit:"

#: ``kmsbridge`` with an atexit hook that prints how many librdkafka threads are still running.
WRAPPER = f"""
import atexit, os, sys

def _count():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{{tid}}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    rdk = sorted(n for n in names if n.startswith("rdk:"))
    sys.stderr.write("{THREADS_AT_EXIT} %d %s\\n" % (len(rdk), rdk))
    sys.stderr.flush()

atexit.register(_count)
sys.argv = ["kmsbridge", *sys.argv[1:]]
from kmsbridge.cli.main import main
main()
"""


class UntrustedTlsEndpoint:
    """A TLS listener on loopback presenting a certificate of its own CA; every connection is handshaken
    (the client refuses the certificate) and dropped. It speaks no Kafka: the clients never get further."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="untrusted-tls", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self._context.wrap_socket(conn, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass  # the client aborted the handshake: what it should do
        finally:
            conn.close()

    def close(self) -> None:
        self._stopped.set()
        self._sock.close()
        self._thread.join(5)


@dataclass(frozen=True)
class Setup:
    endpoint: UntrustedTlsEndpoint
    stranger_ca: Path
    folder: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("fatal-shutdown")
    certs = write_ca_and_server_cert(folder / "certs")
    endpoint = UntrustedTlsEndpoint(certs.cert, certs.key)
    try:
        yield Setup(endpoint, write_ca(folder / "stranger-ca.pem", common_name="a CA that signed nothing here"),
                    folder)
    finally:
        endpoint.close()


def _env(setup: Setup, workdir: Path) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    token = workdir / "kms.token"
    token.write_text(secrets.token_urlsafe(12))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSBRIDGE_")}
    env.update({
        "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{setup.endpoint.port}",
        "KMSBRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL",
        "KMSBRIDGE_KAFKA__SSL_CA_LOCATION": str(setup.stranger_ca),
        "KMSBRIDGE_TOPIC_PREFIX": f"{workdir.name}.",
        "KMSBRIDGE_GROUP_PREFIX": f"{workdir.name}.kmsbridge",
        "KMSBRIDGE_KMS__ENDPOINT": "http://127.0.0.1:9/kms",  # never reached
        "KMSBRIDGE_KMS__TOKEN_FILE": str(token),
        "KMSBRIDGE_PIN_KEYS__FILE": str(write_pin_keys(workdir / "pin-keys.json")),
        "KMSBRIDGE_DATABASE_URL": f"sqlite:///{workdir / 'kmsbridge.db'}",
        "KMSBRIDGE_PROVIDER_FILE": str(EXAMPLE_PROVIDER),
        "KMSBRIDGE_API__API_KEYS": json.dumps([secrets.token_urlsafe(16)]),
        "KMSBRIDGE_API__PORT": str(free_port()),
        "PYTHONFAULTHANDLER": "1",  # a crash prints the Python stacks into the log
    })
    return env


def _run_all(setup: Setup, runs: list[tuple[str, str]]) -> dict[str, tuple[int | None, str]]:
    """Each (label, process) started at once, each in a fresh work folder: label -> (exit code, output);
    None for a process still running after :data:`EXIT_SECONDS` (then killed)."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for label, process in runs:
        workdir = setup.folder / label
        env = _env(setup, workdir)
        log = workdir / "out.log"
        with log.open("wb") as out:
            procs[label] = (subprocess.Popen([sys.executable, "-c", WRAPPER, "run", process], env=env,
                                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL),
                            log)
    outcomes: dict[str, tuple[int | None, str]] = {}
    for label, (proc, log) in procs.items():
        try:
            code: int | None = proc.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = None
        outcomes[label] = (code, log.read_text(errors="replace"))
    return outcomes


def _not_closed_cleanly(outcomes: dict[str, tuple[int | None, str]]) -> dict[str, str]:
    """Those that did not exit with status 1 naming the setting, or had a librdkafka thread at exit."""
    bad: dict[str, str] = {}
    for label, (code, log) in outcomes.items():
        counts = [line for line in log.splitlines() if line.startswith(THREADS_AT_EXIT)]
        if (code != EXIT_FAILED or "Kafka TLS handshake failed" not in log
                or "KMSBRIDGE_KAFKA__SSL_CA_LOCATION" not in log or counts != [f"{THREADS_AT_EXIT} 0 []"]):
            bad[label] = f"exit {code}, {counts or 'no count (crashed before atexit?)'}: {log[-1200:]}"
    return bad


def test_every_process_ends_a_fatal_tls_failure_with_status_1_and_no_kafka_client_left(setup: Setup) -> None:
    outcomes = _run_all(setup, [(process, process) for process in PROCESSES])

    assert _not_closed_cleanly(outcomes) == {}


def test_the_reconcilers_fatal_path_closes_its_runner_its_queue_reader_and_their_producer_every_time(
        setup: Setup) -> None:
    outcomes = _run_all(setup, [(f"reconciler-{i}", "reconciler") for i in range(RECONCILER_RUNS)])

    assert _not_closed_cleanly(outcomes) == {}
