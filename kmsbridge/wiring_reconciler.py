"""Composition root of the reconciler's processes: ``kmsbridge run projector`` and ``... reconciler``.

Both bring the database schema up to date first (:func:`kmsbridge.db.upgrade`), serve
``/metrics``, ``/healthz`` and ``/readyz`` when ``KMSBRIDGE_METRICS_PORT`` is set, and stop cleanly
on SIGTERM/SIGINT (the projector after its current batch, the reconciler between two batches of a
run, leaving the request uncommitted so it runs again).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field

from confluent_kafka import Producer
from sqlalchemy.engine import Engine

from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import close_producer, consumer_config, make_consumer, make_producer, producer_config
from kms_adapter.port import KmsPort
from kmsbridge.db import upgrade
from kmsbridge.kms import build_kms
from kmsbridge.settings import Settings, mask_url
from kmsbridge.wiring import CLOSE_FLUSH_SECONDS, build_codec, engine_for, load_provider_or_exit, start_health
from kmsbridge.wiring_runs import RunServices, build_run_services
from reconciler.expectations import Expectations
from reconciler.job import JobConfig, ResetJob
from reconciler.lock import RunLock
from reconciler.projector import Projector, ProjectorConfig
from reconciler.publish import CommandSink, KafkaCommandSink
from reconciler.runner import ReconcileRunner, RunnerConfig, run_on_loop
from reconciler.store import DesiredStateStore

__all__ = [
    "ReconcilerApp",
    "build_projector",
    "build_reconciler",
    "build_reset_job",
    "express_topic",
    "job_config",
    "migrated_engine",
    "run_projector",
    "run_reconciler",
]

log = logging.getLogger(__name__)


def migrated_engine(settings: Settings) -> Engine:
    """The database engine, its schema upgraded to the newest migration."""
    engine = engine_for(settings)
    upgrade(engine)
    return engine


# --- projector ---------------------------------------------------------------------------------------


def build_projector(settings: Settings, health: HealthState | None = None,
                    engine: Engine | None = None, *, clients: ExitStack | None = None) -> Projector:
    """The projector; the close of its producer (its DLQ copies) goes on ``clients`` (the caller's exit
    stack: no client may outlive the process, one alive at ``exit()`` crashes it with SIGSEGV). The loop
    closes its consumer."""
    kafka = settings.kafka_config()
    store = DesiredStateStore(engine or migrated_engine(settings))
    config = consumer_config(kafka, settings.group_id("projector"), instance_id=settings.instance_id("projector"))
    config["enable.auto.commit"] = False  # offsets are committed synchronously after the DB commit
    topic = settings.topic("subscriptions")
    producer = make_producer(producer_config(kafka))
    if clients is not None:
        clients.callback(close_producer, producer, CLOSE_FLUSH_SECONDS)
    return Projector(
        make_consumer(config), producer, build_codec(settings, pins="none"), store,
        ProjectorConfig(topic=topic, dlq_topic=settings.dlq(topic), max_message_bytes=settings.max_message_bytes),
        health=health,
    )


def run_projector(settings: Settings) -> None:
    health, server = start_health(settings)
    try:
        with ExitStack() as clients:  # closes the producer, also when building or running raised
            projector = build_projector(settings, health, clients=clients)
            signal.signal(signal.SIGTERM, lambda *_: projector.request_stop())
            signal.signal(signal.SIGINT, lambda *_: projector.request_stop())
            log.info("projector started topic=%s database=%s", settings.topic("subscriptions"),
                     settings.database_url)
            projector.run()
    finally:
        if server:
            server.stop()


# --- reconciler --------------------------------------------------------------------------------------


def express_topic(settings: Settings) -> str | None:
    """The express lane's topic, None when the lane is off (everything then travels on kms.commands)."""
    return settings.topic("commands_express") if settings.executor.express_lane else None


def job_config(settings: Settings) -> JobConfig:
    return JobConfig(commands_topic=settings.topic("commands"), express_topic=express_topic(settings))


