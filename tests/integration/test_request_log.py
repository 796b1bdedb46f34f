"""The provisioning request log end to end: real broker, real simulator, SQLite and PostgreSQL.

Every command of a stream of events, service requests and a reset run appears
once in the log with the state of its result on ``kms.results``; filters return exactly the matching
rows; a box's history lists its events, commands and results in order; a dead letter that is now
valid is provisioned once by a replay, a second replay does nothing and a dry run produces nothing.
Every process is built as ``kmsbridge run`` builds it and runs in a thread.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr
from test_reconciler import run, start_projector, start_reconciler, wait_projected

from kmsbridge.cli import main as cli_main
from kmsbridge.db import upgrade
from kmsbridge.wiring import engine_for
from kmsbridge.wiring_request_log import build_request_log_writer
from producers.dead_letters import read_dead_letters
from producers.topics import wait_for_topics
from reconciler.request_log_store import LogFilter, RequestLog
from reconciler.store import DesiredStateStore
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    RequestType,
    Service,
    ServiceRequest,
    ServiceState,
    SubscriptionEvent,
)
from tests.support.pg import new_database
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_in_thread, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

CREATED = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
MAIN = Device(distributor="MAIN", secure_client_id="9100001", stb_serial="STB-1")
TWIN = Device(distributor="TWIN1", secure_client_id="9100002", stb_serial="STB-2")
OTHER = Device(distributor="MAIN", secure_client_id="9100011", stb_serial="STB-3")
LONELY_TWIN = Device(distributor="TWIN1", secure_client_id="9100021", stb_serial="STB-4")


@pytest.fixture
def pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
             database_url: str) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work",
                    database_url=database_url)
    engine = engine_for(pipe.settings)
    upgrade(engine)
    engine.dispose()
    yield pipe
    pipe.close()


@pytest.fixture
def sqlite_pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work")
    wait_for_topics(pipe.settings.kafka_config(), pipe.settings.all_topics())  # leaders elected: the API reads at once
    yield pipe
    pipe.close()


@pytest.fixture
def log(pipeline: Pipeline) -> Iterator[RequestLog]:
    engine = engine_for(pipeline.settings)
    yield RequestLog(engine)
    engine.dispose()


def start_request_log(pipeline: Pipeline) -> RunningProcess:
    writer = build_request_log_writer(pipeline.settings)
    return start_in_thread("request-log", writer.run, writer.request_stop, writer)


@pytest.fixture
def processes(pipeline: Pipeline) -> Iterator[dict[str, RunningProcess]]:
    started: dict[str, RunningProcess] = {}
    try:
        started["projector"] = start_projector(pipeline)
        started["reconciler"] = start_reconciler(pipeline)
        started["translator"] = start_translator(pipeline.settings)
        started["executor"] = start_executor(pipeline.settings)
        started["request-log"] = start_request_log(pipeline)
        yield started
    finally:
        for proc in reversed(list(started.values())):
            proc.stop()


def _now_ms(ahead: timedelta = timedelta(0)) -> datetime:
    now = datetime.now(UTC) + ahead
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def event(sub: str, version: int, devices: list[Device], services: tuple[str, ...] = ("BASIC",), *,
          event_type: EventType = EventType.UPDATED, occurred: timedelta = timedelta(0)) -> SubscriptionEvent:
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=event_type, occurred_at=_now_ms(occurred), subscription_id=sub,
        account_id=f"A-{sub}", subscription_type="RESIDENTIAL", created_at=CREATED, version=version,
        state="ACTIVE", services=[Service(service_code=s, state=ServiceState.ACTIVE) for s in services],
        devices=devices)


def service_request(type_: RequestType, card: str, *, process: str, pin: str | None = None) -> ServiceRequest:
    return ServiceRequest(request_id=f"R-{uuid.uuid4().hex[:10]}", type=type_, secure_client_id=card,
                          pin=SecretStr(pin) if pin else None, process_name=process, requested_by="agent-7",
                          requested_at=_now_ms())


def test_every_command_of_events_requests_and_a_reset_run_is_logged_once_with_its_final_state(
        pipeline: Pipeline, processes: dict[str, RunningProcess], log: RequestLog,
        kms_simulator: SimulatorHandle) -> None:
    sim = kms_simulator
    activation = event("S-1", 1, [MAIN, TWIN], ("BASIC", "SPORTS"), event_type=EventType.ACTIVATED)
    pipeline.produce("subscriptions", [
        activation, event("S-2", 1, [OTHER], event_type=EventType.ACTIVATED),
        event("S-3", 1, [LONELY_TWIN], event_type=EventType.ACTIVATED),  # TWIN1 without MAIN: rejected
    ])
    wait_until("S-1 and S-2 provisioned", lambda: all((sim.client_state(d.secure_client_id) or {}).get(
        "paired_chipset") == d.stb_serial for d in (MAIN, TWIN, OTHER)))
    change = event("S-1", 2, [MAIN, TWIN], ("BASIC",), event_type=EventType.SERVICES_CHANGED)
    pin = service_request(RequestType.SET_PIN, MAIN.secure_client_id, process="api", pin="4321")
    bad_pin = service_request(RequestType.SET_PIN, MAIN.secure_client_id, process="api", pin="12")
    refresh = service_request(RequestType.REAUTHORISE_SECTOR, OTHER.secure_client_id, process="cli")
    pipeline.produce("subscriptions", [change])
    pipeline.produce("requests", [pin, bad_pin, refresh])
    wait_until("the PIN set", lambda: (sim.client_state(MAIN.secure_client_id) or {}).get("pin") == "4321")
    sim.set_state({"secure_clients": {OTHER.secure_client_id: {"entitlements": []}}})  # drift for a reset
    engine = engine_for(pipeline.settings)
    try:  # the projector, a process of its own, has S-2 before the reset run reads it
        wait_projected(DesiredStateStore(engine), {"S-2": 1})
    finally:
        engine.dispose()
    report = run(pipeline, subscription_ids=["S-2"])
    assert report.commands_published >= 1

    def to_end(logical: str) -> list[Any]:  # every record of the topic up to its current end
        letters = read_dead_letters(pipeline.settings.kafka_config(), pipeline.settings.topic(logical))
        return [pipeline.codec.decode_any(d.value) for d in letters]

    def all_commands() -> list[KmsCommand]:  # both lanes: requests and the single reset travel express
        return to_end("commands") + to_end("commands_express")

    def logged() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            page = log.search(LogFilter(), limit=200, cursor=cursor)
            for entry in page.entries:
                assert entry["entry_key"] not in out, "an entry appears twice"
                out[entry["entry_key"]] = entry
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    def settled() -> bool:
        rows = logged()
        commands = {c.idempotency_key for c in all_commands()}
        return (rows.get(f"@run:{report.run_id}", {}).get("state") == "COMPLETED"
                and {k for k, e in rows.items() if e["kind"] == "COMMAND" and e["state"] != "PENDING"} == commands)

    wait_until("the log caught up with kms.commands and kms.results", settled, timeout=60)
    commands: list[KmsCommand] = all_commands()
    keys = {c.idempotency_key for c in commands}
    assert any(c.source.run_id == report.run_id for c in commands)
    results: list[KmsResult] = to_end("results")
    final = {r.idempotency_key: r.state.value for r in results if not r.duplicate}
    assert keys <= set(final)
    rows = logged()
    assert {k for k, e in rows.items() if e["kind"] == "COMMAND"} == keys  # every command once, nothing else
    assert {k: rows[k]["state"] for k in final} == final
    by_key = {c.idempotency_key: c for c in commands}
    for key, cmd in by_key.items():
        entry = rows[key]
        assert (entry["operation"], entry["secure_client_id"], entry["subscription_id"], entry["process_name"]) == (
            cmd.operation.value, cmd.secure_client_id, cmd.subscription_id, cmd.source.process_name)
    sources = {rows[k]["source_kind"] for k in keys}
    assert sources == {"event", "request", "reset"}
    rejections = [e for e in rows.values() if e["kind"] == "REJECTION"]
    assert {(e["source_kind"], e["state"]) for e in rejections} == {("event", "REJECTED"), ("request", "REJECTED")}
    assert rows[f"@request:{pin.request_id}"]["state"] == "COMPLETED"
    assert rows[f"@request:{bad_pin.request_id}"]["state"] == "REJECTED"
    assert rows[f"@request:{refresh.request_id}"]["state"] == "COMPLETED"
    assert "4321" not in json.dumps(rows)

    # filters return exactly the matching rows
    def matching(**where: Any) -> set[str]:
        return {k for k, e in rows.items() if all(e[c] == v for c, v in where.items())}

    def search(where: LogFilter) -> set[str]:
        return {e["entry_key"] for e in log.search(where, limit=1000).entries}

    assert search(LogFilter(secure_client_id=MAIN.secure_client_id)) == matching(secure_client_id=MAIN.secure_client_id)
    assert search(LogFilter(subscription_id="S-2")) == matching(subscription_id="S-2")
    assert search(LogFilter(state="REJECTED")) == matching(state="REJECTED")
    assert search(LogFilter(process_name="cli")) == matching(process_name="cli")
    assert f"@request:{refresh.request_id}" in matching(process_name="cli")
    assert search(LogFilter(operation="SET_PIN", kind="COMMAND")) == matching(operation="SET_PIN", kind="COMMAND")
    assert len(search(LogFilter(operation="SET_PIN", kind="COMMAND"))) >= 3  # two new boxes and the request

    # a box's history: its events, commands and results, oldest first, each result after its command
    timeline = log.history(MAIN.secure_client_id)
    assert [i.detail["event_id"] for i in timeline if i.what == "event"] == [activation.event_id, change.event_id]
    assert [i.at for i in timeline] == sorted(i.at for i in timeline)
    position = {(i.what, i.detail.get("entry_key")): n for n, i in enumerate(timeline)}
    mine = {k for k, c in by_key.items() if c.secure_client_id == MAIN.secure_client_id}
    assert mine and all(position[("command", k)] < position[("result", k)] for k in mine)
    activated_at = next(n for n, i in enumerate(timeline) if i.detail.get("event_id") == activation.event_id)
    assert all(position[("command", k)] > activated_at for k in mine)


def test_a_dead_letter_valid_now_is_provisioned_once_by_replay_and_replaying_again_does_nothing(
        sqlite_pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    pipeline = sqlite_pipeline
    sim = kms_simulator
    env = {**pipeline.env(), "KMSBRIDGE_STACK_DIR": str(pipeline.workdir / "no-stack")}
    dlq = pipeline.settings.dlq(pipeline.settings.topic("subscriptions"))
    # a translator that allows one minute of clock skew dead-letters an event stamped an hour ahead
    strict = start_translator(pipeline.settings_with(max_future_skew_seconds=60.0))
    ahead = event("S-9", 1, [MAIN], event_type=EventType.ACTIVATED, occurred=timedelta(hours=1))
    try:
        pipeline.produce("subscriptions", [ahead])
        pipeline.read(dlq, lambda got: len(got) >= 1, decode=False)
    finally:
        strict.stop()
    listed = CliRunner().invoke(cli_main, ["dlq", "list", dlq, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    letters = [json.loads(line) for line in listed.output.splitlines()]
    assert [(d["original_topic"], d["error_class"], d["replayed"]) for d in letters] == [
        (pipeline.settings.topic("subscriptions"), "TooFarInFuture", False)]
    assert ahead.event_id not in listed.output and "S-9" not in listed.output  # no payload

    translator = start_translator(pipeline.settings)  # the default skew (one day) accepts it
    executor = start_executor(pipeline.settings)
    try:
        before = end_offsets_of(pipeline, pipeline.settings.topic("subscriptions"))
        dry = CliRunner().invoke(cli_main, ["dlq", "replay", dlq, "--dry-run"], env=env)
        assert dry.exit_code == 0, dry.output
        assert "dry run: 1 would be replayed" in dry.output
        assert end_offsets_of(pipeline, pipeline.settings.topic("subscriptions")) == before  # a dry run: nothing

        filtered = CliRunner().invoke(cli_main, ["dlq", "replay", dlq, "--error-class", "Oversized"], env=env)
        assert "replayed 0" in filtered.output and "1 filtered out" in filtered.output

        done = CliRunner().invoke(cli_main, ["dlq", "replay", dlq, "--since", "2020-01-01T00:00:00Z"], env=env)
        assert done.exit_code == 0, done.output
        assert "replayed 1 to" in done.output
        wait_until("the replayed event provisioned", lambda: (sim.client_state(MAIN.secure_client_id) or {}).get(
            "paired_chipset") == "STB-1")
        again = CliRunner().invoke(cli_main, ["dlq", "replay", dlq], env=env)
        assert again.exit_code == 0, again.output
        assert "replayed 0" in again.output and "1 replayed before" in again.output
        assert end_offsets_of(pipeline, pipeline.settings.topic("subscriptions")) == before + 1  # replayed once
        applied = [a for a in sim.audit() if a["idempotency_key"].startswith(f"ev:{ahead.event_id}:")]
        assert applied and len({a["idempotency_key"] for a in applied}) == len(applied)  # each key once
    finally:
        executor.stop()
        translator.stop()


def test_replay_refuses_a_topic_that_is_no_input_of_kmsbridge(sqlite_pipeline: Pipeline) -> None:
    pipeline = sqlite_pipeline
    env = {**pipeline.env(), "KMSBRIDGE_STACK_DIR": str(pipeline.workdir / "no-stack")}
    for topic in (pipeline.settings.topic("results") + ".dlq", pipeline.settings.topic("subscriptions")):
        got = CliRunner().invoke(cli_main, ["dlq", "replay", topic], env=env)
        assert got.exit_code == 2, got.output


def test_a_requests_outcome_is_answered_after_the_api_restarts_from_the_durable_log(
        sqlite_pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    from fastapi.testclient import TestClient

    from kmsbridge.wiring_api import ApiProcess, build_api
    from producers.results_feed import OutcomeFeedError

    def build(**kwargs: Any) -> ApiProcess:
        # the outcome feed refuses to start (fail-fast, by design) while a fresh topic's leader still moves
        def attempt() -> ApiProcess | None:
            try:
                return build_api(settings, **kwargs)
            except OutcomeFeedError:
                return None
        started = wait_until("the Web API started", attempt)
        assert started is not None
        return started

    pipeline = sqlite_pipeline
    settings = pipeline.settings_with(api__api_keys=[SecretStr("log-test-key")])
    headers = {"Authorization": "Bearer log-test-key"}
    engine = engine_for(settings)
    upgrade(engine)
    log = RequestLog(engine)
    started = {"translator": start_translator(settings), "executor": start_executor(settings),
                "request-log": start_request_log(pipeline)}
    try:
        first = build(request_log=log)
        try:
            answer = TestClient(first.app).post(f"/v1/secure-clients/{MAIN.secure_client_id}/reauthorise",
                                                params={"process_immediately": "true"}, headers=headers)
        finally:
            first.close()
        assert answer.status_code == 200, answer.text
        request_id = answer.json()["request_id"]
        assert answer.json()["state"] == "COMPLETED"
        wait_until("the log settled the request", lambda: (o := log.outcome(request_id)) is not None and o.settled)

        # restarted, and the request is outside the window the outcome feed reads back (history 0)
        forgetful = build(history_seconds=0.0)
        try:
            assert TestClient(forgetful.app).get(f"/v1/requests/{request_id}", headers=headers).status_code == 404
        finally:
            forgetful.close()
        restarted = build(history_seconds=0.0, request_log=log)
        try:
            got = TestClient(restarted.app).get(f"/v1/requests/{request_id}", headers=headers)
            history = TestClient(restarted.app).get(f"/v1/secure-clients/{MAIN.secure_client_id}/history",
                                                    headers=headers)
        finally:
            restarted.close()
        assert got.status_code == 200, got.text
        assert got.json()["state"] == "COMPLETED"
        timeline = history.json()["timeline"]
        assert [i["what"] for i in timeline][:2] == ["request", "command"]  # the request, then what it planned
        assert sorted(i["what"] for i in timeline) == ["command", "request", "result", "result"]
        assert {i["operation"] for i in timeline} == {"REAUTHORISE_SECTOR"}
    finally:
        for proc in reversed(list(started.values())):
            proc.stop()
        engine.dispose()


def test_the_writer_skips_what_it_cannot_read_dead_letters_nothing_and_enforces_the_retention(
        sqlite_pipeline: Pipeline) -> None:
    from provisioning.keys import KeySource, idempotency_key
    from reconciler.request_log_store import LogBatch
    from schemas.records import Operation, Source

    pipeline = sqlite_pipeline
    engine = engine_for(pipeline.settings)
    upgrade(engine)
    log = RequestLog(engine)

    def cmd(event_id: str, created: datetime) -> KmsCommand:
        return KmsCommand(idempotency_key=idempotency_key(KeySource.EVENT, event_id, "C-1", Operation.PAIR),
                          operation=Operation.PAIR, secure_client_id="C-1", created_at=created,
                          source=Source(process_name="translator", event_id=event_id))

    old = cmd("E-old", datetime.now(UTC) - timedelta(days=91))  # beyond the default 90 days
    log.write(LogBatch(commands=[old]))
    fresh = cmd("E-new", _now_ms())
    pipeline.produce_raw("commands", b"\x00not avro at all")
    pipeline.produce("commands", [fresh])
    writer = start_request_log(pipeline)
    try:
        wait_until("the fresh command logged and the old one purged", lambda: {
            e["entry_key"] for e in log.search(LogFilter(), limit=10).entries} == {fresh.idempotency_key})
    finally:
        writer.stop()  # raises if the writer died on the bad record
        engine.dispose()
    dlq = pipeline.settings.dlq(pipeline.settings.topic("commands"))
    assert end_offsets_of(pipeline, dlq) == 0  # the executor dead-letters its input, not the log


def end_offsets_of(pipeline: Pipeline, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"offsets-{uuid.uuid4().hex}"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(pipeline.partitions))
    finally:
        consumer.close()


def test_a_record_the_log_database_refuses_is_skipped_and_the_records_around_it_are_written(
        kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
        postgres_url: str) -> None:
    from sqlalchemy import text

    from provisioning.keys import KeySource, idempotency_key
    from schemas.records import Operation, Source

    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "work",
                    database_url=new_database(postgres_url), partitions=1)
    engine = engine_for(pipe.settings)
    upgrade(engine)
    with engine.begin() as conn:  # a content rule of the database, which one record breaks
        conn.execute(text(f"ALTER TABLE {log_table_name()} ADD CONSTRAINT test_refused_card "
                          "CHECK (secure_client_id IS NULL OR secure_client_id <> 'C-REFUSED')"))
    log = RequestLog(engine)

    def cmd(card: str) -> KmsCommand:
        event_id = str(uuid.uuid4())
        return KmsCommand(idempotency_key=idempotency_key(KeySource.EVENT, event_id, card, Operation.PAIR),
                          operation=Operation.PAIR, secure_client_id=card, created_at=_now_ms(),
                          source=Source(process_name="translator", event_id=event_id))

    before, refused, after = cmd("C-BEFORE"), cmd("C-REFUSED"), cmd("C-AFTER")
    pipe.produce("commands", [before, refused, after])  # one partition: one batch, in this order
    writer = start_request_log(pipe)
    try:
        wait_until("the records around the refused one logged", lambda: {
            e["entry_key"] for e in log.search(LogFilter(), limit=10).entries} == {
            before.idempotency_key, after.idempotency_key}, 60)
    finally:
        writer.stop()  # raises if the writer died on the refused record
        engine.dispose()
        pipe.close()


def log_table_name() -> str:
    from reconciler.request_log_tables import log_table
    return log_table.name
