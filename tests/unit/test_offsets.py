"""The executor's offset rule: store only below the lowest unfinished message (docs/architecture.md §5)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kafka_edge.offsets import OffsetTracker

T = "kms.commands"


def test_nothing_is_committable_before_anything_was_consumed() -> None:
    tracker = OffsetTracker()
    tracker.assigned(T, 0)

    assert tracker.committable(T, 0) is None
    assert tracker.all_committable() == {}


def test_the_committable_offset_stops_at_the_lowest_unfinished_message() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assigned(T, 0)
    for offset in (10, 11, 12, 13):
        tracker.started(T, 0, offset, timestamp=100.0 + offset)

    tracker.finished(T, 0, 11, epoch)
    tracker.finished(T, 0, 13, epoch)
    assert tracker.committable(T, 0) == 10  # 10 still runs: nothing past it may be committed

    tracker.finished(T, 0, 10, epoch)
    assert tracker.committable(T, 0) == 12

    tracker.finished(T, 0, 12, epoch)
    assert tracker.committable(T, 0) == 14  # all done: one past the newest
    assert tracker.pending_count() == 0


@given(st.permutations(list(range(30))))
def test_finishing_in_any_order_never_exposes_an_unfinished_offset(order: list[int]) -> None:
    tracker = OffsetTracker()
    epoch = tracker.assigned(T, 3)
    for offset in range(30):
        tracker.started(T, 3, offset, timestamp=0.0)
    unfinished = set(range(30))
    for offset in order:
        tracker.finished(T, 3, offset, epoch)
        unfinished.discard(offset)
        committable = tracker.committable(T, 3)
        assert committable is not None
        assert all(committable <= u for u in unfinished)
        assert committable == (min(unfinished) if unfinished else 30)


def test_work_from_an_earlier_assignment_cannot_finish_a_redelivered_message() -> None:
    tracker = OffsetTracker()
    tracker.assigned(T, 0)
    old_epoch = tracker.started(T, 0, 5, timestamp=0.0)
    tracker.forget(T, 0)  # revoked while offset 5 was in a KMS call
    new_epoch = tracker.assigned(T, 0)  # ... and assigned to us again: offset 5 is redelivered
    assert tracker.started(T, 0, 5, timestamp=0.0) == new_epoch

    tracker.finished(T, 0, 5, old_epoch)  # the old call completes

    assert tracker.committable(T, 0) == 5  # the redelivered copy is still unfinished
    assert not tracker.owns(T, 0, old_epoch)
    assert tracker.owns(T, 0, new_epoch)


def test_a_revoked_partition_is_owned_no_more_and_has_nothing_to_commit() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assigned(T, 1)
    tracker.started(T, 1, 0, timestamp=0.0)

    tracker.forget(T, 1)

    assert not tracker.owns(T, 1, epoch)
    assert tracker.committable(T, 1) is None
    tracker.finished(T, 1, 0, epoch)  # late completion: ignored, no error
    assert tracker.partitions() == []


def test_partitions_are_tracked_independently() -> None:
    tracker = OffsetTracker()
    e0, e1 = tracker.assigned(T, 0), tracker.assigned(T, 1)
    tracker.started(T, 0, 7, timestamp=50.0)
    tracker.started(T, 1, 3, timestamp=20.0)
    tracker.started(T, 1, 4, timestamp=30.0)
    tracker.finished(T, 1, 3, e1)

    assert tracker.all_committable() == {(T, 0): 7, (T, 1): 4}
    assert tracker.oldest_pending_timestamp(T, 1) == 30.0
    tracker.finished(T, 0, 7, e0)
    assert tracker.oldest_pending_timestamp(T, 0) is None
    assert tracker.pending_count() == 1
