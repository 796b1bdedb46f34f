"""``kmsbridge reconcile``: publish a reset run (or a preview) and, with ``--wait``, print its report.

::

    kmsbridge reconcile [--created-from D] [--created-to D] [--type T]... [--subscription S]...
                        [--preview] [--json] [--wait] [--timeout SECONDS]

Dates are ``YYYY-MM-DD`` (a whole day, UTC: ``--created-to 2026-01-31`` includes that day) or ISO
8601 date-times (``--created-to`` exclusive; no zone means UTC). With ``--wait`` the report is read
from ``reconcile.reports``, starting at the end offsets taken *before* the request is produced, so
it cannot be missed however fast the run is. Exit codes: 0 done, 1 the run failed (an error,
failed subscriptions or a named subscription the store does not hold) or no report came in time, 2 bad arguments.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta

import click
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from kafka_edge.kafka_clients import close_producer
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.settings import Settings
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.jsonio import to_json
from schemas.keys import record_key
from schemas.records import DriftItem, ReconcileReport, ReconcileRequest

__all__ = ["ReportWaiter", "format_report", "parse_when", "publish_request", "reconcile_cmd"]

DEFAULT_TIMEOUT = 300.0


def parse_when(value: str, *, end: bool) -> datetime:
    """A CLI date or date-time as an aware UTC instant; a plain date is a whole day (see the module)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class ReportWaiter:
    """Reads ``reconcile.reports`` from its current end; create it before producing the request."""

    def __init__(self, settings: Settings, codec: Codec) -> None:
        self._codec = codec
        self._topic = settings.topic("reconcile_reports")
        self._consumer = Consumer({**settings.kafka_config(), "group.id": f"kmsbridge-cli-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            metadata = self._consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                raise click.ClickException(f"topic {self._topic} does not exist (kmsbridge topics create)")
            start = []
            for partition in metadata.partitions:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, partition), timeout=10)
                start.append(TopicPartition(self._topic, partition, high))
        except KafkaException as exc:
            self._consumer.close()
            raise click.ClickException(f"cannot read {self._topic}: {exc.args[0] if exc.args else exc}") from exc
        except click.ClickException:
            self._consumer.close()
            raise
        self._consumer.assign(start)

    def wait(self, run_id: str, timeout: float) -> ReconcileReport | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg: Message | None = self._consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None or msg.error() is not None or msg.key() != run_id.encode():
                continue
            try:
                return self._codec.decode(msg.value(), ReconcileReport)
            except PoisonMessage:
                continue
        return None

    def close(self) -> None:
        self._consumer.close()


def publish_request(settings: Settings, codec: Codec, request: ReconcileRequest) -> None:
    """Produce ``request`` to ``reconcile.requests`` (key = run id) and wait until it is delivered."""
    topic = settings.topic("reconcile_requests")
    producer = Producer({**settings.kafka_config(), "enable.idempotence": True})
    errors: list[KafkaError] = []
    try:
        producer.produce(topic, key=record_key(request).encode(), value=codec.encode(request, topic),
                         on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
    finally:
        remaining = close_producer(producer, 30)
    if remaining or errors:
        raise click.ClickException(f"the request was not delivered to {topic}: {errors[0] if errors else 'timeout'}")


def format_report(report: ReconcileReport) -> str:
    kind = "preview" if report.preview else "reset run"
    lines = [f"{kind} {report.run_id}: checked {report.checked}, in sync {report.in_sync}, drifted {report.drifted}, "
             f"commands published {report.commands_published}, failed {report.failed} "
             f"({report.duration_seconds:.1f} s)"]
    if report.error:
        lines.append(f"error: {report.error}")
    if report.unknown_subscriptions:
        lines.append("UNKNOWN_SUBSCRIPTION (not in the desired-state store): "
                     + ", ".join(report.unknown_subscriptions))
    if report.rejected:
        lines.append(f"rejected {report.rejected} (repaired in the revoking direction only): "
                     + ", ".join(f"{sub} {code}" for sub, code in report.rejections.items()))
    if report.items:
        header = ("subscription", "secure client", "missing", "extra", "wrong dates", "pairing", "other")
        rows = [header, *(_row(item) for item in report.items)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    if report.items_omitted:
        lines.append(f"... and {report.items_omitted} more drifted secure clients")
    return "\n".join(lines)


def _row(item: DriftItem) -> tuple[str, str, str, str, str, str, str]:
    other = "; ".join(filter(None, [item.pin, "unknown to CRM" if item.unknown_to_crm else None]))
    return (item.subscription_id, item.secure_client_id, ",".join(item.missing_products) or "-",
            ",".join(item.extra_products) or "-", ",".join(item.wrong_dates) or "-", item.pairing or "-", other or "-")


@click.command("reconcile")
@click.option("--created-from", help="Only subscriptions created at or after this date (YYYY-MM-DD) or time.")
@click.option("--created-to", help="Only subscriptions created up to this date (inclusive) or before this time.")
@click.option("--type", "types", multiple=True, metavar="T", help="Only this subscription type; repeatable.")
@click.option("--subscription", "subscriptions", multiple=True, metavar="S",
              help="Only this subscription (a single reset); repeatable.")
@click.option("--preview", is_flag=True, help="Report the drift only; send no command.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (or the request) as JSON.")
@click.option("--wait", is_flag=True, help="Wait for the run's report and print it.")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="How long --wait waits for the report, in seconds.")
def reconcile_cmd(created_from: str | None, created_to: str | None, types: tuple[str, ...],
                  subscriptions: tuple[str, ...], preview: bool, as_json: bool, wait: bool, timeout: float) -> None:
    """Find subscriptions whose KMS state differs from CRM and re-synchronise them (or just preview)."""
    start = parse_when(created_from, end=False) if created_from else None
    end = parse_when(created_to, end=True) if created_to else None
    if start is not None and end is not None and start >= end:
        fail("--created-from must be before --created-to")
    settings = cli_settings(logging=False)
    request = ReconcileRequest(run_id=str(uuid.uuid4()), created_from=start, created_to=end,
                               subscription_types=list(types), subscription_ids=list(subscriptions),
                               preview=preview, requested_by="cli", requested_at=datetime.now(UTC))
    from kmsbridge.wiring import build_codec

    codec = build_codec(settings, pins="none")
    waiter = ReportWaiter(settings, codec) if wait else None  # end offsets taken before producing
    try:
        publish_request(settings, codec, request)
        if waiter is None:
            click.echo(to_json(request) if as_json else
                       f"published {'preview' if preview else 'reset run'} {request.run_id}")
            return
        report = waiter.wait(request.run_id, timeout)
    finally:
        if waiter is not None:
            waiter.close()
    if report is None:
        fail(f"no report for run {request.run_id} within {timeout:.0f}s (is `kmsbridge run reconciler` running?)",
             EXIT_FAILED)
    click.echo(to_json(report) if as_json else format_report(report))
    if not report.succeeded:
        raise SystemExit(EXIT_FAILED)
