"""``kmsbridge produce``, ``kmsbridge tail`` and ``kmsbridge topics create``."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Consumer, KafkaError, Producer

from kafka_edge.kafka_clients import close_producer
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.settings import Settings, SettingsError
from producers.errors import TopicAdminError
from producers.topics import DLQ, TOPIC_TABLE, PlannedTopic, ensure_topics, plan_topics
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.jsonio import JsonLinesError, parse_jsonl, to_json
from schemas.keys import record_key
from schemas.records import (
    CommunicationEvent,
    ReconcileRequest,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = ["planned_topics", "produce_cmd", "tail_cmd", "topics_group"]

KINDS: dict[str, tuple[str, type]] = {
    "subscriptions": ("subscriptions", SubscriptionEvent),
    "communications": ("communications", CommunicationEvent),
    "requests": ("requests", ServiceRequest),
    "reconcile": ("reconcile_requests", ReconcileRequest),
}


@click.command("produce")
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--file", "file_", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON Lines, one record a line")
def produce_cmd(kind: str, file_: Path) -> None:
    """Validate every line of FILE, then encode and produce them all (nothing is sent if any line is bad)."""
    settings = cli_settings()
    logical, model = KINDS[kind]
    records: list[Any]
    try:
        records = parse_jsonl(file_.read_text(encoding="utf-8"), model)
    except JsonLinesError as exc:
        fail(f"{file_}: nothing sent\n{exc}")
    topic = settings.topic(logical)
    from kmsbridge.wiring import build_codec

    try:
        codec = build_codec(settings, pins="ring" if model is ServiceRequest else "none")
    except SettingsError as exc:
        fail(str(exc))
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True, "linger.ms": 20})
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        for record in records:
            while True:
                try:
                    producer.produce(topic, key=record_key(record).encode(), value=codec.encode(record, topic),
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
    finally:
        remaining = close_producer(producer, 30)
    if errors or remaining:
        fail(f"{len(errors) + remaining} of {len(records)} records not delivered: {errors[:3]}", EXIT_FAILED)
    click.echo(f"produced {len(records)} {kind} records to {topic}")


def tail_consumer(settings: Settings, topic: str) -> Consumer:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"kmsbridge-tail-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    return consumer


def _describe(msg: object, codec: Codec, as_json: bool) -> str:
    from confluent_kafka import Message

    assert isinstance(msg, Message)
    try:
        record = codec.decode_any(msg.value())
        return to_json(record) if as_json else f"{type(record).__name__} {to_json(record)}"
    except PoisonMessage as exc:
        got = msg.headers() or []
        raw_headers: list[tuple[str, Any]] = list(got.items()) if isinstance(got, dict) else list(got)
        headers = {k: v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in raw_headers}
        return json.dumps({"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                           "key": (msg.key() or b"").decode(errors="replace"), "undecodable": exc.reason,
                           "headers": headers})


@click.command("tail")
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="one JSON record per line")
@click.option("--max", "max_", type=int, default=None, help="stop after N records")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="stop when no record arrived for this many seconds")
def tail_cmd(topic: str, as_json: bool, max_: int | None, timeout: float) -> None:
    """Print the decoded records of TOPIC from the beginning (TOPIC without the configured prefix is fine)."""
    settings = cli_settings(logging=False)
    if settings.topic_prefix and not topic.startswith(settings.topic_prefix):
        topic = settings.topic_prefix + topic
    from kmsbridge.wiring import build_codec

    codec = build_codec(settings, pins="masked")  # a sealed PIN shows as a mask, without a key
    consumer = tail_consumer(settings, topic)
    seen = 0
    last = time.monotonic()
    try:
        while (max_ is None or seen < max_) and time.monotonic() - last < timeout:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            last = time.monotonic()
            click.echo(_describe(msg, codec, as_json))
            seen += 1
    finally:
        consumer.close()
    if max_ is not None and seen < max_:
        click.echo(f"timeout: {seen} of {max_} records seen", err=True)
        raise SystemExit(EXIT_FAILED)


@click.group("topics")
def topics_group() -> None:
    """Topic administration."""


def planned_topics(settings: Settings) -> list[PlannedTopic]:
    """Every topic of ``settings.all_topics()`` with its config from :data:`producers.topics.TOPIC_TABLE`."""
    kinds = {settings.topic(kind): kind for kind in TOPIC_TABLE if kind != DLQ}
    dlqs = {settings.dlq(settings.topic(kind)) for kind in TOPIC_TABLE if kind != DLQ}
    named: dict[str, str] = {}
    for name in settings.all_topics():
        if name in kinds:
            named[name] = kinds[name]
        elif name in dlqs:
            named[name] = DLQ
        else:
            raise SettingsError(f"topic {name!r} has no row in producers.topics.TOPIC_TABLE")
    try:
        return plan_topics(named, settings.topics, settings.topics.replication_factor)
    except ValueError as exc:
        raise SettingsError(f"KMSBRIDGE_TOPICS__MIN_INSYNC_REPLICAS / KMSBRIDGE_TOPICS__REPLICATION_FACTOR: {exc}"
                            ) from None


@topics_group.command("create")
@click.option("--dry-run", is_flag=True,
              help="Print each topic with its partitions, replication and config (JSON Lines); create nothing.")
@click.option("--keep-existing-configs", is_flag=True,
              help="Leave the config of topics that exist as it is (report what differs from the plan).")
def topics_create(dry_run: bool, keep_existing_configs: bool) -> None:
    """Create every topic the product uses with its config, and set the planned config keys of topics
    that exist (idempotent; partitions and replication from settings, applied to new topics only)."""
    settings = cli_settings()
    try:
        plans = planned_topics(settings)
    except SettingsError as exc:
        fail(str(exc))
    partitions, replication = settings.topics.partitions, settings.topics.replication_factor
    if dry_run:
        for plan in plans:
            click.echo(json.dumps({"topic": plan.name, "kind": plan.kind, "partitions": partitions,
                                   "replication": replication, "config": plan.config}, sort_keys=True))
        return
    try:
        outcome = ensure_topics(settings.kafka_config(), plans, partitions, replication,
                                update_existing=not keep_existing_configs)
    except TopicAdminError as exc:
        fail(str(exc), EXIT_FAILED)
    for name, diff in outcome.differed.items():
        verb = "set" if name in outcome.updated else "differs (kept)"
        changes = ", ".join(f"{key} {found}->{planned}" for key, (found, planned) in sorted(diff.items()))
        click.echo(f"{name}: {verb}: {changes}")
    for name, found in outcome.replication_differs.items():
        click.echo(f"warning: {name} has {found} replicas, the plan {replication} (a reassignment changes it)",
                   err=True)
    click.echo(f"{len(outcome.created)} created, {len(plans) - len(outcome.created)} already present, "
               f"{len(outcome.updated)} updated")
