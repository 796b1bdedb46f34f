"""Tracing is built only when the standard OpenTelemetry variables ask for an OTLP exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kafka_edge import tracing
from kmsbridge.tracing import setup_tracing


@pytest.fixture(autouse=True)
def _off_again() -> Iterator[None]:
    yield
    tracing.disable()


@pytest.mark.parametrize("env", [
    {},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
])
def test_without_an_endpoint_or_with_the_sdk_disabled_tracing_stays_off(env: dict[str, str]) -> None:
    assert setup_tracing("translator", env) is False
    assert not tracing.enabled()


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_otlp_endpoint_turns_tracing_on(variable: str) -> None:
    assert setup_tracing("executor", {variable: "http://127.0.0.1:4318"}) is True
    assert tracing.enabled()
