"""The bad-input suite: every class of bad input through the real broker into every
consumer, at the product's real limits (``KMSBRIDGE_MAX_MESSAGE_BYTES`` 1,000,000, librdkafka's and the
broker's default message limits).

One pipeline for the module (one partition per topic, so a bad record and the valid record produced
after it share their partition): the translator, the executor, the projector and the reconciler runner
in threads, and an outcome feed (the Web API's reader of ``kms.results``). Each test sends one class to
every consumer's topic, then a valid record behind it, and shows

* the class ends where docs/architecture.md §5 says: a DLQ entry naming its consumer and reason, a REJECTED result
  (or report), or a counted skip; and
* the valid record behind it is applied, so the partition moved on.

The module prints the table class x consumer -> outcome (and writes it to ``var/bad-input/last-run.md``);
``docs/reliability.md`` keeps it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from prometheus_client import REGISTRY
from pydantic import BaseModel

from kafka_edge.dlq import TRUNCATED_BODY_BYTES
from kmsbridge.wiring import engine_for
from kmsbridge.wiring_reconciler import build_projector, build_reconciler
from producers.outcomes import OutcomeStore
from producers.results_feed import OutcomeFeed, OutcomeFeedError
from producers.topics import wait_for_topics
from reconciler.store import DesiredStateStore
from schemas.codec import SINGLE_OBJECT_MAGIC
from schemas.errors import PoisonMessage
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    Operation,
    Product,
    ReconcileRequest,
    ResultState,
    Service,
    ServiceState,
    Source,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.chaos import read_all, reencode
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_in_thread, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

REAL_LIMIT = 1_000_000  # KMSBRIDGE_MAX_MESSAGE_BYTES's default, which the pipeline keeps
OVERSIZED = REAL_LIMIT + 1
BASIC = {"P100", "P101"}
CONSUMERS = ("translator", "projector", "executor", "reconciler", "feed")
CLASSES = ("undecodable", "unknown schema", "invalid record", "oversized", "future timestamp", "tombstone",
           "control characters in an id", "overlong id", "oversized array", "wrong key", "business-invalid")


def ends(four: str, feed: str) -> dict[str, str]:
    """The same outcome for the translator, projector, executor and reconciler; the feed's own."""
    return dict.fromkeys(CONSUMERS[:4], four) | {"feed": feed}


#: Where each class ends, per consumer (docs/architecture.md §5); "n/a": the class means nothing to that consumer.
EXPECTED: dict[str, dict[str, str]] = {
    "undecodable": ends("DLQ bad_magic", "skipped"),
    "unknown schema": ends("DLQ unknown_fingerprint", "skipped"),
    "invalid record": ends("DLQ invalid_record", "skipped"),
    "oversized": ends("DLQ oversized, truncated copy", "skipped"),
    "future timestamp": ends("DLQ future_timestamp", "n/a"),
    "tombstone": ends("skipped", "skipped"),
    "control characters in an id": ends("DLQ invalid_record", "skipped"),
    "overlong id": ends("DLQ invalid_record", "skipped"),
    "oversized array": ends("DLQ invalid_record", "n/a"),
    # the key only partitions: every consumer reads the ids from the record itself
    "wrong key": ends("applied", "applied"),
    "business-invalid": {"translator": "REJECTED REQUIRED_DISTRIBUTOR_MISSING", "projector": "applied",
                         "executor": "REJECTED KMS_ERROR", "reconciler": "REJECTED UNKNOWN_SUBSCRIPTION",
                         "feed": "n/a"},
}
TABLE: dict[str, dict[str, str]] = {}


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class Rig:
    pipeline: Pipeline
    sim: SimulatorHandle
    store: DesiredStateStore
    outcomes: OutcomeStore
    feed: OutcomeFeed
    producer: Producer
    procs: list[RunningProcess] = field(default_factory=list)

    def topic(self, logical: str) -> str:
        return self.pipeline.settings.topic(logical)

    def send(self, logical: str, value: bytes | None, key: bytes) -> int:
        """Produce one raw value (up to the broker's 1 MiB default) and return its offset."""
        offsets: list[int] = []

        def delivered(err: Any, msg: Message) -> None:
            assert err is None, err
            offsets.append(msg.offset() or 0)

        self.producer.produce(self.topic(logical), key=key, value=value, on_delivery=delivered)
        self.producer.flush(30)
        assert offsets, f"no delivery report for the record to {logical}"
        return offsets[0]

    def encode(self, record: BaseModel, logical: str) -> bytes:
        return self.pipeline.codec.encode(record, self.topic(logical))


