"""The executor's look-ahead (consumers/lookahead.py): what may enter its index, when entries go, and
that it does nothing while the regular lane flows. The reader is a double of the consumer surface the
look-ahead uses, holding each partition's committed records; the index is read by the test's own calls
to :meth:`LookAhead.read_once` (no thread). Aborted and open transactions are read from the real broker
in tests/integration/test_lookahead_catch_up.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from consumers.lookahead import LookAhead, reader_config
from kafka_edge.assignment import Assignment
from kafka_edge.health import HealthState
from kafka_edge.metrics import LOOKAHEAD_COALESCED
from schemas.codec import Codec
from schemas.records import KmsCommand, Operation, Product, Source

TOPIC = "kms.commands"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
MAX_BUFFERED = 2000  # the executor's default: the backlog above which the look-ahead stays on
CODEC = Codec()


def sync(card: str, version: int, *, created_at: datetime | None = None,
         op: Operation = Operation.SYNC_ENTITLEMENTS) -> KmsCommand:
    return KmsCommand(
        idempotency_key=f"{card}:v{version}", operation=op, secure_client_id=card,
        subscription_id=f"S-{card}", subscription_version=version,
        products=[Product(product_id=f"P{version}")] if op is Operation.SYNC_ENTITLEMENTS else [],
        source=Source(process_name="test", event_id=f"E-{card}-{version}"),
        created_at=created_at or T0 + timedelta(seconds=version))


class Reader:
    """The consumer surface the look-ahead uses: assign by offset, poll/consume, seek, watermarks."""

    def __init__(self) -> None:
        self.log: dict[int, list[bytes | None]] = {}
        self.next: dict[int, int] = {}
        self.calls: list[str] = []
        self.closed = False

    def append(self, partition: int, value: bytes | None) -> int:
        self.log.setdefault(partition, []).append(value)
        return len(self.log[partition]) - 1

    def incremental_assign(self, parts: list[TopicPartition]) -> None:
        self.calls.append("assign")
        for tp in parts:
            self.next[tp.partition] = tp.offset

    def incremental_unassign(self, parts: list[TopicPartition]) -> None:
        self.calls.append("unassign")
        for tp in parts:
            self.next.pop(tp.partition, None)

    def seek(self, tp: TopicPartition) -> None:
        self.calls.append("seek")
        self.next[tp.partition] = tp.offset

    def poll(self, timeout: float = -1) -> Message | None:
        self.calls.append("poll")
        for p, offset in sorted(self.next.items()):
            records = self.log.get(p, [])
            if offset < len(records):
                self.next[p] = offset + 1
                return Message(topic=TOPIC, partition=p, offset=offset, key=b"k", value=records[offset],
                               timestamp=(1, 1_700_000_000_000))
        return None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        out = []
        while len(out) < num_messages and (msg := self.poll(0)) is not None:
            out.append(msg)
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        return 0, len(self.log.get(tp.partition, []))

    def close(self) -> None:
        self.closed = True


class Positions:
    """The executor's consumer, as far as the look-ahead asks it: its position per partition."""

    def __init__(self, positions: dict[int, int], committed: dict[int, int] | None = None) -> None:
        self.positions = positions
        self.commits = committed or {}
        self.asked = 0

    def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        self.asked += 1
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001)) for tp in parts]

    def committed(self, parts: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.commits.get(tp.partition, -1001)) for tp in parts]


def assigned(*partitions: int) -> Assignment:
    assignment = Assignment(HealthState(ttl_seconds=30), "executor")
    assignment.on_assign(None, [TopicPartition(TOPIC, p) for p in partitions])  # type: ignore[arg-type]
    return assignment


def lookahead(reader: Reader, *, max_entries: int = 1_000_000) -> LookAhead:
    return LookAhead(reader, CODEC, TOPIC, max_entries=max_entries,  # type: ignore[arg-type]
                     backlog_threshold=MAX_BUFFERED, background=False)


def put(reader: Reader, partition: int, cmd: KmsCommand) -> int:
    return reader.append(partition, CODEC.encode(cmd, TOPIC))


