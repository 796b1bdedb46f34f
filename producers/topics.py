"""Topic administration: create the topics kmsbridge uses, idempotently, and wait until they serve.

Used by the local stack, the Helm hook Job and the test fixtures. librdkafka errors are wrapped into
:class:`producers.errors.TopicAdminError` here, at the edge, with the topic name in the message.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_edge.kafka_clients import kafka_error
from producers.errors import TopicAdminError

__all__ = ["create_topics", "wait_for_topics"]


def _admin(kafka_config: Mapping[str, str]) -> AdminClient:
    return AdminClient(dict(kafka_config))


def create_topics(
    kafka_config: Mapping[str, str],
    names: Sequence[str],
    partitions: int,
    replication: int,
    timeout: float = 30,
    topic_config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create ``names`` with ``partitions`` and ``replication``; topics that already exist are fine.

    Returns the names this call created, in the order given. An existing topic is left as it is (its
    partition count is not changed). Raises :class:`TopicAdminError` for any other failure.
    """
    if not names:
        return []
    admin = _admin(kafka_config)
    new_topics = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication, config=dict(topic_config or {}))
        for name in dict.fromkeys(names)
    ]
    try:
        futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"creating topics {list(names)}: {exc}", kafka_error(exc)) from exc
    created: list[str] = []
    deadline = time.monotonic() + timeout
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicAdminError(
                f"creating topic {name!r} ({partitions} partitions, replication {replication}): {exc}", error
            ) from exc
        except concurrent.futures.TimeoutError as exc:
            raise TopicAdminError(f"creating topic {name!r}: no answer within {timeout:.0f}s") from exc
        created.append(name)
    order = {name: i for i, name in enumerate(names)}
    return sorted(created, key=order.__getitem__)


def wait_for_topics(
    kafka_config: Mapping[str, str],
    names: Sequence[str],
    timeout: float = 30,
    poll_interval: float = 0.2,
) -> None:
    """Wait until every topic in ``names`` exists and each of its partitions has a leader.

    Raises :class:`TopicAdminError` naming the topics still missing when ``timeout`` passes.
    """
    admin = _admin(kafka_config)
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(names))
    while True:
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            error = kafka_error(exc)
            if time.monotonic() > deadline:
                raise TopicAdminError(f"waiting for topics {pending}: {exc}", error) from exc
        else:
            pending = [name for name in pending if not _ready(metadata.topics.get(name))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopicAdminError(f"topics {pending} not ready (exist with a leader) after {timeout:.0f}s")
        time.sleep(poll_interval)


def _ready(topic: object) -> bool:
    if topic is None or getattr(topic, "error", None) is not None:
        return False
    partitions = getattr(topic, "partitions", {})
    return bool(partitions) and all(p.leader >= 0 and p.error is None for p in partitions.values())
