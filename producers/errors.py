"""Errors of the producing side; librdkafka errors are wrapped here, each marked retryable or terminal."""

from __future__ import annotations

from confluent_kafka import KafkaError

__all__ = ["ProducerError", "TopicAdminError"]


class ProducerError(Exception):
    retryable = True


class TopicAdminError(ProducerError):
    """Creating or inspecting topics failed. Retryable when librdkafka says the cause is transient
    (timeouts, a broker not yet ready); terminal otherwise (bad replication factor, authorisation)."""

    def __init__(self, message: str, kafka_error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error
        self.retryable = kafka_error.retriable() if kafka_error is not None else True