@pytest.fixture(scope="module")
def rig(kafka_bootstrap: str, _kms_simulator_server: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[Rig]:
    sim = _kms_simulator_server
    sim.reset()
    pipeline = Pipeline(kafka_bootstrap, sim.url, sim.token, tmp_path_factory.mktemp("bad-input"), partitions=1)
    settings = pipeline.settings
    assert settings.max_message_bytes == REAL_LIMIT
    wait_for_topics(settings.kafka_config(), settings.all_topics())
    outcomes = OutcomeStore()
    feed = wait_until("the outcome feed started (partition leaders of new topics settle)",
                      lambda: _start_feed(pipeline, outcomes), 30, interval=0.5)
    # an upstream producer allowed the broker's default 1 MiB, so a 1,000,001-byte record reaches the topic
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1_048_000, "linger.ms": 0})
    projector = build_projector(settings)
    reconciler = build_reconciler(settings)
    rig = Rig(pipeline, sim, DesiredStateStore(engine_for(settings)), outcomes, feed, producer)
    rig.procs += [start_translator(settings), start_executor(settings),
                  start_in_thread("projector", projector.run, projector.request_stop),
                  start_in_thread("reconciler", reconciler.run, reconciler.runner.request_stop)]
    try:
        yield rig
    finally:
        for proc in reversed(rig.procs):
            proc.stop(60)
        feed.stop()
        pipeline.close()
        sim.reset()
        _print_table(request)


def _start_feed(pipeline: Pipeline, outcomes: OutcomeStore) -> OutcomeFeed | None:
    settings = pipeline.settings
    try:
        return OutcomeFeed(settings.kafka_config(), pipeline.codec, outcomes, [settings.topic("results"),
                           settings.topic("reconcile_reports")], name="bad-input").start()
    except OutcomeFeedError:
        return None


def _print_table(request: pytest.FixtureRequest) -> None:
    if not TABLE:
        return
    lines = ["| class | " + " | ".join(CONSUMERS) + " |", "|---|" + "---|" * len(CONSUMERS)]
    lines += [f"| {cls} | " + " | ".join(TABLE[cls].get(c, "") for c in CONSUMERS) + " |"
              for cls in [*CLASSES, *(c for c in TABLE if c not in CLASSES)] if cls in TABLE]
    out = Path(__file__).resolve().parents[2] / "var" / "bad-input" / "last-run.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    request.config.pluginmanager.register(_TableAtTheEnd(lines), "bad-input-table")


class _TableAtTheEnd:
    """Prints the table in pytest's terminal summary (output written during a teardown is captured)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("-", "bad input: class x consumer -> outcome (the valid record behind it applied)")
        for line in self.lines:
            terminalreporter.write_line(line)


# --- records -----------------------------------------------------------------------------------------


def subscription(sub: str, card: str, *, distributor: str = "MAIN") -> SubscriptionEvent:
    now = datetime.now(UTC)
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id=sub,
        account_id=f"A-{sub}", subscription_type="RESIDENTIAL", created_at=now - timedelta(days=3), version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor=distributor, secure_client_id=card)])


def command(card: str) -> KmsCommand:
    return KmsCommand(idempotency_key=f"bad-input:{uuid.uuid4().hex}", operation=Operation.SYNC_ENTITLEMENTS,
                      secure_client_id=card, products=[Product(product_id="P100")],
                      source=Source(process_name="bad-input-suite"), created_at=datetime.now(UTC))


def reset_run(run_id: str, **fields: Any) -> ReconcileRequest:
    base: dict[str, Any] = {"preview": True, "subscription_types": ["NO-SUCH-TYPE"],
                            "requested_at": datetime.now(UTC)}
    return ReconcileRequest(run_id=run_id, **(base | fields))


def result(request_id: str) -> KmsResult:
    return KmsResult(idempotency_key=f"r:{request_id}", operation="SET_PIN", request_id=request_id,
                     state=ResultState.COMPLETED, executed_at=datetime.now(UTC))


def devices(n: int) -> list[dict[str, Any]]:
    return [{"distributor": "MAIN", "secure_client_id": f"{i:07d}", "stb_serial": None} for i in range(n)]


@dataclass
class Inputs:
    """One consumer's bad value and key for a class, and the valid record sent behind it."""

    bad: bytes | None
    key: bytes
    bad_ids: dict[str, str] = field(default_factory=dict)


