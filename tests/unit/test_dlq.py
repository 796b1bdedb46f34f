"""DLQ headers and input screens: where a message came from and why, never what it said."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from confluent_kafka import Message

from kafka_edge.dlq import (
    MAX_REASON,
    Oversized,
    TooFarInFuture,
    UnexpectedError,
    dlq_headers,
    safe_reason,
    screen_size,
    screen_times,
)
from schemas.errors import InvalidRecord


def message(value: bytes = b"\xc3\x01payload") -> Message:
    return Message(topic="crm.subscriptions", partition=2, offset=41, key=b"S-1", value=value, headers=None)


def headers_of(msg: Message, error: BaseException, **kwargs: object) -> dict[str, str]:
    return {k: (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in dlq_headers(msg, error, **kwargs)}  # type: ignore[arg-type]


def test_safe_reason_masks_digit_runs_of_four_or_more_and_quoted_values() -> None:
    text = "pin '4711' rejected for card 7000001 (code 42) text=\"Hello there\""

    masked = safe_reason(text)

    assert "4711" not in masked and "7000001" not in masked and "Hello there" not in masked
    assert "code 42" in masked  # short numbers (codes, field indexes) stay readable
    assert masked.count("'***'") == 2


def test_safe_reason_is_bounded() -> None:
    assert len(safe_reason("x" * 10_000)) == MAX_REASON


def test_headers_say_where_the_message_came_from_and_why() -> None:
    error = InvalidRecord("devices[0].secure_client_id: String should have at least 1 character")

    headers = headers_of(message(), error)

    assert headers["kmsbridge.original.topic"] == "crm.subscriptions"
    assert headers["kmsbridge.original.partition"] == "2"
    assert headers["kmsbridge.original.offset"] == "41"
    assert headers["kmsbridge.error.class"] == "InvalidRecord"
    assert headers["kmsbridge.error.reason"] == "invalid_record"
    assert headers["kmsbridge.error.message"].startswith("devices[0].secure_client_id")


def test_header_values_never_carry_a_pin_or_a_text_from_the_error_message() -> None:
    error = RuntimeError("could not apply pin='4711' with text 'Secret text'")

    headers = headers_of(message(), error, reason="x", extra=[("kmsbridge.note", "pin 4711")])

    joined = " ".join(headers.values())
    assert "4711" not in joined
    assert "Secret text" not in joined


def test_trusted_headers_go_out_as_formatted_and_extra_ones_are_masked() -> None:
    headers = headers_of(message(), RuntimeError("x"), extra=[("kmsbridge.extra", "card 1234567")],
                         trusted=[("kmsbridge.attempts", "6"), ("kmsbridge.idempotency_key", "evt:e1:7000001:SYNC")])

    assert headers["kmsbridge.extra"] == "card ****"
    assert headers["kmsbridge.attempts"] == "6"
    assert headers["kmsbridge.idempotency_key"] == "evt:e1:7000001:SYNC"


def test_an_oversized_value_is_poison_with_its_size_not_its_content() -> None:
    screen_size(b"x" * 1024, 1024)
    with pytest.raises(Oversized) as info:
        screen_size(b"4711" * 300, 1024)
    assert info.value.reason == "oversized"
    assert "1200 bytes" in str(info.value)
    assert "4711" not in str(info.value)


def test_a_timestamp_too_far_in_the_future_is_poison_and_a_near_one_is_not() -> None:
    now = datetime.now(UTC)
    screen_times(SimpleNamespace(created_at=now + timedelta(hours=1)), ["created_at"], timedelta(days=1))
    screen_times(SimpleNamespace(created_at=None), ["created_at"], timedelta(days=1))

    with pytest.raises(TooFarInFuture) as info:
        screen_times(SimpleNamespace(occurred_at=now + timedelta(days=400)), ["occurred_at"], timedelta(days=1))
    assert info.value.reason == "future_timestamp"
    assert "occurred_at" in str(info.value)


def test_an_unexpected_handler_error_keeps_only_its_class_name() -> None:
    error = UnexpectedError(ValueError("input_value='4711'"))

    assert error.reason == "unexpected_error"
    assert "ValueError" in str(error)
    assert "4711" not in str(error)
