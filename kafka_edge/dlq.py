"""Dead-letter queue: the original bytes and key, plus headers saying where they came from and why.

Every consumer (translator, executor, projector, reconciler runner) writes its DLQ copies through
:class:`DeadLetters`, the one DLQ path:

1. The copy is the original key and value with :func:`dlq_headers`. When it would not fit the
   producer's ``message.max.bytes`` (librdkafka's default 1,000,000 bytes, below the broker's default
   1 MiB limit, so a record the broker took can still be too large for our producer), it is
   **truncated**: the first :data:`TRUNCATED_BODY_BYTES` of the value (and at most
   :data:`TRUNCATED_KEY_BYTES` of the key), with headers ``kmsbridge.truncated`` (why),
   ``kmsbridge.original.size`` and ``kmsbridge.original.sha256`` (of the whole value) and, for a cut
   key, ``kmsbridge.original.key.size`` and ``kmsbridge.original.key.sha256``.
2. ``produce`` errors are all handled: a full local queue is waited out; a refusal of the copy's
   content (too large, invalid record, policy) steps down to the truncated copy, then to the headers
   alone; anything else (fatal, fenced, no transaction) is raised for the process's own recovery.
3. A refusal the broker reports later, on delivery, steps down the same way. A plain producer
   produces the smaller copy at once; inside a transaction the refusal fails the commit, so the copy's
   origin is remembered and, when the rewound batch reaches the record again, its copy is produced at
   the smaller size. Other delivery errors (timeouts, a missing topic, refused ACLs) are not the
   record's fault: the same copy is produced again, and lag alerts say the partition waits.

Header values name the error class and a short reason; they never carry payload content, PINs or
message texts (:func:`safe_reason` masks quoted values and digit runs, and truncates).

The screens every consumer applies before decoding live here too (:func:`screen_size`,
:func:`screen_times`), so every consumer rejects the same inputs the same way, and so do the errors
that make a record poison after decoding: :class:`UnexpectedError` (a handler's bug) and
:class:`DatabaseRejected` (the database refused the record's content).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy.exc import DataError, IntegrityError

from kafka_edge.kafka_clients import PRODUCER_MAX_MESSAGE_BYTES, kafka_error, produce
from kafka_edge.metrics import DLQ_MESSAGES
from schemas.errors import PoisonMessage

__all__ = [
    "HEADER_PREFIX",
    "REPLAYED_FROM",
    "TRUNCATED_BODY_BYTES",
    "TRUNCATED_KEY_BYTES",
    "DatabaseRejected",
    "DeadLetters",
    "OutputTooLarge",
    "Oversized",
    "TooFarInFuture",
    "UnexpectedError",
    "dlq_headers",
    "is_content_error",
    "safe_reason",
    "screen_output",
    "screen_size",
    "screen_times",
]

log = logging.getLogger(__name__)

HEADER_PREFIX = "kmsbridge."
#: Header of a record replayed from a DLQ (``kmsbridge dlq replay``): the DLQ position it came from.
REPLAYED_FROM = f"{HEADER_PREFIX}replayed.from"
_DIGITS = re.compile(r"\d{4,}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_REASON = 300
#: Bytes of the value a truncated DLQ copy keeps: enough to see the framing and the record's start.
TRUNCATED_BODY_BYTES = 64 * 1024
#: Bytes of the key a truncated DLQ copy keeps.
TRUNCATED_KEY_BYTES = 1024
#: Room left below ``message.max.bytes`` for librdkafka's per-message framing.
_WIRE_MARGIN = 1024
#: Refusals of a copy's content: a smaller copy is accepted where this one never will be.
_CONTENT_REFUSALS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG, KafkaError.POLICY_VIOLATION, KafkaError._INVALID_ARG,
    KafkaError._BAD_MSG,
})
_WHOLE, _CUT, _HEADERS_ONLY = 0, 1, 2
_REMEMBERED = 10_000  # origins of refused copies kept for a rewound transaction


class Oversized(PoisonMessage):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__("oversized", f"message of {size} bytes exceeds the limit of {limit} bytes")


class TooFarInFuture(PoisonMessage):
    def __init__(self, field: str, value: datetime, limit: timedelta) -> None:
        # the value itself stays out of the message: only how far ahead it is
        ahead = value - datetime.now(UTC)
        super().__init__("future_timestamp",
                         f"{field} lies {ahead.days} days ahead, more than the allowed {limit} in the future")


class DatabaseRejected(Exception):
    """The database refused the record's content (``DataError``: a value too long for its column, a NUL
    byte; ``IntegrityError``: a constraint the record breaks). Poison: retrying cannot help, so the
    record goes to the DLQ and is never retried. The message names the database's error class and
    its first line, never the statement's parameters."""

    reason = "database_rejected"

    def __init__(self, exc: BaseException) -> None:
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [""])[0]
        super().__init__(f"the database refused the record ({type(orig).__name__}: {first})")


