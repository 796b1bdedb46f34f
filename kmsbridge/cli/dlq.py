"""``kmsbridge dlq list TOPIC.dlq`` and ``kmsbridge dlq replay TOPIC.dlq`` (docs/architecture.md §1 item 16).

``list`` shows where each dead letter came from and why (never its payload). ``replay`` produces the
chosen records to their original topic only, and records each replay in the database
(``dlq_replays``), so replaying the same records again does nothing; see
:mod:`producers.dead_letters` for why a replay is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import click
from confluent_kafka import Producer

from kafka_edge.kafka_clients import close_producer, producer_config
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.cli.table import format_rows, parse_time
from kmsbridge.settings import Settings
from kmsbridge.wiring_request_log import open_request_log
from producers.dead_letters import DeadLetter, origin_of, plan_replay, read_dead_letters, replay
from reconciler.request_log_store import RequestLog

__all__ = ["dlq_group"]

#: The inputs whose consumers dead-letter (``Settings.topic`` names): the only topics a replay may target.
REPLAYABLE = ("subscriptions", "communications", "requests", "commands", "commands_express", "reconcile_requests")


def _resolve(settings: Settings, topic: str) -> tuple[str, str]:
    """(DLQ topic, origin) with the configured prefix; exit 2 unless the origin is a replayable input."""
    if settings.topic_prefix and not topic.startswith(settings.topic_prefix):
        topic = settings.topic_prefix + topic
    try:
        origin = origin_of(topic, settings.topics.dlq_suffix)
    except ValueError as exc:
        fail(str(exc))
    allowed = {settings.topic(name) for name in REPLAYABLE}
    if origin not in allowed:
        fail(f"{topic!r}: {origin!r} is not an input topic of kmsbridge ({', '.join(sorted(allowed))})")
    return topic, origin


def _read(settings: Settings, topic: str) -> list[DeadLetter]:
    try:
        return read_dead_letters(settings.kafka_config(), topic)
    except (ValueError, TimeoutError, RuntimeError) as exc:
        fail(str(exc), EXIT_FAILED)


def _replayed(store: RequestLog, topic: str) -> Callable[[Sequence[DeadLetter]], set[tuple[int, int]]]:
    return lambda letters: store.replayed(topic, [(d.partition, d.offset) for d in letters])


def _lines(letters: Sequence[DeadLetter], done: set[tuple[int, int]]) -> list[str]:
    rows = []
    for d in letters:
        v = d.view()
        rows.append((v["partition"], v["offset"], v["timestamp"].replace("+00:00", "Z"), v["original_topic"],
                     v["original_partition"], v["original_offset"], v["error_class"], v["reason"],
                     "yes" if (d.partition, d.offset) in done else "no"))
    return format_rows(("PARTITION", "OFFSET", "DEAD-LETTERED", "ORIGINAL-TOPIC", "ORIG-PARTITION", "ORIG-OFFSET",
                        "ERROR-CLASS", "REASON", "REPLAYED"), rows)


@click.group("dlq")
def dlq_group() -> None:
    """Dead letters: list them, replay them to the topic they came from."""


@dlq_group.command("list")
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter")
def list_cmd(topic: str, as_json: bool) -> None:
    """Each record of TOPIC (a .dlq topic): where it came from, its error class and reason; never the payload."""
    settings = cli_settings(logging=False)
    topic, _origin = _resolve(settings, topic)
    letters = _read(settings, topic)
    done = _replayed(open_request_log(settings), topic)(letters)
    if as_json:
        for d in letters:
            click.echo(json.dumps({**d.view(), "replayed": (d.partition, d.offset) in done}))
        return
    for line in _lines(letters, done):
        click.echo(line)


@dlq_group.command("replay")
@click.argument("topic")
@click.option("--since", callback=parse_time, help="only records dead-lettered at or after (ISO 8601)")
@click.option("--error-class", "error_classes", multiple=True, help="only this error class (repeatable)")
@click.option("--dry-run", is_flag=True, help="list what would be replayed; produce and record nothing")
def replay_cmd(topic: str, since: datetime | None, error_classes: tuple[str, ...], dry_run: bool) -> None:
    """Produce the records of TOPIC (a .dlq topic) again to their original topic, each at most once."""
    settings = cli_settings(logging=False)
    topic, origin = _resolve(settings, topic)
    store = open_request_log(settings)
    plan = plan_replay(_read(settings, topic), origin, since=since, error_classes=error_classes,
                       replayed=_replayed(store, topic))
    for d in plan.refused:
        click.echo(f"refused {topic}[{d.partition}]@{d.offset}: it came from {d.original_topic or 'no topic'}"
                   f"{' (a tombstone)' if d.value is None else ''}, not {origin}", err=True)
    if dry_run:
        for line in _lines(plan.replay, set()):
            click.echo(line)
        click.echo(f"dry run: {len(plan.replay)} would be replayed to {origin}; {len(plan.already)} replayed "
                   f"before, {len(plan.filtered)} filtered out, {len(plan.refused)} refused")
        return
    producer = Producer(producer_config(settings.kafka_config()))
    try:
        delivered = replay(producer, plan, topic)
    finally:
        close_producer(producer, 5)
    now = datetime.now(UTC)
    store.record_replays([{"dlq_topic": topic, "partition": d.partition, "offset": d.offset, "target_topic": origin,
                           "error_class": d.error_class[:64], "replayed_at": now} for d in delivered])
    failed = len(plan.replay) - len(delivered)
    click.echo(f"replayed {len(delivered)} to {origin}; {len(plan.already)} replayed before, "
               f"{len(plan.filtered)} filtered out, {len(plan.refused)} refused, {failed} failed")
    if failed:
        raise SystemExit(EXIT_FAILED)
