"""Composition root: builds each process from :class:`Settings` with the real adapters."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from confluent_kafka import Producer
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from consumers.breaker import Breaker
from consumers.command_runner import CommandRunner
from consumers.executor import Executor, ExecutorConfig
from consumers.ledger import Ledger
from consumers.limiter import KmsRateLimiter, RateLimits
from consumers.lookahead import LookAhead, reader_config
from consumers.translation import DeviceDirectory, HandlerContext, build_handlers
from consumers.translator import TransactionalTranslator, TranslatorConfig
from kafka_edge.health import HealthServer, HealthState
from kafka_edge.kafka_clients import (
    HangWatchdog,
    close_producer,
    consumer_config,
    make_consumer,
    make_producer,
    producer_config,
)
from kafka_edge.lag import LagMonitor
from kms_adapter.port import KmsPort
from kmsbridge.kms import build_kms
from kmsbridge.settings import Settings, SettingsError, mask_url
from provisioning.provider import ProviderConfig, ProviderConfigError, load_provider
from provisioning.text import TextLimits
from schemas.codec import Codec
from schemas.pin_seal import MASKED_PINS

__all__ = [
    "CLOSE_FLUSH_SECONDS",
    "ExecutorApp",
    "build_codec",
    "build_executor",
    "build_translator",
    "engine_for",
    "express_group",
    "load_provider_or_exit",
    "run_executor",
    "run_translator",
    "start_executor_lag_monitor",
    "start_lag_monitor",
    "translator_inputs",
]

log = logging.getLogger(__name__)

#: How long a process's producer may still deliver when it is closed (its loop flushed already).
CLOSE_FLUSH_SECONDS = 10.0
#: The translator's producer aborts an open transaction when closed: its ``transaction.timeout.ms``.
_TRANSACTION_CLOSE_SECONDS = 30.0


def build_codec(settings: Settings, *, pins: Literal["ring", "masked", "none"] = "ring") -> Codec:
    """The process's codec.

    ``pins="ring"``: the process reads or writes PIN-bearing records (kms.requests, kms.commands: the
    translator, executor, reconciler, Web API and the CLI verbs that send requests), so it needs the
    PIN key ring and does not start without one (the error names the setting). ``"masked"``: it shows
    records to people (``tail``) and reads every sealed PIN as a mask, without a key. ``"none"``: it
    touches no PIN (the projector, reconcile requests and reports).
    """
    registry = settings.schema_registry_url
    cipher = settings.pin_keys.ring() if pins == "ring" else MASKED_PINS if pins == "masked" else None
    if registry is None:
        return Codec(pins=cipher)
    return Codec(registry.get_secret_value(), settings.schema_registry.client_config(), pins=cipher,
                 registry_options=settings.schema_registry.options())


def engine_for(settings: Settings) -> Engine:
    url = settings.database_url.get_secret_value()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    return engine


def migrate(engine: Engine) -> None:
    """Bring the database schema up to date (Alembic, idempotent, serialised between processes)."""
    from kmsbridge.db import upgrade

    upgrade(engine)


def load_provider_or_exit(settings: Settings) -> ProviderConfig:
    try:
        return load_provider(settings.provider_file)
    except ProviderConfigError as exc:
        raise SettingsError(f"KMSBRIDGE_PROVIDER_FILE ({settings.provider_file}): {exc}") from exc


def text_limits(settings: Settings) -> TextLimits:
    t = settings.text_limits
    return TextLimits(ansi_max_chars=t.ansi_max_chars, unicode_max_units=t.unicode_max_units,
                      raw_max_bytes=t.raw_max_bytes)


def start_health(settings: Settings) -> tuple[HealthState, HealthServer | None]:
    """The process's health state, and its metrics/health server when ``metrics_port`` is set."""
    state = HealthState(settings.health_ttl_seconds)
    server = HealthServer(state, port=settings.metrics_port).start() if settings.metrics_port else None
    return state, server


def start_lag_monitor(settings: Settings, process: str, group: str, topics: list[str], *,
                      extra_groups: dict[str, list[str]] | None = None) -> LagMonitor | None:
    """Lag gauges of ``process``'s group (and its ``extra_groups``), refreshed off the poll loop with its
    own clients, when the process serves metrics."""
    if not settings.metrics_port:
        return None
    return LagMonitor(settings.kafka_config(), process, group, topics=topics, extra_groups=extra_groups,
                      interval=settings.lag_interval_seconds).start()