def bad_value(cls: str, rig: Rig, logical: str, record: BaseModel, changes: dict[str, dict[str, Any]],
              future: dict[str, Any]) -> bytes | None:
    """The bad value of ``cls`` made from ``record`` (a valid record of the topic's type)."""
    good = rig.encode(record, logical)
    topic = rig.topic(logical)
    codec = rig.pipeline.codec
    if cls == "undecodable":
        return b"\x07not avro at all"
    if cls == "unknown schema":
        return SINGLE_OBJECT_MAGIC + b"\x11" * 8 + good[10:]
    if cls == "oversized":
        return good + b"\x00" * (OVERSIZED - len(good))
    if cls == "future timestamp":
        return codec.encode(record.model_copy(update=future), topic)
    if cls == "tombstone":
        return None
    if cls in ("wrong key", "business-invalid"):
        return good
    return reencode(codec, record, topic, **changes[cls])


# --- outcomes ----------------------------------------------------------------------------------------


def headers(msg: Message) -> dict[str, str]:
    raw: Any = msg.headers() or []
    pairs: list[tuple[str, Any]] = list(raw)
    return {k: v.decode() if isinstance(v, bytes) else str(v or "") for k, v in pairs}


def skipped(process: str, topic: str) -> float:
    labels = {"process": process, "topic": topic, "outcome": "skipped"}
    return REGISTRY.get_sample_value("kmsbridge_messages_processed_total", labels) or 0.0


def dlq_outcome(rig: Rig, logical: str, offset: int, process: str, value: bytes | None) -> str | None:
    settings = rig.pipeline.settings
    topic = rig.topic(logical)
    entries = [m for m in read_all(rig.pipeline.bootstrap, settings.dlq(topic))
               if headers(m).get("kmsbridge.original.offset") == str(offset)
               and headers(m).get("kmsbridge.process") == process]
    if not entries:
        return None
    assert len(entries) == 1, f"{process}: {len(entries)} DLQ entries for one record"
    h = headers(entries[0])
    assert h["kmsbridge.original.topic"] == topic
    label = f"DLQ {h['kmsbridge.error.reason']}"
    if "kmsbridge.truncated" in h:
        assert value is not None
        body = entries[0].value() or b""
        assert h["kmsbridge.original.size"] == str(len(value))
        assert h["kmsbridge.original.sha256"] == hashlib.sha256(value).hexdigest()
        assert len(body) == TRUNCATED_BODY_BYTES and value.startswith(body)
        label += ", truncated copy"
    else:
        assert entries[0].value() == value, "a whole DLQ copy keeps the original bytes"
    return label


def rejected_result(rig: Rig, match: Callable[[KmsResult], bool]) -> str | None:
    for msg in read_all(rig.pipeline.bootstrap, rig.topic("results")):
        try:
            record = rig.pipeline.codec.decode_any(msg.value())
        except PoisonMessage:
            continue  # the feed's own bad inputs
        if isinstance(record, KmsResult) and match(record) and record.state is ResultState.REJECTED:
            return f"REJECTED {record.error_code}"
    return None


