"""The Kafka guarantees kmsbridge builds on, checked against a real broker (no mocks).

If one of these fails, the commit protocol of the consume loops rests on a false assumption: fix the
broker setup or the assumption, not the test. Waiting is always a poll with a deadline, never a sleep.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from localdev.local_broker import BrokerHandle
from producers.topics import create_topics, wait_for_topics

pytestmark = pytest.mark.integration

MakeTopics = Callable[..., list[str]]

DEADLINE_S = 30.0


def _group() -> str:
    return f"test-group-{uuid.uuid4().hex[:12]}"


def _produce(config: dict[str, str], topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({**config, "enable.idempotence": "true", "acks": "all"})
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(DEADLINE_S) == 0, "messages still in flight after flush"
    assert not failures, failures


def _read_to_end(config: dict[str, str], topic: str, *, isolation: str) -> list[bytes]:
    """Every value of partition 0 of ``topic`` visible under ``isolation``, read until end-of-partition
    (the last stable offset for read_committed), so "nothing more" is a broker statement, not a timeout."""
    consumer = Consumer(
        {
            **config,
            "group.id": _group(),
            "isolation.level": isolation,
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                return values
            assert err is None, err
            values.append(msg.value() or b"")
        raise AssertionError(f"no end of partition on {topic} within {DEADLINE_S}s; read {len(values)}")
    finally:
        consumer.close()


def _consume(consumer: Consumer, count: int) -> list[Message]:
    """Exactly ``count`` messages from the subscription (polling one at a time, so none is skipped)."""
    got: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} messages within {DEADLINE_S}s"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    return got


def _offsets_after(batch: list[Message]) -> list[TopicPartition]:
    """The input positions to commit once ``batch`` is done: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


def _committed(consumer: Consumer, topic: str) -> int:
    (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=DEADLINE_S)
    return int(tp.offset)


