"""A Schema Registry that refuses the credentials ends the translator and the executor, naming the
settings, and dead-letters nothing: the records are fine, the configuration is not (``kmsbridge run``
as a user runs it)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Operation,
    Service,
    ServiceState,
    Source,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.pipeline import Pipeline
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


class _Unauthorized(BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"error_code": 40101, "message": "Unauthorized"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _event(card: str, now: datetime) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id=f"S-{card}",
        account_id="A-1", subscription_type="RESIDENTIAL", created_at=now, version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card)], removed_devices=[])


def _command(card: str, now: datetime) -> KmsCommand:
    return KmsCommand(idempotency_key=f"test:{uuid.uuid4()}:{card}:REAUTHORISE_SECTOR",
                      operation=Operation.REAUTHORISE_SECTOR, secure_client_id=card,
                      source=Source(process_name="test"), created_at=now)


@pytest.mark.parametrize(("process", "logical", "make"), [
    ("translator", "subscriptions", _event),
    ("executor", "commands", _command),  # the result it cannot register ends it after the KMS call
])
def test_refused_registry_credentials_end_the_process_and_dead_letter_nothing(
    kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path, refusing_registry: str,
    process: str, logical: str, make: Callable[[str, datetime], object],
) -> None:
    pipeline = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    try:
        card = f"92{uuid.uuid4().int % 10**8:08d}"
        pipeline.produce(logical, [make(card, datetime.now(UTC).replace(microsecond=0))])

        proc = pipeline.spawn(process, env={"KMSBRIDGE_SCHEMA_REGISTRY_URL": refusing_registry,
                                            "KMSBRIDGE_SCHEMA_REGISTRY__USERNAME": "svc",
                                            "KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD": "wrong-pw-1"})
        assert proc.wait(60) == 1
        log = (tmp_path / f"{process}.log").read_text()
        assert "HTTP 401" in log and "KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD" in log
        assert "wrong-pw-1" not in log

        dlq = pipeline.settings.dlq(pipeline.settings.topic(logical))
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
        try:
            ends = [consumer.get_watermark_offsets(TopicPartition(dlq, p), timeout=10)[1]
                    for p in range(pipeline.partitions)]
        finally:
            consumer.close()
        assert sum(ends) == 0, "a refused registry must not dead-letter the records"
    finally:
        pipeline.close()