# --- the suite ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_each_class_of_bad_input_ends_where_design_says_and_the_next_valid_record_is_applied(
        rig: Rig, cls: str) -> None:
    n = uuid.uuid4().hex[:6]
    expected = EXPECTED[cls]
    future = datetime.now(UTC) + timedelta(days=400)
    control, overlong = "S\x0b1", "X" * 200
    key_of = (lambda good: b"not-the-id") if cls == "wrong key" else (lambda good: good)

    # crm.subscriptions: the translator and the projector
    sub_bad = subscription(f"S-bad-{n}", f"81{n}", distributor="TWIN1" if cls == "business-invalid" else "MAIN")
    sub_good = subscription(f"S-good-{n}", f"82{n}")
    sub_value = bad_value(cls, rig, "subscriptions", sub_bad, {
        "invalid record": {"version": -1},
        "control characters in an id": {"subscription_id": control},
        "overlong id": {"subscription_id": overlong},
        "oversized array": {"removed_devices": devices(50_000)},
    }, {"occurred_at": future})
    # kms.commands: the executor
    cmd_bad, cmd_good = command(f"83{n}"), command(f"84{n}")
    if cls == "business-invalid":
        rig.sim.set_faults(card_errors={cmd_bad.secure_client_id: "UNKNOWN_CLIENT"})
    many_products = [{"product_id": f"P{i}", "valid_from": None, "valid_until": None} for i in range(5000)]
    cmd_value = bad_value(cls, rig, "commands", cmd_bad, {
        "invalid record": {"secure_client_id": ""},
        "control characters in an id": {"secure_client_id": "7\x0b1"},
        "overlong id": {"secure_client_id": "7" * 200},
        "oversized array": {"products": many_products},
    }, {"created_at": future})
    # reconcile.requests: the reconciler runner
    run_bad = (reset_run(f"run-bad-{n}", preview=False, subscription_types=[], subscription_ids=[f"S-none-{n}"])
               if cls == "business-invalid" else reset_run(f"run-bad-{n}"))
    run_good = reset_run(f"run-good-{n}")
    run_value = bad_value(cls, rig, "reconcile_requests", run_bad, {
        "invalid record": {"run_id": ""},
        "control characters in an id": {"run_id": control},
        "overlong id": {"run_id": overlong},
        "oversized array": {"subscription_ids": [f"S-{i}" for i in range(5000)]},
    }, {"requested_at": future})
    # kms.results: the outcome feed
    res_bad, res_good = result(f"R-bad-{n}"), result(f"R-good-{n}")
    res_value = None if expected["feed"] == "n/a" else bad_value(cls, rig, "results", res_bad, {
        "invalid record": {"idempotency_key": ""},
        "control characters in an id": {"request_id": control},
        "overlong id": {"request_id": overlong},
    }, {})

    before = {p: skipped(p, rig.topic(t)) for p, t in (("translator", "subscriptions"), ("projector", "subscriptions"),
                                                       ("executor", "commands"), ("reconciler", "reconcile_requests"))}
    feed_skipped = rig.feed.skipped

    sub_offset = rig.send("subscriptions", sub_value, key_of(sub_bad.subscription_id.encode()))
    rig.pipeline.produce("subscriptions", [sub_good])
    cmd_offset = rig.send("commands", cmd_value, key_of(cmd_bad.secure_client_id.encode()))
    rig.pipeline.produce("commands", [cmd_good])
    run_offset = rig.send("reconcile_requests", run_value, key_of(run_bad.run_id.encode()))
    rig.pipeline.produce("reconcile_requests", [run_good])
    if expected["feed"] != "n/a":
        rig.send("results", res_value, key_of((res_bad.request_id or "").encode()))
        rig.pipeline.produce("results", [res_good])

    # the valid record behind the bad one is applied by every consumer: the partition moved on
    def entitled(card: str, want: set[str]) -> bool:
        clients = rig.sim.state()["secure_clients"]
        return {e["product_id"] for e in (clients.get(card) or {}).get("entitlements", [])} == want

    wait_until("the translator applied the valid event", lambda: entitled(sub_good.devices[0].secure_client_id,
                                                                           BASIC), 90)
    wait_until("the projector applied the valid event", lambda: rig.store.get(sub_good.subscription_id), 60)
    wait_until("the executor applied the valid command", lambda: entitled(cmd_good.secure_client_id, {"P100"}), 60)
    wait_until("the reconciler ran the valid request",
               lambda: (o := rig.outcomes.get(run_good.run_id)) is not None and o.report is not None, 60)
    if expected["feed"] != "n/a":
        wait_until("the feed took the valid result", lambda: rig.outcomes.get(res_good.request_id or ""), 60)

    # where the bad record ended, per consumer: the first outcome observed (copies and counts land
    # asynchronously, so each is polled for until it is there)
    def translator() -> str | None:
        return (dlq_outcome(rig, "subscriptions", sub_offset, "translator", sub_value)
                or rejected_result(rig, lambda r: r.event_id == sub_bad.event_id)
                or _skipped_or_applied(skipped("translator", rig.topic("subscriptions")) - before["translator"],
                                       entitled(sub_bad.devices[0].secure_client_id, BASIC)))

    def projector() -> str | None:
        return (dlq_outcome(rig, "subscriptions", sub_offset, "projector", sub_value)
                or _skipped_or_applied(skipped("projector", rig.topic("subscriptions")) - before["projector"],
                                       rig.store.get(sub_bad.subscription_id) is not None))

    def executor() -> str | None:
        return (dlq_outcome(rig, "commands", cmd_offset, "executor", cmd_value)
                or rejected_result(rig, lambda r: r.idempotency_key == cmd_bad.idempotency_key)
                or _skipped_or_applied(skipped("executor", rig.topic("commands")) - before["executor"],
                                       entitled(cmd_bad.secure_client_id, {"P100"})))

    def reconciler() -> str | None:
        bad_run = rig.outcomes.get(run_bad.run_id)
        return (dlq_outcome(rig, "reconcile_requests", run_offset, "reconciler", run_value)
                or (f"REJECTED {bad_run.errors[0][0]}" if bad_run and bad_run.errors else None)
                or _skipped_or_applied(skipped("reconciler", rig.topic("reconcile_requests")) - before["reconciler"],
                                       bad_run is not None and bad_run.report is not None))

    def feed() -> str | None:
        if expected["feed"] == "n/a":
            return "n/a"
        return _skipped_or_applied(rig.feed.skipped - feed_skipped,
                                   rig.outcomes.get(res_bad.request_id or "") is not None)

    row = {name: str(wait_until(f"the {name}'s outcome for {cls}", fn, 60, interval=0.5))
           for name, fn in (("translator", translator), ("projector", projector), ("executor", executor),
                            ("reconciler", reconciler), ("feed", feed))}
    TABLE[cls] = row
    rig.sim.clear_faults()

    assert row == expected
    # nothing of a screened record reached the KMS
    if cls not in ("wrong key", "business-invalid"):
        cards = set(rig.sim.state()["secure_clients"])
        assert sub_bad.devices[0].secure_client_id not in cards and cmd_bad.secure_client_id not in cards


