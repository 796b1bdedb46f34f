"""Drive a running simulator from tests, the demo and scripts: a small admin client.

::

    with running_simulator(token="t") as sim:
        client = sim.soap_client()
        sim.set_faults(latency_ms=50)
        ... sim.state()["secure_clients"] ...
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from kms_adapter.simulator.server import start_in_thread

if TYPE_CHECKING:
    from kms_adapter.soap_client import SoapKmsClient

__all__ = ["SimulatorHandle", "running_simulator"]


@dataclass
class SimulatorHandle:
    """A simulator at ``url`` (base, no path) that accepts ``token``."""

    url: str
    token: str
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.url, timeout=10.0,
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
        """``POST /admin/state``: overwrite part of the state (DESIGN.md §8)."""
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
