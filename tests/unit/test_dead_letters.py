"""The one DLQ path (:class:`kafka_edge.dlq.DeadLetters`) against librdkafka's own local checks.

The producer here points at no broker: ``produce`` only queues, so what is checked is librdkafka's
synchronous refusal (``MSG_SIZE_TOO_LARGE`` when a copy exceeds ``message.max.bytes``) and what the
path does about it. Delivery-time refusals by a real broker are in ``tests/integration/test_bad_input.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException, Message, Producer

from kafka_edge.dlq import DeadLetters, OutputTooLarge, screen_output
from schemas.errors import InvalidRecord


@pytest.fixture
def producer() -> Iterator[Producer]:
    # a producer whose operator lowered message.max.bytes; nothing listens on port 9
    p = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 100_000,
                  "socket.connection.setup.timeout.ms": 1000, "log_level": 0})
    yield p
    p.purge()


def message(value: bytes, key: bytes = b"S-1") -> Message:
    return Message(topic="crm.subscriptions", partition=0, offset=7, key=key, value=value, headers=None)


def test_a_copy_over_the_producers_own_limit_is_queued_truncated_instead_of_raising(producer: Producer) -> None:
    letters = DeadLetters(producer, "test")
    value = b"\xc3\x01" + b"x" * 500_000
    with pytest.raises(KafkaException):  # what a plain produce of the whole copy does
        producer.produce("crm.subscriptions.dlq", value=value, key=b"S-1")

    letters.send("crm.subscriptions.dlq", message(value), InvalidRecord("subscription_id: too long"))

    assert letters.truncated == 1  # queued truncated (the content is checked against a broker in test_bad_input)


def test_a_copy_within_the_limit_is_queued_whole(producer: Producer) -> None:
    letters = DeadLetters(producer, "test")

    letters.send("crm.subscriptions.dlq", message(b"\x07not avro"), InvalidRecord("bad"))

    assert letters.truncated == 0


def test_a_huge_key_is_cut_too(producer: Producer) -> None:
    letters = DeadLetters(producer, "test")

    letters.send("crm.subscriptions.dlq", message(b"v", key=b"k" * 500_000), InvalidRecord("bad"))

    assert letters.truncated == 1


def test_an_output_over_the_producer_limit_is_poison_for_its_record() -> None:
    screen_output(b"key", b"x" * 900_000)
    with pytest.raises(OutputTooLarge) as info:
        screen_output(b"key", b"x" * 1_000_000)
    assert info.value.reason == "output_too_large"
