"""The simulated KMS's rules, tested on the state model alone (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from kms_adapter.port import QUERY_SECTIONS
from kms_adapter.simulator.faults import FaultError, Faults
from kms_adapter.simulator.state import SimulatorState, StateError, normalize_time


def _clock() -> str:
    return "2026-11-25T10:00:00Z"


def _state(**kwargs: Any) -> SimulatorState:
    return SimulatorState(clock=_clock, **kwargs)


def test_overwrite_entitlements_sets_exactly_the_given_products_with_normalised_dates() -> None:
    state = _state()
    state.apply("SYNC_ENTITLEMENTS", "k1", "C1", products=[
        {"product_id": "P100", "valid_from": "2026-01-01T00:00:00+01:00"},
        {"product_id": "P200", "valid_until": "2026-12-31T23:59:59Z"},
    ])
    state.apply("SYNC_ENTITLEMENTS", "k2", "C1", products=[{"product_id": "P200"}])

    assert state.snapshot()["secure_clients"]["C1"]["entitlements"] == [
        {"product_id": "P200", "valid_from": None, "valid_until": None}
    ]


def test_repeated_idempotency_key_returns_the_first_answer_applies_once_and_is_audited_duplicate() -> None:
    state = _state()
    first = state.apply("SEND_MAIL", "mail-1", "C1", text="hello", text_mode="ANSI")
    again = state.apply("SEND_MAIL", "mail-1", "C1", text="hello", text_mode="ANSI")

    assert (first.code, first.duplicate) == ("OK", False)
    assert (again.code, again.text, again.duplicate) == ("OK", first.text, True)
    assert state.snapshot()["secure_clients"]["C1"]["mailbox"] == [{"text": "hello", "text_mode": "ANSI"}]
    assert state.snapshot()["audit"] == [
        {"seq": 1, "operation": "SEND_MAIL", "secure_client_id": "C1", "idempotency_key": "mail-1",
         "duplicate": False, "at": "2026-11-25T10:00:00Z"},
        {"seq": 2, "operation": "SEND_MAIL", "secure_client_id": "C1", "idempotency_key": "mail-1",
         "duplicate": True, "at": "2026-11-25T10:00:00Z"},
    ]


def test_strict_clients_answer_unknown_client_and_a_rejected_key_may_succeed_later() -> None:
    state = _state(strict_clients=True)
    rejected = state.apply("PAIR", "pair-1", "C1", chipset="STB-1")
    assert rejected.code == "UNKNOWN_CLIENT"
    assert state.snapshot()["secure_clients"] == {}
    assert state.snapshot()["audit"] == []  # a business error is not an applied effect

    state.overwrite({"secure_clients": {"C1": {}}})
    accepted = state.apply("PAIR", "pair-1", "C1", chipset="STB-1")
    assert (accepted.code, accepted.duplicate) == ("OK", False)
    assert state.clients["C1"].paired_chipset == "STB-1"


def test_unseen_card_is_created_on_first_provisioning_when_not_strict() -> None:
    state = _state()
    assert state.apply("REAUTHORISE_SECTOR", "s-1", "C7").ok
    assert state.snapshot()["secure_clients"]["C7"]["sector_syncs"] == 1


def test_unpair_of_another_chipset_is_a_no_op_and_unpair_of_the_paired_one_clears_it() -> None:
    state = _state()
    state.apply("PAIR", "p", "C1", chipset="STB-2")
    assert state.apply("UNPAIR", "u1", "C1", chipset="STB-1").ok
    assert state.clients["C1"].paired_chipset == "STB-2"
    assert state.apply("UNPAIR", "u2", "C1", chipset="STB-2").ok
    assert state.clients["C1"].paired_chipset is None


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "", None])
def test_pin_that_is_not_four_digits_is_rejected_and_leaves_no_card(pin: str | None) -> None:
    state = _state()
    assert state.apply("SET_PIN", "pin-1", "C1", pin=pin).code == "INVALID_PIN"
    assert "C1" not in state.clients


def test_global_mail_and_message_go_to_the_global_lists_and_are_audited_under_star() -> None:
    state = _state()
    state.apply("SEND_MAIL_GLOBAL", "g1", None, text="to all", text_mode="UNICODE")
    state.apply("SEND_MESSAGE_GLOBAL", "g2", None, text="osd", text_mode="RAW")
    snap = state.snapshot()
    assert snap["global_mailbox"] == [{"text": "to all", "text_mode": "UNICODE"}]
    assert snap["global_messages"] == [{"text": "osd", "text_mode": "RAW"}]
    assert [a["secure_client_id"] for a in snap["audit"]] == ["*", "*"]


def test_bad_text_mode_is_rejected() -> None:
    assert _state().apply("SEND_MESSAGE", "m", "C1", text="x", text_mode="EBCDIC").code == "INVALID_TEXT_MODE"


def test_snapshot_has_exactly_the_documented_shape() -> None:
    state = _state()
    state.apply("SET_PIN", "k", "C1", pin="0001")
    snap = state.snapshot()
    assert set(snap) == {"secure_clients", "global_mailbox", "global_messages", "audit"}
    assert set(snap["secure_clients"]["C1"]) == {
        "entitlements", "paired_chipset", "pin", "mailbox", "messages", "sector_syncs"}
    assert set(snap["audit"][0]) == {"seq", "operation", "secure_client_id", "idempotency_key", "duplicate", "at"}


def test_partial_overwrite_changes_only_the_given_fields_and_null_removes_a_card() -> None:
    state = _state()
    state.apply("PAIR", "p", "C1", chipset="STB-1")
    state.apply("SET_PIN", "k", "C2", pin="1234")
    state.overwrite({"secure_clients": {"C1": {"entitlements": [{"product_id": "P9"}]}, "C2": None},
                     "global_messages": [{"text": "x", "text_mode": "ANSI"}]})

    snap = state.snapshot()
    assert snap["secure_clients"]["C1"]["paired_chipset"] == "STB-1"
    assert snap["secure_clients"]["C1"]["entitlements"] == [
        {"product_id": "P9", "valid_from": None, "valid_until": None}]
    assert "C2" not in snap["secure_clients"]
    assert snap["global_messages"] == [{"text": "x", "text_mode": "ANSI"}]


def test_invalid_overwrite_names_the_field_and_changes_nothing() -> None:
    state = _state()
    state.apply("PAIR", "p", "C1", chipset="STB-1")
    before = state.snapshot()
    with pytest.raises(StateError, match=r"secure_clients\.C2\.sector_syncs"):
        state.overwrite({"secure_clients": {"C1": {"paired_chipset": None}, "C2": {"sector_syncs": -1}}})
    assert state.snapshot() == before


def test_query_returns_all_nine_sections_and_never_the_pin_value() -> None:
    state = _state()
    state.apply("SET_PIN", "k", "C1", pin="4321")
    answer, sections = state.query("C1")
    assert answer.ok
    assert list(sections) == list(QUERY_SECTIONS)
    assert sections["security"] == {"pin_set": "true"}
    assert "4321" not in repr(sections)


def test_query_of_an_unknown_section_is_rejected() -> None:
    answer, sections = _state().query("C1", ["pairing", "horoscope"])
    assert answer.code == "INVALID_SECTION" and sections == {}


def test_summaries_mark_unseen_cards_unknown() -> None:
    state = _state()
    state.apply("SYNC_ENTITLEMENTS", "k", "C1", products=[{"product_id": "P1"}])
    known, unknown = state.summaries(["C1", "C2"])
    assert known.known and known.entitlements[0]["product_id"] == "P1" and not known.pin_set
    assert not unknown.known and unknown.entitlements == ()


def test_audit_sink_receives_every_entry_and_memory_keeps_only_the_last_ones() -> None:
    seen: list[dict[str, Any]] = []
    state = _state(audit_limit=2, audit_sink=seen.append)
    for i in range(3):
        state.apply("REAUTHORISE_SECTOR", f"k{i}", "C1")
    assert [a["seq"] for a in seen] == [1, 2, 3]
    assert [a["seq"] for a in state.snapshot()["audit"]] == [2, 3]


def test_reset_forgets_state_audit_and_dedup_keys() -> None:
    state = _state()
    state.apply("REAUTHORISE_SECTOR", "k", "C1")
    state.reset()
    assert state.snapshot() == {"secure_clients": {}, "global_mailbox": [], "global_messages": [], "audit": []}
    assert not state.apply("REAUTHORISE_SECTOR", "k", "C1").duplicate


def test_naive_times_are_taken_as_utc() -> None:
    assert normalize_time("2026-01-01T00:00:00") == "2026-01-01T00:00:00Z"
    assert normalize_time("2026-01-01T02:00:00+02:00") == "2026-01-01T00:00:00Z"
    assert normalize_time(None) is None


# --- faults (pure parts) -------------------------------------------------------------------------------


def test_fault_update_validates_everything_before_changing_anything() -> None:
    faults = Faults()
    with pytest.raises(FaultError, match="error_rate"):
        faults.update({"latency_ms": 5, "error_rate": 2})
    assert faults.latency_ms == 0


def test_fault_clear_comes_first_then_the_given_fields_apply() -> None:
    faults = Faults()
    faults.update({"latency_ms": 5, "card_errors": {"C1": "UNKNOWN_CLIENT"}})
    faults.update({"clear": True, "http_status": 429})
    assert faults.to_json() == {"latency_ms": 0.0, "error_rate": 0.0, "http_status": 429, "timeout": None,
                                "outage_seconds": 0.0, "card_errors": {}, "lose_answers": 0, "response_shape": None,
                                "oversized_bytes": 8 * 1024 * 1024, "soap_connections": 0}


def test_unknown_fault_field_is_refused_by_name() -> None:
    with pytest.raises(FaultError, match=r"unknown fault field: latency\b"):
        Faults().update({"latency": 5})


def test_outage_is_remaining_for_its_window_only() -> None:
    faults = Faults()
    faults.update({"outage_seconds": 30})
    assert 29 < faults.outage_remaining() <= 30
    faults.update({"outage_seconds": 0})
    assert faults.outage_remaining() == 0


def test_error_rate_one_always_errs_and_zero_never() -> None:
    faults = Faults()
    faults.update({"error_rate": 1.0})
    assert all(faults.roll_error() for _ in range(100))
    faults.update({"error_rate": 0.0})
    assert not any(faults.roll_error() for _ in range(100))
