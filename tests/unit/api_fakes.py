"""Test doubles for the Web API's unit tests, copying the real surfaces.

- :class:`FakePublisher` has :class:`producers.requests.KafkaRequestPublisher`'s two methods and records
  what was published; ``then`` plays the pipeline (e.g. puts a result in the store), ``fail`` makes the
  next publish raise the real ``ProducerError``.
- The outcome store is the real :class:`producers.outcomes.OutcomeStore` (it is pure and in memory) and
  the KMS is the real in-memory fake :class:`kms_adapter.fake.InMemoryKms`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from log_fakes import memory_request_log
from pydantic import SecretStr

from kms_adapter.fake import InMemoryKms
from kmsbridge.settings import ApiSettings, Settings
from producers.api import create_app
from producers.errors import ProducerError
from producers.outcomes import OutcomeStore, planning_expectation
from provisioning.provider import load_provider
from provisioning.text import TextLimits
from reconciler.communications_queue import CommunicationQueue
from reconciler.run_definitions import RunDefinitionStore
from schemas.records import KmsResult, ReconcileRequest, ResultState, ServiceRequest

__all__ = ["KEY", "PROVIDER", "ApiUnderTest", "FakePublisher", "auth", "build", "result_for"]

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
KEY = "unit-test-key-0f3a"


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class FakePublisher:
    requests: list[ServiceRequest] = field(default_factory=list)
    runs: list[ReconcileRequest] = field(default_factory=list)
    then: Callable[[ServiceRequest | ReconcileRequest], None] | None = None
    fail: bool = False

    def publish_request(self, req: ServiceRequest) -> None:
        if self.fail:
            raise ProducerError("producing to kms.requests: broker down")
        self.requests.append(req)
        if self.then is not None:
            self.then(req)

    def publish_reconcile(self, run: ReconcileRequest) -> None:
        if self.fail:
            raise ProducerError("producing to reconcile.requests: broker down")
        self.runs.append(run)
        if self.then is not None:
            self.then(run)


def result_for(req: ServiceRequest, card: str | None = None, *, state: ResultState = ResultState.COMPLETED,
               code: str | None = None, description: str | None = None, operation: str = "SET_PIN") -> KmsResult:
    card = card or req.secure_client_id or "*"
    return KmsResult(idempotency_key=f"req:{req.request_id}:{card}:{operation}", operation=operation,
                     secure_client_id=card, request_id=req.request_id, state=state, error_code=code,
                     error_description=description, executed_at=datetime.now(UTC))


@dataclass
class ApiUnderTest:
    app: FastAPI
    client: TestClient
    publisher: FakePublisher
    store: OutcomeStore
    kms: InMemoryKms


def build(keys: list[str] | None = None, *, wait_seconds: float = 2.0, kms: InMemoryKms | None = None,
          api_keys_file: Path | None = None, **api: Any) -> ApiUnderTest:
    """The app over fakes; ``api``: further :class:`ApiSettings` (``rate_limit``, ``docs``, ...)."""
    settings = Settings(api=ApiSettings(api_keys=[SecretStr(k) for k in (keys if keys is not None else [KEY])],
                                        api_keys_file=api_keys_file, wait_seconds=wait_seconds, **api))
    publisher = FakePublisher()
    store = OutcomeStore(planning_expectation(PROVIDER, TextLimits()))
    fake_kms = kms or InMemoryKms()
    app = create_app(settings, publisher, store, fake_kms)
    app.state.request_log = memory_request_log()
    app.state.run_store = RunDefinitionStore(app.state.request_log.engine)
    app.state.communication_queue = CommunicationQueue(app.state.request_log.engine)
    return ApiUnderTest(app, TestClient(app), publisher, store, fake_kms)
