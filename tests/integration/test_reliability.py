"""Reliability of the executor and the translator against the real broker and the real simulator
: retries and the breaker, stale commands, rebalances and shutdown, bad input.

Processes run as ``kmsbridge run`` builds them: in threads where a test inspects their state (breaker,
pause), as subprocesses where a test kills, signals or restarts them.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from consumers.command_runner import STALE_COMMAND, TRANSPORT_ERROR
from kafka_edge.kafka_clients import WATCHDOG_EXIT_CODE, HangWatchdog, consumer_config
from kmsbridge.settings import Settings
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
from tests.support.chaos import poison_command, poison_value, read_all
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

BASIC = {"P100", "P101"}
SPORTS = {"P100", "P101", "P200"}


def event(sub: str, version: int, cards: list[str], *, sports: bool = False, event_type: str = "UPDATED",
          occurred_at: datetime | None = None) -> SubscriptionEvent:
    services = [Service(service_code="BASIC", state=ServiceState.ACTIVE)]
    if sports:
        services.append(Service(service_code="SPORTS", state=ServiceState.ACTIVE))
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType(event_type), occurred_at=occurred_at or datetime.now(UTC),
        subscription_id=sub, account_id=f"A-{sub}", subscription_type="RESIDENTIAL",
        created_at=datetime.now(UTC) - timedelta(days=10), version=version, state=SubscriptionState.ACTIVE,
        services=services, devices=[Device(distributor="MAIN", secure_client_id=c, stb_serial=f"STB-{c}")
                                    for c in cards],
    )


def activations(prefix: str, n: int, *, sports: bool = False) -> list[SubscriptionEvent]:
    return [event(f"{prefix}-{i}", 1, [f"{prefix}{i:05d}"], sports=sports, event_type="ACTIVATED")
            for i in range(n)]


def products(sim: SimulatorHandle, card: str, state: dict[str, Any] | None = None) -> set[str]:
    clients = (state or sim.state())["secure_clients"]
    return {e["product_id"] for e in (clients.get(card) or {}).get("entitlements", [])}


def all_entitled(sim: SimulatorHandle, cards: list[str], want: set[str]) -> bool:
    state = sim.state()
    return all(products(sim, c, state) == want for c in cards)


def cards_of(events: list[SubscriptionEvent]) -> list[str]:
    return [d.secure_client_id for e in events for d in e.devices]


def headers(msg: Message) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else str(v or "") for k, v in (msg.headers() or [])}


def dlq(pipeline: Pipeline, logical: str) -> list[Message]:
    settings = pipeline.settings
    return read_all(pipeline.bootstrap, settings.dlq(settings.topic(logical)))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def log_of(pipeline: Pipeline, name: str) -> str:
    return (pipeline.workdir / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path)
    yield pipe
    pipe.close()


@pytest.fixture
def threads() -> Iterator[list[RunningProcess]]:
    """In-thread processes started by a test, stopped (last first) after it."""
    procs: list[RunningProcess] = []
    yield procs
    for proc in reversed(procs):
        proc.stop(60)


def start(procs: list[RunningProcess], settings: Settings) -> RunningProcess:
    procs.append(start_translator(settings))
    executor = start_executor(settings)
    procs.append(executor)
    return executor


# --- retries and the breaker -------------------------------------------------------------------------


def test_kms_outage_opens_the_breaker_pauses_the_partitions_and_drains_by_itself_with_nothing_dead_lettered(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    app = start(threads, pipeline.settings).handle
    commands = pipeline.settings.topic("commands")
    before = activations("61", 5)
    pipeline.produce("subscriptions", before)
    wait_until("first households applied", lambda: all_entitled(kms_simulator, cards_of(before), BASIC), 60)

    kms_simulator.set_faults(outage_seconds=10)
    during = activations("62", 10)
    pipeline.produce("subscriptions", during)
    wait_until("breaker open and partitions paused", lambda: app.breaker.is_open and app.executor.paused, 10)
    consumed = sample("kmsbridge_messages_consumed_total", process="executor", topic=commands)
    later = activations("63", 10)
    pipeline.produce("subscriptions", later)
    while kms_simulator.faults()["outage_seconds"] > 1:  # observe the outage as it lasts
        assert app.executor.paused
        assert sample("kmsbridge_messages_consumed_total", process="executor", topic=commands) == consumed
        time.sleep(0.2)

    everyone = cards_of(before + during + later)
    wait_until("drained after recovery", lambda: all_entitled(kms_simulator, everyone, BASIC), 90)
    assert not app.breaker.is_open
    assert app.breaker.opened_count >= 1
    assert dlq(pipeline, "commands") == []
    results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 3 * len(everyone))
    assert {r.state for r in results} == {ResultState.COMPLETED}
    applied = Counter(a["idempotency_key"] for a in kms_simulator.audit() if not a["duplicate"])
    assert max(applied.values()) == 1


def test_one_card_failing_transiently_alone_is_rejected_with_transport_error_and_dead_lettered_with_its_history(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    bad = "6400666"
    kms_simulator.set_faults(card_errors={bad: "HTTP_503"})
    app = start(threads, pipeline.settings_with(executor__attempt_budget=3)).handle
    good = activations("65", 6)
    pipeline.produce("subscriptions", [*good, event("BAD-1", 1, [bad], event_type="ACTIVATED")])

    results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 3 * 7, timeout=90)

    bad_results = [r for r in results if r.secure_client_id == bad]
    assert {r.state for r in bad_results} == {ResultState.REJECTED}
    assert {r.error_code for r in bad_results} == {TRANSPORT_ERROR}
    assert {r.state for r in results if r.secure_client_id != bad} == {ResultState.COMPLETED}
    assert all_entitled(kms_simulator, cards_of(good), BASIC)
    entries = dlq(pipeline, "commands")
    assert len(entries) == 3  # PAIR, SET_PIN, SYNC of the bad card
    for entry in entries:
        h = headers(entry)
        assert entry.key() == bad.encode()
        assert h["kmsbridge.error.reason"] == "transport_budget"
        assert h["kmsbridge.original.topic"] == pipeline.settings.topic("commands")
        assert h["kmsbridge.attempts"] == "3"
        assert [h[f"kmsbridge.attempt.{i}"].split()[-1] for i in (1, 2, 3)] == ["http_503"] * 3
        assert h["kmsbridge.idempotency_key"] in {r.idempotency_key for r in bad_results}
    assert app.breaker.opened_count == 0  # one card alone never stops the others


# --- stale commands ----------------------------------------------------------------------------------


def test_an_older_subscription_version_arriving_later_is_not_applied_and_its_result_says_stale(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    start(threads, pipeline.settings)
    card = "6600001"
    pipeline.produce("subscriptions", [event("ST-1", 1, [card], event_type="ACTIVATED")])
    wait_until("v1 applied", lambda: products(kms_simulator, card) == BASIC, 60)
    pipeline.produce("subscriptions", [event("ST-1", 3, [card], sports=True)])
    wait_until("v3 applied", lambda: products(kms_simulator, card) == SPORTS, 60)

    late = event("ST-1", 2, [card], sports=False)  # reordered upstream: version 2 arrives after 3
    pipeline.produce("subscriptions", [late])

    results = pipeline.results(lambda rs: any(r.event_id == late.event_id for r in rs), timeout=60)
    result = next(r for r in results if r.event_id == late.event_id)
    assert result.state is ResultState.REJECTED
    assert result.error_code == STALE_COMMAND
    assert "older" in (result.error_description or "")
    assert products(kms_simulator, card) == SPORTS
    assert result.idempotency_key not in {a["idempotency_key"] for a in kms_simulator.audit()}


# --- rebalances and shutdown -------------------------------------------------------------------------


def group_members(bootstrap: str, group: str) -> list[Any]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return list(description.members)


def test_static_membership_gives_a_restarted_executor_its_partitions_back_without_waiting_for_the_session(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    threads.append(start_translator(pipeline.settings))
    env = {"POD_NAME": "exec-a", "KMSBRIDGE_KAFKA__SESSION_TIMEOUT_MS": "45000"}
    group = pipeline.settings.group_id("executor")
    executor = pipeline.spawn("executor", env=env)
    first = activations("67", 1)
    pipeline.produce("subscriptions", first)
    wait_until("first applied", lambda: all_entitled(kms_simulator, cards_of(first), BASIC), 60)
    assert [m.group_instance_id for m in group_members(pipeline.bootstrap, group)] == ["exec-a-executor"]

    executor.send_signal(signal.SIGKILL)
    executor.wait(10)
    began = time.monotonic()
    pipeline.spawn("executor", env=env, log_name="executor-2")
    second = activations("68", 1)
    pipeline.produce("subscriptions", second)
    wait_until("second applied by the restarted executor", lambda: all_entitled(kms_simulator, cards_of(second),
                                                                              BASIC), 45)

    # a dynamic member would wait for the dead one's 45 s session to expire before getting partitions
    assert time.monotonic() - began < 25
    assert [m.group_instance_id for m in group_members(pipeline.bootstrap, group)] == ["exec-a-executor"]


def test_the_instance_id_comes_from_the_setting_else_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "kmsbridge-executor-7f9c")
    assert Settings().instance_id("executor") == "kmsbridge-executor-7f9c-executor"
    assert Settings(group_instance_id="exec-1").instance_id("executor") == "exec-1-executor"
    monkeypatch.delenv("POD_NAME")
    assert Settings().instance_id("executor") is None
    config = consumer_config({"bootstrap.servers": "x"}, "g", instance_id="exec-1-executor")
    assert config["group.instance.id"] == "exec-1-executor"
    assert "group.instance.id" not in consumer_config({"bootstrap.servers": "x"}, "g")


def test_two_executors_in_one_group_with_a_slow_kms_lose_nothing_when_one_is_killed_and_restarted(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    kms_simulator.set_faults(latency_ms=150)
    threads.append(start_translator(pipeline.settings))
    first = pipeline.spawn("executor", log_name="executor-a")
    households = activations("69", 150) + [event(f"69-{i}", 2, [f"69{i:05d}"], sports=True) for i in range(150)]
    pipeline.produce("subscriptions", households)
    wait_until("a fifth applied", lambda: len(kms_simulator.audit()) > 120, 120)

    second = pipeline.spawn("executor", log_name="executor-b")  # joins: the first revokes, commits, hands over
    wait_until("both working", lambda: "assigned" in log_of(pipeline, "executor-b"), 60)
    wait_until("more applied", lambda: len(kms_simulator.audit()) > 300, 120)
    second.send_signal(signal.SIGKILL)  # with commands in flight at the slow KMS
    second.wait(10)
    pipeline.spawn("executor", log_name="executor-c")

    cards = [f"69{i:05d}" for i in range(150)]
    wait_until("final state equals what the events ask for", lambda: all_entitled(kms_simulator, cards, SPORTS),
               180, interval=1)
    # PAIR, SET_PIN, SYNC v1, SYNC v2 per household: each ends COMPLETED; a SYNC v1 that never reached
    # the KMS was superseded by v2 (coalescing), never lost; none is applied twice
    results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 150 * 4, timeout=60)
    applied = Counter(a["idempotency_key"] for a in kms_simulator.audit() if not a["duplicate"])
    completed = {r.idempotency_key for r in results if r.state is ResultState.COMPLETED}
    superseded = {r.idempotency_key for r in results if r.superseded_by is not None}
    assert len(completed) == 150 * 4
    assert set(applied) <= completed
    assert completed - set(applied) <= superseded
    assert max(applied.values()) == 1
    assert first.poll() is None
    assert "revoked" in log_of(pipeline, "executor-a")  # the first really handed partitions over mid-stream


def test_sigterm_under_load_drains_in_flight_work_and_exits_zero_within_the_grace_time(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    grace = float(pipeline.env()["KMSBRIDGE_SHUTDOWN_GRACE_SECONDS"])
    kms_simulator.set_faults(latency_ms=300)
    threads.append(start_translator(pipeline.settings))
    executor = pipeline.spawn("executor")
    households = activations("70", 300)
    pipeline.produce("subscriptions", households)
    wait_until("work in flight", lambda: len(kms_simulator.audit()) > 150, 120)

    began = time.monotonic()
    executor.send_signal(signal.SIGTERM)
    code = executor.wait(grace + 20)
    took = time.monotonic() - began

    assert code == 0
    assert took <= grace + 3
    assert "executor stopped" in log_of(pipeline, "executor")
    kms_simulator.set_faults(latency_ms=0)
    pipeline.spawn("executor", log_name="executor-2")
    wait_until("everything applied after the restart", lambda: all_entitled(kms_simulator, cards_of(households),
                                                                             BASIC), 180, interval=1)
    results = pipeline.results(lambda rs: len({r.idempotency_key for r in rs}) >= 900, timeout=60)
    # calls in flight at SIGTERM finished before the exit and the rest were never started, so no command
    # reached the KMS twice (a cancelled call would have been sent again after the restart)
    assert [a for a in kms_simulator.audit() if a["duplicate"]] == []
    completed = {r.idempotency_key for r in results if r.state is ResultState.COMPLETED and not r.duplicate}
    assert len(completed) == 900


def test_a_kms_slower_than_max_poll_interval_never_gets_the_executor_out_of_its_group(
        pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(latency_ms=8000)
    env = {"KMSBRIDGE_KAFKA__MAX_POLL_INTERVAL_MS": "6000", "KMSBRIDGE_KAFKA__SESSION_TIMEOUT_MS": "6000",
           "KMSBRIDGE_KMS__TIMEOUT_SECONDS": "30"}
    pipeline.spawn("executor", env=env)
    group = pipeline.settings.group_id("executor")
    wait_until("executor assigned", lambda: "assigned" in log_of(pipeline, "executor"), 60)
    member = group_members(pipeline.bootstrap, group)[0].member_id
    cards = [f"71{i:05d}" for i in range(4)]
    commands = [KmsCommand(idempotency_key=f"slow-{uuid.uuid4().hex}-{n}", operation=Operation.SYNC_ENTITLEMENTS,
                           secure_client_id=card, products=[Product(product_id="P100")], subscription_id=card,
                           source=Source(process_name="test"), created_at=datetime.now(UTC))
                for n in range(2) for card in cards]  # two 8 s calls in a row per card: 16 s > 6 s
    pipeline.produce("commands", commands)

    wait_until("every slow command applied", lambda: len(kms_simulator.audit()) >= len(commands), 90, interval=1)

    log = log_of(pipeline, "executor")
    assert "maximum poll interval" not in log.lower()
    assert "revoked" not in log and "lost" not in log
    assert [m.member_id for m in group_members(pipeline.bootstrap, group)] == [member]


def test_the_watchdog_ends_a_process_whose_librdkafka_call_hangs_past_its_timeout() -> None:
    exits: list[int] = []
    watchdog = HangWatchdog("test", exit_process=exits.append, check_every=0.01)

    with watchdog.guard("a quick call", 5):
        pass
    with watchdog.guard("a hung call", 0.05):
        wait_until("the watchdog fired", lambda: exits, 5, interval=0.01)

    assert exits == [WATCHDOG_EXIT_CODE]


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_input_to_the_translator_is_dead_lettered_or_skipped_and_the_loop_goes_on(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    settings = pipeline.settings
    start(threads, settings)
    topic = settings.topic("subscriptions")
    template = event("BI-0", 1, ["7200000"], event_type="ACTIVATED")
    kinds = ["bad_magic", "unknown_fingerprint", "unknown_schema_id", "invalid_record", "oversized",
             "future_timestamp"]
    for kind in [*kinds, "tombstone"]:
        pipeline.produce_raw("subscriptions", poison_value(kind, pipeline.codec, topic, template), key=b"BI-0")
    good = event("BI-1", 1, ["7200001"], event_type="ACTIVATED")
    pipeline.produce("subscriptions", [good])

    wait_until("the good event after the bad ones applied", lambda: products(kms_simulator, "7200001") == BASIC, 60)
    entries = dlq(pipeline, "subscriptions")
    assert sorted(headers(m)["kmsbridge.error.reason"] for m in entries) == sorted(kinds)
    for entry in entries:
        h = headers(entry)
        assert h["kmsbridge.original.topic"] == topic
        assert int(h["kmsbridge.original.offset"]) >= 0
        assert h["kmsbridge.error.message"]
    assert sample("kmsbridge_messages_processed_total", process="translator", topic=topic, outcome="skipped") == 1
    assert {a["secure_client_id"] for a in kms_simulator.audit()} == {"7200001"}  # nothing of the bad ones


def test_bad_input_to_the_executor_is_dead_lettered_or_skipped_and_never_reaches_the_kms(
        pipeline: Pipeline, kms_simulator: SimulatorHandle, threads: list[RunningProcess]) -> None:
    settings = pipeline.settings
    threads.append(start_executor(settings))
    topic = settings.topic("commands")
    kinds = ["bad_magic", "unknown_fingerprint", "unknown_schema_id", "invalid_record", "oversized",
             "future_timestamp"]
    for n, kind in enumerate([*kinds, "tombstone"]):
        pipeline.produce_raw("commands", poison_command(kind, pipeline.codec, topic, card=f"730000{n}"), key=b"x")
    wrong_type = KmsResult(idempotency_key="r", operation="PAIR", state=ResultState.COMPLETED,
                           executed_at=datetime.now(UTC))
    pipeline.produce_raw("commands", pipeline.codec.encode(wrong_type, topic), key=b"x")
    good = KmsCommand(idempotency_key=f"good-{uuid.uuid4().hex}", operation=Operation.SYNC_ENTITLEMENTS,
                      secure_client_id="7300099", products=[Product(product_id="P100")],
                      source=Source(process_name="test"), created_at=datetime.now(UTC))
    pipeline.produce("commands", [good])

    wait_until("the good command after the bad ones applied", lambda: products(kms_simulator, "7300099") == {"P100"},
               60)
    entries = dlq(pipeline, "commands")
    assert sorted(headers(m)["kmsbridge.error.reason"] for m in entries) == sorted([*kinds, "wrong_record_type"])
    assert sample("kmsbridge_messages_processed_total", process="executor", topic=topic, outcome="skipped") == 1
    assert [a["idempotency_key"] for a in kms_simulator.audit()] == [good.idempotency_key]
