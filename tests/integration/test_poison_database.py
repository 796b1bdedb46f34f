"""A record whose content the database refuses is poison, on PostgreSQL.

Records that break a column's width fail validation at decode (``schemas.limits``), and the columns
hold every value the records allow, so the refusal is made explicit: a CHECK constraint the test adds
to the ledger's version column stands for any rule a database may apply to content (a DBA's
constraint, a trigger, a stricter collation). Through the real broker into the executor, a command
that breaks it; for the projector, its store path called directly with events built past validation
(``model_construct``), since no decodable event can reach the store with a 200-character id; and the
ledger's group commit, which writes entry by entry when one entry of its batch is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import IntegrityError

from consumers.ledger import GroupCommit, Ledger
from kmsbridge.db import upgrade
from reconciler.projector import Projector, ProjectorConfig
from reconciler.store import DesiredStateStore
from schemas.codec import Codec
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
from tests.support.chaos import read_all
from tests.support.pg import new_database, postgres_url  # noqa: F401 (the session fixture)
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


def headers(msg: Message) -> dict[str, str]:
    raw: Any = msg.headers() or []
    return {k: v.decode() if isinstance(v, bytes) else str(v or "") for k, v in raw}


#: Versions the test's CHECK constraint refuses (every one a valid Avro long and a valid BIGINT).
REFUSED_VERSION = 2**40


def refuse_large_versions(engine: Engine) -> None:
    """Migrate, then add the content rule the poison tests break."""
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE kms_client_versions ADD CONSTRAINT test_version_bound "
                          f"CHECK (version < {REFUSED_VERSION})"))


@pytest.fixture
def pg_pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path,
                postgres_url: str) -> Iterator[Pipeline]:  # noqa: F811 (the fixture imported above)
    url = new_database(postgres_url)
    engine = create_engine(url)
    refuse_large_versions(engine)
    engine.dispose()
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path, partitions=1,
                    database_url=url)
    yield pipe
    pipe.close()


def test_a_command_the_ledger_cannot_record_is_dead_lettered_with_its_result_and_the_kms_is_called_once(
        pg_pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    procs: list[RunningProcess] = [start_executor(pg_pipeline.settings)]
    try:
        now = datetime.now(UTC)
        # a valid command, but the database's content rule refuses its version
        bad = KmsCommand(idempotency_key=f"db-{uuid.uuid4().hex}", operation=Operation.SYNC_ENTITLEMENTS,
                         secure_client_id="9100001", subscription_id="S-DB-1", subscription_version=REFUSED_VERSION,
                         products=[Product(product_id="P100")], source=Source(process_name="test"), created_at=now)
        good = bad.model_copy(update={"idempotency_key": f"db-{uuid.uuid4().hex}", "secure_client_id": "9100002",
                                      "subscription_id": "S-DB-2", "subscription_version": 1})
        pg_pipeline.produce("commands", [bad, good])

        def entitled(card: str) -> bool:
            client = kms_simulator.state()["secure_clients"].get(card) or {}
            return {e["product_id"] for e in client.get("entitlements", [])} == {"P100"}

        wait_until("the command behind the poison applied", lambda: entitled("9100002"), 60)
        results = pg_pipeline.results(lambda rs: any(r.idempotency_key == bad.idempotency_key for r in rs))
        dlq = wait_until("the DLQ copy", lambda: read_all(pg_pipeline.bootstrap, pg_pipeline.settings.dlq(
            pg_pipeline.settings.topic("commands"))), 30)
    finally:
        for proc in procs:
            proc.stop(60)

    assert [headers(m)["kmsbridge.error.reason"] for m in dlq] == ["database_rejected"]
    assert "CheckViolation" in headers(dlq[0])["kmsbridge.error.message"]
    assert dlq[0].value() == pg_pipeline.codec.encode(bad, pg_pipeline.settings.topic("commands"))
    published = [r for r in results if r.idempotency_key == bad.idempotency_key]
    assert len(published) == 1 and published[0].state is ResultState.COMPLETED  # the KMS did apply it
    calls = [a for a in kms_simulator.audit() if a["idempotency_key"] == bad.idempotency_key]
    assert len(calls) == 1  # never retried, so never sent to the KMS twice


def event(sub: str, card: str) -> SubscriptionEvent:
    now = datetime.now(UTC)
    return SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id=sub,
        account_id=f"A-{sub}", subscription_type="RESIDENTIAL", created_at=now - timedelta(days=1), version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=card)])


def test_an_event_the_desired_state_store_refuses_is_dead_lettered_and_the_rest_of_its_batch_applies(
        kafka_bootstrap: str, fresh_topics: Any, postgres_url: str) -> None:  # noqa: F811
    topic, dlq_topic = fresh_topics(count=2)
    engine = create_engine(new_database(postgres_url))
    upgrade(engine)
    store = DesiredStateStore(engine)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    consumer: Any = None  # the store path alone: the batch is handed over as the poll loop would
    projector = Projector(consumer, producer, Codec(), store, ProjectorConfig(topic=topic, dlq_topic=dlq_topic))
    good_before, good_after = event("S-OK-1", "9200001"), event("S-OK-2", "9200002")
    # past validation: a 200-character subscription id, longer than the VARCHAR(128) column
    bad = SubscriptionEvent.model_construct(**{**dict(event("S-X", "9200003")), "subscription_id": "S" * 200})
    msgs = [Message(topic=topic, partition=0, offset=i, key=b"k", value=f"event {i}".encode(), headers=None)
            for i in range(3)]
    outcomes = ["ok", "ok", "ok"]

    result = projector._upsert(msgs, [(0, good_before), (1, bad), (2, good_after)], outcomes)
    projector._flush()

    assert outcomes == ["ok", "dlq", "ok"]
    assert result.applied == 2
    assert store.get("S-OK-1") is not None and store.get("S-OK-2") is not None
    entries = read_all(kafka_bootstrap, dlq_topic)
    assert [(headers(m)["kmsbridge.error.reason"], headers(m)["kmsbridge.original.offset"]) for m in entries] == [
        ("database_rejected", "1")]
    assert entries[0].value() == b"event 1"
    assert "S" * 20 not in headers(entries[0])["kmsbridge.error.message"]  # no parameter quoted
    engine.dispose()



def test_a_group_commit_writes_entry_by_entry_when_one_entry_is_refused_so_the_others_are_recorded(
        postgres_url: str) -> None:  # noqa: F811
    engine = create_engine(new_database(postgres_url))
    refuse_large_versions(engine)
    ledger = Ledger(engine)
    now = datetime.now(UTC)

    def outcome(key: str, card: str) -> KmsResult:
        return KmsResult(idempotency_key=key, operation="SYNC_ENTITLEMENTS", secure_client_id=card,
                         subscription_id="S-1", state=ResultState.COMPLETED, executed_at=now, attempts=1)

    async def one_turn() -> list[BaseException | None]:
        writes = GroupCommit(ledger)
        done = await asyncio.gather(writes.record(outcome("k-ok-1", "C-1"), version=3, subscription_id="S-1"),
                                    writes.record(outcome("k-bad", "C-2"), version=REFUSED_VERSION,
                                                  subscription_id="S-1"),
                                    writes.record(outcome("k-ok-2", "C-3"), version=4, subscription_id="S-1"),
                                    return_exceptions=True)
        return [d if isinstance(d, BaseException) else None for d in done]

    errors = asyncio.run(one_turn())

    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], IntegrityError)
    assert ledger.get("k-ok-1") is not None and ledger.get("k-ok-2") is not None and ledger.get("k-bad") is None
    assert ledger.version("C-3") == ("S-1", 4)
    engine.dispose()


def test_the_ledger_records_any_avro_long_version_on_postgresql(postgres_url: str) -> None:  # noqa: F811
    engine = create_engine(new_database(postgres_url))
    upgrade(engine)
    ledger = Ledger(engine)
    result = KmsResult(idempotency_key="k-long", operation="SYNC_ENTITLEMENTS", secure_client_id="C-L",
                       subscription_id="S-L", state=ResultState.COMPLETED, executed_at=datetime.now(UTC))

    async def record() -> None:
        await GroupCommit(ledger).record(result, version=2**63 - 1, subscription_id="S-L")

    asyncio.run(record())

    assert ledger.version("C-L") == ("S-L", 2**63 - 1)
    engine.dispose()