def express_group(settings: Settings) -> str:
    """The consumer group of the executor's express lane: a group of its own (docs/traffic.md)."""
    return settings.group_id("executor-express")


def start_executor_lag_monitor(settings: Settings) -> LagMonitor | None:
    """The executor's lag gauges: its group on ``kms.commands`` and, with the express lane, the express
    group on ``kms.commands.express`` (both labelled ``process="executor"``)."""
    express = ({express_group(settings): [settings.topic("commands_express")]}
               if settings.executor.express_lane else None)
    return start_lag_monitor(settings, "executor", settings.group_id("executor"), [settings.topic("commands")],
                             extra_groups=express)


def _instance(settings: Settings, process: str) -> str:
    return settings.instance_id(process) or f"{socket.gethostname()}-{os.getpid()}-{process}"


def translator_inputs(settings: Settings) -> list[str]:
    """The translator's inputs: ``crm.communications`` only in ``immediate`` delivery (in ``queue``
    delivery the reconciler's queue reader owns it, :mod:`reconciler.queue_reader`)."""
    if settings.communications.delivery == "immediate":
        return ["subscriptions", "communications", "requests"]
    return ["subscriptions", "requests"]


def build_translator(settings: Settings, *, only: list[str] | None = None,
                     directory: DeviceDirectory | None = None, group_suffix: str = "",
                     health: HealthState | None = None, clients: ExitStack | None = None) -> TransactionalTranslator:
    """The translator; the close of its transactional producer goes on ``clients`` (the caller's exit
    stack: no client may outlive the process, one alive at ``exit()`` crashes it with SIGSEGV). The loop
    closes its consumer."""
    provider = load_provider_or_exit(settings)
    codec = build_codec(settings)
    kafka = settings.kafka_config()
    names = only or translator_inputs(settings)
    inputs = {settings.topic(n): n for n in names}
    group = settings.group_id("translator") + group_suffix
    consumer = make_consumer(consumer_config(kafka, group, instance_id=settings.instance_id("translator"),
                                             transactional_input=True))
    producer = make_producer(producer_config(kafka, transactional_id=f"{group}-{_instance(settings, 'tx')}"))
    if clients is not None:
        clients.callback(_close_transactional_producer, producer)
    if directory is None:
        # messages and PINs aimed at a subscription expand to its devices through the projector's store
        from reconciler.store import DesiredStateStore

        engine = engine_for(settings)
        migrate(engine)
        directory = DesiredStateStore(engine)
    ctx = HandlerContext(provider=provider, limits=text_limits(settings), directory=directory)
    return TransactionalTranslator(
        consumer, producer, codec, build_handlers(ctx),
        TranslatorConfig(inputs=inputs, commands_topic=settings.topic("commands"),
                         results_topic=settings.topic("results"), dlq_suffix=settings.topics.dlq_suffix,
                         reconcile_requests_topic=settings.topic("reconcile_requests"),
                         max_message_bytes=settings.max_message_bytes,
                         batch_size=settings.translator.batch_size,
                         batch_seconds=settings.translator.batch_seconds,
                         max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
                         express_commands_topic=settings.topic("commands_express")
                         if settings.executor.express_lane else None),
        health=health,
    )


def _close_transactional_producer(producer: Producer) -> None:
    # closing aborts a transaction the loop left open, waiting for the coordinator: bounded by the watchdog
    with HangWatchdog("translator").guard("producer close", CLOSE_FLUSH_SECONDS + _TRANSACTION_CLOSE_SECONDS):
        close_producer(producer, CLOSE_FLUSH_SECONDS)


def run_translator(settings: Settings, *, until_end: bool = False, only: list[str] | None = None,
                   group_suffix: str = "") -> None:
    with ExitStack() as clients:  # closes the producer last, also when building or running raised
        _run_translator(settings, clients, until_end=until_end, only=only, group_suffix=group_suffix)


def _run_translator(settings: Settings, clients: ExitStack, *, until_end: bool, only: list[str] | None,
                    group_suffix: str) -> None:
    health, server = start_health(settings)
    translator = build_translator(settings, only=only, group_suffix=group_suffix, health=health, clients=clients)
    signal.signal(signal.SIGTERM, lambda *_: translator.request_stop())
    signal.signal(signal.SIGINT, lambda *_: translator.request_stop())
    log.info("translator started inputs=%s", only or "all")
    names = only or translator_inputs(settings)
    lag = start_lag_monitor(settings, "translator", settings.group_id("translator") + group_suffix,
                            [settings.topic(n) for n in names])
    try:
        translator.run(until_end=until_end)
    finally:
        if lag:
            lag.stop()
        if server:
            server.stop()