def test_transaction_with_send_offsets_commits_output_and_input_offsets_atomically(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    source, sink = fresh_topics(count=2)
    _produce(kafka_config, source, [(b"k%d" % i, b"in-%d" % i) for i in range(10)])
    group = _group()
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": group,
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer({**kafka_config, "transactional.id": f"test-tx-{uuid.uuid4().hex[:12]}"})
    try:
        producer.init_transactions(DEADLINE_S)
        consumer.subscribe([source])

        # Transaction 1: outputs for inputs 0..4 plus the input offset 5, committed together.
        batch = _consume(consumer, 5)
        assert _committed(consumer, source) == OFFSET_INVALID  # nothing committed before the transaction
        producer.begin_transaction()
        for msg in batch:
            producer.produce(sink, key=msg.key(), value=b"out-" + (msg.value() or b""))
        producer.send_offsets_to_transaction(_offsets_after(batch), consumer.consumer_group_metadata(), DEADLINE_S)
        producer.commit_transaction(DEADLINE_S)

        assert _read_to_end(kafka_config, sink, isolation="read_committed") == [b"out-in-%d" % i for i in range(5)]
        assert _committed(consumer, source) == 5

        # Transaction 2: outputs for inputs 5..9 and offset 10, aborted: neither may become visible.
        batch = _consume(consumer, 5)
        producer.begin_transaction()
        for msg in batch:
            producer.produce(sink, key=msg.key(), value=b"aborted-" + (msg.value() or b""))
        producer.send_offsets_to_transaction(_offsets_after(batch), consumer.consumer_group_metadata(), DEADLINE_S)
        # Deliver before aborting: abort_transaction() purges records still queued in the client, and
        # this test is about records the broker has written and must hide.
        assert producer.flush(DEADLINE_S) == 0
        producer.abort_transaction(DEADLINE_S)

        committed_view = _read_to_end(kafka_config, sink, isolation="read_committed")
        assert committed_view == [b"out-in-%d" % i for i in range(5)]
        # The aborted records were really written: a read_uncommitted reader sees them. Without this the
        # assertion above would also pass if the second transaction had produced nothing.
        uncommitted_view = _read_to_end(kafka_config, sink, isolation="read_uncommitted")
        assert uncommitted_view[5:] == [b"aborted-in-%d" % i for i in range(5, 10)]
        assert _committed(consumer, source) == 5
    finally:
        consumer.close()


def test_manual_offset_storage_survives_consumer_restart_without_loss_or_duplicates(
    kafka_config: dict[str, str], fresh_topics: MakeTopics
) -> None:
    total, first_share, partitions = 500, 200, 3
    (topic,) = fresh_topics(partitions=partitions)
    _produce(kafka_config, topic, [(b"key-%d" % i, b"%d" % i) for i in range(total)])
    group = _group()
    settings = {
        **kafka_config,
        "group.id": group,
        "auto.offset.reset": "earliest",
        # Offsets are stored only after a message is processed; commits carry only stored offsets.
        "enable.auto.offset.store": "false",
        "enable.auto.commit": "true",
        "enable.partition.eof": "true",
    }

    # Consumer 1 processes 200 messages, then receives one more and stops before processing it (as a
    # process stopped mid-message would). librdkafka has prefetched more: none of those is done either.
    first = Consumer(settings)
    first.subscribe([topic])
    processed_1: list[bytes] = []
    in_flight: bytes | None = None
    deadline = time.monotonic() + DEADLINE_S
    try:
        while in_flight is None:
            assert time.monotonic() < deadline, f"consumer 1 did {len(processed_1)} in {DEADLINE_S}s"
            msg = first.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                continue
            assert err is None, err
            if len(processed_1) == first_share:
                in_flight = msg.key() or b""  # received, not processed: its offset must not be stored
                break
            processed_1.append(msg.key() or b"")
            first.store_offsets(message=msg)
        first.commit(asynchronous=False)
    finally:
        first.close()

    # Consumer 2, same group, resumes from the committed offsets and reads every partition to its end.
    second = Consumer(settings)
    second.subscribe([topic])
    processed_2: list[bytes] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"consumer 2 reached the end of {sorted(at_end)} only"
            msg = second.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition() or 0)
                continue
            assert err is None, err
            processed_2.append(msg.key() or b"")
            second.store_offsets(message=msg)
    finally:
        second.close()

    expected = {b"key-%d" % i for i in range(total)}
    assert len(processed_1) == first_share
    assert in_flight in processed_2, "the message in flight when consumer 1 stopped was lost"
    assert len(processed_1) + len(processed_2) == total, "a message was processed twice"
    assert set(processed_1) | set(processed_2) == expected, "a message was lost"
    assert not set(processed_1) & set(processed_2)


def _scram_config(handle: BrokerHandle, username: str, password: str) -> dict[str, str]:
    assert handle.sasl_bootstrap is not None
    return {
        "bootstrap.servers": handle.sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": username,
        "sasl.password": password,
    }


def test_scram_client_connects_and_wrong_password_fails_closed(
    scram_broker: tuple[BrokerHandle, str, str],
) -> None:
    handle, username, password = scram_broker
    good = _scram_config(handle, username, password)
    topic = f"scram-{uuid.uuid4().hex[:12]}"

    # The right password: topics can be created and records delivered over SASL_PLAINTEXT/SCRAM-SHA-512.
    assert create_topics(good, [topic], partitions=1, replication=1) == [topic]
    wait_for_topics(good, [topic])
    _produce(good, topic, [(b"k", b"v")])

    # A wrong password: the client reports an authentication failure and delivers nothing.
    errors: list[KafkaError] = []
    reports: list[KafkaError | None] = []
    bad = Producer(
        {
            **_scram_config(handle, username, password + "-wrong"),
            "message.timeout.ms": "3000",
            "error_cb": errors.append,
        }
    )
    bad.produce(topic, value=b"must-not-arrive", on_delivery=lambda err, _msg: reports.append(err))
    deadline = time.monotonic() + DEADLINE_S
    while not reports and time.monotonic() < deadline:
        bad.poll(0.5)
    assert reports, f"no delivery report within {DEADLINE_S}s"
    assert reports[0] is not None, "a record was delivered with a wrong password"
    assert any(err.code() == KafkaError._AUTHENTICATION for err in errors), errors
    # Nothing but the good record reached the topic.
    assert _read_to_end(good, topic, isolation="read_committed") == [b"v"]
