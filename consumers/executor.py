"""The executor: ``kms.commands`` → KMS → ``kms.results``.

Commit protocol (the numbers appear again in the code):

1. Poll a batch off the event loop (a worker thread), so slow KMS calls never hold up ``poll`` and
   ``max.poll.interval.ms`` cannot be exceeded; rebalance callbacks run inside that call (the
   :class:`~kafka_edge.assignment.Assignment` hooks: a new epoch per assigned partition, step 7 on
   revoke). Each polled item goes through :func:`~kafka_edge.messages.is_record`. With an express
   lane (``kms.commands.express``, agents' requests) its own consumer, in a group of its own, is polled
   first in every round, without waiting; its records never sit behind the regular lane's read-ahead,
   and its partitions pause only for the breaker (or a full express buffer), never for the regular
   backlog.
2. Each message is registered as pending in the :class:`OffsetTracker` *before* any work starts, under
   the epoch of its partition's current assignment.
3. Screen and decode: a tombstone is a counted skip; an oversized value, undecodable bytes (bad magic,
   unknown fingerprint or schema id, invalid record) and a command created too far in the future go to
   ``kms.commands.dlq`` with reason headers. Either way the message is finished at once and nothing of
   it reaches the KMS.
4. Schedule the command behind the previous command of the same secure client (per-client order, one
   queue per box across both lanes); at most ``max_inflight`` KMS calls run at once across clients,
   express commands (and the earlier commands of a box an express command waits for) first, in the
   call slots and in the calls-per-second limiter (:mod:`consumers.limiter`). When a command's turn
   comes and a newer absolute command for the same box and attribute is already held, it is coalesced
   (:mod:`consumers.coalesce`): COMPLETED with ``superseded_by``, no KMS call. While the regular lane
   has a backlog beyond what the executor holds, the look-ahead (:mod:`consumers.lookahead`) names a
   newer one waiting at a higher offset of the command's partition too.
5. Run it (:class:`CommandRunner`: ledger, stale guard, retries, breaker), publish its result (and
   DLQ entry, if any); the message is *finished* only when the result is delivered. A failure outside
   the KMS call (the ledger's database away, say) keeps the command and tries it again after a pause,
   so no task dies leaving an offset unfinished forever. A database error caused by the command's
   content (:class:`~consumers.command_runner.LedgerRejected`) is poison instead: the command goes to
   the DLQ with its result and is never retried, so the KMS is never called twice for it. A result
   that cannot be published dead-letters its command. DLQ copies go through
   :class:`~kafka_edge.dlq.DeadLetters` (truncated when too large, any produce error handled).
6. Before each poll, store the offset below the lowest unfinished message of every partition;
   librdkafka's background commit commits stored offsets only, so nothing past unfinished work is
   ever committed.
7. On revoke, store and commit synchronously what is finished for the revoked partitions, then forget
   them. A command of a revoked partition that is in a KMS call completes (the ledger stops the new
   owner from re-applying it); one that has not started its next attempt is abandoned: it publishes
   nothing and its offset is not committed, so the new owner runs it, in order.
8. On SIGTERM stop polling; commands in a KMS call finish, the others are abandoned (they stay
   uncommitted and are redelivered), all within the grace time; then flush, store, commit, close.

Partitions are paused while the breaker is open or the buffer is full (``max_buffered``), and resumed
after; paused, the loop still polls, so the member stays in the group.

A fatal consumer error (e.g. a static member fenced after a coordinator failover) or refused
credentials end the loop with :class:`~kafka_edge.errors.FatalKafkaError`: the shutdown above still
runs, then the process exits non-zero and its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Histogram

from consumers.coalesce import SUPERSEDED, Holding
from consumers.command_runner import CommandRunner, LedgerRejected, RunOutcome
from consumers.command_screen import screen_command
from consumers.limiter import KmsRateLimiter, PriorityGate, replica_share
from consumers.lookahead import LookAhead
from kafka_edge import tracing
from kafka_edge.assignment import Assignment
from kafka_edge.dlq import HEADER_PREFIX, REPLAYED_FROM, DeadLetters
from kafka_edge.errors import CommandAbandoned, FatalKafkaError
from kafka_edge.health import HealthState
from kafka_edge.kafka_clients import (
    HangWatchdog,
    Headers,
    consume_available,
    header,
    produce,
)
from kafka_edge.messages import is_record
from kafka_edge.metrics import (
    COMMANDS_INFLIGHT,
    MESSAGES_CONSUMED,
    MESSAGES_PROCESSED,
    PROCESSING_SECONDS,
)
from kafka_edge.offsets import OffsetTracker
from schemas.codec import Codec
from schemas.errors import PoisonMessage, RecordEncodeError, SchemaRegistryRefused
from schemas.keys import result_key
from schemas.records import KmsCommand, Priority, ResultState

__all__ = ["Executor", "ExecutorConfig"]

log = logging.getLogger(__name__)
PROCESS = "executor"
_RETRY_CAP_SECONDS = 5.0

OnDone = Callable[[], None]


# metric children by label values, looked up once (``labels()`` takes a lock and builds a key per call)
@functools.cache
def _consumed(topic: str) -> Counter:
    return MESSAGES_CONSUMED.labels(PROCESS, topic)


@functools.cache
def _processed(topic: str, outcome: str) -> Counter:
    return MESSAGES_PROCESSED.labels(PROCESS, topic, outcome)


@functools.cache
def _processing_seconds(topic: str) -> Histogram:
    return PROCESSING_SECONDS.labels(PROCESS, topic)


@dataclass(frozen=True)
class ExecutorConfig:
    commands_topic: str
    results_topic: str
    dlq_topic: str
    max_inflight: int = 64
    max_buffered: int = 2000
    poll_batch: int = 500
    grace_seconds: float = 20.0
    max_message_bytes: int = 1_000_000
    max_future_skew: timedelta = timedelta(days=1)
    #: the express lane's topic and DLQ (read by the express consumer; None: no express lane)
    express_topic: str | None = None
    express_dlq_topic: str | None = None


@dataclass
class _Lane:
    """One consumer of the executor (the regular lane, the express lane) and what it holds."""

    consumer: Consumer
    assignment: Assignment
    topic: str
    dlq_topic: str
    express: bool
    paused: bool = False


class Executor:
    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec, runner: CommandRunner,
                 config: ExecutorConfig, health: HealthState | None = None, *,
                 express_consumer: Consumer | None = None, limiter: KmsRateLimiter | None = None,
                 lookahead: LookAhead | None = None) -> None:
        self._consumer = consumer
        self._producer = producer
        self._codec = codec
        self._runner = runner
        self._cfg = config
        self._health = health or HealthState(ttl_seconds=30)
        self._tracker = OffsetTracker()
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._sem = PriorityGate(config.max_inflight)  # KMS call slots, express first
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-poll")
        self._stopping = asyncio.Event()
        self._refused: SchemaRegistryRefused | None = None  # the registry refused us: the process ends
        self._assignment = Assignment(self._health, PROCESS, assigned=self._start_epochs,
                                      revoked=self._commit_finished, lost=self._forget)
        self._regular = _Lane(consumer, self._assignment, config.commands_topic, config.dlq_topic, express=False)
        self._express: _Lane | None = None
        if express_consumer is not None and config.express_topic:
            # its own health object: the process's readiness follows the regular lane's assignment
            express_assignment = Assignment(HealthState(ttl_seconds=30), f"{PROCESS}-express",
                                            assigned=self._start_epochs, revoked=self._commit_finished,
                                            lost=self._forget)
            self._express = _Lane(express_consumer, express_assignment, config.express_topic,
                                  config.express_dlq_topic or config.dlq_topic, express=True)
        self._lanes = [lane for lane in (self._express, self._regular) if lane is not None]  # express first
        self._dlq_of = {lane.topic: lane.dlq_topic for lane in self._lanes}
        self._express_tasks = 0
        self._express_boxes: dict[str, int] = {}  # boxes with an express command waiting or running
        self._holding = Holding()  # absolute commands dispatched and not finished (coalescing)
        self._lookahead = lookahead  # newer absolute commands beyond what is held (coalescing)
        self._limiter = limiter
        self._share_dirty = limiter is not None
        self._partition_counts: dict[str, int] = {}
        self.breaker_open = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog = HangWatchdog("executor")
        self._dead_letters = DeadLetters(producer, PROCESS)

    # --- public ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    def set_breaker_open(self, is_open: bool) -> None:
        self.breaker_open = is_open
        self._health.breaker_open = is_open

    @property
    def tracker(self) -> OffsetTracker:
        return self._tracker

    @property
    def paused(self) -> bool:
        """True while the regular lane's partitions are paused (breaker open or buffer full)."""
        return self._regular.paused

    @property
    def express_paused(self) -> bool:
        """True while the express lane's partitions are paused (breaker open, or its own buffer full)."""
        return self._express is not None and self._express.paused

    @property
    def assigned(self) -> frozenset[tuple[str, int]]:
        return self._assignment.parts

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        _freeze_startup_objects()
        for lane in self._lanes:
            lane.assignment.subscribe(lane.consumer, [lane.topic])
        try:
            while not self._stopping.is_set():
                self._apply_pause()
                if self._lookahead is not None:  # reads ahead only while the regular lane has a backlog
                    self._lookahead.tick(self._regular.paused, self._consumer, self._assignment)
                self._store_offsets()  # step 6
                self._producer.poll(0)  # delivery callbacks finish messages (step 5)
                # step 1: poll off the event loop, the express lane first (it waits for nothing)
                msgs = []
                if self._express is not None:
                    msgs = await loop.run_in_executor(self._pool, consume_available, self._express.consumer,
                                                      self._cfg.poll_batch, 0)
                msgs += await loop.run_in_executor(self._pool, consume_available, self._consumer,
                                                   self._cfg.poll_batch, 0.0 if msgs else 0.05)
                self._health.polled()
                if self._share_dirty:
                    await self._refresh_share(loop)
                for msg in msgs:
                    self._dispatch(msg)
                if msgs:
                    self._runner.read_ahead()  # the batch is dispatched: its commands read the ledger in chunks
                else:
                    await asyncio.sleep(0)  # let finished tasks run their callbacks
        finally:
            await self._shutdown(loop)
        if self._refused is not None:
            raise self._refused

    # --- steps -------------------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        if not is_record(msg, PROCESS):  # a fatal error (fenced) raises: the loop shuts down (step 8)
            return
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        _consumed(topic).inc()
        stamp = msg.timestamp()[1]
        ts = stamp / 1000.0 if stamp > 0 else time.time()
        epoch = self._tracker.started(topic, partition, offset, ts)  # step 2

        def finish() -> None:
            self._tracker.finished(topic, partition, offset, epoch)

        value = msg.value()
        if value is None:  # step 3: a tombstone is a counted skip
            log.info("tombstone skipped topic=%s partition=%s offset=%s", topic, partition, offset)
            _processed(topic, "skipped").inc()
            finish()
            return
        try:  # step 3
            cmd = screen_command(self._codec, msg, value, self._cfg.max_message_bytes, self._cfg.max_future_skew)
        except PoisonMessage as exc:
            self._dead_letters.send(self._dlq_of.get(topic, self._cfg.dlq_topic), msg, exc, on_delivered=finish)
            _processed(topic, "dlq").inc()
            return
        self._runner.expect(cmd)
        # step 4: chain behind the same secure client, across both lanes (one queue per box)
        key = cmd.secure_client_id
        prev = self._tails.get(key)
        express = topic == self._cfg.express_topic or cmd.priority is Priority.EXPRESS
        if express:
            self._express_boxes[key] = self._express_boxes.get(key, 0) + 1
        self._holding.hold(cmd)  # a newer absolute command of the box makes this one moot (coalescing)
        run = tracing.traced("execute", msg, self._execute(cmd, msg, prev, time.monotonic(), epoch),
                             {"kms.operation": cmd.operation.value, "kms.idempotency_key": cmd.idempotency_key})
        task = asyncio.get_running_loop().create_task(run)
        self._tails[key] = task
        self._tasks.add(task)
        if topic == self._cfg.express_topic:
            self._express_tasks += 1
        COMMANDS_INFLIGHT.set(len(self._tasks))
        task.add_done_callback(functools.partial(self._task_done, key=key, cmd=cmd, express=express,
                                                 lane_express=topic == self._cfg.express_topic))

    def _task_done(self, task: asyncio.Task[None], key: str, cmd: KmsCommand, express: bool,
                   lane_express: bool) -> None:
        self._tasks.discard(task)
        self._holding.release(cmd)
        if lane_express:
            self._express_tasks -= 1
        if express:
            left = self._express_boxes.get(key, 1) - 1
            if left > 0:
                self._express_boxes[key] = left
            else:
                self._express_boxes.pop(key, None)
        COMMANDS_INFLIGHT.set(len(self._tasks))
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("executor task failed", exc_info=task.exception())

    async def _execute(self, cmd: KmsCommand, msg: Message, prev: asyncio.Task[None] | None,
                       t0: float, epoch: int) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0

        def abandoned() -> bool:  # step 7/8: revoked, or shutting down, before the next attempt
            return self._stopping.is_set() or not self._tracker.owns(topic, partition, epoch)

        def finish() -> None:
            self._tracker.finished(topic, partition, offset, epoch)

        def newer() -> str | None:  # coalescing: a newer absolute command of the box is held, send that one
            held = self._holding.newest_over(cmd)
            if held is not None:
                return held.idempotency_key
            lookahead = self._lookahead  # a newer one waiting beyond what is held
            return lookahead.newer_than(cmd, topic, partition, offset) if lookahead is not None else None

        failures = 0
        while True:
            try:
                # step 4: bounded concurrency of the KMS calls themselves (the runner holds the gate
                # around each call only; ledger reads and writes do not occupy a KMS slot); a box with
                # an express command waiting runs its earlier commands at express priority too
                express = cmd.priority is Priority.EXPRESS or cmd.secure_client_id in self._express_boxes
                outcome = await self._runner.run(cmd, abandoned=abandoned, gate=self._sem,  # step 5
                                                 replayed=_replayed(msg), express=express, newer=newer)
                break
            except CommandAbandoned:
                log.debug("command abandoned idempotency_key=%s (partition revoked or shutting down)",
                          cmd.idempotency_key)
                return
            except LedgerRejected as exc:  # the command's content: poison, never retried (no second KMS call)
                self._dead_letters.send(self._dlq_of.get(topic, self._cfg.dlq_topic), msg, exc)
                self._publish(RunOutcome(exc.result), msg, finish)
                _processed(topic, "dlq").inc()
                return
            except Exception as exc:  # the ledger's database or a bug: keep the command, try again
                failures += 1
                log.warning("command failed outside the KMS call idempotency_key=%s error=%s; retrying",
                            cmd.idempotency_key, type(exc).__name__)
                await asyncio.sleep(min(_RETRY_CAP_SECONDS, 0.1 * 2**failures))
                if abandoned():
                    return
        self._publish(outcome, msg, finish)
        _processing_seconds(topic).observe(time.monotonic() - t0)
        label = "ok" if outcome.result.state is ResultState.COMPLETED else "rejected"
        if outcome.result.duplicate:
            label = "skipped"
        elif outcome.result.superseded_by is not None:
            label = SUPERSEDED
        _processed(topic, "dlq" if outcome.dead_letter else label).inc()

    def _publish(self, outcome: RunOutcome, msg: Message, on_done: OnDone) -> None:
        """The result (and the DLQ copy, if any); ``on_done`` runs once the result is delivered."""
        result = outcome.result
        if outcome.dead_letter:
            trusted = [(f"{HEADER_PREFIX}idempotency_key", result.idempotency_key),
                       (f"{HEADER_PREFIX}attempts", str(result.attempts))]
            trusted += [(f"{HEADER_PREFIX}attempt.{i + 1}", h) for i, h in enumerate(outcome.history)]
            err = RuntimeError(result.error_description or "transport error")
            self._dead_letters.send(self._dlq_of.get(msg.topic() or "", self._cfg.dlq_topic), msg, err,
                                    reason="transport_budget", trusted=trusted)
        try:
            encoded = self._codec.encode(result, self._cfg.results_topic)
            self._produce_result(result_key(result), encoded, on_done, tracing.propagation_headers())
        except SchemaRegistryRefused as exc:  # no retry helps: stop, and end naming the setting
            self._refused = self._refused or exc
            self._stopping.set()
        except (KafkaException, RecordEncodeError, ValueError) as exc:
            # the result cannot be published (a record the codec or the broker refuses): the command is
            # dead-lettered instead of holding its partition's offset forever
            log.error("result not publishable idempotency_key=%s error=%s", result.idempotency_key,
                      type(exc).__name__)
            self._dead_letters.send(self._dlq_of.get(msg.topic() or "", self._cfg.dlq_topic), msg,
                                    ResultNotPublished(exc), on_delivered=on_done)

    def _produce_result(self, key: str, value: bytes, on_done: OnDone,
                        headers: Headers | None = None) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.error("delivery to %s failed (%s); producing again", self._cfg.results_topic, err)
                self._produce_result(key, value, on_done, headers)
                return
            on_done()

        produce(self._producer, self._cfg.results_topic, key, value, headers, on_delivery=delivered)

    def _store_offsets(self) -> None:
        committable = self._tracker.all_committable()
        for lane in self._lanes:
            held = lane.assignment.parts
            offsets = [TopicPartition(t, p, o) for (t, p), o in committable.items() if (t, p) in held]
            if offsets:
                try:
                    lane.consumer.store_offsets(offsets=offsets)
                except KafkaException as exc:  # e.g. partition just revoked; next round stores again
                    log.debug("store_offsets: %s", exc)

    def _apply_pause(self) -> None:
        for lane in self._lanes:
            buffered = self._express_tasks if lane.express else self._tracker.pending_count()
            want_pause = self.breaker_open or buffered >= self._cfg.max_buffered
            parts = lane.assignment.partitions()
            if want_pause == lane.paused or not parts:
                lane.paused = want_pause if parts else False
                continue
            if want_pause:
                lane.consumer.pause(parts)
                log.info("%s partitions paused (%s)", "express" if lane.express else "regular",
                         "KMS breaker open" if self.breaker_open else "buffer full")
            else:
                lane.consumer.resume(parts)
                log.info("%s partitions resumed", "express" if lane.express else "regular")
            lane.paused = want_pause

    async def _refresh_share(self, loop: asyncio.AbstractEventLoop) -> None:
        """This replica's share of the calls-per-second limits after a rebalance: its partitions of the
        commands topics over all of them (:func:`~consumers.limiter.replica_share`)."""
        self._share_dirty = False
        if self._limiter is None:
            return
        try:
            counts = await loop.run_in_executor(self._pool, self._topic_partitions)
        except KafkaException as exc:  # the broker away: keep the share, try again next round
            log.warning("partition count unknown (%s); the rate-limit share stays", exc)
            self._share_dirty = True
            return
        self._partition_counts.update(counts)
        assigned = sum(len(lane.assignment.parts) for lane in self._lanes)
        total = sum(self._partition_counts.get(lane.topic, 0) for lane in self._lanes)
        share = replica_share(assigned, total)
        if share != self._limiter.share:
            self._limiter.set_share(share)
            log.info("KMS rate-limit share %.3f (%d of %d partitions)", share, assigned, total)

    def _topic_partitions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for lane in self._lanes:
            metadata = lane.consumer.list_topics(lane.topic, timeout=5)
            topic = metadata.topics.get(lane.topic)
            if topic is not None and topic.error is None:
                counts[lane.topic] = len(topic.partitions)
        return counts

    # --- rebalance (run inside consume(), on the poll thread) ----------------------------------------

    def _start_epochs(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._share_dirty = self._limiter is not None
        for tp in parts:
            self._tracker.assigned(tp.topic, tp.partition)  # a new epoch: older work cannot finish it
        lane = self._express if self._express is not None and consumer is self._express.consumer else self._regular
        if lane.paused:
            consumer.pause(parts)

    def _commit_finished(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # step 7: commit what is finished for the revoked partitions, then forget them
        offsets = []
        for tp in parts:
            off = self._tracker.committable(tp.topic, tp.partition)
            if off is not None:
                offsets.append(TopicPartition(tp.topic, tp.partition, off))
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed: %s", exc)
        self._forget(consumer, parts)

    def _forget(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        # also the hook of lost partitions: committing is no longer ours to do
        self._share_dirty = self._limiter is not None
        for tp in parts:
            self._tracker.forget(tp.topic, tp.partition)
        if self._lookahead is not None:
            self._lookahead.forget(parts)

    # --- step 8: shutdown --------------------------------------------------------------------------

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopping.set()  # also when the loop ended by an error: nothing new starts
        deadline = time.monotonic() + self._cfg.grace_seconds
        fatal: FatalKafkaError | None = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        try:
            while self._producer.flush(0.1) > 0 and time.monotonic() < deadline:
                pass
            self._producer.poll(0)
        except FatalKafkaError as exc:
            fatal = exc
        self._store_offsets()
        committable = self._tracker.all_committable()
        left = self._tracker.pending_count()
        for task in self._tasks:
            task.cancel()
        # commit and close may block in librdkafka while the broker is away: bounded by the watchdog
        with self._watchdog.guard("final commit and close", self._cfg.grace_seconds + 30):
            if self._lookahead is not None:
                try:  # its error callback may raise (refused credentials): the lanes still close
                    await loop.run_in_executor(self._pool, self._lookahead.close)
                except FatalKafkaError as exc:
                    fatal = fatal or exc
            for lane in self._lanes:
                held = lane.assignment.parts
                offsets = [TopicPartition(t, p, o) for (t, p), o in committable.items() if (t, p) in held]
                consumer = lane.consumer
                try:
                    if offsets:
                        await loop.run_in_executor(self._pool, functools.partial(
                            consumer.commit, offsets=offsets, asynchronous=False))
                except (KafkaException, FatalKafkaError) as exc:
                    log.warning("final commit failed: %s", exc)
                try:
                    await loop.run_in_executor(self._pool, consumer.close)
                except FatalKafkaError as exc:
                    fatal = fatal or exc
        self._pool.shutdown(wait=False)
        log.info("executor stopped: %d commands not started or not finished (they are redelivered; the ledger "
                 "keeps finished ones from running twice)", left)
        if fatal is not None:
            raise fatal


class ResultNotPublished(Exception):
    """A command's result could not be encoded or produced; only the error's class is kept."""

    reason = "result_not_published"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"the result could not be published ({type(exc).__name__})")


_frozen = False


def _freeze_startup_objects() -> None:
    """Once per process: collect, then move every object that survived start-up (modules, the WSDL,
    schemas, SQLAlchemy's tables, the clients) out of the cyclic collector's reach, so its full
    collections while commands run walk the commands' objects only (at L = 0 they cost about a
    sixth of the executor's CPU otherwise, docs/benchmarks.md)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def _replayed(msg: Message) -> bool:
    """The record was replayed from the DLQ on purpose (``kmsbridge dlq replay``)."""
    return header(msg, REPLAYED_FROM) is not None
