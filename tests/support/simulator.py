"""The KMS simulator for tests and benchmarks: an admin client, the simulator in a thread or in its own
process, and a reader of its audit file.

::

    with running_simulator(token="t") as sim:          # in a thread of this process (tests)
        client = sim.soap_client()
        sim.set_faults(latency_ms=50)
        ... sim.state()["secure_clients"] ...

    sim = start_simulator_process(workdir)             # ``kmsbridge simulator`` (its own core and GIL)
    tail = sim.tail_audit()                            # the calls it applies from now on
    ... tail.poll() ...
    sim.stop()
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from kms_adapter.simulator.server import start_in_thread
from localdev.local_broker import free_port
from tests.support.cli import REPO, clean_env
from tests.support.pipeline import terminate

if TYPE_CHECKING:
    from kms_adapter.soap_client import SoapKmsClient

__all__ = ["AuditTail", "SimulatorHandle", "SimulatorProcess", "at_seconds", "running_simulator",
           "start_simulator_process"]


@dataclass
class SimulatorHandle:
    """A simulator at ``url`` (base, no path) that accepts ``token``; admin calls time out after ``timeout`` s."""

    url: str
    token: str
    timeout: float = 10.0
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self.token}"})

    @property
    def endpoint(self) -> str:
        """The SOAP endpoint (what ``SoapKmsClient`` takes)."""
        return f"{self.url}/kms"

    def soap_client(self, operator_tag: str = "ALUX", **kwargs: Any) -> SoapKmsClient:
        """A ``SoapKmsClient`` for this simulator; ``kwargs`` go to its constructor (timeout, token, ...)."""
        from kms_adapter.soap_client import SoapKmsClient

        kwargs.setdefault("token", self.token)
        return SoapKmsClient(self.endpoint, operator_tag, **kwargs)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict[str, Any]:
        return dict(self._json("GET", "/admin/state"))

    def set_state(self, partial: dict[str, Any]) -> dict[str, Any]:
        """``POST /admin/state``: overwrite part of the state (docs/architecture.md §8)."""
        return dict(self._json("POST", "/admin/state", partial))

    def client_state(self, secure_client_id: str) -> dict[str, Any] | None:
        clients: dict[str, Any] = self.state()["secure_clients"]
        return clients.get(secure_client_id)

    def audit(self) -> list[dict[str, Any]]:
        return list(self.state()["audit"])

    def faults(self) -> dict[str, Any]:
        return dict(self._json("GET", "/admin/faults"))

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """``POST /admin/faults`` with these fields (latency_ms, error_rate, http_status, timeout,
        outage_seconds, card_errors, clear)."""
        return dict(self._json("POST", "/admin/faults", faults))

    def clear_faults(self) -> None:
        self.set_faults(clear=True)

    def set_latency(self, latency_ms: float) -> None:
        """Clear every fault, then delay each SOAP call by ``latency_ms`` (none for 0)."""
        self.clear_faults()
        if latency_ms:
            self.set_faults(latency_ms=latency_ms)

    def reset(self) -> None:
        """Empty state and clear faults."""
        self._json("POST", "/admin/reset")

    def close(self) -> None:
        self._http.close()


@contextmanager
def running_simulator(
    token: str | None = None, *, strict_clients: bool = False, audit_file: str | None = None
) -> Iterator[SimulatorHandle]:
    """A simulator on a free loopback port for the duration of the block (a random token if none)."""
    token = token or secrets.token_urlsafe(16)
    url, stop = start_in_thread(token, strict_clients=strict_clients, audit_file=audit_file)
    handle = SimulatorHandle(url, token)
    try:
        yield handle
    finally:
        handle.close()
        stop()


class AuditTail:
    """Reads the simulator's audit file (one JSON line per applied call) from a byte offset on."""

    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._offset = offset

    def poll(self) -> list[dict[str, Any]]:
        """Entries completed since the last poll."""
        if not self._path.exists():
            return []
        with open(self._path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        cut = data.rfind(b"\n") + 1
        self._offset += cut
        return [json.loads(line) for line in data[:cut].splitlines() if line]


def at_seconds(entry: dict[str, Any]) -> float:
    """An audit entry's ``at`` as POSIX seconds."""
    return datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00")).timestamp()


@dataclass(kw_only=True)
class SimulatorProcess(SimulatorHandle):
    """``kmsbridge simulator`` in its own process; audit lines go to ``audit_file`` when it has one."""

    proc: subprocess.Popen[bytes]
    token_file: Path
    audit_file: Path | None = None

    def tail_audit(self) -> AuditTail:
        """A reader of the audit entries written from now on."""
        if self.audit_file is None:
            raise RuntimeError("this simulator writes no audit file (start it with audit=True)")
        return AuditTail(self.audit_file, self.audit_file.stat().st_size if self.audit_file.exists() else 0)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the simulator process so far."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        self.close()
        terminate(self.proc, timeout)


def start_simulator_process(workdir: Path, *, audit: bool = True, timeout: float = 60.0) -> SimulatorProcess:
    """Start ``kmsbridge simulator`` on a free loopback port with a fresh token (``workdir/kms.token``),
    its log in ``workdir/simulator.log`` and, with ``audit``, its audit lines in ``workdir/audit.jsonl``;
    return once it answers ``/healthz`` (30 s at most). ``timeout`` is the admin client's."""
    token = secrets.token_urlsafe(16)
    token_file = workdir / "kms.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    audit_file = workdir / "audit.jsonl" if audit else None
    port = free_port()
    argv = [sys.executable, "-m", "kmsbridge.cli", "simulator", "--port", str(port), "--token-file", str(token_file)]
    if audit_file is not None:
        argv += ["--audit-file", str(audit_file)]
    env = clean_env()  # only the flags configure it
    with open(workdir / "simulator.log", "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited ({proc.returncode}); see {workdir / 'simulator.log'}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return SimulatorProcess(url, token, timeout, proc=proc, token_file=token_file, audit_file=audit_file)
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"the simulator did not answer within 30 s; see {workdir / 'simulator.log'}")
