"""The provisioning request log on both databases: SQLite (embedded) and PostgreSQL (replicas).

Writes are dialect-specific upserts, so every rule is checked on each dialect: a command is PENDING
until its result, the first final answer stays, the same batch twice changes nothing, the order of the
topics does not matter, a request settles by the Web API's rule, the filters and the keyset pages, a
box's timeline, the retention.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, select

from kmsbridge.db import upgrade
from producers.outcomes import RequestState
from provisioning.keys import KeySource, idempotency_key, rejection_key
from reconciler.request_log_store import BadCursor, LogBatch, LogFilter, RequestLog
from reconciler.request_log_tables import log_table
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    KmsResult,
    Operation,
    ReconcileReport,
    ReconcileRequest,
    RequestType,
    ResultState,
    ServiceRequest,
    Source,
    SubscriptionEvent,
)
from tests.support.pg import new_database, postgres_url  # noqa: F401 (the session fixture)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
PIN = "4711"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RequestLog]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
    else:
        url = new_database(request.getfixturevalue("postgres_url"))
    engine = create_engine(url)
    upgrade(engine)
    yield RequestLog(engine)
    engine.dispose()


def command(card: str, op: Operation = Operation.SYNC_ENTITLEMENTS, *, event_id: str | None = "E-1",
            request_id: str | None = None, run_id: str | None = None, at: datetime = T0,
            sub: str | None = "S-1", process: str = "translator", **fields: Any) -> KmsCommand:
    kind, source_id = ((KeySource.REQUEST, request_id) if request_id else (KeySource.RUN, run_id) if run_id
                       else (KeySource.EVENT, event_id))
    assert source_id
    return KmsCommand(idempotency_key=idempotency_key(kind, source_id, card, op), operation=op,
                      secure_client_id=card, subscription_id=sub, distributor="MAIN", created_at=at,
                      source=Source(process_name=process, event_id=event_id if kind is KeySource.EVENT else None,
                                    request_id=request_id, run_id=run_id), **fields)


def result_of(cmd: KmsCommand, state: ResultState = ResultState.COMPLETED, *, duplicate: bool = False,
              at: datetime | None = None, code: str | None = None) -> KmsResult:
    s = cmd.source
    return KmsResult(idempotency_key=cmd.idempotency_key, operation=cmd.operation.value,
                     secure_client_id=cmd.secure_client_id, subscription_id=cmd.subscription_id,
                     event_id=s.event_id, request_id=s.request_id, run_id=s.run_id, state=state,
                     error_code=code, provider_error_code="E42" if code else None, attempts=2,
                     executed_at=at or cmd.created_at + timedelta(seconds=1), duplicate=duplicate)


def request(request_id: str, type_: RequestType = RequestType.SET_PIN, *, card: str | None = "C-1",
            at: datetime = T0, process: str = "api") -> ServiceRequest:
    return ServiceRequest(request_id=request_id, type=type_, secure_client_id=card, requested_at=at,
                          process_name=process, requested_by="agent-7",
                          pin=SecretStr(PIN) if type_ is RequestType.SET_PIN else None)


def rows(store: RequestLog) -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        return {r.entry_key: dict(r._mapping) for r in conn.execute(select(log_table))}


def test_a_command_is_pending_until_its_result_and_the_result_fills_the_kms_answer(store: RequestLog) -> None:
    cmd = command("C-1")
    store.write(LogBatch(commands=[cmd]))
    assert rows(store)[cmd.idempotency_key]["state"] == "PENDING"

    store.write(LogBatch(results=[result_of(cmd, ResultState.REJECTED, code="KMS_REJECTED")]))

    row = rows(store)[cmd.idempotency_key]
    assert (row["state"], row["error_code"], row["provider_error_code"], row["attempts"]) == (
        "REJECTED", "KMS_REJECTED", "E42", 2)
    assert (row["kind"], row["source_kind"], row["source_id"], row["process_name"]) == (
        "COMMAND", "event", "E-1", "translator")
    assert row["executed_at"] == T0 + timedelta(seconds=1)


def test_a_result_read_before_its_command_ends_in_the_same_row(store: RequestLog) -> None:
    cmd = command("C-1", priority="EXPRESS")
    other = RequestLog(store.engine)
    store.write(LogBatch(commands=[cmd], results=[result_of(cmd)]))
    expected = rows(store)
    with store.engine.begin() as conn:
        conn.execute(log_table.delete())

    other.write(LogBatch(results=[result_of(cmd)]))
    other.write(LogBatch(commands=[cmd]))

    assert rows(store) == expected
    assert expected[cmd.idempotency_key]["created_at"] == T0  # the command's time, not the result's
    assert expected[cmd.idempotency_key]["priority"] == "EXPRESS"


def test_the_same_batch_twice_changes_nothing_and_a_duplicate_delivery_keeps_the_first_answer(
        store: RequestLog) -> None:
    cmd = command("C-1")
    batch = LogBatch(events=[], commands=[cmd], results=[result_of(cmd)], requests=[request("R-1")])
    store.write(batch)
    first = rows(store)

    store.write(batch)
    assert rows(store) == first

    store.write(LogBatch(results=[result_of(cmd, ResultState.REJECTED, duplicate=True, at=T0 + timedelta(hours=1),
                                            code="LATE")]))
    row = rows(store)[cmd.idempotency_key]
    assert (row["state"], row["executed_at"], row["error_code"], row["duplicate"]) == (
        "COMPLETED", T0 + timedelta(seconds=1), None, True)
    marked = rows(store)
    store.write(batch)  # the first delivery read again (a replay) leaves the duplicate mark
    assert rows(store) == marked


def test_a_request_settles_by_the_web_api_rule_and_its_outcome_is_read_back(store: RequestLog) -> None:
    a = command("C-1", Operation.SEND_MAIL, request_id="R-1", event_id=None, process="translator")
    b = command("C-2", Operation.SEND_MAIL, request_id="R-1", event_id=None)
    store.write(LogBatch(requests=[request("R-1", RequestType.SEND_MESSAGE, card=None)], commands=[a, b]))
    assert rows(store)["@request:R-1"]["state"] == "PENDING"

    store.write(LogBatch(results=[result_of(a)]))
    assert rows(store)["@request:R-1"]["state"] == "PENDING"  # one of two commands answered

    store.write(LogBatch(results=[result_of(b)]))
    row = rows(store)["@request:R-1"]
    assert row["state"] == "COMPLETED" and row["executed_at"] == T0 + timedelta(seconds=1)
    outcome = store.outcome("R-1")
    assert outcome is not None and outcome.state is RequestState.COMPLETED
    assert {r.idempotency_key for r in outcome.results} == {a.idempotency_key, b.idempotency_key}
    assert outcome.request_type == "SEND_MESSAGE" and outcome.submitted_at == T0
    assert store.outcome("R-unknown") is None


def test_a_request_the_translator_rejected_is_rejected_with_its_code(store: RequestLog) -> None:
    rejected = KmsResult(idempotency_key=rejection_key(KeySource.REQUEST, "R-2"), operation="SET_PIN",
                         secure_client_id="C-1", request_id="R-2", state=ResultState.REJECTED,
                         error_code="INVALID_PIN", error_description="a PIN has four digits", executed_at=T0)
    store.write(LogBatch(results=[rejected]))
    store.write(LogBatch(requests=[request("R-2")]))

    found = rows(store)
    assert found["@request:R-2"]["state"] == "REJECTED"
    assert found["@request:R-2"]["error_code"] == "INVALID_PIN"
    assert found[rejected.idempotency_key]["kind"] == "REJECTION"
    outcome = store.outcome("R-2")
    assert outcome is not None and outcome.errors == [("INVALID_PIN", "a PIN has four digits")]


def test_a_reset_run_settles_on_its_report_and_names_its_commands(store: RequestLog) -> None:
    run = ReconcileRequest(run_id="RUN-1", subscription_ids=["S-1"], requested_by="ops")
    cmd = command("C-1", run_id="RUN-1", event_id=None, process="reconciler")
    report = ReconcileReport(run_id="RUN-1", preview=False, checked=1, drifted=1, commands_published=1,
                             started_at=T0, finished_at=T0 + timedelta(seconds=3), duration_seconds=3)
    store.write(LogBatch(reports=[report], commands=[cmd]))
    store.write(LogBatch(runs=[(run, T0 - timedelta(seconds=1))]))

    row = rows(store)["@run:RUN-1"]
    assert (row["state"], row["subscription_id"], row["requested_by"], row["created_at"]) == (
        "COMPLETED", "S-1", "ops", T0 - timedelta(seconds=1))
    assert rows(store)[cmd.idempotency_key]["source_kind"] == "reset"
    outcome = store.outcome("RUN-1")
    assert outcome is not None and outcome.state is RequestState.COMPLETED and outcome.report == report

    failed = report.model_copy(update={"run_id": "RUN-2", "unknown_subscriptions": ["S-9"]})
    store.write(LogBatch(reports=[failed]))
    assert rows(store)["@run:RUN-2"]["error_code"] == "UNKNOWN_SUBSCRIPTION"


def test_filters_return_exactly_the_matching_rows_newest_first_in_keyset_pages(store: RequestLog) -> None:
    cmds = [command(f"C-{i % 3}", [Operation.SYNC_ENTITLEMENTS, Operation.PAIR][i % 2], event_id=f"E-{i}",
                    sub=f"S-{i % 4}", at=T0 + timedelta(minutes=i // 2)) for i in range(40)]
    store.write(LogBatch(commands=cmds, results=[result_of(c) for c in cmds[::5]],
                         requests=[request("R-1", card="C-9", at=T0 + timedelta(minutes=7), process="cli")]))

    def keys(where: LogFilter, page: int = 7) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            got = store.search(where, limit=page, cursor=cursor)
            out += [e["entry_key"] for e in got.entries]
            if got.next_cursor is None:
                return out
            cursor = got.next_cursor

    def expected(pred: Any) -> list[str]:
        matching = [c for c in cmds if pred(c)]
        matching.sort(key=lambda c: (c.created_at, c.idempotency_key), reverse=True)
        return [c.idempotency_key for c in matching]

    assert keys(LogFilter(secure_client_id="C-1")) == expected(lambda c: c.secure_client_id == "C-1")
    assert keys(LogFilter(subscription_id="S-2", operation="PAIR")) == expected(
        lambda c: c.subscription_id == "S-2" and c.operation is Operation.PAIR)
    done = {c.idempotency_key for c in cmds[::5]}
    assert keys(LogFilter(state="COMPLETED")) == expected(lambda c: c.idempotency_key in done)
    window = LogFilter(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=5), kind="COMMAND")
    assert keys(window, page=1) == expected(lambda c: T0 + timedelta(minutes=3) <= c.created_at
                                            < T0 + timedelta(minutes=5))
    assert keys(LogFilter(process_name="cli")) == ["@request:R-1"]
    assert keys(LogFilter(operation="SET_PIN")) == ["@request:R-1"]
    assert len(keys(LogFilter())) == 41
    with pytest.raises(BadCursor):
        store.search(LogFilter(), cursor="not-a-cursor")


def test_a_boxs_history_lists_its_events_commands_and_results_oldest_first_and_no_pin(store: RequestLog) -> None:
    main = Device(distributor="MAIN", secure_client_id="C-1")
    ev = SubscriptionEvent(event_id="E-1", event_type=EventType.ACTIVATED, occurred_at=T0 - timedelta(seconds=5),
                           subscription_id="S-1", account_id="A-1", subscription_type="RES", created_at=T0,
                           version=1, state="ACTIVE", devices=[main, Device(distributor="TWIN1",
                                                                            secure_client_id="C-2")])
    sync = command("C-1", at=T0)
    pin = command("C-1", Operation.SET_PIN, at=T0 + timedelta(milliseconds=1), pin=SecretStr(PIN))
    store.write(LogBatch(events=[ev], commands=[sync, pin, command("C-2")], results=[result_of(pin)]))
    store.write(LogBatch(events=[ev]))

    timeline = [(i.what, i.detail.get("operation") or i.detail.get("event_type")) for i in store.history("C-1")]

    assert timeline == [("event", "ACTIVATED"), ("command", "SYNC_ENTITLEMENTS"), ("command", "SET_PIN"),
                        ("result", "SET_PIN")]
    assert PIN not in repr([i.view() for i in store.history("C-1")])
    assert PIN not in repr(rows(store))
    assert [i.what for i in store.history("C-2")] == ["event", "command"]
    assert store.history("C-unknown") == []


def test_a_boxs_history_lists_the_commands_of_one_instant_in_the_order_they_were_planned(store: RequestLog) -> None:
    planned = [command("C-3", op, at=T0) for op in (Operation.PAIR, Operation.SET_PIN, Operation.SYNC_ENTITLEMENTS)]
    store.write(LogBatch(commands=list(reversed(planned))))

    assert [i.detail["operation"] for i in store.history("C-3")] == ["PAIR", "SET_PIN", "SYNC_ENTITLEMENTS"]


def test_retention_deletes_only_what_is_older(store: RequestLog) -> None:
    old = command("C-1", event_id="E-old", at=T0 - timedelta(days=100))
    new = command("C-1", event_id="E-new", at=T0)
    store.write(LogBatch(commands=[old, new]))
    store.record_replays([{"dlq_topic": "t.dlq", "partition": 0, "offset": 3, "target_topic": "t",
                           "error_class": "X", "replayed_at": T0 - timedelta(days=100)}])

    assert store.purge(T0 - timedelta(days=90)) == 2

    assert list(rows(store)) == [new.idempotency_key]
    assert store.replayed("t.dlq", [(0, 3)]) == set()


def test_replays_are_remembered_per_topic_partition_and_offset(store: RequestLog) -> None:
    mark = {"dlq_topic": "t.dlq", "partition": 1, "offset": 7, "target_topic": "t", "error_class": "X",
            "replayed_at": T0}
    store.record_replays([mark])
    store.record_replays([mark])  # idempotent

    assert store.replayed("t.dlq", [(1, 7), (0, 7), (1, 8)]) == {(1, 7)}
    assert store.replayed("u.dlq", [(1, 7)]) == set()

