"""``/metrics``, ``/healthz`` and ``/readyz`` for every process (docs/architecture.md §7).

``/healthz`` is 200 while the poll loop ran within its TTL (a stuck loop gets the pod restarted);
``/readyz`` is 200 while partitions are assigned and the KMS breaker is closed.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["HealthServer", "HealthState"]


class HealthState:
    """Thread-safe facts the probes read; the loop updates them."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._last_poll = time.monotonic()
        self.assigned = False
        self.breaker_open = False
        self.needs_assignment = True

    def polled(self) -> None:
        self._last_poll = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self._last_poll <= self.ttl_seconds

    def ready(self) -> bool:
        return self.healthy() and (self.assigned or not self.needs_assignment) and not self.breaker_open


class _Handler(BaseHTTPRequestHandler):
    state: HealthState

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.state.healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"poll loop stalled\n")
        elif path == "/readyz":
            ok = self.state.ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # probes every few seconds would drown the logs


class HealthServer:
    def __init__(self, state: HealthState, host: str = "0.0.0.0", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"state": state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
