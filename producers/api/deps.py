"""What the routes depend on, as small protocols, and the container the app factory fills.

The real implementations are :class:`producers.requests.KafkaRequestPublisher`,
:class:`producers.outcomes.OutcomeStore` (fed by :class:`producers.results_feed.OutcomeFeed`, which is
also the :class:`Probe`) and :class:`kms_adapter.soap_client.SoapKmsClient`; unit tests pass fakes with
the same surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from kms_adapter.port import KmsPort
from producers.outcomes import Outcome
from producers.requests import RequestPublisher
from schemas.records import ReconcileRequest, ServiceRequest

__all__ = ["AlwaysReady", "ApiServices", "OutcomeSource", "Probe", "services"]


class OutcomeSource(Protocol):
    """The request-state store's surface the routes use (:class:`producers.outcomes.OutcomeStore`)."""

    def track(self, req: ServiceRequest) -> None: ...

    def track_run(self, run: ReconcileRequest) -> None: ...

    def get(self, request_id: str) -> Outcome | None: ...

    async def wait(self, request_id: str, timeout: float) -> Outcome | None: ...


class Probe(Protocol):
    """``/healthz`` and ``/readyz``: the background reader of outcomes is alive / caught up."""

    def healthy(self) -> bool: ...

    def ready(self) -> bool: ...


class AlwaysReady:
    """A :class:`Probe` for an app without a background reader (tests that feed the store directly)."""

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return True


@dataclass(frozen=True)
class ApiServices:
    publisher: RequestPublisher
    outcomes: OutcomeSource
    kms: KmsPort
    wait_seconds: float
    probe: Probe


def services(request: Request) -> ApiServices:
    """FastAPI dependency: the app's :class:`ApiServices`."""
    found: ApiServices = request.app.state.services
    return found
