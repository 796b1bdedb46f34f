"""Composition root of the Web API (``kmsbridge run api``) and of the CLI verbs that wait for outcomes.

``run_api(settings)``:

1. refuses to start without an API key (:class:`SettingsError` naming ``KMSBRIDGE_API__API_KEYS`` /
   ``KMSBRIDGE_API__API_KEYS_FILE``), and without a readable provider file;
2. starts the outcome feed: ``kms.requests``, ``kms.results``, ``reconcile.requests`` and
   ``reconcile.reports`` read from ``HISTORY_SECONDS`` back into an in-memory
   :class:`~producers.outcomes.OutcomeStore` (so every replica knows every recent request, and a
   restarted one knows them again); ``/readyz`` is 200 once it caught up;
3. serves the app with uvicorn on ``KMSBRIDGE_API__HOST``/``KMSBRIDGE_API__PORT`` (and, when
   ``KMSBRIDGE_METRICS_PORT`` is set, ``/healthz``, ``/readyz`` and ``/metrics`` on that port too, which
   is where the Helm chart's probes look), over the protocol of :mod:`producers.api.server`, which
   closes a connection that does not deliver a whole request within
   ``KMSBRIDGE_API__READ_TIMEOUT_SECONDS``;
4. on SIGTERM uvicorn stops taking requests and finishes those in flight (bounded by
   ``KMSBRIDGE_SHUTDOWN_GRACE_SECONDS``); then the feed stops and the producer is flushed and closed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI

from kafka_edge.health import HealthServer, HealthState
from kmsbridge.kms import build_kms
from kmsbridge.settings import Settings, SettingsError
from kmsbridge.wiring import build_codec, load_provider_or_exit, text_limits
from producers.api import create_app
from producers.api.auth import NO_KEYS_MESSAGE
from producers.api.server import protocol_with_read_timeout
from producers.durable_outcomes import DurableOutcomes
from producers.outcomes import DeviceDirectory, OutcomeStore, planning_expectation
from producers.requests import KafkaRequestPublisher
from producers.results_feed import OutcomeFeed
from provisioning.provider import ProviderConfig
from reconciler.request_log_store import RequestLog

__all__ = [
    "HISTORY_SECONDS",
    "ApiProcess",
    "build_api",
    "build_outcome_store",
    "build_publisher",
    "run_api",
    "start_outcome_feed",
]

log = logging.getLogger(__name__)

#: How far back a starting Web API reads requests and outcomes (a restarted replica answers for them).
HISTORY_SECONDS = 3600.0


def build_publisher(settings: Settings) -> KafkaRequestPublisher:
    return KafkaRequestPublisher(settings.kafka_config(), build_codec(settings),
                                 requests_topic=settings.topic("requests"),
                                 reconcile_topic=settings.topic("reconcile_requests"))


def build_outcome_store(settings: Settings, provider: ProviderConfig,
                        directory: DeviceDirectory | None = None) -> OutcomeStore:
    """A store that expects, per request, the commands the translator will plan (same function)."""
    return OutcomeStore(planning_expectation(provider, text_limits(settings), directory))


def start_outcome_feed(settings: Settings, store: OutcomeStore, *, with_requests: bool = False,
                       history_seconds: float = 0.0, name: str = "outcomes") -> OutcomeFeed:
    """Start reading outcomes into ``store``; offsets are fixed when this returns (publish after it)."""
    names = ["results", "reconcile_reports"]
    if with_requests:
        names += ["requests", "reconcile_requests"]
    feed = OutcomeFeed(settings.kafka_config(), build_codec(settings), store,
                       [settings.topic(n) for n in names], history_seconds=history_seconds, name=name)
    return feed.start()


class _FeedProbe(HealthState):
    """The feed's liveness and readiness, for the app's probes and for :class:`HealthServer`."""

    def __init__(self, feed: OutcomeFeed, ttl_seconds: float) -> None:
        super().__init__(ttl_seconds)
        self._feed = feed

    def healthy(self) -> bool:
        return self._feed.healthy(self.ttl_seconds)

    def ready(self) -> bool:
        return self._feed.ready()


@dataclass
class ApiProcess:
    """The app and what it runs on; :meth:`close` after the server stopped."""

    app: FastAPI
    feed: OutcomeFeed
    publisher: KafkaRequestPublisher
    probe: _FeedProbe
    servers: list[HealthServer] = field(default_factory=list)

    def close(self) -> None:
        """Stops the probes' servers and the feed (its thread closes its consumer), then destroys the
        publisher's producer, also when something before raised: a Kafka client alive at ``exit()``
        crashes the process there (SIGSEGV)."""
        try:
            for server in self.servers:
                server.stop()
            self.feed.stop()
        finally:
            self.publisher.close()


def _require_keys(settings: Settings) -> None:
    if not settings.api_keys():
        raise SettingsError(NO_KEYS_MESSAGE)


def build_api(settings: Settings, *, directory: DeviceDirectory | None = None,
              history_seconds: float = HISTORY_SECONDS, request_log: RequestLog | None = None) -> ApiProcess:
    """Everything ``run_api`` serves. ``directory``: the devices of a subscription (the desired-state
    store), so subscription-targeted messages are planned, and awaited, per device. ``request_log``:
    the durable log behind the in-memory outcomes and the ``/v1`` log routes."""
    _require_keys(settings)
    provider = load_provider_or_exit(settings)
    store = build_outcome_store(settings, provider, directory)
    publisher = build_publisher(settings)
    try:
        # an untrusted broker or refused credentials raise here, and the publisher is closed on the way out
        feed = start_outcome_feed(settings, store, with_requests=True, history_seconds=history_seconds, name="api")
    except BaseException:
        publisher.close()
        raise
    probe = _FeedProbe(feed, settings.health_ttl_seconds)
    try:
        outcomes = DurableOutcomes(store, request_log) if request_log is not None else store
        app = create_app(settings, publisher, outcomes, build_kms(settings, provider), probe=probe)
        app.state.request_log = request_log
    except (ValueError, SettingsError):
        try:
            feed.stop()
        finally:
            publisher.close()
        raise
    process = ApiProcess(app=app, feed=feed, publisher=publisher, probe=probe)
    if settings.metrics_port:
        process.servers.append(HealthServer(probe, port=settings.metrics_port).start())
    return process


def run_api(settings: Settings) -> None:
    """``kmsbridge run api``: serve until SIGTERM/SIGINT (see the module docstring)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM once it stopped (ending the process at once); we stop the
        feed and the producer first and then return, so the signal only asks uvicorn to stop."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # signals can only be handled in the main thread
                return
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    from kmsbridge.wiring import engine_for, migrate
    from reconciler.communications_queue import CommunicationQueue
    from reconciler.run_definitions import RunDefinitionStore
    from reconciler.store import DesiredStateStore

    engine = engine_for(settings)
    migrate(engine)
    try:
        process = build_api(settings, directory=DesiredStateStore(engine), request_log=RequestLog(engine))
        process.app.state.run_store = RunDefinitionStore(engine)
        process.app.state.communication_queue = CommunicationQueue(engine)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    config = uvicorn.Config(process.app, host=settings.api.host, port=settings.api.port, log_config=None,
                            access_log=False, lifespan="on",
                            http=protocol_with_read_timeout(settings.api.read_timeout_seconds),
                            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds))
    log.info("web api started host=%s port=%s", settings.api.host, settings.api.port)
    try:
        Server(config).run()
    finally:
        process.close()
        log.info("web api stopped")
