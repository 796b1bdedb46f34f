"""Composition root of ``kmsbridge projector rebuild`` (:mod:`reconciler.rebuild`).

It builds the rebuild's parts from the settings: the target database (``KMSBRIDGE_DATABASE_URL``, or
another URL), its schema upgraded to the newest migration; the end offsets of ``crm.subscriptions`` as
a ``read_committed`` reader sees them (the last stable offsets, asked with ``list_offsets``); and a
consumer that only ever ``assign``\\ s, with a group id of its own and nothing committed, so no group's
offsets move.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from confluent_kafka import Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from pydantic import SecretStr

from kafka_edge.kafka_clients import consumer_config, make_consumer
from kmsbridge.settings import SecretUrl, Settings, mask_url
from kmsbridge.wiring import build_codec
from kmsbridge.wiring_reconciler import migrated_engine
from reconciler.rebuild import Rebuild, RebuildConfig, RebuildError, RebuildReport
from reconciler.store import DesiredStateStore

__all__ = ["REBUILD_GROUP_SUFFIX", "end_offsets", "rebuild_consumer", "rebuild_desired_state", "target_url"]

log = logging.getLogger(__name__)

#: Appended to the projector's group id to name the rebuild's consumer (it never joins a group or commits).
REBUILD_GROUP_SUFFIX = "-rebuild"


def target_url(settings: Settings, into: str | None) -> SecretStr:
    """The database the rebuild writes: ``into`` when given, else the settings' database."""
    return SecretUrl(into) if into else settings.database_url


def end_offsets(kafka_config: dict[str, str], topic: str, timeout: float = 30) -> dict[int, tuple[int, int]]:
    """Each partition of ``topic`` -> (beginning, end) offsets, the end as a ``read_committed`` reader sees
    it. Raises :class:`RebuildError` naming the topic when it is missing or the broker does not answer."""
    admin = AdminClient(dict(kafka_config))
    try:
        metadata = admin.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise RebuildError(f"topic {topic!r} not found ({info.error if info is not None else 'no metadata'})")
        partitions = [TopicPartition(topic, p) for p in sorted(info.partitions)]
        out: dict[int, tuple[int, int]] = {}
        earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in partitions}, request_timeout=timeout)
        latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions},
                                    isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout)
        begins = {tp.partition: future.result().offset for tp, future in earliest.items()}
        for tp, future in latest.items():
            out[tp.partition] = (begins[tp.partition], future.result().offset)
        return out
    except KafkaException as exc:
        raise RebuildError(f"reading the end offsets of {topic!r}: {exc}") from exc


def rebuild_consumer(settings: Settings) -> Consumer:
    """A read_committed consumer for :class:`~reconciler.rebuild.Rebuild`: it is only ever assigned
    partitions and commits nothing, under a group id of its own (librdkafka needs one)."""
    config = consumer_config(settings.kafka_config(), settings.group_id("projector") + REBUILD_GROUP_SUFFIX)
    config.update({"enable.auto.commit": False, "enable.partition.eof": True})
    return make_consumer(config)


def rebuild_desired_state(settings: Settings, *, into: str | None = None, force: bool = False,
                          idle_timeout_seconds: float = 60.0) -> RebuildReport:
    """Rebuild the desired-state store of ``into`` (else the settings' database) from the subscriptions
    topic, read to the end offsets it has now. Raises :class:`~reconciler.rebuild.RebuildRefused` for a
    store that is not empty unless ``force``, :class:`~reconciler.rebuild.RebuildError` when the topic
    cannot be read to its end."""
    url = target_url(settings, into)
    engine = migrated_engine(settings.model_copy(update={"database_url": url}))
    try:
        topic = settings.topic("subscriptions")
        kafka = settings.kafka_config()
        ends = end_offsets(kafka, topic)
        consumer = rebuild_consumer(settings)
        log.info("projector rebuild topic=%s partitions=%d records_below_end=%d database=%s", topic, len(ends),
                 sum(end - begin for begin, end in ends.values()), mask_url(url.get_secret_value()))
        try:
            return Rebuild(
                consumer, build_codec(settings, pins="none"), DesiredStateStore(engine),
                ends, RebuildConfig(topic=topic, max_message_bytes=settings.max_message_bytes,
                                    max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
                                    idle_timeout_seconds=idle_timeout_seconds, force=force),
            ).run()
        finally:
            consumer.close()
    finally:
        engine.dispose()
