"""Every consume loop ends on a fenced static member's message error (a real ``confluent_kafka.Message``
of code ``_FATAL``, as librdkafka hands it) instead of polling on: the translator, the executor, the
projector, the reconciler runner (also while a run goes on), the queue reader, the request-log writer
and the Web API's outcome feed. ``tests/integration/test_fenced_member.py`` fences them on a real broker."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from consumers.executor import Executor, ExecutorConfig
from consumers.translator import TransactionalTranslator, TranslatorConfig
from kafka_edge.errors import FatalKafkaError, StaticMemberFenced
from producers.results_feed import OutcomeFeed
from reconciler.projector import Projector, ProjectorConfig
from reconciler.queue_reader import QueueReader, QueueReaderConfig
from reconciler.request_log import RequestLogConfig, RequestLogWriter
from reconciler.runner import ReconcileRunner, RunnerConfig
from schemas.records import ReconcileRequest

FENCED = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer with same "
                    "group.instance.id")


def fenced() -> Message:
    return Message(topic="t", partition=0, error=FENCED)


class ZombieLoop(AssertionError):
    """A loop polled on after its consumer was fenced."""


class FencedConsumer:
    """The consumer surface the loops use; every poll answers the fenced error, as a fenced member's does.
    A loop that polls again after that would poll for ever: the third poll raises :class:`ZombieLoop`."""

    def __init__(self) -> None:
        self.polls = 0
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.topics = topics

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        if num_messages == 1 or timeout == 0:  # consume_available's "what is fetched already" part
            return []
        return [self.poll()]

    def poll(self, timeout: float = -1) -> Message:
        self.polls += 1
        if self.polls > 2:
            raise ZombieLoop(f"polled {self.polls} times after being fenced")
        return fenced()

    def assignment(self) -> list[TopicPartition]:
        return []

    def pause(self, parts: list[TopicPartition]) -> None: ...

    def resume(self, parts: list[TopicPartition]) -> None: ...

    def commit(self, **kwargs: Any) -> None: ...

    def store_offsets(self, **kwargs: Any) -> None: ...

    def close(self) -> None:
        self.closed = True


class QuietProducer:
    def flush(self, timeout: float = -1) -> int:
        return 0

    def poll(self, timeout: float = -1) -> int:
        return 0

    def init_transactions(self, timeout: float = -1) -> None: ...


def test_the_projector_ends_on_a_fenced_member_and_closes_its_consumer() -> None:
    consumer = FencedConsumer()
    config = ProjectorConfig(topic="s", dlq_topic="s.dlq")
    projector = Projector(consumer, QuietProducer(), None, None, config)  # type: ignore[arg-type]
    with pytest.raises(StaticMemberFenced, match=r"group\.instance\.id"):
        projector.run()
    assert consumer.polls == 1 and consumer.closed


def test_the_request_log_writer_ends_on_a_fenced_member() -> None:
    consumer = FencedConsumer()
    writer = RequestLogWriter(consumer, None, None, RequestLogConfig(topics={"results": "r"}))  # type: ignore[arg-type]
    with pytest.raises(StaticMemberFenced):
        writer.run()
    assert consumer.polls == 1 and consumer.closed


def test_the_queue_reader_hands_a_fenced_member_to_the_process_and_raises_without_a_handler() -> None:
    config = QueueReaderConfig(communications_topic=None, results_topic="r", dlq_topic="c.dlq")
    alone = QueueReader(FencedConsumer(), QuietProducer(), None, None, config)  # type: ignore[arg-type]
    with pytest.raises(StaticMemberFenced):
        alone.run()

    told: list[FatalKafkaError] = []
    consumer = FencedConsumer()
    reader = QueueReader(consumer, QuietProducer(), None, None, config)  # type: ignore[arg-type]
    reader.on_fatal = told.append
    reader.run()
    assert [type(e) for e in told] == [StaticMemberFenced] and reader.failure is told[0] and consumer.closed


def runner(consumer: FencedConsumer, submit: Any = None) -> ReconcileRunner:
    return ReconcileRunner(consumer, QuietProducer(), None, FakeJob(),  # type: ignore[arg-type]
                           RunnerConfig(requests_topic="q", reports_topic="p", dlq_topic="q.dlq", poll_seconds=0.01),
                           submit=submit or (lambda coro: concurrent.futures.Future()))


class FakeJob:
    def run(self, request: object, stop: object) -> object:
        return object()


def test_the_reconciler_runner_ends_on_a_fenced_member() -> None:
    consumer = FencedConsumer()
    with pytest.raises(StaticMemberFenced):
        runner(consumer).run()
    assert consumer.closed


def test_the_reconciler_runner_ends_on_a_fenced_member_polled_while_a_run_goes_on() -> None:
    consumer = FencedConsumer()
    never_done: concurrent.futures.Future[object] = concurrent.futures.Future()
    with pytest.raises(StaticMemberFenced):
        runner(consumer, submit=lambda coro: never_done)._execute(
            ReconcileRequest(run_id="R-1", requested_by="test"))


def test_a_failure_reported_by_another_part_of_the_reconciler_ends_its_runner_with_that_error() -> None:
    consumer = FencedConsumer()
    loop = runner(consumer)
    failure = StaticMemberFenced("the queue reader was fenced")
    loop.fail(failure)
    with pytest.raises(StaticMemberFenced) as caught:
        loop.run()
    assert caught.value is failure and consumer.polls == 0 and consumer.closed


def test_the_translator_ends_on_a_fenced_member() -> None:
    consumer = FencedConsumer()
    translator = TransactionalTranslator(consumer, QuietProducer(), None, {},  # type: ignore[arg-type]
                                         TranslatorConfig(inputs={"s": "subscriptions"}, commands_topic="c",
                                                          results_topic="r"))
    with pytest.raises(StaticMemberFenced):
        translator.run()
    assert consumer.closed


def test_the_executor_ends_on_a_fenced_member_after_its_shutdown() -> None:
    consumer = FencedConsumer()
    executor = Executor(consumer, QuietProducer(), None, None,  # type: ignore[arg-type]
                        ExecutorConfig(commands_topic="c", results_topic="r", dlq_topic="c.dlq", grace_seconds=1))
    with pytest.raises(StaticMemberFenced):
        asyncio.run(executor.run())
    assert consumer.closed


def test_the_outcome_feed_stops_on_a_fatal_error_and_keeps_it_as_its_failure() -> None:
    feed = OutcomeFeed({}, None, None, ["r"])  # type: ignore[arg-type]
    consumer = FencedConsumer()
    feed._consumer = consumer  # type: ignore[assignment]
    feed._run()
    assert isinstance(feed.failure, StaticMemberFenced) and consumer.closed


# --- the executor's assignment hooks -----------------------------------------------------------------


class CommitRecorder(FencedConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, **kwargs: Any) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in kwargs["offsets"]])


def test_the_executor_commits_what_is_finished_on_a_revoke_and_nothing_for_a_lost_partition() -> None:
    consumer = CommitRecorder()
    executor = Executor(consumer, QuietProducer(), None, None,  # type: ignore[arg-type]
                        ExecutorConfig(commands_topic="c", results_topic="r", dlq_topic="c.dlq"))
    assignment = executor._assignment
    assignment.on_assign(consumer, [TopicPartition("c", 0), TopicPartition("c", 1)])  # type: ignore[arg-type]
    tracker = executor.tracker
    for partition in (0, 1):
        epoch = tracker.started("c", partition, 7, 0.0)
        tracker.started("c", partition, 8, 0.0)
        tracker.finished("c", partition, 7, epoch)  # 8 is unfinished: offset 8 is the one to commit

    assignment.on_revoke(consumer, [TopicPartition("c", 0)])  # type: ignore[arg-type]
    assignment.on_lost(consumer, [TopicPartition("c", 1)])  # type: ignore[arg-type]

    assert consumer.commits == [[("c", 0, 8)]]
    assert tracker.partitions() == [] and executor.assigned == frozenset()
