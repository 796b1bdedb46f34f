"""librdkafka configurations for our consumers and producers, in one place.

Each process's consumer stores offsets by hand (``enable.auto.offset.store=false``) so an offset is
stored only after its message is done; the background commit then commits only what was stored.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Consumer, Producer

KafkaConfig = Mapping[str, str]

__all__ = ["consumer_config", "make_consumer", "make_producer", "producer_config"]


def consumer_config(
    base: KafkaConfig, group_id: str, *, instance_id: str | None = None, transactional_input: bool = False
) -> dict[str, str | int | bool]:
    config: dict[str, str | int | bool] = dict(base)
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": not transactional_input,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10000,
            "auto.commit.interval.ms": 500,
        }
    )
    if instance_id:
        # static membership: a restarted pod gets its partitions back without a rebalance
        config["group.instance.id"] = instance_id
    return config


def producer_config(base: KafkaConfig, *, transactional_id: str | None = None) -> dict[str, str | int | bool]:
    config: dict[str, str | int | bool] = dict(base)
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4"})
    if transactional_id:
        config["transactional.id"] = transactional_id
    return config


def make_consumer(config: dict[str, str | int | bool]) -> Consumer:
    return Consumer(config)


def make_producer(config: dict[str, str | int | bool]) -> Producer:
    return Producer(config)
