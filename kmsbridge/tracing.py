"""Turns tracing on for a process when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-only
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: an OpenTelemetry SDK tracer provider exporting by
OTLP over HTTP, batched. The standard ``OTEL_*`` variables apply as the SDK reads them
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``[``_ARG``],
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``, ...); ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keeps tracing off. Without an endpoint nothing is imported or built and
the hooks of :mod:`kafka_edge.tracing` cost one check each.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping

from kafka_edge import tracing

__all__ = ["setup_tracing"]


def setup_tracing(process: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the OTLP-exporting tracer provider if the environment asks for one; True if it did."""
    env = os.environ if environ is None else environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").lower() == "true" \
            or env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME, when set, wins over the default name (Resource.create merges the environment).
    resource = Resource.create({SERVICE_NAME: f"kmsbridge-{process}"} if "OTEL_SERVICE_NAME" not in env else {})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    tracing.enable(provider)
    atexit.register(provider.shutdown)  # flush the last batch on exit
    return True
