"""The executor's look-ahead: the newest absolute command of each box waiting beyond what it holds.

Coalescing (:class:`~consumers.coalesce.Holding`) sees the commands the executor holds, at most
``max_buffered``. During a catch-up the versions of one box lie farther apart than that (every box's v1
before any box's v2), so the look-ahead reads on, past the executor's position, and keeps per
(secure client, attribute) (:func:`~consumers.coalesce.attribute_of`) the newest
:class:`~consumers.coalesce.Origin` seen ahead and its offset. When a command's turn comes and neither
the executor's holding nor the ledger stops it, :meth:`LookAhead.newer_than` names the newer command
waiting ahead of it on its partition; the older one then ends COMPLETED ``superseded_by`` it, as for a
held one.

Why skipping it is right: the newer command is committed on the topic (the reader reads
``read_committed``) at a higher offset of a partition this executor owns, and it passed the executor's
own screen (:func:`runnable_command`), so it runs after the older one: here, in the box's order, or,
if the partition moves, at its next owner, which starts from an offset no higher than the older one's.
Poison (undecodable, oversized, dated too far ahead, a tombstone) never enters, so it never
supersedes anything. Revocation is never held back: a ``CLEAR_ENTITLEMENTS`` or ``UNPAIR`` is skipped
only for a newer command of the same attribute (:func:`~consumers.coalesce.is_newer`).

When it reads (:meth:`LookAhead.tick`, once per executor round):

1. Off while the regular lane flows (steady state): nothing is read or decoded twice.
2. On once the lane pauses (buffer full, or the breaker open): the reader, a consumer of its own
   (``assign`` only, never joining a group or committing), reads every regular partition of the
   executor from the executor's position towards the high watermark, in a thread of its own.
3. Each round, entries the executor has reached (offset below its position) are dropped; they are
   in its holding now.
4. Off again once the lane flows and the executor is fewer than ``max_buffered`` records behind
   the high watermark: the executor then takes all that is left. What is indexed stays until the
   executor passes it (step 3), for the commands it holds already.

On revoke (or loss) a partition's entries go at once; its next owner builds its own.

**Memory** is bounded by boxes, not by the backlog: one entry per (box, attribute) per partition,
at most ``max_entries`` (``KMSBRIDGE_EXECUTOR__LOOKAHEAD_MAX_ENTRIES``). When full, the reader stops
where it is (it seeks back to the first record it could not index) and goes on once the executor has
passed enough entries; coalescing does less meanwhile, correctness is untouched.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from consumers.coalesce import Origin, attribute_of, is_newer
from consumers.command_screen import screen_command
from kafka_edge.assignment import Assignment
from kafka_edge.errors import FatalKafkaError
from kafka_edge.kafka_clients import (
    KafkaConfig,
    KafkaErrorHandler,
    consume_available,
    consumer_config,
)
from kafka_edge.messages import is_record
from kafka_edge.metrics import LOOKAHEAD_COALESCED, LOOKAHEAD_ENTRIES
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.records import KmsCommand

__all__ = ["Ahead", "LookAhead", "reader_config", "runnable_command"]

log = logging.getLogger(__name__)

PROCESS: Final = "executor-lookahead"
_BATCH: Final = 500
_IDLE_SECONDS: Final = 0.1


def reader_config(base: KafkaConfig, group: str, *, prefetch_kbytes: int | None = None) -> dict[str, Any]:
    """The reader's librdkafka settings: the executor's consumer settings (pass-through keys, TLS,
    SASL, ``read_committed``) for a consumer that is only ever ``assign``-ed: it never joins
    ``group`` (the Python client wants a ``group.id`` all the same) and never commits."""
    config = consumer_config(base, f"{group}-lookahead", prefetch_kbytes=prefetch_kbytes)
    config["enable.auto.commit"] = False
    config["error_cb"] = KafkaErrorHandler("executor's look-ahead reader")
    return config


def runnable_command(codec: Codec, msg: Message, max_message_bytes: int,
                     max_future_skew: timedelta) -> KmsCommand | None:
    """The command of ``msg`` if the executor would run it (:func:`screen_command`), else None."""
    value = msg.value()
    if value is None:  # a tombstone: the executor skips it
        return None
    try:
        return screen_command(codec, msg, value, max_message_bytes, max_future_skew)
    except PoisonMessage:
        return None


@dataclass(frozen=True, slots=True)
class Ahead:
    """The newest absolute command seen ahead for one box and attribute on one partition."""

    offset: int
    origin: Origin


class LookAhead:
    """Thread-safe: :meth:`tick` and :meth:`newer_than` run on the executor's event loop, :meth:`forget`
    on its polling thread, :meth:`read_once` on the reader's own thread (or a test's)."""

    def __init__(self, reader: Consumer, codec: Codec, topic: str, *, max_entries: int, backlog_threshold: int,
                 max_message_bytes: int = 1_000_000, max_future_skew: timedelta = timedelta(days=1),
                 background: bool = True) -> None:
        self._reader = reader
        self._codec = codec
        self._topic = topic
        self._max = max_entries
        self._threshold = backlog_threshold
        self._max_bytes = max_message_bytes
        self._skew = max_future_skew
        self._background = background
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        self._source: Consumer | None = None  # the executor's consumer (its positions and commits)
        # partition -> (box, attribute) -> entry; each dict in offset order (the reader reads forward)
        self._parts: dict[int, OrderedDict[tuple[str, str], Ahead]] = {}
        self._count = 0
        self._want: dict[int, tuple[int, int]] = {}  # partition -> (generation, start offset)
        self._generation = 0
        self._passed: dict[int, int] = {}  # partition -> the executor's last dispatched offset
        self._high: dict[int, int] = {}  # partition -> high watermark the reader saw
        self._read_to: dict[int, int] = {}  # partition -> the offset after the last record indexed or skipped
        self._assigned: dict[int, int] = {}  # partition -> generation (reader thread only)
        self._next: dict[int, int] = {}  # partition -> the reader's next offset (reader thread only)

    # --- the executor's side -----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    def __len__(self) -> int:
        return self._count

    def tick(self, paused: bool, source: Consumer, assignment: Assignment) -> None:
        """Once per executor round, before its poll: ``paused`` is the regular lane's state, ``source``
        its consumer (the positions), ``assignment`` its partitions (module docstring, steps 1-4)."""
        if not self._active and not paused and not self._parts:  # step 1: steady state, nothing to do
            return
        parts = [tp for tp in assignment.partitions() if tp.topic == self._topic]
        if not parts:
            return
        try:
            positions = {tp.partition: tp.offset for tp in source.position(parts)}
        except KafkaException as exc:
            log.debug("look-ahead: positions unknown (%s)", exc)
            return
        with self._lock:
            self._source = source
            reading = self._active or paused
            for p, pos in positions.items():
                if reading and p not in self._want:  # step 2: from the executor's position on (< 0: not
                    self._generation += 1  # fetched yet: from its committed offset), past what is indexed
                    start = max(pos, self._read_to[p]) if p in self._parts else pos
                    self._want[p] = (self._generation, start)
                if pos >= 0:
                    self._passed[p] = pos - 1
                    self._drop_passed(p, pos - 1)  # step 3
            for p in [p for p in {*self._want, *self._parts} if p not in positions]:
                self._forget_locked(p)
            behind = sum(max(0, self._high.get(p, pos) - pos) for p, pos in positions.items() if pos >= 0)
            self._active = reading
            if reading and not paused and behind < self._threshold and all(p in self._high for p in self._want):
                self._stop_reading_locked()  # step 4: what is indexed stays until the executor passes it
            LOOKAHEAD_ENTRIES.set(self._count)
        if self._active and self._background and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="executor-lookahead", daemon=True)
            self._thread.start()
        self._wake.set()

    def newer_than(self, cmd: KmsCommand, topic: str, partition: int, offset: int) -> str | None:
        """The key of a newer absolute command of ``cmd``'s box and attribute waiting at a higher offset
        of ``cmd``'s partition, or None. Counted as a look-ahead coalescing when found."""
        if not self._parts or topic != self._topic:
            return None
        attribute = attribute_of(cmd)
        if attribute is None:
            return None
        with self._lock:
            entries = self._parts.get(partition)
            ahead = entries.get((cmd.secure_client_id, attribute)) if entries else None
        if ahead is None or ahead.offset <= offset or not is_newer(ahead.origin, Origin.of(cmd)):
            return None
        LOOKAHEAD_COALESCED.inc()
        return ahead.origin.idempotency_key

    def forget(self, parts: Iterable[TopicPartition]) -> None:
        """Partitions revoked or lost: their entries go now (the new owner builds its own)."""
        mine = [tp.partition for tp in parts if tp.topic == self._topic]
        if not mine or not (self._want or self._parts):
            return
        with self._lock:
            for p in mine:
                self._forget_locked(p)
            LOOKAHEAD_ENTRIES.set(self._count)
        self._wake.set()

    def close(self) -> None:
        """Stop the reader thread and destroy the reader (no client may outlive the process)."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._reader.close()

    # --- the reader's side -------------------------------------------------------------------------

    def read_once(self, timeout: float = _IDLE_SECONDS) -> bool:
        """Follow the wanted partitions and index one batch; False when there was nothing to read."""
        with self._lock:
            want = dict(self._want)
            passed = dict(self._passed)
            full = self._count >= self._max
        self._follow(want, passed)
        if not self._assigned or full:
            return False
        msgs = consume_available(self._reader, _BATCH, timeout)
        seen: list[tuple[int, int, KmsCommand | None]] = []
        for msg in msgs:
            if not is_record(msg, PROCESS):
                continue
            p, off = msg.partition() or 0, msg.offset() or 0
            self._next[p] = off + 1
            if off <= passed.get(p, -1):
                continue  # the executor has it already
            cmd = runnable_command(self._codec, msg, self._max_bytes, self._skew)
            seen.append((p, off, cmd if cmd is not None and attribute_of(cmd) is not None else None))
        highs = self._watermarks()
        with self._lock:
            self._high.update(highs)
            self._index_locked(seen)
            LOOKAHEAD_ENTRIES.set(self._count)
        return bool(msgs)

    def _index_locked(self, seen: list[tuple[int, int, KmsCommand | None]]) -> None:
        stopped: set[int] = set()
        for p, off, cmd in seen:
            if p in stopped or self._want.get(p, (None,))[0] != self._assigned.get(p):
                continue  # revoked (or assigned again) since it was fetched
            self._read_to[p] = off + 1
            if cmd is None:
                continue
            key = (cmd.secure_client_id, attribute_of(cmd) or "")
            entries = self._parts.setdefault(p, OrderedDict())
            current = entries.get(key)
            origin = Origin.of(cmd)
            if current is None:
                if self._count >= self._max:  # full: stop here, read this record again later
                    self._reader.seek(TopicPartition(self._topic, p, off))
                    self._next[p] = off
                    stopped.add(p)
                    continue
                entries[key] = Ahead(off, origin)
                self._count += 1
            elif is_newer(origin, current.origin):
                entries[key] = Ahead(off, origin)
                entries.move_to_end(key)  # the newest offset goes last: the dict stays in offset order

    def _follow(self, want: dict[int, tuple[int, int]], passed: dict[int, int]) -> None:
        """Assign the wanted partitions at their start, drop the others, skip what the executor passed."""
        gone = [p for p, gen in self._assigned.items() if want.get(p, (None,))[0] != gen]
        if gone:
            self._reader.incremental_unassign([TopicPartition(self._topic, p) for p in gone])
            for p in gone:
                del self._assigned[p]
                self._next.pop(p, None)
        new: list[tuple[int, int, int]] = []
        for p, (gen, position) in want.items():
            start = position if position >= 0 else self._committed(p) if p not in self._assigned else None
            if p not in self._assigned and start is not None:
                new.append((p, gen, start))
        if new:
            self._reader.incremental_assign([TopicPartition(self._topic, p, start) for p, _, start in new])
            for p, gen, start in new:
                self._assigned[p] = gen
                self._next[p] = start
        for p, last in passed.items():  # behind the executor: go to where it is
            if p in self._assigned and self._next.get(p, 0) <= last:
                try:
                    self._reader.seek(TopicPartition(self._topic, p, last + 1))
                except KafkaException:  # not fetching it yet: its records are skipped as they come
                    continue
                self._next[p] = last + 1

    def _committed(self, p: int) -> int | None:
        """Where the executor starts a partition it has not fetched yet: its group's committed offset, else
        the beginning (``auto.offset.reset`` earliest; with another policy the records before its start
        are read for nothing, never used: an entry counts only above the command's own offset)."""
        if self._source is None:
            return None
        try:
            tp = self._source.committed([TopicPartition(self._topic, p)], timeout=5)[0]
        except KafkaException as exc:  # the broker away: the next round asks again
            log.debug("look-ahead: committed offset of partition %d unknown (%s)", p, exc)
            return None
        return tp.offset if tp.offset >= 0 else OFFSET_BEGINNING

    def _watermarks(self) -> dict[int, int]:
        highs: dict[int, int] = {}
        for p in self._assigned:
            try:
                _low, high = self._reader.get_watermark_offsets(TopicPartition(self._topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                highs[p] = high
        return highs

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                if not self._active:
                    if self._assigned:
                        self._follow({}, {})  # off: the reader holds no partition and fetches nothing
                    self._wake.wait(_IDLE_SECONDS)
                    self._wake.clear()
                elif not self.read_once():
                    self._wake.wait(_IDLE_SECONDS)
                    self._wake.clear()
            except FatalKafkaError as exc:  # the executor's own consumer meets it too and ends the process
                log.error("look-ahead reader stopped: %s", exc)
                self._disable()
                return
            except Exception as exc:  # coalescing degrades, correctness does not depend on it
                log.warning("look-ahead reader failed (%s); its index is emptied and it reads again",
                            type(exc).__name__)
                self._disable()
                self._wake.wait(1.0)
                self._wake.clear()

    def _disable(self) -> None:
        with self._lock:
            self._deactivate_locked()
            LOOKAHEAD_ENTRIES.set(0)

    # --- bookkeeping (under the lock) --------------------------------------------------------------

    def _drop_passed(self, p: int, last: int) -> None:
        entries = self._parts.get(p)
        if not entries:
            return
        while entries and next(iter(entries.values())).offset <= last:
            entries.popitem(last=False)
            self._count -= 1
        if not entries:
            del self._parts[p]

    def _forget_locked(self, p: int) -> None:
        self._want.pop(p, None)
        self._passed.pop(p, None)
        self._high.pop(p, None)
        self._read_to.pop(p, None)
        self._count -= len(self._parts.pop(p, ()))

    def _stop_reading_locked(self) -> None:
        self._active = False
        self._want.clear()  # the reader lets its partitions go
        self._high.clear()

    def _deactivate_locked(self) -> None:
        self._stop_reading_locked()
        self._passed.clear()
        self._read_to.clear()
        self._parts.clear()
        self._count = 0