def build_reset_job(settings: Settings, kms: KmsPort, sink: CommandSink, *, engine: Engine | None = None,
                    config: JobConfig | None = None) -> ResetJob:
    """The reset job over the settings' database and provider, reading ``kms`` and publishing to ``sink``."""
    engine = engine or migrated_engine(settings)
    cfg = config or job_config(settings)
    return ResetJob(DesiredStateStore(engine), kms, sink, load_provider_or_exit(settings),
                    expectations=Expectations(engine, cfg.expectation_ttl), lock=RunLock(engine), config=cfg)


@dataclass
class ReconcilerApp:
    """The runner plus the event loop (its own thread) the reset jobs and the KMS client live on.

    :meth:`run` ends with every Kafka client destroyed, in this order, also when the runner raised: the
    runner's consumer (by the runner), the queue reader's (by its thread, joined here), then the producer
    they all share (here, once no part uses it). A client alive at ``exit()`` crashes the process there
    (SIGSEGV: its broker threads use OpenSSL state that OpenSSL's exit handler frees)."""

    runner: ReconcileRunner
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    kms: KmsPort
    runs: RunServices | None = None  # the scheduler of run definitions and the communication queue
    stopping: threading.Event = field(default_factory=threading.Event)
    producer: Producer | None = None  # shared by the runner, the jobs and the run services; closed by run()

    def run(self) -> None:
        if self.runs is not None:
            self.runs.start()
        try:
            self.runner.run()
        finally:
            self.stopping.set()
            try:
                if self.runs is not None:
                    self.runs.stop()
                self.close()  # the jobs' loop, which publishes through the producer too
            finally:
                if self.producer is not None:
                    close_producer(self.producer, CLOSE_FLUSH_SECONDS)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.kms.aclose(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


def build_reconciler(settings: Settings, health: HealthState | None = None,
                     engine: Engine | None = None) -> ReconcilerApp:
    provider = load_provider_or_exit(settings)
    kafka = settings.kafka_config()
    engine = engine or migrated_engine(settings)
    kms = build_kms(settings, provider)
    producer = make_producer(producer_config(kafka))
    codec = build_codec(settings)
    sink = KafkaCommandSink(producer, codec, settings.topic("commands"), express_topic=express_topic(settings))
    job = build_reset_job(settings, kms, sink, engine=engine)
    config = consumer_config(kafka, settings.group_id("reconciler"), instance_id=settings.instance_id("reconciler"))
    config["enable.auto.commit"] = False  # a request is committed only after its report is delivered
    requests = settings.topic("reconcile_requests")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="reconcile-jobs", daemon=True)
    thread.start()
    runner = ReconcileRunner(
        make_consumer(config), producer, codec, job,
        RunnerConfig(requests_topic=requests, reports_topic=settings.topic("reconcile_reports"),
                     dlq_topic=settings.dlq(requests)),
        submit=run_on_loop(loop), health=health,
    )
    stopping = threading.Event()
    runs = build_run_services(settings, engine=engine, job=job, loop=loop, producer=producer, codec=codec,
                              stop=stopping, expectations=Expectations(engine, job.config.expectation_ttl))
    if runs.reader is not None:
        runs.reader.on_fatal = runner.fail  # a fenced queue reader ends the process, as a fenced runner does
    return ReconcilerApp(runner, loop, thread, kms, runs, stopping, producer)


def run_reconciler(settings: Settings) -> None:
    health, server = start_health(settings)
    app = build_reconciler(settings, health)
    signal.signal(signal.SIGTERM, lambda *_: app.runner.request_stop())
    signal.signal(signal.SIGINT, lambda *_: app.runner.request_stop())
    log.info("reconciler started requests=%s kms=%s", settings.topic("reconcile_requests"),
             mask_url(settings.kms.endpoint))
    try:
        app.run()
    finally:
        if server:
            server.stop()