def read_all(la: LookAhead) -> None:
    while la.read_once(0):
        pass


def test_poison_tombstones_and_commands_dated_too_far_ahead_never_enter_the_index() -> None:
    reader = Reader()
    held = sync("A", 1)
    put(reader, 0, held)  # offset 0: the executor holds it
    reader.append(0, b"\xc3\x01not avro at all")  # undecodable
    reader.append(0, b"\x00" * 1_000_001)  # oversized
    put(reader, 0, sync("A", 8, created_at=datetime.now(UTC) + timedelta(days=3)))  # the executor DLQs it
    reader.append(0, None)  # a tombstone
    put(reader, 0, sync("A", 9, op=Operation.SEND_MAIL))  # an effect: never supersedes
    la = lookahead(reader)
    la.tick(True, Positions({0: 1}), assigned(0))  # type: ignore[arg-type]
    read_all(la)
    assert len(la) == 0
    assert la.newer_than(held, TOPIC, 0, 0) is None
    put(reader, 0, sync("A", 2))  # a runnable newer one does enter: the screen is what kept the others out
    read_all(la)
    assert la.newer_than(held, TOPIC, 0, 0) == "A:v2"


def test_a_command_waiting_ahead_supersedes_only_older_ones_of_its_box_and_attribute_on_its_partition() -> None:
    reader = Reader()
    put(reader, 0, sync("A", 1))
    put(reader, 0, sync("B", 1))
    put(reader, 0, sync("A", 5))
    put(reader, 0, sync("A", 3))  # older than v5, later on the topic: v5 stays the newest seen
    la = lookahead(reader)
    la.tick(True, Positions({0: 2}), assigned(0))  # type: ignore[arg-type]
    read_all(la)
    before = LOOKAHEAD_COALESCED._value.get()
    assert la.newer_than(sync("A", 1), TOPIC, 0, 0) == "A:v5"
    assert LOOKAHEAD_COALESCED._value.get() == before + 1
    assert la.newer_than(sync("B", 1), TOPIC, 0, 1) is None  # nothing newer of B waits
    assert la.newer_than(sync("A", 1), TOPIC, 1, 0) is None  # another partition
    assert la.newer_than(sync("A", 6), TOPIC, 0, 0) is None  # a newer one is never superseded
    assert la.newer_than(sync("A", 1), "kms.commands.express", 0, 0) is None  # the express lane's offsets
    pin = KmsCommand(idempotency_key="A:pin", operation=Operation.SET_PIN, secure_client_id="A",
                     source=Source(process_name="test"), created_at=T0)
    assert la.newer_than(pin, TOPIC, 0, 0) is None  # another attribute


def test_a_partition_the_executor_has_not_fetched_yet_is_read_from_its_committed_offset() -> None:
    reader = Reader()
    put(reader, 0, sync("A", 1))
    put(reader, 1, sync("B", 1))  # committed by the executor's group before
    put(reader, 1, sync("B", 2))
    put(reader, 1, sync("B", 3))
    la = lookahead(reader)
    la.tick(True, Positions({0: 1}, committed={1: 1}), assigned(0, 1))  # type: ignore[arg-type]
    read_all(la)
    assert reader.next[1] == 3
    assert la.newer_than(sync("B", 2), TOPIC, 1, 1) == "B:v3"


def test_an_entry_goes_once_the_executor_passes_its_offset() -> None:
    reader = Reader()
    put(reader, 0, sync("A", 1))
    put(reader, 0, sync("A", 2))
    la = lookahead(reader)
    source = Positions({0: 1})
    la.tick(True, source, assigned(0))  # type: ignore[arg-type]
    read_all(la)
    assert len(la) == 1
    source.positions[0] = 2  # the executor polled offset 1: its holding has v2 now
    la.tick(True, source, assigned(0))  # type: ignore[arg-type]
    assert len(la) == 0
    assert la.newer_than(sync("A", 1), TOPIC, 0, 0) is None


