"""Tracing with OpenTelemetry: W3C ``traceparent`` in Kafka headers, a span per translated input, per
executed command and per KMS call.

An SRE follows one CRM event through the product: the translator continues the trace of the input's
``traceparent`` header (or starts one) in a span per input message and writes the span's context into
the headers of every command and result it produces; the executor continues it from the command's
headers in a span per command, with a child span per KMS call, and writes it into the result's headers.

Off by default and then free: until :func:`enable` installs a tracer (the composition root does so when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, ``kmsbridge.tracing``), every hook is one check of a module
global: no span, no context look-up, no header, no wrapper coroutine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kafka_edge.kafka_clients import Headers

__all__ = [
    "TRACEPARENT",
    "current_ids",
    "disable",
    "enable",
    "enabled",
    "kms_call_span",
    "propagation_headers",
    "server_span",
    "traced",
    "wrap",
]

T = TypeVar("T")

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C Trace Context: traceparent and tracestate
_tracer: Tracer | None = None


def enable(provider: trace.TracerProvider) -> None:
    """Trace with ``provider`` from now on (the composition root, or a test's in-memory provider)."""
    global _tracer
    _tracer = provider.get_tracer("kmsbridge")


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def _carrier(msg: Message) -> dict[str, str]:
    """The W3C headers of ``msg`` as the propagator reads them (other headers are left alone)."""
    found: dict[str, str] = {}
    headers = msg.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key in (TRACEPARENT, "tracestate") and value is not None:
            found[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


def _message_attributes(msg: Message) -> dict[str, Any]:
    return {"messaging.system": "kafka", "messaging.destination.name": msg.topic() or "",
            "messaging.destination.partition.id": str(msg.partition()),
            "messaging.kafka.offset": msg.offset() or 0}


@contextlib.contextmanager
def _consume_span(tracer: Tracer, name: str, msg: Message, attributes: dict[str, Any]) -> Iterator[None]:
    parent = _PROPAGATOR.extract(_carrier(msg))
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                      attributes={**_message_attributes(msg), **attributes}):
        yield


def wrap(name: str, fn: Callable[[Message], T]) -> Callable[[Message], T]:
    """``fn`` run inside a span that continues the trace of each message's headers; ``fn`` itself when
    tracing is off (so a hot loop asks once per batch, not once per message)."""
    tracer = _tracer
    if tracer is None:
        return fn

    def call(msg: Message) -> T:
        with _consume_span(tracer, name, msg, {}):
            return fn(msg)

    return call


def traced(name: str, msg: Message, coro: Coroutine[Any, Any, T],
           attributes: dict[str, Any] | None = None) -> Coroutine[Any, Any, T]:
    """``coro``, run inside a span that continues the trace of ``msg``'s headers; ``coro`` itself when off."""
    tracer = _tracer
    if tracer is None:
        return coro

    async def run() -> T:
        with _consume_span(tracer, name, msg, attributes or {}):
            return await coro

    return run()


def kms_call_span(operation: str) -> contextlib.AbstractContextManager[Any]:
    """The span of one KMS call (a child of the command's span); a no-op context when off."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(f"kms {operation}", kind=SpanKind.CLIENT,
                                        attributes={"rpc.system": "soap", "rpc.method": operation})


def server_span(name: str, headers: Mapping[str, str]) -> contextlib.AbstractContextManager[Any]:
    """The span of one Web API request, continuing the caller's W3C ``traceparent`` header (or starting
    a trace); records published while it is current carry it on (:func:`propagation_headers`). A no-op
    context (yielding None) when off."""
    tracer = _tracer
    if tracer is None:
        return contextlib.nullcontext()
    carrier = {key: value for key in (TRACEPARENT, "tracestate") if (value := headers.get(key)) is not None}
    return tracer.start_as_current_span(name, context=_PROPAGATOR.extract(carrier), kind=SpanKind.SERVER)


def propagation_headers() -> Headers | None:
    """Headers carrying the current span's context to the next consumer, or None (tracing off, no span)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    headers: Headers = [(key, value.encode("latin-1")) for key, value in carrier.items()]
    return headers or None


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, for log lines; None when there is none."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
