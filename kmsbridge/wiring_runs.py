"""Composition of the run definitions' parts inside ``kmsbridge run reconciler``, and their readers.

The reconciler process runs, next to the reset-run loop of ``reconcile.requests``: the scheduler
(:mod:`reconciler.scheduler`), which executes Effective definitions when due and executions
requested by hand, and the queue reader (:mod:`reconciler.queue_reader`), which fills and settles
the communication queue (``queue`` delivery) and withdraws the expectations of rejected repairs.
The CLI verbs and the Web API read and write the same database through :func:`open_run_store` and
:func:`open_queue`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from confluent_kafka import Producer
from sqlalchemy.engine import Engine

from kafka_edge.kafka_clients import consumer_config, make_consumer
from kmsbridge.db import upgrade
from kmsbridge.settings import Settings
from kmsbridge.wiring import engine_for, text_limits
from reconciler.communications_queue import CommunicationQueue, MailRun
from reconciler.expectations import Expectations
from reconciler.job import ResetJob
from reconciler.publish import KafkaCommandSink
from reconciler.queue_reader import PROCESS as QUEUE_PROCESS
from reconciler.queue_reader import QueueReader, QueueReaderConfig
from reconciler.run_definitions import RunDefinitionStore
from reconciler.scheduler import RunExecutor, Scheduler
from reconciler.store import DesiredStateStore
from schemas.codec import Codec
from schemas.records import ReconcileReport, ReconcileRequest

__all__ = ["RunServices", "build_queue_reader", "build_run_services", "open_queue", "open_run_store"]

log = logging.getLogger(__name__)


def open_run_store(settings: Settings, engine: Engine | None = None) -> RunDefinitionStore:
    engine = engine or engine_for(settings)
    upgrade(engine)
    return RunDefinitionStore(engine)


def open_queue(settings: Settings, engine: Engine | None = None) -> CommunicationQueue:
    engine = engine or engine_for(settings)
    upgrade(engine)
    return CommunicationQueue(engine)


@dataclass
class RunServices:
    """The scheduler and the queue reader, each on its own thread."""

    scheduler: Scheduler
    reader: QueueReader | None
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        parts: list[tuple[str, Callable[[], None]]] = [("run-scheduler", self.scheduler.run)]
        if self.reader is not None:
            parts.append(("communication-queue", self.reader.run))
        for name, target in parts:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Ask both parts to stop and wait up to ``timeout`` seconds for their threads to end (the queue
        reader closes its consumer on its way out); returns the names of those still running."""
        self.scheduler.request_stop()
        if self.reader is not None:
            self.reader.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = [thread.name for thread in self.threads if thread.is_alive()]
        if running:
            log.error("%s still running %.0fs after the stop was asked", ", ".join(running), timeout)
        return running


def build_queue_reader(settings: Settings, producer: Producer, codec: Codec, queue: CommunicationQueue,
                       expectations: Expectations | None = None) -> QueueReader:
    config = consumer_config(settings.kafka_config(), settings.group_id(QUEUE_PROCESS),
                             instance_id=settings.instance_id(QUEUE_PROCESS))
    config["enable.auto.commit"] = False  # offsets are committed synchronously after the DB commit
    topic = settings.topic("communications")
    return QueueReader(make_consumer(config), producer, codec, queue, QueueReaderConfig(
        communications_topic=topic if settings.communications.delivery == "queue" else None,
        results_topic=settings.topic("results"), dlq_topic=settings.dlq(topic),
        max_message_bytes=settings.max_message_bytes,
        max_future_skew=timedelta(seconds=settings.max_future_skew_seconds)), expectations=expectations)


def build_run_services(settings: Settings, *, engine: Engine, job: ResetJob, loop: asyncio.AbstractEventLoop,
                       producer: Producer, codec: Codec, stop: threading.Event, expectations: Expectations,
                       owner: str | None = None) -> RunServices:
    """The scheduler (reset executions run ``job`` on ``loop``) and the queue reader."""
    store = RunDefinitionStore(engine)
    queue = CommunicationQueue(engine)
    directory = DesiredStateStore(engine)
    mail = MailRun(queue, directory.devices_of, KafkaCommandSink(producer, codec, settings.topic("commands")),
                   text_limits(settings))

    def reset(request: ReconcileRequest) -> ReconcileReport:
        return asyncio.run_coroutine_threadsafe(job.run(request, stop), loop).result()

    scheduler = Scheduler(store, RunExecutor(store, reset, mail),
                          owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                          tick_seconds=settings.communications.scheduler_tick_seconds)
    reader = build_queue_reader(settings, producer, codec, queue, expectations)
    return RunServices(scheduler, reader)
