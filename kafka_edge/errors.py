"""Errors of the Kafka edge: librdkafka errors are wrapped here, each marked retryable or terminal."""

from __future__ import annotations

__all__ = [
    "CommandAbandoned",
    "ConsumerError",
    "FatalKafkaError",
    "KafkaAuthenticationFailed",
    "KafkaTlsFailed",
    "StaticMemberFenced",
    "TransactionAborted",
]


class ConsumerError(Exception):
    retryable = True


class TransactionAborted(ConsumerError):
    """The transaction was aborted; the batch is rewound and processed again."""

    retryable = True


class FatalKafkaError(ConsumerError):
    """The client cannot continue (fenced producer, fatal librdkafka error); the process exits
    non-zero and its supervisor restarts it, which is the recovery Kafka's EOS protocol expects."""

    retryable = False


class KafkaAuthenticationFailed(FatalKafkaError):
    """The broker refused our credentials. librdkafka would retry forever, so a wrong password would
    look like a hung process; we fail closed instead, naming the settings to check."""


class KafkaTlsFailed(FatalKafkaError):
    """The TLS handshake with the broker failed (its certificate is not signed by the CA we trust, names
    another host, or has expired). No retry makes it succeed; we fail closed, naming the settings."""


class StaticMemberFenced(FatalKafkaError):
    """Another consumer joined the group with our ``group.instance.id`` and the broker fenced us: this
    consumer receives nothing any more. Two processes run with the same instance id; the message names
    the setting it comes from."""


class CommandAbandoned(ConsumerError):
    """The command's partition was revoked before its next attempt; the new owner runs it."""

    retryable = True
