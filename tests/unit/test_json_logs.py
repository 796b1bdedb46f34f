"""JSON logs (``KMSBRIDGE_LOG_FORMAT=json``): one object per line, masked as the text format is."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from kmsbridge.cli.common import cli_settings
from kmsbridge.logs import JsonFormatter, RedactingFormatter

TOKEN = 'kms-"tok\\en"-9f3a'  # a quote and a backslash: JSON escaping must not hide it from the mask


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_format_masks_pins_and_secrets_in_messages_and_tracebacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    monkeypatch.setenv("KMSBRIDGE_KMS__TOKEN", TOKEN)
    monkeypatch.setenv("KMSBRIDGE_LOG_FORMAT", "json")
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", "/nonexistent-stack")
    cli_settings()
    log = logging.getLogger("kmsbridge.test")

    log.info("set pin=4711 for card=4120051539 with token %s", TOKEN)
    try:
        raise RuntimeError(f"KMS said {TOKEN} and pin: 1234")
    except RuntimeError:
        log.exception("call failed")

    err = capsys.readouterr().err
    first, second = _lines(err)
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    assert first["level"] == "INFO" and first["logger"] == "kmsbridge.test"
    assert first["message"] == "set pin=**** for card=4120051539 with token ***"
    assert second["message"] == "call failed"
    assert "RuntimeError: KMS said *** and pin: ****" in str(second["exception"])
    assert "4711" not in err and "1234" not in err and "9f3a" not in err


def test_text_format_stays_the_default(
    monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    monkeypatch.setenv("KMSBRIDGE_STACK_DIR", "/nonexistent-stack")
    monkeypatch.delenv("KMSBRIDGE_LOG_FORMAT", raising=False)
    cli_settings()

    assert type(logging.getLogger().handlers[0].formatter) is RedactingFormatter


def test_json_lines_carry_the_trace_context_when_there_is_one() -> None:
    from kmsbridge.logs import Redactor

    record = logging.LogRecord("kmsbridge.x", logging.INFO, __file__, 1, "hello", None, None)
    traced = JsonFormatter(Redactor(), lambda: ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))

    line = json.loads(traced.format(record))

    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and line["span_id"] == "b7ad6b7169203331"
    assert "trace_id" not in json.loads(JsonFormatter(Redactor()).format(record))
