"""Run the KMS simulator: in the foreground (``kmsbridge simulator``) or in a thread (tests, demo).

uvicorn serves the app on one event loop with its httptools protocol, over the transport that writes
the response-shape faults (:mod:`.shapes`). The access log is off by default because at thousands
of calls a second it costs more than the simulator itself (and logs nothing the audit does not hold).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .shapes import shaping_protocol

__all__ = ["serve", "start_in_thread"]

log = logging.getLogger(__name__)


def _config(app: Starlette, host: str, port: int, access_log: bool, **tls: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=shaping_protocol(app.state.faults.count_soap_connection),
        access_log=access_log,
        log_level="warning",
        lifespan="on",
        # A call hung by the "timeout" fault must not hold shutdown for minutes.
        timeout_graceful_shutdown=2,
        # Clients keep connections open in a pool; keep them longer than uvicorn's 5 s default.
        timeout_keep_alive=30,
        **tls,
    )


def serve(
    host: str,
    port: int,
    token: str,
    strict_clients: bool = False,
    audit_file: str | None = None,
    *,
    access_log: bool = False,
) -> None:
    """Serve the simulator until SIGINT/SIGTERM. ``token`` is required (``KMSBRIDGE_KMS__TOKEN``)."""
    app = create_app(token, strict_clients=strict_clients, audit_file=audit_file)
    log.info("KMS simulator on http://%s:%d/kms (strict_clients=%s)", host, port, strict_clients)
    uvicorn.Server(_config(app, host, port, access_log)).run()


def start_in_thread(
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    strict_clients: bool = False,
    audit_file: str | None = None,
    startup_timeout: float = 10.0,
    tls: Mapping[str, Any] | None = None,
) -> tuple[str, Callable[[], None]]:
    """Start the simulator on a daemon thread; return its base URL and a ``stop()`` that joins it.

    ``port=0`` binds a free loopback port (we bind the socket ourselves, so the port is known before
    uvicorn starts). The SOAP endpoint is ``url + "/kms"``. ``tls`` holds uvicorn's ``ssl_*`` options
    (``ssl_certfile``, ``ssl_keyfile``, ``ssl_ca_certs``, ``ssl_cert_reqs``) to serve HTTPS, e.g. with
    client certificates required.
    """
    app = create_app(token, strict_clients=strict_clients, audit_file=audit_file)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, bound_port, access_log=False, **(tls or {})))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"kms-simulator-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"KMS simulator did not start on {host}:{bound_port}")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"{'https' if tls else 'http'}://{host}:{bound_port}", stop
