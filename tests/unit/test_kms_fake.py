"""The in-memory KMS fake: the port's behaviour that unit tests of the executor and reconciler rely on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from kms_adapter import (
    QUERY_SECTIONS,
    InMemoryKms,
    KmsAuthError,
    KmsError,
    KmsPort,
    KmsRejected,
    KmsUnavailable,
)
from schemas.records import KmsCommand, Message, MessageKind, Operation, Product, Source, TextMode

T = TypeVar("T")
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def command(operation: Operation, key: str, card: str = "C1", **fields: Any) -> KmsCommand:
    return KmsCommand(idempotency_key=key, operation=operation, secure_client_id=card,
                      source=Source(process_name="test"), created_at=NOW, **fields)


def test_fake_satisfies_the_port_protocol() -> None:
    assert isinstance(InMemoryKms(), KmsPort)


def test_sync_entitlements_then_query_clients_returns_the_products_with_their_dates() -> None:
    kms = InMemoryKms()
    products = [Product(product_id="P100", valid_from=NOW), Product(product_id="P200")]
    outcome = run(kms.execute(command(Operation.SYNC_ENTITLEMENTS, "k1", products=products)))

    assert (outcome.provider_code, outcome.duplicate) == ("OK", False)
    assert kms.entitlements("C1") == tuple(products)
    states = run(kms.query_clients(["C1", "C2"]))
    assert states["C1"].known and states["C1"].entitlements == tuple(products)
    assert not states["C2"].known


def test_repeated_idempotency_key_applies_once_and_reports_duplicate() -> None:
    kms = InMemoryKms()
    mail = command(Operation.SEND_MAIL, "mail-1",
                   message=Message(kind=MessageKind.MAIL, text_mode=TextMode.ANSI, text="hi"))
    run(kms.execute(mail))
    second = run(kms.execute(mail))

    assert second.duplicate
    assert kms.snapshot()["secure_clients"]["C1"]["mailbox"] == [{"text": "hi", "text_mode": "ANSI"}]
    assert len(kms.calls) == 2 and kms.executed == [mail, mail]


def test_fail_next_raises_the_scripted_errors_then_recovers_and_records_every_call() -> None:
    kms = InMemoryKms()
    kms.fail_next(2, lambda: KmsUnavailable("timeout"))
    pair = command(Operation.PAIR, "p1", chipset="STB-1")

    for _ in range(2):
        with pytest.raises(KmsUnavailable) as info:
            run(kms.execute(pair))
        assert info.value.retryable and info.value.kind == "timeout"
    assert kms.paired_chipset("C1") is None
    run(kms.execute(pair))
    assert kms.paired_chipset("C1") == "STB-1"
    assert [c.method for c in kms.calls] == ["execute"] * 3


def test_fail_next_applies_to_ping_and_queries_too() -> None:
    kms = InMemoryKms()
    kms.fail_next(1, KmsAuthError(401))
    with pytest.raises(KmsAuthError):
        run(kms.ping())
    run(kms.ping())


def test_card_error_rejects_with_its_code_and_changes_nothing() -> None:
    kms = InMemoryKms()
    kms.set_card_error("C1", "UNKNOWN_CLIENT")
    with pytest.raises(KmsRejected) as info:
        run(kms.execute(command(Operation.REAUTHORISE_SECTOR, "r1")))
    assert info.value.code == "UNKNOWN_CLIENT" and not info.value.retryable
    assert kms.snapshot()["secure_clients"] == {}
    kms.clear_card_error("C1")
    run(kms.execute(command(Operation.REAUTHORISE_SECTOR, "r1")))
    assert kms.snapshot()["secure_clients"]["C1"]["sector_syncs"] == 1


def test_strict_clients_reject_a_card_never_seen() -> None:
    kms = InMemoryKms(strict_clients=True)
    with pytest.raises(KmsRejected, match="UNKNOWN_CLIENT"):
        run(kms.execute(command(Operation.CLEAR_ENTITLEMENTS, "c1")))
    with pytest.raises(KmsRejected, match="UNKNOWN_CLIENT"):
        run(kms.query_client("C1"))
    kms.seed("C1")
    run(kms.execute(command(Operation.CLEAR_ENTITLEMENTS, "c1")))


def test_set_pin_stores_the_pin_but_queries_only_say_it_is_set() -> None:
    kms = InMemoryKms()
    run(kms.execute(command(Operation.SET_PIN, "pin-1", pin=SecretStr("4321"))))
    info = run(kms.query_client("C1"))

    assert kms.pin("C1") == "4321"
    assert list(info) == list(QUERY_SECTIONS)
    assert info["security"] == {"pin_set": "true"}
    assert "4321" not in repr(info) and "4321" not in repr(kms.calls)
    assert run(kms.query_clients(["C1"]))["C1"].pin_set


def test_query_of_named_sections_returns_only_those() -> None:
    kms = InMemoryKms()
    run(kms.execute(command(Operation.PAIR, "p1", chipset="STB-9")))
    assert run(kms.query_client("C1", ["pairing"])) == {"pairing": {"paired": "true", "chipset": "STB-9"}}


@pytest.mark.parametrize(
    ("operation", "fields", "code"),
    [
        (Operation.PAIR, {}, "INVALID_COMMAND"),
        (Operation.SET_PIN, {}, "INVALID_COMMAND"),
        (Operation.SEND_MESSAGE, {}, "INVALID_COMMAND"),
        (Operation.QUERY_CLIENT, {}, "UNSUPPORTED_OPERATION"),
    ],
)
def test_a_command_missing_what_its_operation_needs_is_rejected_before_it_is_sent(
    operation: Operation, fields: dict[str, Any], code: str
) -> None:
    kms = InMemoryKms()
    with pytest.raises(KmsRejected) as info:
        run(kms.execute(command(operation, "bad", **fields)))
    assert info.value.code == code
    assert kms.snapshot()["audit"] == []


def test_global_message_reaches_every_subscriber_list_not_a_card() -> None:
    kms = InMemoryKms()
    run(kms.execute(command(Operation.SEND_MESSAGE_GLOBAL, "g1", card="*",
                            message=Message(kind=MessageKind.MESSAGE, text_mode=TextMode.UNICODE, text="★"))))
    snap = kms.snapshot()
    assert snap["global_messages"] == [{"text": "★", "text_mode": "UNICODE"}]
    assert snap["secure_clients"] == {}


def test_seeded_state_is_what_the_reconciler_reads() -> None:
    kms = InMemoryKms()
    kms.seed("C1", entitlements=[{"product_id": "P1", "valid_until": "2027-01-01T00:00:00Z"}],
             paired_chipset="STB-1", pin="0001")
    state = run(kms.query_clients(["C1"]))["C1"]
    assert state.entitlements == (Product(product_id="P1", valid_until=datetime(2027, 1, 1, tzinfo=UTC)),)
    assert (state.paired_chipset, state.pin_set) == ("STB-1", True)


def test_latency_is_awaited_on_every_call() -> None:
    kms = InMemoryKms(latency=0.05)

    async def many() -> None:
        await asyncio.gather(*(kms.ping() for _ in range(20)))

    loop = asyncio.new_event_loop()
    try:
        started = loop.time()
        loop.run_until_complete(many())
        elapsed = loop.time() - started
    finally:
        loop.close()
    assert elapsed >= 0.05
    assert len(kms.calls) == 20


def test_closed_fake_refuses_calls() -> None:
    kms = InMemoryKms()
    run(kms.aclose())
    with pytest.raises(RuntimeError):
        run(kms.ping())


def test_error_types_say_whether_to_retry() -> None:
    assert KmsUnavailable("http_503").retryable
    assert KmsAuthError(401).retryable
    assert not KmsRejected("UNKNOWN_CLIENT").retryable
    assert all(issubclass(t, KmsError) for t in (KmsUnavailable, KmsAuthError, KmsRejected))
    assert "KMSBRIDGE_KMS__TOKEN" in str(KmsAuthError(403))


def test_text_with_characters_xml_cannot_carry_is_rejected_before_it_is_sent() -> None:
    kms = InMemoryKms()
    # The record edge refuses such a text (schemas.limits); a message built past it, as a record
    # written before the limit would be, still never reaches the KMS.
    text = Message.model_construct(kind=MessageKind.MAIL, text_mode=TextMode.RAW, text="bell\x07")
    bad = command(Operation.SEND_MAIL, "m", message=text)
    with pytest.raises(KmsRejected) as info:
        run(kms.execute(bad))
    assert info.value.code == "INVALID_COMMAND" and "\x07" not in str(info.value)
    assert kms.snapshot()["secure_clients"] == {}
