"""Fault drills against the real pipeline, with a ledger of what was produced and what the KMS applied.

A drill (``tests/chaos``, ``make chaos``) runs the product as a user runs it: a real Kafka broker, the
KMS simulator as its own process (``kmsbridge simulator --audit-file``), and the translator and
executor(s) as ``kmsbridge run`` processes under a :class:`Supervisor` that, like Kubernetes'
``restartPolicy: Always``, restarts a process that exits on its own (and counts it). While a
:class:`Feeder` produces a :class:`Stream` of subscription events at a steady rate, the drill injects
its faults (kill -9, SIGTERM, broker stop, KMS outage or degradation, poison), then waits for the KMS
to converge.

The ledger: every event's commands are planned up front with the product's own planning function, so
each event has the set of idempotency keys it must cause; the simulator's audit file says which keys
were applied (``duplicate: false``) and how often. From these:

- **lost**: events with a key that was never applied, plus secure clients whose final KMS state
  (entitlements, pairing, PIN) differs from what the last event asks for (computed independently of
  the planner);
  a key the executor coalesced or found older than the attribute's last applied (its result on
  ``kms.results`` names the newer command: ``superseded_by``, docs/traffic.md) is accounted for
  without reaching the KMS, and the final-state check still says whether the box ended right;
- **applied twice**: keys with more than one non-duplicate audit entry;
- **DLQ**: records on the translator's and the executor's DLQ topics (read_committed);
- **recovery**: for each fault, from the moment the fault ended to the moment every event produced
  before that moment had been applied (the pipeline caught up); the worst fault of the drill counts.

:func:`markdown_table` prints the reports as the table ``docs/reliability.md`` holds.
"""

from __future__ import annotations

import bisect
import logging
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from kmsbridge.settings import Settings
from localdev.local_broker import BrokerHandle, restart_broker, stop_broker
from provisioning.planning import plan_subscription
from provisioning.provider import ProviderConfig
from schemas.codec import SINGLE_OBJECT_MAGIC, Codec, load_schema
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    Operation,
    Product,
    ResultState,
    Service,
    ServiceState,
    Source,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.pipeline import Pipeline
from tests.support.simulator import AuditTail, SimulatorHandle

__all__ = [
    "FULL",
    "SHORT",
    "AppliedKeys",
    "DrillReport",
    "Feeder",
    "RestartableBroker",
    "Size",
    "Stream",
    "Supervisor",
    "markdown_table",
    "poison_command",
    "poison_value",
    "read_all",
    "reencode",
]

log = logging.getLogger(__name__)

PRODUCTS = {"BASIC": ("P100", "P101"), "SPORTS": ("P200",)}
POISON_KINDS = ("bad_magic", "unknown_fingerprint", "unknown_schema_id", "invalid_record", "oversized",
                "future_timestamp", "tombstone")
#: The product's input limit at its default (``KMSBRIDGE_MAX_MESSAGE_BYTES``): the drills run at it.
MAX_MESSAGE_BYTES: int = Settings.model_fields["max_message_bytes"].default


# --------------------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class Size:
    """How big a drill is: events in the stream, production rate, fault durations, convergence bound."""

    name: str
    events: int
    rate: float  # events produced per second
    broker_outage: float
    kms_outage: float
    degraded: float
    timeout: float  # seconds allowed for convergence after the stream ended

    @property
    def duration(self) -> float:
        return self.events / self.rate


#: Rates sit well below what one executor applies on the 2-core reference machine (about 100 commands/s,
#: most of it zeep's SOAP work; the stream averages 1.5 commands per event), so a fault's backlog can
#: be caught up while the stream goes on.
SHORT = Size("short", events=1000, rate=50, broker_outage=8, kms_outage=8, degraded=10, timeout=180)
FULL = Size("full", events=20_000, rate=60, broker_outage=30, kms_outage=60, degraded=60, timeout=900)


# --------------------------------------------------------------------------------------------------
# Records and poison


def reencode(codec: Codec, record: Any, topic: str, **changes: Any) -> bytes:
    """``record`` encoded as the product does, then its Avro body rewritten with ``changes``: how a
    record that breaks its model's rules (but not its schema) is made."""
    data = codec.encode(record, topic)
    header_len = len(SINGLE_OBJECT_MAGIC) + 8
    schema = parse_schema(load_schema(type(record).__name__))
    body = schemaless_reader(BytesIO(data[header_len:]), schema, None)
    assert isinstance(body, dict)
    body.update(changes)
    out = BytesIO()
    schemaless_writer(out, schema, body)
    return data[:header_len] + out.getvalue()