def test_revoke_clears_the_partitions_entries_and_the_reader_lets_it_go() -> None:
    reader = Reader()
    for p in (0, 1):
        put(reader, p, sync(f"A{p}", 1))
        put(reader, p, sync(f"A{p}", 2))
    la = lookahead(reader)
    la.tick(True, Positions({0: 1, 1: 1}), assigned(0, 1))  # type: ignore[arg-type]
    read_all(la)
    assert len(la) == 2
    la.forget([TopicPartition(TOPIC, 0)])
    assert len(la) == 1
    assert la.newer_than(sync("A0", 1), TOPIC, 0, 0) is None
    assert la.newer_than(sync("A1", 1), TOPIC, 1, 0) == "A1:v2"
    put(reader, 0, sync("A0", 3))  # a revoked partition is not read
    read_all(la)
    assert 0 not in reader.next
    assert la.newer_than(sync("A0", 1), TOPIC, 0, 0) is None


def test_the_reader_reads_nothing_while_the_regular_lane_flows() -> None:
    reader = Reader()
    put(reader, 0, sync("A", 1))
    put(reader, 0, sync("A", 2))
    la = lookahead(reader)
    source = Positions({0: 1})
    for _ in range(5):
        la.tick(False, source, assigned(0))  # type: ignore[arg-type]
        la.read_once(0)
    assert reader.calls == [] and source.asked == 0
    assert not la.active and la.newer_than(sync("A", 1), TOPIC, 0, 0) is None


def test_it_stops_reading_once_the_executor_holds_all_that_is_left_and_empties_as_it_passes() -> None:
    reader = Reader()
    for version in range(1, 4):
        put(reader, 0, sync("A", version))
    la = lookahead(reader)
    source = Positions({0: 1})
    la.tick(True, source, assigned(0))  # type: ignore[arg-type]
    read_all(la)
    assert la.active and len(la) == 1
    la.tick(False, source, assigned(0))  # type: ignore[arg-type]  # flowing, 2 behind: fewer than max_buffered
    assert not la.active
    la.read_once(0)
    assert reader.calls[-1] == "unassign" and reader.next == {}
    assert la.newer_than(sync("A", 1), TOPIC, 0, 0) == "A:v3"  # a command held meanwhile still learns of v3
    source.positions[0] = 3
    la.tick(False, source, assigned(0))  # type: ignore[arg-type]
    assert len(la) == 0
    la.tick(False, source, assigned(0))  # type: ignore[arg-type]
    assert source.asked == 3  # off and empty: nothing is asked any more


def test_a_full_index_stops_reading_and_goes_on_where_it_stopped() -> None:
    reader = Reader()
    put(reader, 0, sync("A", 1))  # held by the executor
    put(reader, 0, sync("B", 1))  # held by the executor
    put(reader, 0, sync("A", 2))
    put(reader, 0, sync("B", 2))
    put(reader, 0, sync("A", 3))
    la = lookahead(reader, max_entries=1)  # the bound is what this test is about
    source = Positions({0: 2})
    la.tick(True, source, assigned(0))  # type: ignore[arg-type]
    read_all(la)
    assert len(la) == 1
    assert la.newer_than(sync("A", 1), TOPIC, 0, 0) == "A:v2"  # the reader stopped at B:v2 (offset 3)
    assert la.newer_than(sync("B", 1), TOPIC, 0, 1) is None  # coalescing degrades, nothing wrong is said
    source.positions[0] = 3  # the executor passed A:v2: room again
    la.tick(True, source, assigned(0))  # type: ignore[arg-type]
    read_all(la)
    assert la.newer_than(sync("B", 1), TOPIC, 0, 1) == "B:v2"  # read again from where it stopped
    assert len(la) == 1  # A:v3 waits for room


@pytest.mark.parametrize("base", [{}, {"isolation.level": "read_uncommitted", "enable.auto.commit": "true"}])
def test_the_reader_reads_committed_records_only_and_never_commits(base: dict[str, Any]) -> None:
    config = reader_config({"bootstrap.servers": "127.0.0.1:9092", **base}, "kmsbridge-executor")
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert config["group.id"] == "kmsbridge-executor-lookahead"
    assert "group.instance.id" not in config
