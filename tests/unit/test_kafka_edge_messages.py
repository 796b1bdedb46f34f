"""The Kafka edge's decision on a polled item, the positions after a batch, and the assignment
bookkeeping, on real ``confluent_kafka.Message`` and ``KafkaError`` objects (no broker)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from kafka_edge import messages
from kafka_edge.assignment import Assignment
from kafka_edge.batch_commit import commit_batch, retry_batch
from kafka_edge.errors import FatalKafkaError, StaticMemberFenced
from kafka_edge.health import HealthState
from kafka_edge.messages import INSTANCE_ID_SETTING, is_record, positions_after, records

#: What librdkafka 2.x hands a fenced static member: a message error of code _FATAL, fatal() unset.
FENCED = KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer with same "
                    "group.instance.id: Fatal consumer error: Broker: Static consumer fenced by other consumer "
                    "with same group.instance.id")


def record(topic: str = "t", partition: int = 0, offset: int = 0) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=b"v")


def error(err: KafkaError) -> Message:
    return Message(topic="t", partition=0, error=err)


def test_a_record_is_processed_and_no_record_or_the_end_of_a_partition_is_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    assert is_record(record(), "projector")
    assert not is_record(None, "projector")
    with caplog.at_level(logging.DEBUG, "kafka_edge.messages"):
        assert not is_record(error(KafkaError(KafkaError._PARTITION_EOF)), "projector")
    assert caplog.records == []


def test_a_fenced_static_member_raises_naming_the_instance_id_setting_and_the_other_process() -> None:
    assert not FENCED.fatal()  # the flag is unset: only the code says it

    with pytest.raises(StaticMemberFenced) as caught:
        is_record(error(FENCED), "projector")

    text = str(caught.value)
    assert "group.instance.id" in text and INSTANCE_ID_SETTING in text
    assert "another process runs with the same instance id" in text
    assert "projector" in text and "-projector" in text


def test_the_fenced_code_itself_is_named_the_same_way() -> None:
    with pytest.raises(StaticMemberFenced):
        is_record(error(KafkaError(KafkaError.FENCED_INSTANCE_ID, "instance fenced", fatal=True)), "executor")


def test_another_fatal_error_raises_a_fatal_error_naming_the_process() -> None:
    with pytest.raises(FatalKafkaError) as caught:
        is_record(error(KafkaError(KafkaError._INCONSISTENT, "state broken", fatal=True)), "request-log")
    assert not isinstance(caught.value, StaticMemberFenced)
    assert "request-log" in str(caught.value) and "state broken" in str(caught.value)


def test_another_error_is_skipped_and_logged_once_per_window_with_the_count_of_repeats(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(messages, "_clock", lambda: now[0])
    monkeypatch.setattr(messages, "_throttle", messages._Throttle())
    transport = error(KafkaError(KafkaError._TRANSPORT, "broker down"))

    with caplog.at_level(logging.WARNING, "kafka_edge.messages"):
        assert not is_record(transport, "reconciler")
        assert not is_record(transport, "reconciler")
        assert not is_record(transport, "reconciler")
        assert not is_record(transport, "projector")  # another process: its own window
        now[0] += messages.LOG_EVERY_SECONDS
        assert not is_record(transport, "reconciler")

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("reconciler consumer error _TRANSPORT: broker down")
    assert lines[1].startswith("projector consumer error")
    assert lines[2].endswith("(2 more since the last report)")


def test_records_keeps_the_records_of_a_batch_and_raises_for_a_fatal_error_in_it() -> None:
    batch = [record(offset=1), error(KafkaError(KafkaError._PARTITION_EOF)), record(offset=2)]
    assert [m.offset() for m in records(batch, "translator")] == [1, 2]
    with pytest.raises(StaticMemberFenced):
        records([record(), error(FENCED)], "translator")


def test_positions_after_a_batch_are_one_past_the_newest_offset_of_each_partition() -> None:
    batch = [record("a", 0, 7), record("a", 1, 3), record("a", 0, 9), record("b", 0, 0), record("a", 0, 8)]
    got = {(tp.topic, tp.partition): tp.offset for tp in positions_after(batch)}
    assert got == {("a", 0): 10, ("a", 1): 4, ("b", 0): 1}


# --- assignment ------------------------------------------------------------------------------------


class RecordingConsumer:
    """The rebalance surface of ``confluent_kafka.Consumer``: subscribe, committed, seek, pause."""

    def __init__(self, committed: dict[tuple[str, int], int] | None = None,
                 refuse_commit: KafkaError | None = None) -> None:
        self.subscribed: tuple[list[str], dict[str, Any]] | None = None
        self._committed = committed or {}
        self._refuse = refuse_commit
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if self._refuse is not None:
            raise KafkaException(self._refuse)
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = (topics, callbacks)

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._committed.get((tp.topic, tp.partition), -1001))
                for tp in parts]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def tps(*pairs: tuple[str, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in pairs]


def test_the_assignment_subscribes_with_its_three_callbacks_and_mirrors_itself_into_health() -> None:
    health = HealthState(ttl_seconds=30)
    assignment = Assignment(health, "projector")
    consumer: Any = RecordingConsumer()

    assignment.subscribe(consumer, ["a"])
    assert consumer.subscribed == (["a"], {"on_assign": assignment.on_assign, "on_revoke": assignment.on_revoke,
                                           "on_lost": assignment.on_lost})
    assignment.on_assign(consumer, tps(("a", 0), ("a", 1)))
    assert assignment.parts == {("a", 0), ("a", 1)} and health.assigned and ("a", 1) in assignment
    assignment.on_revoke(consumer, tps(("a", 0)))
    assert assignment.parts == {("a", 1)} and health.assigned
    assignment.on_lost(consumer, tps(("a", 1)))
    assert not assignment and not health.assigned


def test_the_hooks_run_after_an_assign_and_before_a_revoke_and_a_lost_partition_gets_only_the_lost_hook() -> None:
    seen: list[tuple[str, list[tuple[str, int]], frozenset[tuple[str, int]]]] = []
    assignment: Assignment

    def hook(name: str) -> Any:
        return lambda _c, parts: seen.append((name, [(tp.topic, tp.partition) for tp in parts], assignment.parts))

    assignment = Assignment(HealthState(30), "executor", assigned=hook("assigned"), revoked=hook("revoked"),
                            lost=hook("lost"))
    consumer: Any = RecordingConsumer()
    assignment.on_assign(consumer, tps(("a", 0), ("a", 1)))
    assignment.on_revoke(consumer, tps(("a", 0)))
    assignment.on_lost(consumer, tps(("a", 1)))

    assert seen == [("assigned", [("a", 0), ("a", 1)], {("a", 0), ("a", 1)}),
                    ("revoked", [("a", 0)], {("a", 0), ("a", 1)}),  # the revoked partition is still held
                    ("lost", [("a", 1)], {("a", 1)})]


def test_rewind_seeks_each_assigned_partition_to_its_committed_offset_else_the_beginning() -> None:
    assignment = Assignment(HealthState(30), "queue")
    consumer: Any = RecordingConsumer(committed={("a", 0): 42})
    assignment.rewind(consumer)
    assert consumer.seeks == []  # nothing assigned, nothing to ask
    assignment.on_assign(consumer, tps(("a", 0), ("a", 1)))
    assignment.rewind(consumer)
    assert sorted(consumer.seeks) == [("a", 0, 42), ("a", 1, -2)]


def test_a_batch_is_committed_synchronously_one_past_its_newest_offsets_and_a_refused_commit_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    assignment = Assignment(HealthState(30), "projector")
    consumer: Any = RecordingConsumer()
    assert commit_batch(consumer, [record("a", 0, 4), record("a", 0, 5)], assignment)
    assert consumer.commits == [([("a", 0, 6)], False)]

    refused: Any = RecordingConsumer(refuse_commit=KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing"))
    with caplog.at_level(logging.WARNING, "kafka_edge.batch_commit"):
        assert not commit_batch(refused, [record()], assignment)
    assert "projector offset commit failed" in caplog.text


def test_a_batch_that_failed_is_read_again_from_the_committed_offsets(caplog: pytest.LogCaptureFixture) -> None:
    assignment = Assignment(HealthState(30), "request-log")
    consumer: Any = RecordingConsumer(committed={("a", 0): 3})
    assignment.on_assign(consumer, tps(("a", 0)))
    stop = threading.Event()
    stop.set()  # stopping: no wait
    with caplog.at_level(logging.WARNING, "kafka_edge.batch_commit"):
        retry_batch(consumer, assignment, stop, ValueError("secret parameters"), 1.0)
    assert consumer.seeks == [("a", 0, 3)]
    assert "request-log batch failed (ValueError)" in caplog.text and "secret parameters" not in caplog.text