def poison_value(kind: str, codec: Codec, topic: str, template: SubscriptionEvent) -> bytes | None:
    """A value of ``kind`` (see :data:`POISON_KINDS`) for a subscriptions topic; None is a tombstone."""
    if kind == "invalid_record":
        return reencode(codec, template, topic, version=-1)
    if kind == "future_timestamp":
        future = template.model_copy(update={"occurred_at": datetime.now(UTC) + timedelta(days=400)})
        return codec.encode(future, topic)
    return _framing_poison(kind, codec.encode(template, topic))


def poison_command(kind: str, codec: Codec, topic: str, card: str) -> bytes | None:
    """A poison value of ``kind`` for ``kms.commands`` (a command that must never reach the KMS)."""
    cmd = KmsCommand(idempotency_key=f"poison:{uuid.uuid4().hex}", operation=Operation.SYNC_ENTITLEMENTS,
                     secure_client_id=card, products=[Product(product_id="P999")],
                     source=Source(process_name="chaos"), created_at=datetime.now(UTC))
    if kind == "invalid_record":
        return reencode(codec, cmd, topic, secure_client_id="")
    if kind == "future_timestamp":
        return codec.encode(cmd.model_copy(update={"created_at": datetime.now(UTC) + timedelta(days=400)}), topic)
    return _framing_poison(kind, codec.encode(cmd, topic))


def _framing_poison(kind: str, good: bytes) -> bytes | None:
    """The poison kinds that break a record's framing or size, made from a good value of any record type."""
    if kind == "bad_magic":
        return b"\x07not avro at all"
    if kind == "unknown_fingerprint":
        return SINGLE_OBJECT_MAGIC + b"\x11" * 8 + good[10:]
    if kind == "unknown_schema_id":
        return b"\x00" + (99_999).to_bytes(4, "big") + good[10:]
    if kind == "oversized":
        return good + b"\x00" * MAX_MESSAGE_BYTES
    if kind == "tombstone":
        return None
    raise ValueError(f"unknown poison kind {kind!r}")


# --------------------------------------------------------------------------------------------------
# The stream and what it asks of the KMS


@dataclass(frozen=True)
class CardState:
    products: frozenset[str]
    chipset: str
    pin: str = "0001"


@dataclass
class Item:
    """One record of the stream: an event (with the keys it must cause) or a poison value."""

    key: bytes
    event: SubscriptionEvent | None = None
    raw: bytes | None = None
    keys: tuple[str, ...] = ()
    poison: str | None = None


