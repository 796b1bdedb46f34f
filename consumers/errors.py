"""Errors of the Kafka edge: librdkafka errors are wrapped here, each marked retryable or terminal."""

from __future__ import annotations

__all__ = ["ConsumerError", "FatalKafkaError", "TransactionAborted"]


class ConsumerError(Exception):
    retryable = True


class TransactionAborted(ConsumerError):
    """The transaction was aborted; the batch is rewound and processed again."""

    retryable = True


class FatalKafkaError(ConsumerError):
    """The client cannot continue (fenced producer, fatal librdkafka error); the process exits
    non-zero and its supervisor restarts it, which is the recovery Kafka's EOS protocol expects."""

    retryable = False
