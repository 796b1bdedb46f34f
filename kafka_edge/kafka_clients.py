"""librdkafka configurations for our consumers and producers, in one place.

Each process's consumer stores offsets by hand (``enable.auto.offset.store=false``) so an offset is
stored only after its message is done; the background commit then commits only what was stored.

Precedence: our tuning defaults < the settings' pass-through keys (``KMSBRIDGE_KAFKA__*``, so an
operator can change ``session.timeout.ms`` or ``max.poll.interval.ms``) < the few keys the commit
protocol depends on, which no setting may change (group id, manual offset store, read_committed,
idempotence).

Every client gets an ``error_cb`` (:class:`KafkaErrorHandler`). librdkafka retries nearly everything
by itself, which is right for a broker that is down or restarting, but wrong for credentials the
broker refuses, or for a broker whose certificate we do not trust: the process would spin forever looking
healthy. An authentication failure therefore raises :class:`~kafka_edge.errors.KafkaAuthenticationFailed`,
and a failed TLS handshake :class:`~kafka_edge.errors.KafkaTlsFailed`, out of the poll, consume or flush
call that served it, and the process exits non-zero with a message naming the settings to check.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from kafka_edge.errors import FatalKafkaError, KafkaAuthenticationFailed, KafkaTlsFailed
from schemas.codec import SCHEMA_ID_HEADER

KafkaConfig = Mapping[str, str]

__all__ = [
    "AUTHENTICATION_ERRORS",
    "PRODUCER_MAX_MESSAGE_BYTES",
    "WATCHDOG_EXIT_CODE",
    "HangWatchdog",
    "KafkaErrorHandler",
    "close_producer",
    "consumer_config",
    "header",
    "is_fatal",
    "kafka_error",
    "make_consumer",
    "make_producer",
    "produce",
    "producer_config",
    "schema_id_header",
]

log = logging.getLogger(__name__)

#: librdkafka's local authentication failure and the broker's SASL error code.
AUTHENTICATION_ERRORS: frozenset[int] = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED})
_LOG_EVERY_SECONDS = 10.0
#: librdkafka's default ``message.max.bytes``: the largest message our producers send.
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000
_QUEUE_FULL_POLL_SECONDS = 0.05
#: Exit status when :class:`HangWatchdog` ends a stuck process (EX_TEMPFAIL: temporary, start it again).
WATCHDOG_EXIT_CODE = 75


class KafkaErrorHandler:
    """A client's ``error_cb``: logs client-wide errors (each code at most every 10 s) and raises for
    the ones no retry can fix. Raised once per client; later repeats are only logged, so shutdown
    code that polls or flushes the same client is not interrupted again."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.fatal: FatalKafkaError | None = None
        self._last_logged: dict[int, float] = {}

    def __call__(self, err: KafkaError) -> None:
        code = err.code()
        if code in AUTHENTICATION_ERRORS:
            self._fail(KafkaAuthenticationFailed(
                f"Kafka authentication failed for the {self.role} ({err.name()}): {err.str()}. Check the settings "
                "KMSBRIDGE_KAFKA__SASL_USERNAME and KMSBRIDGE_KAFKA__SASL_PASSWORD (and "
                "KMSBRIDGE_KAFKA__SASL_MECHANISM, KMSBRIDGE_KAFKA__SECURITY_PROTOCOL)"))
            return
        if code == KafkaError._SSL:  # librdkafka raises it for a failed handshake only
            self._fail(KafkaTlsFailed(
                f"Kafka TLS handshake failed for the {self.role} ({err.name()}): {err.str()}. Check the setting "
                "KMSBRIDGE_KAFKA__SSL_CA_LOCATION (the CA that signed the broker's certificate) and that the "
                "host in KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS is named in that certificate"))
            return
        if is_fatal(err):
            self._fail(FatalKafkaError(f"fatal Kafka error in the {self.role} ({err.name()}): {err.str()}"))
            return
        now = time.monotonic()
        if now - self._last_logged.get(code, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
            self._last_logged[code] = now
            log.warning("kafka %s error %s: %s", self.role, err.name(), err.str())

    def _fail(self, exc: FatalKafkaError) -> None:
        if self.fatal is not None:
            return
        self.fatal = exc
        log.critical("%s", exc)
        raise exc


class HangWatchdog:
    """Ends the process when a librdkafka call blocks far past its own timeout.

    librdkafka's ``send_offsets_to_transaction`` can block forever after the group coordinator went away
    (librdkafka issues #5456 and #5511, open), and a thread stuck in C cannot be freed from Python: not
    even SIGTERM's handler runs. So each such call runs under :meth:`guard`; if it is still running
    ``seconds`` later the watchdog logs why and exits with :data:`WATCHDOG_EXIT_CODE`. The supervisor
    starts a fresh process; for the translator its ``init_transactions`` fences this one and aborts its
    open transaction, so nothing is lost or duplicated.
    """

    def __init__(self, role: str, *, exit_process: Callable[[int], None] = os._exit,
                 check_every: float = 1.0) -> None:
        self.role = role
        self._exit = exit_process
        self._check_every = check_every
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, what: str, seconds: float) -> Iterator[None]:
        with self._lock:
            self._current = (what, time.monotonic() + seconds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=f"{self.role}-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._current = None

    def _watch(self) -> None:
        while True:
            time.sleep(self._check_every)
            with self._lock:
                current = self._current
            if current is not None and time.monotonic() > current[1]:
                log.critical("%s: %s blocked past its timeout (a known librdkafka hang after a coordinator "
                             "failover); exiting so the supervisor starts a fresh process", self.role, current[0])
                for handler in logging.getLogger().handlers:
                    handler.flush()
                self._exit(WATCHDOG_EXIT_CODE)
                return


def is_fatal(err: KafkaError) -> bool:
    """A librdkafka error the client cannot recover from. A fatal consumer error (a static member fenced)
    can reach the application as a message error of code ``_FATAL`` whose ``fatal()`` flag is not set."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def consumer_config(
    base: KafkaConfig, group_id: str, *, instance_id: str | None = None, transactional_input: bool = False,
    prefetch_kbytes: int | None = None,
) -> dict[str, Any]:
    """``prefetch_kbytes`` bounds librdkafka's read-ahead queue (64 MB by default) for a consumer that
    applies far fewer messages per second than it could fetch; a setting in ``base`` still wins."""
    config: dict[str, Any] = {
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10000,
        "auto.commit.interval.ms": 500,
    }
    if prefetch_kbytes is not None:
        config["queued.max.messages.kbytes"] = prefetch_kbytes
    config.update(base)
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": not transactional_input,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
        }
    )
    if instance_id:
        # static membership: a restarted pod gets its partitions back without a rebalance
        config["group.instance.id"] = instance_id
    config.setdefault("error_cb", KafkaErrorHandler("consumer"))
    return config


def producer_config(base: KafkaConfig, *, transactional_id: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"linger.ms": 5, "compression.type": "lz4"}
    if transactional_id:
        # A transaction left open by a killed translator blocks read_committed readers until the
        # coordinator aborts it; keep that bound short (a batch takes well under a second).
        config["transaction.timeout.ms"] = 30000
        # A transaction begun right after a commit meets CONCURRENT_TRANSACTIONS until the commit's
        # markers are written, and is retried after retry.backoff.ms (100 ms, doubling): that was the
        # translator's latency tail. 10 ms (doubling up to retry.backoff.max.ms) took the slowest
        # transaction cycle from 113-153 ms to 37-40 ms (docs/benchmarks.md, end-to-end latency).
        config["retry.backoff.ms"] = 10
    config.update(base)
    config.update({"enable.idempotence": True, "acks": "all"})
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.setdefault("error_cb", KafkaErrorHandler("producer"))
    return config


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a :class:`KafkaException` carries, or None."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def consume_available(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages``: waits at most ``timeout`` for the first message, then takes only what
    is already fetched, without waiting. ``Consumer.consume(n, timeout)`` waits for all ``n`` until the
    timeout, which adds up to ``timeout`` to every message's latency at low rates."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    rest = consumer.consume(max_messages - 1, 0) if max_messages > 1 else []
    return [first, *rest]


Headers = list[tuple[str, str | bytes | None]]


def produce(producer: Producer, topic: str, key: bytes | str | None, value: bytes | None,
            headers: Headers | None = None, on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
            ) -> None:
    """``producer.produce``, waiting while the local queue is full (serving deliveries meanwhile).
    Any other error (:class:`KafkaException`: too large, fatal, no transaction) is the caller's."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value=value, key=key, headers=headers)
            else:
                producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(_QUEUE_FULL_POLL_SECONDS)


def make_consumer(config: dict[str, Any]) -> Consumer:
    return Consumer(config)


def make_producer(config: dict[str, Any]) -> Producer:
    return Producer(config)


def close_producer(producer: Producer, timeout: float) -> int:
    """Flush ``producer`` for up to ``timeout`` seconds, then destroy it; returns how many messages were
    still undelivered and were dropped.

    Every client must be destroyed before the interpreter exits: a client still alive at ``exit()`` keeps
    its broker threads running (retrying a TLS handshake, for one) while OpenSSL's exit handler frees the
    state they use, and the process dies of SIGSEGV instead of exiting with its status. What is still
    queued is purged first, because ``Producer.close`` waits for every queued message (up to
    ``message.timeout.ms``). An ``error_cb`` that raises while flushing (:class:`KafkaErrorHandler`)
    still lets the producer be destroyed; the error propagates. A transactional producer's open
    transaction is aborted by ``close``, which waits for the coordinator: end it first."""
    try:
        producer.flush(timeout)
    finally:
        dropped = len(producer)
        if dropped:
            log.warning("%d produced messages not delivered within %.0fs of closing; dropped", dropped, timeout)
        producer.purge()
        producer.close()
    return dropped


def header(msg: Message, name: str) -> bytes | None:
    """The value of ``msg``'s header ``name`` (the first one), or None."""
    headers: Any = msg.headers()
    for key, value in (headers.items() if isinstance(headers, dict) else headers or ()):
        if key == name:
            return value if isinstance(value, bytes) else b""
    return None


def schema_id_header(msg: Message) -> bytes | None:
    """The schema GUID of ``msg``'s ``__value_schema_id`` header (Confluent's header serializer puts it
    there and the bare Avro body in the value), for :meth:`schemas.codec.Codec.decode`; None when the
    message has no such header, as every record kmsbridge writes."""
    headers: Any = msg.headers()
    if not headers:
        return None
    for key, value in headers.items() if isinstance(headers, dict) else headers:
        if key == SCHEMA_ID_HEADER:
            return value if isinstance(value, bytes) else None
    return None