@dataclass
class ExecutorApp:
    executor: Executor
    breaker: Breaker
    kms: KmsPort
    producer: Producer | None = None  # the executor's; destroyed once it stopped

    async def run(self) -> None:
        try:
            await self.executor.run()
        finally:
            try:
                await self.breaker.aclose()
                await self.kms.aclose()
            finally:
                if self.producer is not None:  # no client may outlive the process (SIGSEGV at exit)
                    close_producer(self.producer, CLOSE_FLUSH_SECONDS)


def build_executor(settings: Settings, health: HealthState | None = None) -> ExecutorApp:
    """Must be called inside the event loop that will run it (the breaker binds to it)."""
    provider = load_provider_or_exit(settings)
    codec = build_codec(settings)
    kafka = settings.kafka_config()
    engine = engine_for(settings)
    migrate(engine)
    kms = build_kms(settings, provider)
    ex_cfg = settings.executor
    executor_ref: list[Executor] = []
    breaker = Breaker(kms.ping, threshold=ex_cfg.breaker_failure_threshold,
                      probe_seconds=ex_cfg.breaker_probe_seconds,
                      on_change=lambda is_open: executor_ref[0].set_breaker_open(is_open))
    limits = RateLimits(ex_cfg.rate_limit_per_second, ex_cfg.rate_limits.as_dict())
    limiter = KmsRateLimiter(limits) if limits.enabled else None
    runner = CommandRunner(kms, Ledger(engine), breaker, attempt_budget=ex_cfg.attempt_budget,
                           retry_initial=ex_cfg.retry_initial_seconds, retry_max=ex_cfg.retry_max_seconds,
                           limiter=limiter)
    group = settings.group_id("executor")
    consumer = make_consumer(consumer_config(kafka, group, instance_id=settings.instance_id("executor"),
                                             prefetch_kbytes=ex_cfg.prefetch_kbytes))
    producer = make_producer(producer_config(kafka))
    commands = settings.topic("commands")
    express = settings.topic("commands_express") if ex_cfg.express_lane else None
    # the express lane: a consumer (and group) of its own, so its records never wait behind the regular
    # lane's read-ahead or its pauses (docs/traffic.md)
    express_consumer = make_consumer(consumer_config(
        kafka, express_group(settings), instance_id=settings.instance_id("executor-express"),
        prefetch_kbytes=ex_cfg.express_prefetch_kbytes)) if express else None
    # coalescing beyond the buffer: a reader of the regular partitions, started only during a backlog
    lookahead = LookAhead(make_consumer(reader_config(kafka, group, prefetch_kbytes=ex_cfg.prefetch_kbytes)),
                          codec, commands, max_entries=ex_cfg.lookahead_max_entries,
                          backlog_threshold=ex_cfg.max_buffered, max_message_bytes=settings.max_message_bytes,
                          max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
                          ) if ex_cfg.lookahead_max_entries > 0 else None
    executor = Executor(consumer, producer, codec, runner,
                        ExecutorConfig(commands_topic=commands, results_topic=settings.topic("results"),
                                       dlq_topic=settings.dlq(commands), max_inflight=ex_cfg.max_inflight,
                                       max_buffered=ex_cfg.max_buffered,
                                       grace_seconds=settings.shutdown_grace_seconds,
                                       max_message_bytes=settings.max_message_bytes,
                                       max_future_skew=timedelta(seconds=settings.max_future_skew_seconds),
                                       express_topic=express,
                                       express_dlq_topic=settings.dlq(express) if express else None),
                        health=health, express_consumer=express_consumer, limiter=limiter, lookahead=lookahead)
    executor_ref.append(executor)
    return ExecutorApp(executor, breaker, kms, producer)


def run_executor(settings: Settings) -> None:
    asyncio.run(_executor_main(settings))


async def _executor_main(settings: Settings) -> None:
    health, server = start_health(settings)
    app = build_executor(settings, health)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, app.executor.request_stop)
    loop.add_signal_handler(signal.SIGINT, app.executor.request_stop)
    log.info("executor started kms=%s", mask_url(settings.kms.endpoint))
    lag = start_executor_lag_monitor(settings)
    try:
        await app.run()
    finally:
        if lag:
            lag.stop()
        if server:
            server.stop()
