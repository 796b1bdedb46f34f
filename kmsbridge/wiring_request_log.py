"""Composition root of the request-log writer (``kmsbridge run request-log``) and of its readers.

The writer brings the database schema up to date first, serves ``/metrics``, ``/healthz`` and
``/readyz`` when ``KMSBRIDGE_METRICS_PORT`` is set, and stops after its current batch on SIGTERM/SIGINT.
The CLI verbs (``requests list``, ``history``, ``dlq replay``) and the Web API read the same database
through :func:`open_request_log`.
"""

from __future__ import annotations

import logging
import signal

from sqlalchemy.engine import Engine

from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import consumer_config, make_consumer
from kmsbridge.db import upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import build_codec, engine_for, start_health
from reconciler.request_log import PROCESS, RequestLogConfig, RequestLogWriter
from reconciler.request_log_store import RequestLog

__all__ = ["INPUTS", "build_request_log_writer", "open_request_log", "run_request_log"]

log = logging.getLogger(__name__)

#: The logical topics the writer reads (``Settings.topic`` names).
INPUTS = ("subscriptions", "requests", "commands", "commands_express", "results", "reconcile_requests",
          "reconcile_reports")


def open_request_log(settings: Settings, engine: Engine | None = None) -> RequestLog:
    """The request log of the settings' database, its schema upgraded to the newest migration."""
    engine = engine or engine_for(settings)
    upgrade(engine)
    return RequestLog(engine)


def build_request_log_writer(settings: Settings, health: HealthState | None = None,
                             engine: Engine | None = None) -> RequestLogWriter:
    section = settings.request_log
    config = consumer_config(settings.kafka_config(), settings.group_id(PROCESS),
                             instance_id=settings.instance_id(PROCESS))
    config["enable.auto.commit"] = False  # offsets are committed synchronously after the DB commit
    return RequestLogWriter(
        # it stores no PIN, so it holds no PIN key: a sealed PIN decodes as a mask
        make_consumer(config), build_codec(settings, pins="masked"), open_request_log(settings, engine),
        RequestLogConfig(topics={name: settings.topic(name) for name in INPUTS}, batch_size=section.batch_size,
                         batch_seconds=section.batch_seconds, retention_days=section.retention_days,
                         purge_interval_seconds=section.purge_interval_seconds),
        health=health,
    )


def run_request_log(settings: Settings) -> None:
    health, server = start_health(settings)
    writer = build_request_log_writer(settings, health)
    signal.signal(signal.SIGTERM, lambda *_: writer.request_stop())
    signal.signal(signal.SIGINT, lambda *_: writer.request_stop())
    log.info("request-log started topics=%s retention_days=%s", ",".join(settings.topic(n) for n in INPUTS),
             settings.request_log.retention_days)
    try:
        writer.run()
    finally:
        if server:
            server.stop()
