"""Tracing: one CRM event followed through the translator, the executor and the KMS call in one trace.

The translator and executor run as ``kmsbridge run`` builds them, on the real broker and simulator; an
in-memory exporter collects the spans. The event carries the ``traceparent`` of a span of its own (the
billing system's), and every span of the product must belong to that trace, each a child of the step
before it; ``kms.commands`` and ``kms.results`` carry the trace on in their headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Message
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kafka_edge import tracing
from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent, SubscriptionState
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield provider, exporter
    tracing.disable()
    provider.shutdown()


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    yield pipe
    pipe.close()


def _activation(card: str) -> SubscriptionEvent:
    now = datetime.now(UTC).replace(microsecond=0)
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id=f"S-{card}",
        account_id=f"A-{card}", subscription_type="RESIDENTIAL", created_at=now, version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card, stb_serial=f"STB-{card}")], removed_devices=[],
    )


def _trace_id(msg: Message) -> int:
    (traceparent,) = [value for key, value in msg.headers() or [] if key == tracing.TRACEPARENT]
    return int(traceparent.decode().split("-")[1], 16)


def test_one_trace_follows_an_event_from_kafka_to_the_kms_call(
    pipeline: Pipeline, kms_simulator: SimulatorHandle, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    card = f"91{uuid.uuid4().int % 10**8:08d}"
    event = _activation(card)
    topic = pipeline.settings.topic("subscriptions")
    with tracer_provider.get_tracer("billing").start_as_current_span("billing publishes") as billing:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    trace_id = billing.get_span_context().trace_id
    pipeline.producer.produce(topic, key=event.subscription_id.encode(), value=pipeline.codec.encode(event, topic),
                              headers=[(tracing.TRACEPARENT, carrier["traceparent"].encode())])
    pipeline.producer.flush(10)
    procs = [start_translator(pipeline.settings), start_executor(pipeline.settings)]
    try:
        results = pipeline.read("results", lambda msgs: sum(
            pipeline.codec.decode_any(m.value()).secure_client_id == card for m in msgs) >= 3, decode=False)
        commands = pipeline.read("commands", lambda msgs: sum(
            pipeline.codec.decode_any(m.value()).secure_client_id == card for m in msgs) >= 3, decode=False)

        def ours() -> list[ReadableSpan] | None:
            found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
            return found if sum(s.name == "execute" for s in found) >= 3 else None

        spans = wait_until("the executor's spans end", ours)
    finally:
        for proc in reversed(procs):
            proc.stop()

    by_id = {s.context.span_id: s for s in spans}
    (translate,) = [s for s in spans if s.name == "translate"]
    executes = [s for s in spans if s.name == "execute"]
    calls = [s for s in spans if s.name.startswith("kms ")]
    assert translate.parent is not None and translate.parent.span_id == billing.get_span_context().span_id
    assert translate.kind is SpanKind.CONSUMER and translate.attributes["messaging.destination.name"] == topic
    assert {s.parent.span_id for s in executes if s.parent} == {translate.context.span_id}
    assert {s.attributes["kms.operation"] for s in executes} >= {"PAIR", "SET_PIN", "SYNC_ENTITLEMENTS"}
    assert len(calls) >= 3 and all(c.kind is SpanKind.CLIENT for c in calls)
    assert all(c.parent is not None and by_id[c.parent.span_id].name == "execute" for c in calls)
    # the trace travels on in the headers of the commands and the results of this event
    mine = [m for m in commands + results if pipeline.codec.decode_any(m.value()).secure_client_id == card]
    assert {_trace_id(m) for m in mine} == {trace_id}


def test_tracing_off_adds_no_span_no_header_and_no_wrapper() -> None:
    tracing.disable()

    def step(msg: Message) -> str:
        return "ok"

    async def work() -> None:
        pass

    coro = work()
    try:
        assert tracing.wrap("translate", step) is step
        assert tracing.traced("execute", None, coro) is coro  # type: ignore[arg-type]
    finally:
        coro.close()
    assert tracing.propagation_headers() is None and tracing.current_ids() is None


def test_a_web_api_request_continues_the_callers_trace_into_kms_requests_and_the_translator(
    pipeline: Pipeline, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from kmsbridge.wiring_api import build_api
    from producers.topics import wait_for_topics

    tracer_provider, exporter = provider
    card = f"92{uuid.uuid4().int % 10**8:08d}"
    settings = pipeline.settings.model_copy(update={"api": pipeline.settings.api.model_copy(
        update={"api_keys": [SecretStr("trace-key")]})})
    with tracer_provider.get_tracer("crm").start_as_current_span("agent clicks reset PIN") as caller:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    trace_id = caller.get_span_context().trace_id
    wait_for_topics(settings.kafka_config(), settings.all_topics())  # leaders elected: the API reads at once
    api = build_api(settings)
    try:
        with TestClient(api.app) as client:
            answer = client.post(f"/v1/secure-clients/{card}/pin", json={"default": True},
                                 headers={"Authorization": "Bearer trace-key", "traceparent": carrier["traceparent"]})
    finally:
        api.close()
    assert answer.status_code == 202, answer.text
    requests = pipeline.read("requests", lambda msgs: any(
        pipeline.codec.decode_any(m.value()).secure_client_id == card for m in msgs), decode=False)
    (published,) = [m for m in requests if pipeline.codec.decode_any(m.value()).secure_client_id == card]
    assert _trace_id(published) == trace_id
    translator = start_translator(pipeline.settings)
    try:
        spans = wait_until("the translator's span of the request", lambda: [
            s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id and s.name == "translate"])
    finally:
        translator.stop()
    (server,) = [s for s in exporter.get_finished_spans()
                 if s.context.trace_id == trace_id and s.kind is SpanKind.SERVER]
    assert server.name == "POST /v1/secure-clients/{secure_client_id}/pin"
    assert server.parent is not None and server.parent.span_id == caller.get_span_context().span_id
    assert spans[0].parent is not None and spans[0].parent.span_id == server.context.span_id
