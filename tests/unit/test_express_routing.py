"""The translator's choice of output topic: EXPRESS commands (agents' requests) on the express lane,
keyed by secure client like every command; the others, and everything without an express lane, on
``kms.commands``."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.translation import Translation
from consumers.translator import TransactionalTranslator, TranslatorConfig
from schemas.codec import Codec
from schemas.records import KmsCommand, Operation, Priority, Product, Source

AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def command(key: str, priority: Priority, op: Operation = Operation.SYNC_ENTITLEMENTS) -> KmsCommand:
    return KmsCommand(idempotency_key=key, operation=op, secure_client_id="4120051539",
                      products=[Product(product_id="P1")] if op is Operation.SYNC_ENTITLEMENTS else [],
                      source=Source(process_name="test"), priority=priority, created_at=AT)


def outputs(express_topic: str | None) -> list[tuple[str, bytes]]:
    config = TranslatorConfig(inputs={}, commands_topic="kms.commands", results_topic="kms.results",
                              express_commands_topic=express_topic)
    translator = TransactionalTranslator(None, None, Codec(), {}, config)  # type: ignore[arg-type]
    translation = Translation(commands=[command("evt", Priority.REGULAR), command("req", Priority.EXPRESS,
                                                                                Operation.REAUTHORISE_SECTOR)])
    return [(topic, key) for topic, key, _ in translator._outputs(translation)]


def test_express_commands_go_to_the_express_lane_keyed_by_secure_client() -> None:
    assert outputs("kms.commands.express") == [("kms.commands", b"4120051539"),
                                               ("kms.commands.express", b"4120051539")]


def test_without_an_express_lane_every_command_goes_to_the_commands_topic() -> None:
    assert [topic for topic, _ in outputs(None)] == ["kms.commands", "kms.commands"]

