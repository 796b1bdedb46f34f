"""Coalescing in the executor: of the absolute commands it holds for one box, only the newest is sent;
the older ones end COMPLETED with ``superseded_by``; effects are never coalesced. The executor runs its
real loop against a consumer double holding one polled batch, the in-memory KMS and a SQLite ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition
from sqlalchemy import create_engine

from consumers.breaker import Breaker
from consumers.coalesce import Holding
from consumers.command_runner import CommandRunner
from consumers.executor import Executor, ExecutorConfig
from consumers.ledger import LEDGER_METADATA, Ledger
from kms_adapter.fake import InMemoryKms
from schemas.codec import Codec
from schemas.records import KmsCommand, KmsResult, MessageKind, Operation, Product, ResultState, Source, TextMode
from schemas.records import Message as KmsMessage

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TOPIC, EXPRESS = "kms.commands", "kms.commands.express"


def command(key: str, card: str, op: Operation, version: int, *, minutes: int = 0) -> KmsCommand:
    return KmsCommand(
        idempotency_key=key, operation=op, secure_client_id=card, subscription_id=f"S-{card}",
        subscription_version=version,
        products=[Product(product_id=f"P{version}")] if op is Operation.SYNC_ENTITLEMENTS else [],
        message=KmsMessage(kind=MessageKind.MAIL, text_mode=TextMode.ANSI, text="hello")
        if op is Operation.SEND_MAIL else None,
        source=Source(process_name="test", event_id=key), created_at=T0 + timedelta(minutes=minutes),
    )


class BatchConsumer:
    """Hands its messages over as one polled batch once its partitions are assigned, then nothing."""

    def __init__(self, topic: str, messages: list[Message]) -> None:
        self.topic = topic
        self.messages = messages
        self.callbacks: dict[str, Any] = {}
        self.stored: list[tuple[str, int, int]] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def poll(self, timeout: float = -1) -> Message | None:
        if "on_assign" in self.callbacks:
            self.callbacks.pop("on_assign")(self, [TopicPartition(self.topic, 0)])
        return self.messages.pop(0) if self.messages else None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        taken, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return taken

    def list_topics(self, topic: str, timeout: float = -1) -> Any:
        raise AssertionError("not asked without a limiter")

    def pause(self, parts: list[TopicPartition]) -> None: ...

    def resume(self, parts: list[TopicPartition]) -> None: ...

    def commit(self, **kwargs: Any) -> None: ...

    def store_offsets(self, **kwargs: Any) -> None:
        self.stored += [(tp.topic, tp.partition, tp.offset) for tp in kwargs["offsets"]]

    def close(self) -> None: ...


class ResultsProducer:
    """Delivers every record at the next ``poll``; sets ``done`` once ``expected`` results arrived."""

    def __init__(self, codec: Codec, expected: int) -> None:
        self.codec = codec
        self.expected = expected
        self.results: list[KmsResult] = []
        self.waiting: list[Any] = []
        self.done = asyncio.Event()

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, headers: Any = None,
                on_delivery: Any = None) -> None:
        if topic == "kms.results" and value is not None:
            self.results.append(self.codec.decode(value, KmsResult))
        if on_delivery is not None:
            self.waiting.append(on_delivery)
        if len(self.results) >= self.expected:
            self.done.set()

    def poll(self, timeout: float = -1) -> int:
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback(None, None)
        return len(waiting)

    def flush(self, timeout: float = -1) -> int:
        return self.poll()


def message(codec: Codec, topic: str, offset: int, cmd: KmsCommand) -> Message:
    return Message(topic=topic, partition=0, offset=offset, key=cmd.secure_client_id.encode(),
                   value=codec.encode(cmd, topic), timestamp=(1, 1_700_000_000_000))


def run_executor(tmp_path: Path, batch: list[KmsCommand], express: list[KmsCommand] = ()) -> tuple[
        InMemoryKms, dict[str, KmsResult]]:
    codec = Codec()
    kms = InMemoryKms()
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    LEDGER_METADATA.create_all(engine)

    async def main() -> list[KmsResult]:
        breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
        runner = CommandRunner(kms, Ledger(engine), breaker, retry_initial=0.001, retry_max=0.005)
        producer = ResultsProducer(codec, len(batch) + len(express))
        consumer = BatchConsumer(TOPIC, [message(codec, TOPIC, i, c) for i, c in enumerate(batch)])
        fast = BatchConsumer(EXPRESS, [message(codec, EXPRESS, i, c) for i, c in enumerate(express)])
        executor = Executor(consumer, producer, codec, runner,  # type: ignore[arg-type]
                            ExecutorConfig(commands_topic=TOPIC, results_topic="kms.results",
                                           dlq_topic=f"{TOPIC}.dlq", express_topic=EXPRESS,
                                           express_dlq_topic=f"{EXPRESS}.dlq"),
                            express_consumer=fast)  # type: ignore[arg-type]
        loop = asyncio.create_task(executor.run())
        await asyncio.wait_for(producer.done.wait(), 30)
        executor.request_stop()
        await loop
        await breaker.aclose()
        return producer.results

    results = asyncio.run(main())
    return kms, {r.idempotency_key: r for r in results}


def sent(kms: InMemoryKms) -> list[str]:
    return [c.command.idempotency_key for c in kms.calls if c.command is not None]


def test_only_the_newest_absolute_command_of_a_box_in_a_batch_reaches_the_kms(tmp_path: Path) -> None:
    batch = [
        command("a1", "A", Operation.SYNC_ENTITLEMENTS, 1),
        command("a-mail", "A", Operation.SEND_MAIL, 1),
        command("a2", "A", Operation.CLEAR_ENTITLEMENTS, 2),
        command("b1", "B", Operation.SYNC_ENTITLEMENTS, 1),
        command("a3", "A", Operation.SYNC_ENTITLEMENTS, 3),
    ]

    kms, results = run_executor(tmp_path, batch)

    assert sorted(sent(kms)) == ["a-mail", "a3", "b1"]
    assert results["a1"].superseded_by == "a3" and results["a2"].superseded_by == "a3"
    assert results["a1"].state.value == results["a2"].state.value == "COMPLETED"
    assert results["a1"].attempts == 0
    assert results["a3"].superseded_by is None and results["a-mail"].superseded_by is None
    assert kms.entitlements("A") == (Product(product_id="P3"),)  # the box ends as the newest version says


def test_an_older_express_pin_than_a_held_regular_one_is_coalesced_into_it(tmp_path: Path) -> None:
    regular = [command("evt-pin", "A", Operation.SET_PIN, 4, minutes=10)]
    express = [command("req-pin", "A", Operation.SET_PIN, 0, minutes=5).model_copy(
        update={"subscription_version": None})]

    kms, results = run_executor(tmp_path, regular, express)

    assert sent(kms) == ["evt-pin"]
    assert results["req-pin"].superseded_by == "evt-pin"


def test_effects_and_one_inputs_commands_are_never_coalesced() -> None:
    holding = Holding()
    mails = [command(f"m{i}", "A", Operation.SEND_MAIL, i) for i in range(3)]
    swap = [command("u", "A", Operation.UNPAIR, 2).model_copy(update={"chipset": "OLD"}),
            command("p", "A", Operation.PAIR, 2).model_copy(update={"chipset": "NEW"})]
    for c in [*mails, *swap]:
        holding.hold(c)
    assert [holding.newest_over(c) for c in [*mails, *swap]] == [None] * 5
    newer_pair = command("p2", "A", Operation.UNPAIR, 3).model_copy(update={"chipset": "NEW"})
    holding.hold(newer_pair)
    assert holding.newest_over(swap[1]) is newer_pair
    holding.release(newer_pair)
    assert holding.newest_over(swap[1]) is None and len(holding) == 2


def test_a_command_that_waited_for_its_turn_is_superseded_by_a_newer_one_that_arrived_meanwhile(
        tmp_path: Path) -> None:
    from consumers.limiter import KmsRateLimiter, RateLimits

    kms = InMemoryKms()
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    LEDGER_METADATA.create_all(engine)
    asked: list[str | None] = [None, "a5"]  # the newer version is polled while the first one waits

    async def main() -> KmsResult:
        breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
        runner = CommandRunner(kms, Ledger(engine), breaker, limiter=KmsRateLimiter(RateLimits(total=1000.0)))
        try:
            outcome = await runner.run(command("a1", "A", Operation.SYNC_ENTITLEMENTS, 1), newer=lambda: asked.pop(0))
        finally:
            await breaker.aclose()
        return outcome.result

    result = asyncio.run(main())
    assert result.superseded_by == "a5" and sent(kms) == []


def test_a_superseded_result_shows_in_the_boxs_history_as_not_sent(tmp_path: Path) -> None:
    from kmsbridge.cli.requests import describe_history_item
    from kmsbridge.db import upgrade
    from reconciler.request_log_store import LogBatch, RequestLog

    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    upgrade(engine)
    log = RequestLog(engine)
    older = command("a1", "A", Operation.SYNC_ENTITLEMENTS, 1)
    newer = command("a3", "A", Operation.SYNC_ENTITLEMENTS, 3)
    log.write(LogBatch(commands=[older, newer], results=[
        KmsResult(idempotency_key="a1", operation="SYNC_ENTITLEMENTS", secure_client_id="A", event_id="a1",
                  state=ResultState.COMPLETED, executed_at=T0, superseded_by="a3"),
        KmsResult(idempotency_key="a3", operation="SYNC_ENTITLEMENTS", secure_client_id="A", event_id="a3",
                  state=ResultState.COMPLETED, attempts=1, executed_at=T0)]))

    lines = [describe_history_item(item.what, item.detail) for item in log.history("A") if item.what == "result"]

    assert "SYNC_ENTITLEMENTS COMPLETED superseded by a3 (not sent to the KMS)" in lines
    assert "SYNC_ENTITLEMENTS COMPLETED after 1 attempt(s)" in lines