def is_content_error(exc: BaseException) -> bool:
    """A database error caused by what a record holds, not by the database being away."""
    return isinstance(exc, DataError | IntegrityError)


class OutputTooLarge(Exception):
    """What a record asks for cannot be published: one of its commands or results would exceed the
    producer's message limit. Poison: the same record plans the same output every time."""

    reason = "output_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an output of {size} bytes exceeds the producer's limit of {limit} bytes")


class UnexpectedError(Exception):
    """A handler failed in a way nobody planned for (a bug). Dead-lettered, so one record cannot stop
    its partition forever; the DLQ alert makes it seen. Only the exception's class is kept: its text
    may quote the input."""

    reason = "unexpected_error"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"handler failed with {type(exc).__name__}")


def safe_reason(text: str) -> str:
    """A reason fit for a header: quoted values and runs of 4+ digits masked, bounded length."""
    text = _QUOTED.sub("'***'", text)
    text = _DIGITS.sub("****", text)
    return text[:MAX_REASON]


def screen_size(value: bytes, limit: int) -> None:
    """Raise :class:`Oversized` for a value above ``limit`` bytes."""
    if len(value) > limit:
        raise Oversized(len(value), limit)


def screen_output(key: bytes | None, value: bytes, limit: int = PRODUCER_MAX_MESSAGE_BYTES) -> None:
    """Raise :class:`OutputTooLarge` for an output our producer would refuse as too large."""
    size = len(key or b"") + len(value) + _WIRE_MARGIN
    if size > limit:
        raise OutputTooLarge(size, limit)


def screen_times(record: object, fields: Iterable[str], limit: timedelta) -> None:
    """Raise :class:`TooFarInFuture` when one of ``fields`` lies more than ``limit`` ahead of now."""
    horizon = datetime.now(UTC) + limit
    # the instance dict, not getattr: a field the record type lacks (``requested_at`` on a
    # SubscriptionEvent) would raise and catch inside pydantic's __getattr__ (6 us -> 0.8 us a message)
    values: dict[str, object] = getattr(record, "__dict__", {})
    for name in fields:
        value = values.get(name)
        if isinstance(value, datetime) and value > horizon:
            raise TooFarInFuture(name, value, limit)


def dlq_headers(msg: Message, error: BaseException, *, reason: str | None = None,
                extra: Sequence[tuple[str, str]] = (),
                trusted: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str | bytes | None]]:
    """Headers of a DLQ copy of ``msg``: where it came from, the error class, reason and message.

    ``extra`` values are masked like the message; ``trusted`` values are ours alone (counts, times
    and error kinds we formatted, never input) and go out as they are.
    """
    headers: list[tuple[str, str | bytes | None]] = [
        (f"{HEADER_PREFIX}original.topic", (msg.topic() or "").encode()),
        (f"{HEADER_PREFIX}original.partition", str(msg.partition()).encode()),
        (f"{HEADER_PREFIX}original.offset", str(msg.offset()).encode()),
        (f"{HEADER_PREFIX}error.class", type(error).__name__.encode()),
        (f"{HEADER_PREFIX}error.reason", (reason or getattr(error, "reason", "") or "").encode()),
        (f"{HEADER_PREFIX}error.message", safe_reason(str(error)).encode()),
    ]
    headers += [(k, safe_reason(v).encode()) for k, v in extra]
    headers += [(k, v.encode()) for k, v in trusted]
    return headers


@dataclass(frozen=True)
class _Letter:
    """What one DLQ copy is made from; :meth:`copy` builds it at a size level."""

    topic: str
    origin: tuple[str, int, int]
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]

    def fits(self, limit: int) -> bool:
        size = len(self.key or b"") + len(self.value or b"") + _WIRE_MARGIN
        size += sum(len(k) + len(v or b"") for k, v in self.headers)
        return size <= limit

    def copy(self, level: int, why: str) -> tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]:
        if level == _WHOLE:
            return self.key, self.value, self.headers
        value = self.value or b""
        keep = TRUNCATED_BODY_BYTES if level == _CUT else 0
        headers = [*self.headers,
                   (f"{HEADER_PREFIX}truncated", why.encode()),
                   (f"{HEADER_PREFIX}original.size", str(len(value)).encode()),
                   (f"{HEADER_PREFIX}original.sha256", hashlib.sha256(value).hexdigest().encode())]
        key = self.key
        if key is not None and len(key) > TRUNCATED_KEY_BYTES:
            headers += [(f"{HEADER_PREFIX}original.key.size", str(len(key)).encode()),
                        (f"{HEADER_PREFIX}original.key.sha256", hashlib.sha256(key).hexdigest().encode())]
            key = key[:TRUNCATED_KEY_BYTES]
        return key, value[:keep], headers


