"""Where a reset run's commands go: ``kms.commands`` or the express lane (keyed by secure client), or a
list in tests.

**The lane of a run** (:func:`run_priority`, the one place the rule lives; docs/traffic.md). A *single
reset* is a run whose filter names exactly one subscription (``subscription_ids`` of length one): the
reset of one subscription an agent asks for (``kmsbridge reconcile --subscription S``, the Web API's
``POST /v1/subscriptions/{id}/reset``, a ``RESET_SUBSCRIPTION`` request), which at most one
subscription can match, whatever other filters it carries. Its repair commands are ``EXPRESS`` and
travel on ``kms.commands.express``, as the commands of the other agents' requests do. Every other run
(a creation period, subscription types, several subscriptions, everything) is ``REGULAR`` and stays
on ``kms.commands``. A preview publishes nothing. There is no reset of one secure client: a box is
reset through the subscription that holds it.

The topic follows the priority (:func:`topic_for`), as the translator's choice does: an ``EXPRESS``
command goes to the express topic when the express lane is on, everything else to the commands topic.

The Kafka edge wraps librdkafka outcomes into :class:`PublishFailed` here: a command counts as
published only once :meth:`KafkaCommandSink.flush` saw it delivered.
"""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import Codec
from schemas.keys import record_key
from schemas.records import KmsCommand, Priority, ReconcileRequest

__all__ = ["CollectingSink", "CommandSink", "KafkaCommandSink", "PublishFailed", "is_single", "run_priority",
           "topic_for"]


def is_single(request: ReconcileRequest) -> bool:
    """A single reset: the run's filter names exactly one subscription (see the module docstring)."""
    return len(request.subscription_ids) == 1


def run_priority(request: ReconcileRequest) -> Priority:
    """The priority, and so the lane, of a run's repair commands: ``EXPRESS`` for a single reset."""
    return Priority.EXPRESS if is_single(request) else Priority.REGULAR


def topic_for(priority: Priority, topic: str, express_topic: str | None) -> str:
    """The topic of a command of ``priority``: the express lane for ``EXPRESS`` when there is one."""
    return express_topic if express_topic and priority is Priority.EXPRESS else topic


class PublishFailed(Exception):
    """Some commands were not delivered to Kafka (the run fails; its repairs are not expected)."""


class CommandSink(Protocol):
    def publish(self, command: KmsCommand) -> None: ...

    def flush(self) -> None:
        """Wait until everything published so far is delivered; raise :class:`PublishFailed` if not."""
        ...


class KafkaCommandSink:
    """Produces each command to ``topic``, or an ``EXPRESS`` one to ``express_topic`` when given
    (:func:`topic_for`), with the secure client as key (the executor's ordering key)."""

    def __init__(self, producer: Producer, codec: Codec, topic: str, *, express_topic: str | None = None,
                 flush_timeout: float = 60.0) -> None:
        self._producer = producer
        self._codec = codec
        self.topic = topic
        self.express_topic = express_topic
        self._timeout = flush_timeout
        self._errors: list[str] = []

    def publish(self, command: KmsCommand) -> None:
        topic = topic_for(command.priority, self.topic, self.express_topic)
        value = self._codec.encode(command, topic)
        while True:
            try:
                self._producer.produce(topic, key=record_key(command).encode(), value=value,
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
            topics = " or ".join(t for t in (self.topic, self.express_topic) if t)
            raise PublishFailed(f"{len(errors) + remaining} command(s) not delivered to {topics}: "
                                f"{'; '.join(errors[:3]) or 'flush timed out'}")


class CollectingSink:
    """Keeps the commands in :attr:`commands` (unit tests, benchmarks)."""

    def __init__(self) -> None:
        self.commands: list[KmsCommand] = []

    def publish(self, command: KmsCommand) -> None:
        self.commands.append(command)

    def flush(self) -> None:
        return None
