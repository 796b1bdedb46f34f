"""Support-agent requests, mail-run communications, and the PIN and text rules they rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provisioning import errors
from provisioning.pin import validate_pin
from provisioning.plan import Plan, Skip
from provisioning.provider import load_provider, provider_from_mapping
from provisioning.requests import plan_communication, plan_request
from provisioning.text import TextLimits, validate_text
from schemas.records import (
    CommunicationEvent,
    Device,
    Message,
    MessageKind,
    Operation,
    Priority,
    RequestType,
    ServiceRequest,
    Source,
    TextMode,
)

PROVIDER = load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")
AT = datetime(2026, 11, 25, 10, 5, tzinfo=UTC)
HOUSEHOLD = [Device(distributor="TWIN1", secure_client_id="200", stb_serial="B-2"),
             Device(distributor="MAIN", secure_client_id="100", stb_serial="B-1")]
OP = Operation


def code_of(rejection: errors.Rejection | None) -> str | None:
    return rejection.code if rejection else None


def request(type_: RequestType, **fields: Any) -> ServiceRequest:
    base: dict[str, Any] = {"request_id": "R-1", "type": type_, "secure_client_id": "100",
                            "process_name": "api", "requested_by": "agent-7", "requested_at": AT}
    base.update(fields)
    return ServiceRequest(**base)


def message_request(**fields: Any) -> ServiceRequest:
    defaults: dict[str, Any] = {"kind": MessageKind.MAIL, "text_mode": TextMode.ANSI,
                                "text": "Your sports package starts tonight"}
    return request(RequestType.SEND_MESSAGE, **{**defaults, **fields})


def communication(**fields: Any) -> CommunicationEvent:
    base: dict[str, Any] = {"communication_id": "C-77", "external_system": "IRDETO", "kind": "MAIL",
                            "text_mode": "ANSI", "text": "Your sports package starts tonight",
                            "subscription_id": "S-1", "created_at": AT}
    base.update(fields)
    return CommunicationEvent(**base)


def rejected(plan: Plan | Skip) -> str | None:
    assert isinstance(plan, Plan)
    if plan.rejection is None:
        return None
    assert plan.commands == ()
    return plan.rejection.code


# --- PIN rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pin", ["0000", "1234", "9999"])
def test_four_ascii_digits_are_a_valid_pin(pin: str) -> None:
    assert validate_pin(pin) is None


@pytest.mark.parametrize("pin", ["", "123", "12345", "12a4", " 123", "1234\n", "\u0661\u0662\u0663\u0664"])
def test_anything_else_is_an_invalid_pin_whose_description_hides_the_value(pin: str) -> None:
    rejection = validate_pin(pin)

    assert rejection is not None and rejection.code == errors.INVALID_PIN
    assert not pin.strip() or pin.strip() not in rejection.description


# --- text rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "text"), [
    (TextMode.ANSI, "Caf\u00e9 costs 5 \u20ac"),  # é and € are in Windows-1252
    (TextMode.UNICODE, "\u4f60\u597d \U0001f600"),
    (TextMode.RAW, "48656C6c6F"),
])
def test_valid_texts_pass(mode: TextMode, text: str) -> None:
    assert validate_text(mode, text) is None


@pytest.mark.parametrize("mode", list(TextMode))
@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_rejected_in_every_mode(mode: TextMode, text: str) -> None:
    assert code_of(validate_text(mode, text)) == errors.TEXT_EMPTY


def test_ansi_text_outside_windows_1252_is_rejected_naming_the_character_not_the_text() -> None:
    rejection = validate_text(TextMode.ANSI, "Hi \u4e2d secret")

    assert rejection is not None and rejection.code == errors.TEXT_NOT_ENCODABLE
    assert "U+4E2D at position 3" in rejection.description
    assert "secret" not in rejection.description


def test_unicode_text_with_a_lone_surrogate_is_not_encodable() -> None:
    assert code_of(validate_text(TextMode.UNICODE, "a\ud800b")) == errors.TEXT_NOT_ENCODABLE


@pytest.mark.parametrize("text", ["ABC", "0x41", "4G", "41 42"])
def test_raw_text_must_be_an_even_length_hex_string(text: str) -> None:
    assert code_of(validate_text(TextMode.RAW, text)) == errors.INVALID_RAW_TEXT


def test_ansi_limit_counts_characters_and_names_the_limit() -> None:
    assert validate_text(TextMode.ANSI, "a" * 1024) is None

    rejection = validate_text(TextMode.ANSI, "a" * 1025)

    assert rejection is not None and rejection.code == errors.TEXT_TOO_LONG
    assert rejection.description == "ANSI text is 1025 characters, the limit is 1024 characters"


def test_unicode_limit_counts_utf16_units_so_an_emoji_counts_twice() -> None:
    assert validate_text(TextMode.UNICODE, "\u00e9" * 512) is None
    assert code_of(validate_text(TextMode.UNICODE, "\u00e9" * 513)) == errors.TEXT_TOO_LONG
    assert code_of(validate_text(TextMode.UNICODE, "\U0001f600" * 257)) == errors.TEXT_TOO_LONG


def test_raw_limit_counts_decoded_bytes() -> None:
    assert validate_text(TextMode.RAW, "ab" * 1024) is None

    rejection = validate_text(TextMode.RAW, "ab" * 1025)

    assert rejection is not None and "1025 bytes, the limit is 1024 bytes" in rejection.description


def test_limits_can_be_configured() -> None:
    tight = TextLimits(ansi_max_chars=5, unicode_max_units=5, raw_max_bytes=2)

    assert code_of(validate_text(TextMode.ANSI, "123456", tight)) == errors.TEXT_TOO_LONG
    assert code_of(validate_text(TextMode.RAW, "aabbcc", tight)) == errors.TEXT_TOO_LONG
    assert validate_text(TextMode.UNICODE, "12345", tight) is None


# --- PIN requests ------------------------------------------------------------------------------------


def test_set_pin_sends_the_requested_pin_to_the_card_as_express() -> None:
    plan = plan_request(request(RequestType.SET_PIN, pin="4321"), PROVIDER)

    (command,) = plan.commands
    assert command.operation is OP.SET_PIN and command.secure_client_id == "100"
    assert command.pin is not None and command.pin.get_secret_value() == "4321"
    assert command.priority is Priority.EXPRESS
    assert command.idempotency_key == "req:R-1:100:SET_PIN"
    assert command.source == Source(process_name="api", request_id="R-1")
    assert command.created_at == AT
    assert command.subscription_id is None


def test_set_pin_with_an_invalid_pin_is_rejected_without_revealing_it() -> None:
    plan = plan_request(request(RequestType.SET_PIN, pin="12x4"), PROVIDER)

    assert rejected(plan) == errors.INVALID_PIN
    assert plan.rejection is not None and "12x4" not in plan.rejection.description


def test_set_pin_without_a_pin_is_rejected() -> None:
    plan = plan_request(request(RequestType.SET_PIN), PROVIDER)

    assert rejected(plan) == errors.MISSING_PARAMETER


def test_reset_pin_sends_the_provider_default_pin() -> None:
    provider = provider_from_mapping({
        "operator_tag": "X", "default_pin": "2468",
        "distributors": {"MAIN": {"services": "*"}}, "products": {"BASIC": ["P100"]},
    })

    (command,) = plan_request(request(RequestType.RESET_PIN), provider).commands

    assert command.operation is OP.SET_PIN
    assert command.pin is not None and command.pin.get_secret_value() == "2468"


def test_pin_cannot_be_set_for_all_clients_at_once() -> None:
    plan = plan_request(request(RequestType.RESET_PIN, secure_client_id=None, all=True), PROVIDER)

    assert rejected(plan) == errors.UNSUPPORTED_TARGET


def test_reauthorise_sector_targets_the_card() -> None:
    (command,) = plan_request(request(RequestType.REAUTHORISE_SECTOR), PROVIDER).commands

    assert command.operation is OP.REAUTHORISE_SECTOR and command.secure_client_id == "100"
    assert command.pin is None and command.message is None


def test_reauthorising_a_subscription_covers_each_of_its_devices() -> None:
    req = request(RequestType.REAUTHORISE_SECTOR, secure_client_id=None, subscription_id="S-1")

    plan = plan_request(req, PROVIDER, devices=HOUSEHOLD)

    assert [(c.secure_client_id, c.distributor) for c in plan.commands] == [("100", "MAIN"), ("200", "TWIN1")]
    assert {c.subscription_id for c in plan.commands} == {"S-1"}


# --- message requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "operation"), [(MessageKind.MAIL, OP.SEND_MAIL),
                                                 (MessageKind.MESSAGE, OP.SEND_MESSAGE)])
def test_message_to_one_card_uses_mail_or_on_screen_message(kind: MessageKind, operation: Operation) -> None:
    (command,) = plan_request(message_request(kind=kind), PROVIDER).commands

    assert command.operation is operation and command.secure_client_id == "100"
    assert command.message == Message(kind=kind, text_mode=TextMode.ANSI,
                                      text="Your sports package starts tonight")


@pytest.mark.parametrize(("kind", "operation"), [(MessageKind.MAIL, OP.SEND_MAIL_GLOBAL),
                                                 (MessageKind.MESSAGE, OP.SEND_MESSAGE_GLOBAL)])
def test_message_to_all_is_one_global_command(kind: MessageKind, operation: Operation) -> None:
    plan = plan_request(message_request(kind=kind, secure_client_id=None, all=True), PROVIDER)

    (command,) = plan.commands
    assert command.operation is operation and command.secure_client_id == "*"
    assert command.idempotency_key == f"req:R-1:*:{operation.value}"


def test_message_to_a_subscription_goes_to_each_device() -> None:
    req = message_request(secure_client_id=None, subscription_id="S-1")

    plan = plan_request(req, PROVIDER, devices=HOUSEHOLD)

    assert [c.secure_client_id for c in plan.commands] == ["100", "200"]
    assert len({c.idempotency_key for c in plan.commands}) == 2


def test_message_to_an_unknown_subscription_is_rejected() -> None:
    req = message_request(secure_client_id=None, subscription_id="S-404")

    assert rejected(plan_request(req, PROVIDER, devices=None)) == errors.UNKNOWN_SUBSCRIPTION


def test_message_to_a_subscription_without_devices_is_rejected() -> None:
    req = message_request(secure_client_id=None, subscription_id="S-1")

    assert rejected(plan_request(req, PROVIDER, devices=[])) == errors.NO_DEVICES


def test_request_without_a_target_is_rejected() -> None:
    assert rejected(plan_request(message_request(secure_client_id=None), PROVIDER)) == errors.MISSING_TARGET


def test_request_with_two_targets_is_rejected() -> None:
    req = message_request(subscription_id="S-1")

    assert rejected(plan_request(req, PROVIDER, devices=HOUSEHOLD)) == errors.AMBIGUOUS_TARGET


def test_message_request_missing_its_text_mode_is_rejected_naming_it() -> None:
    plan = plan_request(request(RequestType.SEND_MESSAGE, kind=MessageKind.MAIL, text="hi"), PROVIDER)

    assert rejected(plan) == errors.MISSING_PARAMETER
    assert plan.rejection is not None and plan.rejection.description == "SEND_MESSAGE needs text_mode"


def test_message_request_with_text_not_encodable_in_its_mode_is_rejected() -> None:
    plan = plan_request(message_request(text="\u4f60\u597d"), PROVIDER)

    assert rejected(plan) == errors.TEXT_NOT_ENCODABLE


def test_message_request_text_limits_are_the_callers() -> None:
    plan = plan_request(message_request(), PROVIDER, TextLimits(ansi_max_chars=10))

    assert rejected(plan) == errors.TEXT_TOO_LONG


@pytest.mark.parametrize("type_", [RequestType.RESET_SUBSCRIPTION, RequestType.QUERY_CLIENT])
def test_reset_and_query_requests_plan_no_commands(type_: RequestType) -> None:
    assert plan_request(request(type_), PROVIDER) == Plan()


def test_the_same_request_planned_twice_gives_identical_commands() -> None:
    req = message_request(secure_client_id=None, subscription_id="S-1")

    assert plan_request(req, PROVIDER, devices=HOUSEHOLD) == plan_request(req, PROVIDER, devices=HOUSEHOLD)


# --- communications (mail runs) ----------------------------------------------------------------------


def test_communication_for_another_external_system_is_skipped() -> None:
    result = plan_communication(communication(external_system="OTHER"), PROVIDER, devices=HOUSEHOLD)

    assert result == Skip("external system 'OTHER' is not 'IRDETO'")


def test_communication_to_a_subscription_is_mailed_to_each_device() -> None:
    scheduled = AT + timedelta(hours=2)

    plan = plan_communication(communication(scheduled_at=scheduled), PROVIDER, devices=HOUSEHOLD,
                              topic="crm.communications")

    assert isinstance(plan, Plan)
    assert [(c.operation, c.secure_client_id) for c in plan.commands] == [
        (OP.SEND_MAIL, "100"), (OP.SEND_MAIL, "200"),
    ]
    first = plan.commands[0]
    assert first.idempotency_key == "comm:C-77:100:SEND_MAIL"
    assert first.source == Source(process_name="translator", topic="crm.communications", communication_id="C-77")
    assert first.not_before == scheduled
    assert first.priority is Priority.REGULAR
    assert first.created_at == AT
    assert first.subscription_id == "S-1"


def test_communication_to_everyone_is_a_global_message() -> None:
    comm = communication(kind="MESSAGE", subscription_id=None, all=True)

    plan = plan_communication(comm, PROVIDER)

    assert isinstance(plan, Plan)
    assert [(c.operation, c.secure_client_id) for c in plan.commands] == [(OP.SEND_MESSAGE_GLOBAL, "*")]


def test_raw_communication_to_one_card_is_sent_as_is() -> None:
    comm = communication(text_mode="RAW", text="48656c6c6f", subscription_id=None, secure_client_id="100")

    plan = plan_communication(comm, PROVIDER)

    assert isinstance(plan, Plan)
    (command,) = plan.commands
    assert command.message == Message(kind=MessageKind.MAIL, text_mode=TextMode.RAW, text="48656c6c6f")


def test_communication_to_an_unknown_subscription_is_rejected() -> None:
    assert rejected(plan_communication(communication(), PROVIDER, devices=None)) == errors.UNKNOWN_SUBSCRIPTION


def test_communication_with_invalid_text_is_rejected() -> None:
    plan = plan_communication(communication(text_mode="RAW", text="xyz"), PROVIDER, devices=HOUSEHOLD)

    assert rejected(plan) == errors.INVALID_RAW_TEXT
