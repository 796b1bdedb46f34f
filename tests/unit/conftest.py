"""Unit-test fixtures: an in-process fake Confluent Schema Registry.

The fake speaks the REST subset ``confluent_kafka.schema_registry.SchemaRegistryClient`` uses for
Avro values (checked against confluent-kafka 2.x ``_sync/schema_registry_client.py``):

- ``POST /subjects/{subject}/versions?normalize=...`` with ``{"schema": "...", "schemaType"?: ...}``
  answers ``{"id": N}``; the same schema text gets the same id, as in the real registry;
- ``GET /schemas/ids/{id}`` answers ``{"schema": "..."}`` (plus ``schemaType`` when not Avro), or
  404 with ``error_code`` 40403.

It runs on a free loopback port in a thread, so the real client and its HTTP stack are exercised.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from pydantic import BaseModel, SecretStr

from schemas.records import (
    CommunicationEvent,
    Device,
    DriftItem,
    EventType,
    KmsCommand,
    KmsResult,
    Message,
    MessageKind,
    Operation,
    Priority,
    Product,
    ReconcileReport,
    ReconcileRequest,
    RequestType,
    ResultState,
    Service,
    ServiceRequest,
    ServiceState,
    Source,
    SubscriptionEvent,
    SubscriptionState,
    TextMode,
)

_VERSIONS = re.compile(r"^/subjects/(?P<subject>[^/]+)/versions$")
_BY_ID = re.compile(r"^/schemas/ids/(?P<id>\d+)$")


@dataclass
class FakeSchemaRegistry:
    """State of the fake; tests read ``requests`` and may ``register`` schemas as another producer."""

    url: str = ""
    schemas: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (schema text, type)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path without query)
    fail_with: int | None = None  # answer every request with this HTTP status (outage drills)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: str, schema_type: str = "AVRO") -> int:
        with self._lock:
            found = [sid for sid, (text, kind) in self.schemas.items() if (text, kind) == (schema, schema_type)]
            schema_id = found[0] if found else len(self.schemas) + 1
            self.schemas[schema_id] = (schema, schema_type)
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, path in self.requests if m == method and re.fullmatch(pattern, path))


def _handler(registry: FakeSchemaRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            registry.requests.append((method, path))
            if registry.fail_with is not None:
                self._reply(registry.fail_with, {"error_code": registry.fail_with * 100, "message": "drill"})
                return
            versions = _VERSIONS.match(path)
            by_id = _BY_ID.match(path)
            if method == "POST" and versions:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                schema_id = registry.register(
                    unquote(versions["subject"]), body["schema"], body.get("schemaType", "AVRO")
                )
                self._reply(200, {"id": schema_id})
            elif method == "GET" and by_id:
                found = registry.schemas.get(int(by_id["id"]))
                if found is None:
                    self._reply(404, {"error_code": 40403, "message": f"Schema {by_id['id']} not found"})
                    return
                text, kind = found
                self._reply(200, {"schema": text} if kind == "AVRO" else {"schema": text, "schemaType": kind})
            else:
                self._reply(404, {"error_code": 404, "message": f"fake registry does not serve {method} {path}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


@pytest.fixture
def schema_registry() -> Iterator[FakeSchemaRegistry]:
    registry = FakeSchemaRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    registry.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-schema-registry", daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- one realistic record of every type ---------------------------------------------------------


def _at(hour: int, minute: int = 0, millis: int = 0) -> datetime:
    # Whole milliseconds: Avro timestamp-millis keeps no more, and round trips compare equal.
    return datetime(2026, 11, 25, hour, minute, 0, millis * 1000, tzinfo=UTC)


def make_sample_records() -> dict[str, BaseModel]:
    """One record of each type in ``RECORD_TYPES``, with every nested record, list, secret and map used."""
    device = Device(distributor="MAIN", secure_client_id="4120051539", stb_serial="B-1")
    twin = Device(distributor="TWIN", secure_client_id="4120051540", stb_serial=None)
    return {
        "SubscriptionEvent": SubscriptionEvent(
            event_id="0b7e3c1e-8f2a-4c4e-9a51-3f6d2a9d7c10", event_type=EventType.SERVICES_CHANGED,
            occurred_at=_at(10, millis=123), subscription_id="S-1", account_id="A-1",
            subscription_type="RESIDENTIAL", created_at=_at(9), version=3, state=SubscriptionState.ACTIVE,
            services=[
                Service(service_code="BASIC", state=ServiceState.ACTIVE),
                Service(service_code="SPORTS", state=ServiceState.INACTIVE, valid_from=_at(0),
                        valid_until=_at(23, 59, 999)),
                Service(service_code="MOVIES", state=ServiceState.ACTIVE, valid_until=_at(12)),
            ],
            devices=[device, twin],
            removed_devices=[Device(distributor="TWIN", secure_client_id="4120051541")],
            added_devices=[twin],
        ),
        "CommunicationEvent": CommunicationEvent(
            communication_id="C-77", external_system="IRDETO", kind=MessageKind.MAIL, text_mode=TextMode.UNICODE,
            text="Ihr Sportpaket startet heute Abend ⚽", subscription_id="S-1", created_at=_at(10, 5),
            scheduled_at=_at(18),
        ),
        "ServiceRequest": ServiceRequest(
            request_id="R-9", type=RequestType.SET_PIN, secure_client_id="4120051539", pin=SecretStr("4711"),
            sections=["1", "2"], process_name="webapi", requested_by="alice", requested_at=_at(11),
        ),
        "KmsCommand": KmsCommand(
            idempotency_key="S-1:3:4120051539:SYNC", operation=Operation.SYNC_ENTITLEMENTS,
            secure_client_id="4120051539", subscription_id="S-1", subscription_version=3, distributor="MAIN",
            products=[Product(product_id="101", valid_from=_at(0)), Product(product_id="102")],
            chipset="B-1", pin=SecretStr("0000"),
            message=Message(kind=MessageKind.MESSAGE, text_mode=TextMode.ANSI, text="Welcome"),
            source=Source(process_name="translator", topic="crm.subscriptions",
                          event_id="0b7e3c1e-8f2a-4c4e-9a51-3f6d2a9d7c10"),
            priority=Priority.EXPRESS, not_before=_at(10, 1), created_at=_at(10, 0, 456),
        ),
        "KmsResult": KmsResult(
            idempotency_key="R-10:QUERY", operation="QUERY_CLIENT", secure_client_id="4120051539",
            request_id="R-10", state=ResultState.COMPLETED, attempts=2, executed_at=_at(11, 1),
            latency_ms=12.5, duplicate=True,
            client_info={"products": {"101": "2026-12-31"}, "pairing": {"chipset": "B-1"}},
        ),
        "ReconcileRequest": ReconcileRequest(
            run_id="run-1", created_from=_at(0), subscription_types=["RESIDENTIAL"], subscription_ids=["S-1"],
            preview=True, requested_by="cron", requested_at=_at(2),
        ),
        "ReconcileReport": ReconcileReport(
            run_id="run-1", preview=True, checked=10, in_sync=8, drifted=2, commands_published=0, failed=0,
            items=[
                DriftItem(subscription_id="S-1", secure_client_id="4120051539", missing_products=["101"],
                          extra_products=["999"], pairing="expected B-1, found none", pin="differs"),
                DriftItem(subscription_id="S-2", secure_client_id="4120051599", unknown_to_crm=True),
            ],
            items_omitted=3, started_at=_at(2), finished_at=_at(2, 1), duration_seconds=61.5,
        ),
    }


@pytest.fixture
def sample_records() -> dict[str, BaseModel]:
    return make_sample_records()
