"""Records built without validation (``_Record.trusted``, planning's ``CommandFactory``) are the records
validation builds: equal, dumped alike, encoded to the same bytes, and never holding a bare PIN."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from pydantic import SecretStr
from test_planning_properties import EXAMPLES, Case, cases

from provisioning.commands import CommandFactory
from provisioning.keys import KeySource
from provisioning.planning import plan_reset, plan_subscription
from schemas.codec import Codec
from schemas.records import KmsCommand, Operation, Source

AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def validated(cmd: KmsCommand) -> KmsCommand:
    return KmsCommand(**{name: getattr(cmd, name) for name in KmsCommand.model_fields})


def assert_same(cmd: KmsCommand) -> None:
    twin = validated(cmd)
    assert cmd == twin
    assert cmd.__dict__ == twin.__dict__
    assert cmd.model_fields_set == twin.model_fields_set
    assert cmd.model_dump_json() == twin.model_dump_json()
    assert repr(cmd) == repr(twin)
    if cmd.pin is None:  # a sealed PIN carries a fresh nonce: its bytes differ every time
        codec = Codec()
        assert codec.encode(cmd, "kms.commands") == codec.encode(twin, "kms.commands")


@EXAMPLES
@given(cases())
def test_planned_commands_equal_validated_ones(case: Case) -> None:
    event, provider = case
    for cmd in plan_subscription(event, provider, topic="crm.subscriptions").commands:
        assert_same(cmd)
    for cmd in plan_reset(event, provider, run_id="R-1", at=AT).commands:
        assert_same(cmd)


def factory(created_at: datetime = AT) -> CommandFactory:
    return CommandFactory(key_source=KeySource.REQUEST, source_id="Q-1", source=Source(process_name="api"),
                          created_at=created_at)


def test_a_pin_given_as_text_is_wrapped_as_a_secret() -> None:
    cmd = factory()(Operation.SET_PIN, "C1", pin="1234")  # type: ignore[arg-type]

    assert isinstance(cmd.pin, SecretStr)
    assert "1234" not in repr(cmd)


def test_a_naive_time_is_refused_as_validation_refuses_it() -> None:
    try:
        factory(datetime(2026, 1, 1))(Operation.CLEAR_ENTITLEMENTS, "C1")
    except ValueError as exc:
        assert "timezone" in str(exc)
    else:
        raise AssertionError("a naive created_at was accepted")
