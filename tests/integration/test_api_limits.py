"""The Web API's limits over real sockets, against ``kmsbridge run api`` (real uvicorn, the product's HTTP
protocol, the real outcome feed) at its default settings: read timeout 10 s, body limit 1 MiB, rate
limit 300 requests a minute per key, no OpenAPI document.

Slow clients are written byte by byte on a raw socket; each wait is bounded, and a connection that is
still open when the bound passes fails the test.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from api_process import spawn_api

from kmsbridge.settings import ApiSettings
from tests.support.pipeline import Pipeline
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

KEY = "limits-key-5b2e"
RATE_KEY = "limits-rate-key-91c0"  # the rate-limit test exhausts it; other tests use KEY
DEFAULTS = ApiSettings()
SLACK_SECONDS = 3.0


@dataclass
class Api:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def http(self, key: str | None = KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=30)


@pytest.fixture(scope="module")
def api(kafka_bootstrap: str, _kms_simulator_server: SimulatorHandle,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    sim = _kms_simulator_server
    pipeline = Pipeline(kafka_bootstrap, sim.url, sim.token, tmp_path_factory.mktemp("api-limits"))
    try:
        # no translator or executor runs: a process_immediately request waits its whole bound
        _proc, url = spawn_api(pipeline, {"KMSBRIDGE_API__API_KEYS": json.dumps([KEY, RATE_KEY]),
                                          "KMSBRIDGE_API__WAIT_SECONDS": str(DEFAULTS.read_timeout_seconds + 2)})
        yield Api("127.0.0.1", int(url.rsplit(":", 1)[1]))
    finally:
        pipeline.close()


def _wait_closed(sock: socket.socket, bound: float) -> bytes:
    """Everything the server sends until it closes the connection; fails when ``bound`` passes first."""
    received = b""
    deadline = time.monotonic() + bound
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            chunk = sock.recv(65_536)
            if not chunk:
                return received
            received += chunk
    pytest.fail(f"the connection was still open after {bound:.1f} s")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --- slow clients ----------------------------------------------------------------------------------


def test_a_client_sending_its_headers_one_byte_a_second_is_closed_within_the_read_timeout(api: Api) -> None:
    request = (f"GET /v1/requests/slow HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: Bearer {KEY}\r\n"
               "X-Padding: " + "p" * 40 + "\r\n\r\n").encode()
    bound = DEFAULTS.read_timeout_seconds + SLACK_SECONDS
    sent, answer, closed = 0, b"", False
    started = time.monotonic()
    with api.connect() as sock:
        while sent < len(request) and time.monotonic() - started < bound:
            try:
                sock.sendall(request[sent:sent + 1])
            except OSError:  # reset by the server
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], 1.0)  # one byte a second, unless the server speaks
            if readable:
                answer = _wait_closed(sock, SLACK_SECONDS)
                closed = True
                break
    elapsed = time.monotonic() - started

    assert closed, f"still open after {elapsed:.1f} s and {sent} of {len(request)} bytes"
    assert sent < len(request)
    assert elapsed <= bound
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_connection_that_sends_nothing_is_closed_within_the_read_timeout(api: Api) -> None:
    with api.connect() as sock:
        answer = _wait_closed(sock, DEFAULTS.read_timeout_seconds + SLACK_SECONDS)

    assert answer.startswith(b"HTTP/1.1 408")


def test_an_answer_slower_than_the_read_timeout_is_not_cut(api: Api) -> None:
    started = time.monotonic()
    with api.http() as http:
        response = http.post("/v1/secure-clients/4120051539/reauthorise", params={"process_immediately": "true"})

    assert response.status_code == 202  # the wait bound passed: PENDING, answered whole
    assert response.json()["state"] == "PENDING"
    assert time.monotonic() - started > DEFAULTS.read_timeout_seconds


def test_headers_over_64_kib_are_refused_with_431_before_they_end(api: Api) -> None:
    piece = b"a" * 65_536
    sent, answer = 0, b""
    with api.connect() as sock:
        sock.sendall(f"GET /v1/requests/big HTTP/1.1\r\nHost: {api.host}\r\nX-Big: ".encode())
        while sent < 200 * len(piece) and not answer:  # at most 12.5 MiB of one header, never ended
            readable, writable, _ = select.select([sock], [sock], [], SLACK_SECONDS)
            if readable:
                answer = sock.recv(65_536)
            elif writable:
                try:
                    sock.sendall(piece)
                except OSError:  # closed by the server; its answer is read below
                    break
                sent += len(piece)
            else:
                break
        if not answer:
            answer = _wait_closed(sock, SLACK_SECONDS)

    assert answer.startswith(b"HTTP/1.1 431")
    assert sent < 200 * len(piece)


# --- body size -------------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(api: Api) -> None:
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {40 * 1_048_576}\r\n\r\n").encode()
    with api.connect() as sock:
        sock.sendall(head)  # and not one byte of the 40 MiB
        readable, _, _ = select.select([sock], [], [], SLACK_SECONDS)
        answer = sock.recv(65_536) if readable else b""

    assert answer.startswith(b"HTTP/1.1 413")


def test_a_chunked_body_without_length_is_cut_at_the_limit(api: Api) -> None:
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with api.connect() as sock:
        sock.sendall(head + _chunk(b'{"all": true, "kind": "MAIL", "text_mode": "ANSI", "text": "'))
        for _ in range(2 * DEFAULTS.max_body_bytes // 65_536):  # twice the limit, and the body never ends
            sock.sendall(_chunk(b"x" * 65_536))
        # an unbounded reader would wait for the rest of the body; the limit answers at once
        readable, _, _ = select.select([sock], [], [], SLACK_SECONDS)
        answer = sock.recv(65_536) if readable else b""

    assert answer.startswith(b"HTTP/1.1 413")


# --- rate limit, labels, ids, documents ----------------------------------------------------------


def test_a_key_over_the_default_rate_limit_gets_429_with_retry_after(api: Api) -> None:
    allowed = int(DEFAULTS.rate_limit.split("/")[0])
    with api.http("second-key-not-configured") as stranger:
        assert stranger.get("/v1/requests/r").status_code == 401
    with api.http(RATE_KEY) as http:
        statuses = [http.get(f"/v1/requests/rate-{i}").status_code for i in range(allowed)]
        over = http.get("/v1/requests/rate-over")

    assert set(statuses) == {404}
    assert over.status_code == 429
    assert 1 <= int(over.headers["retry-after"]) <= 60


def test_an_unknown_method_is_labelled_other_and_ids_never_become_labels(api: Api) -> None:
    with api.http(None) as http:
        http.request("PROPFIND", "/v1/requests/label-probe-77")
        http.get("/no/such/path/label-probe-78")
        metrics = http.get("/metrics").text

    lines = [line for line in metrics.splitlines() if line.startswith("kmsbridge_api_requests_total{")]
    assert any('method="OTHER"' in line for line in lines)
    assert not any("PROPFIND" in line or "label-probe" in line for line in lines)


def test_a_card_id_with_a_control_character_is_422_naming_the_field(api: Api) -> None:
    with api.http() as http:
        response = http.get("/v1/secure-clients/C%0B1")

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "secure_client_id"]


def test_no_openapi_document_or_docs_page_is_served_by_default(api: Api) -> None:
    with api.http() as http:
        assert [http.get(p).status_code for p in ("/openapi.json", "/docs", "/redoc")] == [404] * 3