class Stream:
    """``events`` subscription events: households of one MAIN box (every eighth also a TWIN1 box),
    each going through ``versions`` versions (activate, add sports, suspend, resume, drop sports...),
    produced version by version. With ``poison_every`` every n-th record is poison instead."""

    def __init__(self, events: int, provider: ProviderConfig, topic: str, codec: Codec, *, versions: int = 5,
                 poison_every: int = 0, tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:6]
        households = max(1, events // versions)
        self.items: list[Item] = []
        self.expected: dict[str, CardState] = {}
        created = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        template: SubscriptionEvent | None = None
        poison_n = 0
        for v in range(1, versions + 1):
            for h in range(households):
                if len(self.items) >= events:
                    break
                if poison_every and (len(self.items) + 1) % poison_every == 0 and template is not None:
                    kind = POISON_KINDS[poison_n % len(POISON_KINDS)]
                    poison_n += 1
                    self.items.append(Item(key=f"poison-{poison_n}".encode(),
                                           raw=poison_value(kind, codec, topic, template), poison=kind))
                    continue
                ev = self._event(h, v, created)
                template = template or ev
                plan = plan_subscription(ev, provider, process_name="translator", topic=topic)
                assert plan.rejection is None, plan.rejection
                self.items.append(Item(key=ev.subscription_id.encode(), event=ev,
                                       keys=tuple(c.idempotency_key for c in plan.commands)))
                for device in ev.devices:
                    self.expected[device.secure_client_id] = self._expected(ev, device)
        self.key_index: dict[str, int] = {k: i for i, item in enumerate(self.items) for k in item.keys}

    @property
    def dlq_expected(self) -> int:
        return sum(1 for item in self.items if item.poison not in (None, "tombstone"))

    @property
    def event_count(self) -> int:
        return sum(1 for item in self.items if item.event is not None)

    def _event(self, h: int, v: int, created: datetime) -> SubscriptionEvent:
        devices = [Device(distributor="MAIN", secure_client_id=f"9{self.tag}{h:06d}", stb_serial=f"STB-{h}")]
        if h % 8 == 0:
            devices.append(Device(distributor="TWIN1", secure_client_id=f"8{self.tag}{h:06d}", stb_serial=f"T-{h}"))
        suspended = v % 4 == 3
        services = [Service(service_code="BASIC", state=ServiceState.ACTIVE)]
        if v % 2 == 0 or suspended:
            services.append(Service(service_code="SPORTS", state=ServiceState.ACTIVE))
        kind = (EventType.ACTIVATED if v == 1 else EventType.SUSPENDED if suspended
                else EventType.RESUMED if v % 4 == 0 else EventType.SERVICES_CHANGED)
        return SubscriptionEvent(
            event_id=str(uuid.uuid4()), event_type=kind, occurred_at=datetime.now(UTC),
            subscription_id=f"H-{self.tag}-{h}", account_id=f"A-{h}", subscription_type="RESIDENTIAL",
            created_at=created, version=v, state=SubscriptionState.SUSPENDED if suspended else SubscriptionState.ACTIVE,
            services=services, devices=devices,
        )

    @staticmethod
    def _expected(ev: SubscriptionEvent, device: Device) -> CardState:
        """What the KMS must hold for ``device`` after ``ev``, by the rules of docs/architecture.md §3 and the
        example provider (MAIN carries every service, TWIN1 only BASIC), not by the planner."""
        products: set[str] = set()
        if ev.state is SubscriptionState.ACTIVE:
            for svc in ev.services:
                if svc.state is ServiceState.ACTIVE and (device.distributor == "MAIN" or svc.service_code == "BASIC"):
                    products.update(PRODUCTS[svc.service_code])
        return CardState(frozenset(products), chipset=device.stb_serial or "")

    def wrong_cards(self, state: dict[str, Any]) -> list[str]:
        """Secure clients whose simulator state differs from what the stream asks for."""
        clients: dict[str, Any] = state.get("secure_clients", {})
        wrong = []
        for card, want in self.expected.items():
            got = clients.get(card) or {}
            products = frozenset(e["product_id"] for e in got.get("entitlements", []))
            if products != want.products or got.get("paired_chipset") != want.chipset or got.get("pin") != want.pin:
                wrong.append(card)
        return wrong


# --------------------------------------------------------------------------------------------------
# Producing, observing


class Feeder(threading.Thread):
    """Produces a stream's items at ``rate`` per second (pacing, not synchronisation) and remembers
    when each was handed to the producer."""

    def __init__(self, producer: Producer, topic: str, codec: Codec, items: Sequence[Item], rate: float) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self._producer = producer
        self._topic = topic
        self._codec = codec
        self._items = items
        self._rate = rate
        self.submitted: list[float] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def produce_next(self) -> None:
        """Produce the next item now (used for a warm-up item before the paced stream starts)."""
        item = self._items[len(self.submitted)]
        value = self._codec.encode(item.event, self._topic) if item.event is not None else item.raw
        while True:
            try:
                self._producer.produce(self._topic, key=item.key, value=value)
                break
            except BufferError:
                self._producer.poll(0.1)
        self.submitted.append(time.monotonic())
        self._producer.poll(0)

    def run(self) -> None:
        try:
            t0 = time.monotonic()
            first = len(self.submitted)
            for i in range(first, len(self._items)):
                ahead = t0 + (i - first) / self._rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                self.produce_next()
            while self._producer.flush(1.0) > 0:
                pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def submitted_by(self, moment: float) -> int:
        """How many items had been produced at ``moment`` (monotonic)."""
        return bisect.bisect_right(self.submitted, moment)


class AppliedKeys:
    """The idempotency keys the simulator applied, read from its audit file as it grows, with counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tail = AuditTail(path, 0)
        self.applied: Counter[str] = Counter()
        self.duplicates = 0

    def poll(self) -> list[str]:
        """Keys applied (first time) since the last poll."""
        fresh = []
        for entry in self._tail.poll():
            if entry.get("duplicate"):
                self.duplicates += 1
                continue
            key = entry["idempotency_key"]
            self.applied[key] += 1
            if self.applied[key] == 1:
                fresh.append(key)
        return fresh


class SupersededKeys:
    """The idempotency keys the executor did not send because a newer absolute command of the same box
    and attribute made them moot (``KmsResult.superseded_by``), read from ``kms.results`` as it grows."""

    def __init__(self, bootstrap: str, topic: str, codec: Codec) -> None:
        self._codec = codec
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"superseded-{uuid.uuid4().hex}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._consumer.subscribe([topic])
        self.keys: set[str] = set()

    def poll(self) -> list[str]:
        """Keys superseded since the last poll."""
        fresh = []
        for msg in self._consumer.consume(5000, 0):
            if msg.error() or msg.value() is None:
                continue
            result = self._codec.decode(msg.value(), KmsResult)
            if result.superseded_by is not None and result.idempotency_key not in self.keys:
                self.keys.add(result.idempotency_key)
                fresh.append(result.idempotency_key)
        return fresh

    def close(self) -> None:
        self._consumer.close()


class Progress:
    """Which events have had every key applied (or superseded); the frontier is the first event still
    waiting."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._remaining = [len(item.keys) for item in stream.items]
        self.frontier = 0
        self.foreign = 0  # applied keys no event asked for
        self._advance()

    def applied(self, keys: Iterable[str]) -> None:
        for key in keys:
            index = self._stream.key_index.get(key)
            if index is None:
                self.foreign += 1
                continue
            self._remaining[index] -= 1
        self._advance()

    def _advance(self) -> None:
        while self.frontier < len(self._remaining) and self._remaining[self.frontier] <= 0:
            self.frontier += 1

    @property
    def complete(self) -> bool:
        return self.frontier >= len(self._remaining)

    def lost_events(self) -> int:
        return sum(1 for r in self._remaining if r > 0)


# --------------------------------------------------------------------------------------------------
# Processes and the broker


class Supervisor:
    """Starts ``kmsbridge run`` processes through :meth:`Pipeline.spawn` and, like Kubernetes'
    ``restartPolicy: Always``, restarts one that exits on its own (``unplanned`` counts them)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._spec: dict[str, tuple[str, dict[str, str]]] = {}
        self._starts: Counter[str] = Counter()
        self.unplanned: list[tuple[str, int | None]] = []

    def start(self, name: str, process: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self._spec[name] = (process, dict(env or {}))
        self._starts[name] += 1
        proc = self._pipeline.spawn(process, env=env, log_name=f"{name}.{self._starts[name]}")
        self.procs[name] = proc
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        process, env = self._spec[name]
        return self.start(name, process, env)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def sigterm(self, name: str, timeout: float) -> tuple[int | None, float]:
        """SIGTERM and wait; returns (exit code or None if it did not exit in time, seconds taken)."""
        proc = self.procs[name]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            proc.kill()
            proc.wait(10)
        return code, time.monotonic() - t0

    def check(self) -> None:
        """Restart any process that exited without being asked to."""
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                log.warning("%s exited on its own with %s; restarting it", name, code)
                self.unplanned.append((name, code))
                self.restart(name)

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        codes = {}
        for name in list(self.procs):
            codes[name] = self.sigterm(name, timeout)[0]
        self.procs.clear()
        return codes


class RestartableBroker:
    """A local broker the drill may stop and start again on the same data dir and port."""

    def __init__(self, handle: BrokerHandle) -> None:
        self.handle = handle
        self.bootstrap = handle.bootstrap

    def stop(self) -> None:
        stop_broker(self.handle.pid)

    def start(self) -> None:
        self.handle = restart_broker(self.handle)
        assert self.handle.bootstrap == self.bootstrap

    def close(self) -> None:
        stop_broker(self.handle.pid)


def read_all(bootstrap: str, topic: str, timeout: float = 60) -> list[Message]:
    """Every committed record of ``topic`` (read_committed, from the beginning, to the end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
        at_end: set[int] = set()
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(out)} records, {len(at_end)} partitions at the end")
            for msg in consumer.consume(500, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                    continue
                at_end.discard(msg.partition() or 0)
                out.append(msg)
        return out
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------------
# Reports


@dataclass
class DrillReport:
    case: str
    size: str
    events: int
    lost: int = 0
    applied_twice: int = 0
    dlq: int = 0
    dlq_expected: int = 0
    recovery_seconds: float | None = None
    unplanned_restarts: int = 0
    wrong_state: int = 0
    foreign_applied: int = 0
    results_missing: int = 0
    elapsed_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.lost == 0 and self.applied_twice == 0 and self.dlq == self.dlq_expected
                and self.wrong_state == 0 and self.foreign_applied == 0 and self.results_missing == 0)


def markdown_table(reports: Sequence[DrillReport]) -> str:
    head = ("| case | size | events | lost | applied twice | DLQ | recovery time | unplanned restarts | result |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    rows = []
    for r in reports:
        recovery = f"{r.recovery_seconds:.1f} s" if r.recovery_seconds is not None else "n/a"
        dlq = f"{r.dlq} (expected {r.dlq_expected})" if r.dlq_expected else str(r.dlq)
        rows.append(f"| {r.case} | {r.size} | {r.events:,} | {r.lost} | {r.applied_twice} | {dlq} | {recovery} | "
                    f"{r.unplanned_restarts} | {'pass' if r.passed else 'FAIL'} |")
    return head + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------------
# The drill


#: (at fraction of the stream, label, action -> fault end). An action that takes a while (a broker's start)
#: may return a Future of its end instead, run in the background, so the drill keeps reading the ledger
#: meanwhile and the recovery is measured from the fault's real end.
Fault = tuple[float, str, Callable[["Drill"], "float | Future[float]"]]


class Drill:
    """One case: processes up, stream fed, faults injected on schedule, convergence awaited, ledger read."""

    def __init__(self, case: str, size: Size, pipeline: Pipeline, sim: SimulatorHandle, audit_file: Path,
                 provider: ProviderConfig, *, executors: int = 1, poison_every: int = 0,
                 command_poison: int = 0, broker: RestartableBroker | None = None) -> None:
        self.case = case
        self.size = size
        self.pipeline = pipeline
        self.sim = sim
        self.broker = broker
        self.topic = pipeline.settings.topic("subscriptions")
        self.stream = Stream(size.events, provider, self.topic, pipeline.codec, poison_every=poison_every)
        self.command_poison = command_poison
        self.audit = AppliedKeys(audit_file)
        self.superseded = SupersededKeys(pipeline.bootstrap, pipeline.settings.topic("results"), pipeline.codec)
        self.progress = Progress(self.stream)
        self.supervisor = Supervisor(pipeline)
        self.executors = [f"executor-{i}" for i in range(executors)]
        self.command_dlq_expected = 0
        self.notes: list[str] = []
        #: items produced (and applied) one by one before the paced stream starts
        self.warmup = 1

    # --- process control, for fault actions ------------------------------------------------------------

    def start_processes(self) -> None:
        self.supervisor.start("translator-0", "translator", {"POD_NAME": "translator-0"})
        for name in self.executors:
            self.supervisor.start(name, "executor", {"POD_NAME": name})

    def kill_and_restart(self, name: str) -> float:
        self.supervisor.kill9(name)
        self.supervisor.restart(name)
        return time.monotonic()

    def sigterm_and_restart(self, name: str, grace: float) -> float:
        code, seconds = self.supervisor.sigterm(name, grace + 10)
        self.notes.append(f"{name} SIGTERM: exit {code} after {seconds:.1f} s")
        if code != 0 or seconds > grace + 2:
            raise AssertionError(f"{name} did not drain within its grace time: exit {code} after {seconds:.1f} s")
        self.supervisor.restart(name)
        return time.monotonic()

    # --- the run --------------------------------------------------------------------------------------

    def run(self, faults: Sequence[Fault]) -> DrillReport:
        began = time.monotonic()
        self.start_processes()
        feeder = Feeder(self.pipeline.producer, self.topic, self.pipeline.codec, self.stream.items, self.size.rate)
        # warm-up: the first event(s) go through alone, so every process is up and assigned before faults
        for _ in range(self.warmup):
            feeder.produce_next()
        self.pipeline.producer.flush(30)
        warm_deadline = time.monotonic() + 90
        while self.progress.frontier < self.warmup:
            self.supervisor.check()
            self.progress.applied([*self.audit.poll(), *self.superseded.poll()])
            if time.monotonic() > warm_deadline:
                raise RuntimeError(f"{self.case}: the pipeline did not apply its warm-up within 90 s")
            time.sleep(0.2)
        self.warmed_up()
        pending = sorted(faults, key=lambda f: f[0])
        # (label, fault end, events to catch up on)
        checkpoints: list[tuple[str, float | Future[float], int | None]] = []
        recoveries: dict[str, float] = {}
        feeder.start()
        t0 = time.monotonic()
        self._command_poison()
        deadline: float | None = None
        while True:
            now = time.monotonic()
            while pending and now - t0 >= pending[0][0] * self.size.duration:
                _, label, action = pending.pop(0)
                log.info("fault %s", label)
                end = action(self)
                checkpoints.append((label, end, None))
                now = time.monotonic()
            self.supervisor.check()
            self.progress.applied([*self.audit.poll(), *self.superseded.poll()])
            now = time.monotonic()
            for i, (label, end, target) in enumerate(checkpoints):
                if isinstance(end, Future):  # still under way in the background, or just ended
                    if not end.done():
                        continue
                    end = end.result()  # the action's own error, if any, ends the drill here
                    checkpoints[i] = (label, end, None)
                if target is None and now >= end:
                    checkpoints[i] = (label, end, feeder.submitted_by(end))
            for label, end, target in checkpoints:
                if isinstance(end, Future):
                    continue
                if label not in recoveries and target is not None and self.progress.frontier >= target:
                    recoveries[label] = now - end
            if feeder.done.is_set() and not pending and deadline is None:
                deadline = now + self.size.timeout
            if (feeder.done.is_set() and not pending and self.progress.complete
                    and all(label in recoveries for label, _, _ in checkpoints)):
                break
            if deadline is not None and now > deadline:
                self.notes.append("did not converge in time")
                break
            time.sleep(0.2)
        if feeder.error is not None:
            raise RuntimeError("producing the stream failed") from feeder.error
        report = self._report(began, recoveries)
        for name, code in self.supervisor.unplanned:
            self.notes.append(f"{name} exited on its own with {code} and was restarted")
        codes = self.supervisor.stop_all()
        bad_exits = {n: c for n, c in codes.items() if c != 0}
        if bad_exits:
            self.notes.append(f"exit codes at the end: {bad_exits}")
        if self.superseded.keys:
            self.notes.append(f"{len(self.superseded.keys)} commands superseded by newer ones (not sent)")
        self.superseded.close()
        report.notes = self.notes
        return report

    def warmed_up(self) -> None:
        """Called once the warm-up items are applied, before the paced stream starts."""

    def _command_poison(self) -> None:
        if not self.command_poison:
            return
        topic = self.pipeline.settings.topic("commands")
        for n in range(self.command_poison):
            kind = POISON_KINDS[n % len(POISON_KINDS)]
            value = poison_command(kind, self.pipeline.codec, topic, card=f"7{self.stream.tag}{n:05d}")
            self.pipeline.producer.produce(topic, key=b"poison", value=value)
            if kind != "tombstone":
                self.command_dlq_expected += 1
        self.pipeline.producer.flush(30)

    def _report(self, began: float, recoveries: dict[str, float]) -> DrillReport:
        wrong: list[str] = []
        state_deadline = time.monotonic() + 30
        while True:  # the audit may run ahead of nothing; state is the final word
            wrong = self.stream.wrong_cards(self.sim.state())
            if not wrong or time.monotonic() > state_deadline:
                break
            time.sleep(1)
        self.progress.applied([*self.audit.poll(), *self.superseded.poll()])
        settings = self.pipeline.settings
        dlq = sum(len(read_all(self.pipeline.bootstrap, settings.dlq(settings.topic(n))))
                  for n in ("subscriptions", "commands"))
        results = read_all(self.pipeline.bootstrap, settings.topic("results"))
        completed = set()
        for msg in results:
            result = self.pipeline.codec.decode(msg.value(), KmsResult)
            if result.state is ResultState.COMPLETED:
                completed.add(result.idempotency_key)
        applied = set(self.audit.applied)
        return DrillReport(
            case=self.case, size=self.size.name, events=self.stream.event_count,
            lost=self.progress.lost_events() + len(wrong),
            applied_twice=sum(1 for n in self.audit.applied.values() if n > 1),
            dlq=dlq, dlq_expected=self.stream.dlq_expected + self.command_dlq_expected,
            recovery_seconds=max(recoveries.values()) if recoveries else None,
            unplanned_restarts=len(self.supervisor.unplanned),
            wrong_state=len(wrong), foreign_applied=self.progress.foreign,
            results_missing=len(applied - completed),
            elapsed_seconds=time.monotonic() - began,
        )
