"""What a polled item is, decided in one place for every consume loop, and the positions after a batch.

:func:`is_record` (and :func:`records` for a batch) is the loops' one check of a polled item, in the
manner of quix-streams' ``raise_for_msg_error``:

- ``None`` (the poll timed out) and the end of a partition: no record, skipped;
- a fatal error: :class:`~kafka_edge.errors.FatalKafkaError` is raised, naming the cause, and the
  process ends non-zero so its supervisor starts a fresh one. A static member fenced by another member
  with the same ``group.instance.id`` gets a message error of code ``_FATAL`` whose ``fatal()`` flag is
  not set (:func:`~kafka_edge.kafka_clients.is_fatal` knows it); it raises
  :class:`~kafka_edge.errors.StaticMemberFenced`, which names the instance-id setting, because the
  fenced consumer would otherwise poll on for ever and receive nothing;
- any other error: librdkafka retries it by itself, so it is logged (each code of each process at
  most every 10 s, with the count of repeats left out) and skipped.

:func:`positions_after` is what a loop commits, or sends to a transaction, after a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TypeGuard

from confluent_kafka import KafkaError, Message, TopicPartition

from kafka_edge.errors import FatalKafkaError, StaticMemberFenced
from kafka_edge.kafka_clients import is_fatal

__all__ = ["INSTANCE_ID_SETTING", "fatal_error", "is_record", "positions_after", "records"]

log = logging.getLogger(__name__)

#: The setting static membership comes from (``Settings.instance_id``: its value, else ``$POD_NAME``,
#: then ``-<process>``).
INSTANCE_ID_SETTING = "KMSBRIDGE_GROUP_INSTANCE_ID"
LOG_EVERY_SECONDS = 10.0


class _Throttle:
    """At most one log line per (process, error code) every :data:`LOG_EVERY_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int], float] = {}
        self._skipped: dict[tuple[str, int], int] = {}

    def admit(self, process: str, code: int, now: float) -> int | None:
        """The number of repeats left out since the last line, or None when this one is left out too."""
        key = (process, code)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < LOG_EVERY_SECONDS:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)


_throttle = _Throttle()
_clock = time.monotonic


def fatal_error(err: KafkaError, process: str) -> FatalKafkaError:
    """The exception that ends ``process`` for the fatal consumer error ``err``."""
    text = err.str()
    if err.code() == KafkaError.FENCED_INSTANCE_ID or "fenced" in text.lower():
        return StaticMemberFenced(
            f"the {process}'s consumer was fenced: another consumer joined its group with the same "
            f"group.instance.id, so another process runs with the same instance id ({text}). Give each "
            f"replica its own: the setting {INSTANCE_ID_SETTING} (else $POD_NAME), to which '-{process}' is added")
    return FatalKafkaError(f"fatal Kafka consumer error in the {process} ({err.name()}): {text}; "
                           "only a fresh process recovers")


def is_record(msg: Message | None, process: str) -> TypeGuard[Message]:
    """True when ``msg`` is a record to process; False for no record (skip it); raises on a fatal error."""
    if msg is None:
        return False
    err = msg.error()
    if err is None:
        return True
    if is_fatal(err):
        exc = fatal_error(err, process)
        log.critical("%s", exc)
        raise exc
    code = err.code()
    if code == KafkaError._PARTITION_EOF:
        return False
    repeats = _throttle.admit(process, code, _clock())
    if repeats is not None:
        more = f" ({repeats} more since the last report)" if repeats else ""
        log.warning("%s consumer error %s: %s%s", process, err.name(), err.str(), more)
    return False


def records(msgs: Iterable[Message], process: str) -> list[Message]:
    """The records of a polled batch (:func:`is_record` for each, so a fatal error raises)."""
    return [m for m in msgs if is_record(m, process)]


def positions_after(msgs: Iterable[Message]) -> list[TopicPartition]:
    """One past the newest offset of each partition in ``msgs``: the offsets to commit after the batch."""
    nxt: dict[tuple[str, int], int] = {}
    for m in msgs:
        key = (m.topic() or "", m.partition() or 0)
        nxt[key] = max(nxt.get(key, 0), (m.offset() or 0) + 1)
    return [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
