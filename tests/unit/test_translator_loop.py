"""Parts of the translator loop that need no broker: a one-shot run's end offsets (on a topic created a
moment ago the broker may not know its leader yet: "ask again", not a crash) and per-batch metrics."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.translator import TransactionalTranslator, TranslatorConfig


class EndsConsumer:
    """Answers watermarks from ``ends``, after raising ``errors`` one by one."""

    def __init__(self, ends: dict[tuple[str, int], int], errors: list[KafkaError]) -> None:
        self.ends = ends
        self.errors = errors

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        return 0, self.ends[(tp.topic, tp.partition)]


def translator(consumer: Any) -> TransactionalTranslator:
    t = TransactionalTranslator(consumer, None, None, {},  # type: ignore[arg-type]
                                TranslatorConfig(inputs={}, commands_topic="c", results_topic="r"))
    t._assignment.on_assign(consumer, [TopicPartition("crm.communications", p) for p in (0, 1)])
    return t


def test_a_retriable_error_means_ask_again_and_the_next_call_has_every_end() -> None:
    not_leader = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "not leader", retriable=True)
    t = translator(EndsConsumer({("crm.communications", 0): 4, ("crm.communications", 1): 9}, [not_leader]))

    assert t._end_offsets() is None
    assert t._end_offsets() == {("crm.communications", 0): 4, ("crm.communications", 1): 9}


def test_an_error_that_is_not_retriable_is_raised() -> None:
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")
    t = translator(EndsConsumer({}, [denied]))

    with pytest.raises(KafkaException):
        t._end_offsets()


class Msg:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


def test_metrics_counted_once_per_batch_equal_a_count_per_message() -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"process": "translator", **labels}) or 0.0

    before = (sample("kmsbridge_messages_processed_total", topic="t.a", outcome="ok"),
              sample("kmsbridge_messages_processed_total", topic="t.a", outcome="dlq"),
              sample("kmsbridge_messages_consumed_total", topic="t.a"),
              sample("kmsbridge_messages_consumed_total", topic="t.b"),
              sample("kmsbridge_processing_seconds_count", topic="t.a"))
    msgs = [Msg("t.a"), Msg("t.a"), Msg("t.b"), Msg("t.a")]

    TransactionalTranslator._count(msgs, ["ok", "dlq", "ok", "ok"], 0.001)  # type: ignore[arg-type]

    after = (sample("kmsbridge_messages_processed_total", topic="t.a", outcome="ok"),
             sample("kmsbridge_messages_processed_total", topic="t.a", outcome="dlq"),
             sample("kmsbridge_messages_consumed_total", topic="t.a"),
             sample("kmsbridge_messages_consumed_total", topic="t.b"),
             sample("kmsbridge_processing_seconds_count", topic="t.a"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 3, 1, 3]

