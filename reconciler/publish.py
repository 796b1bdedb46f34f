"""Where a reset run's commands go: ``kms.commands`` (keyed by secure client), or a list in tests.

The Kafka edge wraps librdkafka outcomes into :class:`PublishFailed` here: a command counts as
published only once :meth:`KafkaCommandSink.flush` saw it delivered.
"""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import Codec
from schemas.keys import record_key
from schemas.records import KmsCommand

__all__ = ["CollectingSink", "CommandSink", "KafkaCommandSink", "PublishFailed"]


class PublishFailed(Exception):
    """Some commands were not delivered to Kafka (the run fails; its repairs are not expected)."""


class CommandSink(Protocol):
    def publish(self, command: KmsCommand) -> None: ...

    def flush(self) -> None:
        """Wait until everything published so far is delivered; raise :class:`PublishFailed` if not."""
        ...


class KafkaCommandSink:
    """Produces each command to ``topic`` with the secure client as key (the executor's ordering key)."""

    def __init__(self, producer: Producer, codec: Codec, topic: str, *, flush_timeout: float = 60.0) -> None:
        self._producer = producer
        self._codec = codec
        self.topic = topic
        self._timeout = flush_timeout
        self._errors: list[str] = []

    def publish(self, command: KmsCommand) -> None:
        value = self._codec.encode(command, self.topic)
        while True:
            try:
                self._producer.produce(self.topic, key=record_key(command).encode(), value=value,
                                       on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: let librdkafka send some
                self._producer.poll(0.05)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))

    def flush(self) -> None:
        remaining = self._producer.flush(self._timeout)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise PublishFailed(f"{len(errors) + remaining} command(s) not delivered to {self.topic}: "
                                f"{'; '.join(errors[:3]) or 'flush timed out'}")


class CollectingSink:
    """Keeps the commands in :attr:`commands` (unit tests, benchmarks)."""

    def __init__(self) -> None:
        self.commands: list[KmsCommand] = []

    def publish(self, command: KmsCommand) -> None:
        self.commands.append(command)

    def flush(self) -> None:
        return None