class DeadLetters:
    """The one DLQ path of every consumer (see the module docstring, steps 1-3). Each copy names the
    ``process`` that wrote it (header ``kmsbridge.process``): the translator and the projector both
    read ``crm.subscriptions`` and dead-letter its bad records each on its own.

    ``transactional``: the producer is a transactional one whose failed commit the caller answers by
    aborting and rewinding (the translator); delivery refusals are then remembered, not re-produced.
    """

    def __init__(self, producer: Producer, process: str, *, transactional: bool = False,
                 max_message_bytes: int = PRODUCER_MAX_MESSAGE_BYTES) -> None:
        self._producer = producer
        self._process = process
        self._transactional = transactional
        self._limit = max_message_bytes
        self._refused: OrderedDict[tuple[str, int, int], tuple[int, str]] = OrderedDict()
        self.truncated = 0

    def send(self, dlq_topic: str, msg: Message, error: BaseException, *, reason: str | None = None,
             extra: Sequence[tuple[str, str]] = (), trusted: Sequence[tuple[str, str]] = (),
             on_delivered: Callable[[], None] | None = None) -> None:
        """Dead-letter ``msg`` to ``dlq_topic`` because of ``error``; ``on_delivered`` runs once the copy
        is delivered (a plain producer; a transaction's commit says it for the caller)."""
        topic = msg.topic() or ""
        why = reason or getattr(error, "reason", "") or type(error).__name__
        DLQ_MESSAGES.labels(topic, why).inc()
        log.warning("dead-lettered topic=%s partition=%s offset=%s reason=%s", topic, msg.partition(),
                    msg.offset(), why)
        letter = _Letter(dlq_topic, (topic, msg.partition() or 0, msg.offset() or 0), msg.key(), msg.value(),
                         dlq_headers(msg, error, reason=reason, extra=extra,
                                     trusted=[(f"{HEADER_PREFIX}process", self._process), *trusted]))
        level, cut_why = self._refused.get(letter.origin, (_WHOLE, ""))
        if level == _WHOLE and not letter.fits(self._limit):
            level, cut_why = _CUT, "too_large_for_producer"
        self._produce(letter, level, cut_why, on_delivered)

    def _produce(self, letter: _Letter, level: int, why: str, on_delivered: Callable[[], None] | None) -> None:
        while True:  # step 2
            key, value, headers = letter.copy(level, why)
            try:
                produce(self._producer, letter.topic, key, value, headers,
                        on_delivery=self._on_delivery(letter, level, why, on_delivered))
            except Exception as exc:
                err = kafka_error(exc)
                if level == _HEADERS_ONLY or err is None or err.code() not in _CONTENT_REFUSALS:
                    raise
                level, why = level + 1, err.name()
                continue
            if level != _WHOLE:
                self.truncated += 1
                log.warning("DLQ copy truncated topic=%s offset=%s reason=%s", letter.origin[0], letter.origin[2],
                            why)
            return

    def _on_delivery(self, letter: _Letter, level: int, why: str,
                     on_delivered: Callable[[], None] | None) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _msg: Message) -> None:  # step 3
            if err is None:
                self._refused.pop(letter.origin, None)
                if on_delivered is not None:
                    on_delivered()
                return
            smaller = err.code() in _CONTENT_REFUSALS and level < _HEADERS_ONLY
            if self._transactional:
                if smaller:
                    self._remember(letter.origin, (level + 1, err.name()))
                log.warning("DLQ copy refused in a transaction (%s); the rewound batch sends it %s", err.name(),
                            "smaller" if smaller else "again")
                return
            log.warning("DLQ copy of %s[%s]@%s not delivered (%s); producing it again%s", *letter.origin, err.name(),
                        " truncated" if smaller else "")
            self._produce(letter, level + 1 if smaller else level, err.name() if smaller else why, on_delivered)
        return delivered

    def _remember(self, origin: tuple[str, int, int], entry: tuple[int, str]) -> None:
        self._refused[origin] = entry
        self._refused.move_to_end(origin)
        while len(self._refused) > _REMEMBERED:
            self._refused.popitem(last=False)