def _skipped_or_applied(skips: float, applied: bool) -> str | None:
    """``skipped`` once the skip is counted, ``applied`` once its effect shows, None while neither."""
    if skips and applied:
        return f"skipped {skips:g} times and applied"
    if skips:
        return "skipped" if skips == 1 else f"skipped {skips:g} times"
    return "applied" if applied else None


def test_a_dlq_copy_the_broker_refuses_is_stored_truncated_and_the_partition_moves_on(rig: Rig) -> None:
    """The DLQ topics accept at most 100,000 bytes (a broker refusal no retry can fix): a 400 KB invalid
    record's copy is refused on delivery, then stored truncated, by the translator (inside its
    transaction: the rewound batch sends it smaller), the projector, the executor and the reconciler."""
    settings = rig.pipeline.settings
    dlqs = [settings.dlq(rig.topic(n)) for n in ("subscriptions", "commands", "reconcile_requests")]
    admin = AdminClient(settings.kafka_config())
    entry = ConfigEntry("max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, t, incremental_configs=[entry]) for t in dlqs]).values():
        future.result(30)
    n = uuid.uuid4().hex[:6]
    huge = secrets.token_hex(200_000)  # 400,000 characters that lz4 cannot squeeze below the topic limit
    sub_bad, sub_good = subscription(f"S-bad-{n}", f"85{n}"), subscription(f"S-good-{n}", f"86{n}")
    cmd_bad, cmd_good = command(f"87{n}"), command(f"88{n}")
    run_bad, run_good = reset_run(f"run-bad-{n}"), reset_run(f"run-good-{n}")
    codec = rig.pipeline.codec
    values = {"subscriptions": reencode(codec, sub_bad, rig.topic("subscriptions"), subscription_id=huge),
              "commands": reencode(codec, cmd_bad, rig.topic("commands"), secure_client_id=huge),
              "reconcile_requests": reencode(codec, run_bad, rig.topic("reconcile_requests"), run_id=huge)}
    assert all(200_000 < len(v) < REAL_LIMIT for v in values.values())
    offsets = {logical: rig.send(logical, value, b"k") for logical, value in values.items()}
    rig.pipeline.produce("subscriptions", [sub_good])
    rig.pipeline.produce("commands", [cmd_good])
    rig.pipeline.produce("reconcile_requests", [run_good])

    for process, logical in (("translator", "subscriptions"), ("projector", "subscriptions"),
                             ("executor", "commands"), ("reconciler", "reconcile_requests")):
        outcome = wait_until(f"the {process}'s truncated copy", lambda p=process, lg=logical: dlq_outcome(
            rig, lg, offsets[lg], p, values[lg]), 90, interval=0.5)
        TABLE.setdefault("DLQ copy refused by the broker",
                         {"feed": "n/a"})[process] = outcome
        assert outcome == "DLQ invalid_record, truncated copy"
        copies = [m for m in read_all(rig.pipeline.bootstrap, settings.dlq(rig.topic(logical)))
                  if headers(m).get("kmsbridge.original.offset") == str(offsets[logical])
                  and headers(m).get("kmsbridge.process") == process]
        assert headers(copies[0])["kmsbridge.truncated"] in ("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE")
    wait_until("the valid records behind them applied", lambda: (
        rig.store.get(sub_good.subscription_id) is not None
        and (o := rig.outcomes.get(run_good.run_id)) is not None and o.report is not None
        and {"P100"} <= {e["product_id"] for c in (sub_good.devices[0].secure_client_id, cmd_good.secure_client_id)
                         for e in (rig.sim.state()["secure_clients"].get(c) or {}).get("entitlements", [])}), 60)
