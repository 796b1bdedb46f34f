"""The executor: ``kms.commands`` → KMS → ``kms.results``.

Commit protocol (the numbers appear again in the code):

1. Poll a batch off the event loop (a worker thread), so slow KMS calls never hold up ``poll`` and
   ``max.poll.interval.ms`` cannot be exceeded; rebalance callbacks run inside that call.
2. Each message is registered as pending in the :class:`OffsetTracker` *before* any work starts.
3. Decode; poison goes to ``kms.commands.dlq`` with reason headers and is finished at once.
4. Schedule the command behind the previous command of the same secure client (per-client order);
   at most ``max_inflight`` KMS calls run at once across clients.
5. Run it (:class:`CommandRunner`: ledger, stale guard, retries, breaker), publish its result (and
   DLQ entry, if any); the message is *finished* only when the result is delivered.
6. Before each poll, store the offset below the lowest unfinished message of every partition;
   librdkafka's background commit commits stored offsets only, so nothing past unfinished work is
   ever committed.
7. On revoke, store and commit synchronously what is finished for the revoked partitions, then forget
   them; work still running for them completes (the ledger stops the new owner from re-applying).
8. On SIGTERM stop polling, let in-flight work finish within the grace time, store, commit, close.

Partitions are paused while the breaker is open or the buffer is full (``max_buffered``), and resumed
after; paused, the loop still polls, so the member stays in the group.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.command_runner import CommandRunner, RunOutcome
from consumers.dlq import dlq_headers
from consumers.health import HealthState
from consumers.metrics import (
    COMMANDS_INFLIGHT,
    DLQ_MESSAGES,
    MESSAGES_CONSUMED,
    MESSAGES_PROCESSED,
    PROCESSING_SECONDS,
)
from consumers.offsets import OffsetTracker
from schemas.codec import Codec
from schemas.errors import PoisonMessage
from schemas.records import KmsCommand, KmsResult, ResultState

__all__ = ["Executor", "ExecutorConfig"]

log = logging.getLogger(__name__)
PROCESS = "executor"


@dataclass(frozen=True)
class ExecutorConfig:
    commands_topic: str
    results_topic: str
    dlq_topic: str
    max_inflight: int = 64
    max_buffered: int = 2000
    poll_batch: int = 500
    grace_seconds: float = 20.0


class Executor:
    def __init__(self, consumer: Consumer, producer: Producer, codec: Codec, runner: CommandRunner,
                 config: ExecutorConfig, health: HealthState | None = None) -> None:
        self._consumer = consumer
        self._producer = producer
        self._codec = codec
        self._runner = runner
        self._cfg = config
        self._health = health or HealthState(ttl_seconds=30)
        self._tracker = OffsetTracker()
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._sem = asyncio.Semaphore(config.max_inflight)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-poll")
        self._stopping = asyncio.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._paused = False
        self.breaker_open = False
        self._tasks: set[asyncio.Task[None]] = set()

    # --- public ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    def set_breaker_open(self, is_open: bool) -> None:
        self.breaker_open = is_open
        self._health.breaker_open = is_open

    @property
    def tracker(self) -> OffsetTracker:
        return self._tracker

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._consumer.subscribe([self._cfg.commands_topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self._stopping.is_set():
                self._apply_pause()
                self._store_offsets()  # step 6
                self._producer.poll(0)  # delivery callbacks finish messages (step 5)
                # step 1: poll off the event loop
                msgs = await loop.run_in_executor(self._pool, self._consumer.consume, self._cfg.poll_batch,
                                                  0.05)
                self._health.polled()
                for msg in msgs:
                    self._dispatch(msg)
                if not msgs:
                    await asyncio.sleep(0)  # let finished tasks run their callbacks
        finally:
            await self._shutdown(loop)

    # --- steps -------------------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
            return
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        MESSAGES_CONSUMED.labels(PROCESS, topic).inc()
        ts = msg.timestamp()[1] / 1000.0 if msg.timestamp()[1] > 0 else time.time()
        self._tracker.started(topic, partition, offset, ts)  # step 2
        try:  # step 3
            cmd = self._codec.decode(msg.value(), KmsCommand)
        except PoisonMessage as exc:
            def finish() -> None:
                self._tracker.finished(topic, partition, offset)

            self._dead_letter(msg, exc, on_done=finish)
            MESSAGES_PROCESSED.labels(PROCESS, topic, "dlq").inc()
            return
        # step 4: chain behind the same secure client
        key = cmd.secure_client_id
        prev = self._tails.get(key)
        task = asyncio.get_running_loop().create_task(self._execute(cmd, msg, prev, time.monotonic()))
        self._tails[key] = task
        self._tasks.add(task)
        COMMANDS_INFLIGHT.set(len(self._tasks))
        task.add_done_callback(functools.partial(self._task_done, key=key))

    def _task_done(self, task: asyncio.Task[None], key: str) -> None:
        self._tasks.discard(task)
        COMMANDS_INFLIGHT.set(len(self._tasks))
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("executor task failed", exc_info=task.exception())

    async def _execute(self, cmd: KmsCommand, msg: Message, prev: asyncio.Task[None] | None,
                       t0: float) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        async with self._sem:  # step 4: bounded concurrency
            outcome = await self._runner.run(cmd)  # step 5
        self._publish(outcome, msg, lambda: self._tracker.finished(topic, partition, offset))
        PROCESSING_SECONDS.labels(PROCESS, topic).observe(time.monotonic() - t0)
        label = "ok" if outcome.result.state is ResultState.COMPLETED else "rejected"
        if outcome.result.duplicate:
            label = "skipped"
        MESSAGES_PROCESSED.labels(PROCESS, topic, "dlq" if outcome.dead_letter else label).inc()

    def _publish(self, outcome: RunOutcome, msg: Message, on_done: object) -> None:
        result = outcome.result
        done = on_done  # called once the result (and DLQ copy) are delivered
        assert callable(done)
        if outcome.dead_letter:
            extra = [("kmsbridge.attempts", str(len(outcome.history)))]
            extra += [(f"kmsbridge.attempt.{i + 1}", h) for i, h in enumerate(outcome.history)]
            err = RuntimeError(result.error_description or "transport error")
            self._produce(self._cfg.dlq_topic, msg.key(), msg.value(),
                          dlq_headers(msg, err, reason="transport_budget", extra=extra), None)
            DLQ_MESSAGES.labels(self._cfg.commands_topic, "transport_budget").inc()
        self._produce(self._cfg.results_topic, _result_key(result), self._codec.encode(result,
                      self._cfg.results_topic), None, done)

    def _dead_letter(self, msg: Message, exc: PoisonMessage, on_done: object) -> None:
        DLQ_MESSAGES.labels(msg.topic() or "", exc.reason).inc()
        self._produce(self._cfg.dlq_topic, msg.key(), msg.value(), dlq_headers(msg, exc), on_done)

    def _produce(self, topic: str, key: bytes | str | None, value: bytes | None,
                 headers: list[tuple[str, str | bytes | None]] | None, on_done: object) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.error("delivery to %s failed (%s); producing again", topic, err)
                self._produce(topic, key, value, headers, on_done)
                return
            if callable(on_done):
                on_done()

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve deliveries, then try again

    def _store_offsets(self) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._tracker.all_committable().items()
                   if (t, p) in self._assigned]
        if offsets:
            try:
                self._consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # e.g. partition just revoked; next round stores again
                log.debug("store_offsets: %s", exc)

    def _apply_pause(self) -> None:
        want_pause = self.breaker_open or self._tracker.pending_count() >= self._cfg.max_buffered
        if want_pause == self._paused or not self._assigned:
            self._paused = want_pause if self._assigned else False
            return
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if want_pause:
            self._consumer.pause(parts)
        else:
            self._consumer.resume(parts)
        self._paused = want_pause

    # --- rebalance (run inside consume(), on the poll thread) ----------------------------------------

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            self._assigned.add((tp.topic, tp.partition))
        self._health.assigned = bool(self._assigned)
        if self._paused:
            consumer.pause(parts)
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in parts])

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
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
        for tp in parts:
            self._assigned.discard((tp.topic, tp.partition))
            self._tracker.forget(tp.topic, tp.partition)
        self._health.assigned = bool(self._assigned)
        log.info("revoked %s", [(tp.topic, tp.partition) for tp in parts])

    def _on_lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:  # lost, not revoked: committing is no longer ours to do
            self._assigned.discard((tp.topic, tp.partition))
            self._tracker.forget(tp.topic, tp.partition)
        self._health.assigned = bool(self._assigned)

    # --- step 8: shutdown --------------------------------------------------------------------------

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = time.monotonic() + self._cfg.grace_seconds
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        while self._producer.flush(0.1) > 0 and time.monotonic() < deadline:
            pass
        self._producer.poll(0)
        self._store_offsets()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._tracker.all_committable().items()
                   if (t, p) in self._assigned]
        try:
            if offsets:
                await loop.run_in_executor(self._pool, lambda: self._consumer.commit(
                    offsets=offsets, asynchronous=False))
        except KafkaException as exc:
            log.warning("final commit failed: %s", exc)
        for task in self._tasks:
            task.cancel()
        await loop.run_in_executor(self._pool, self._consumer.close)
        self._pool.shutdown(wait=False)


def _result_key(result: KmsResult) -> str:
    return (result.request_id or result.communication_id or result.event_id or result.run_id
            or result.idempotency_key)
