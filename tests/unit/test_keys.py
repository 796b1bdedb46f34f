"""The Kafka key rule (schemas/keys.py): one key per record type, as docs/architecture.md lists them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from schemas.keys import EVERY_SUBSCRIBER, record_key, result_key
from schemas.records import KmsResult, ResultState


def test_every_record_type_is_keyed_by_the_id_of_its_topic(sample_records: dict[str, BaseModel]) -> None:
    keys = {name: record_key(record) for name, record in sample_records.items()}

    assert keys == {
        "SubscriptionEvent": "S-1",
        "CommunicationEvent": "C-77",
        "ServiceRequest": "4120051539",
        "KmsCommand": "4120051539",
        "KmsResult": result_key(sample_records["KmsResult"]),  # type: ignore[arg-type]
        "ReconcileRequest": sample_records["ReconcileRequest"].run_id,  # type: ignore[attr-defined]
        "ReconcileReport": sample_records["ReconcileReport"].run_id,  # type: ignore[attr-defined]
    }


@pytest.mark.parametrize(("ids", "key"), [
    ({"request_id": "R-1", "communication_id": "C-1", "event_id": "E-1", "run_id": "RUN-1"}, "R-1"),
    ({"communication_id": "C-1", "event_id": "E-1", "run_id": "RUN-1"}, "C-1"),
    ({"event_id": "E-1", "run_id": "RUN-1"}, "E-1"),
    ({"run_id": "RUN-1"}, "RUN-1"),
    ({}, "S-1:3:4120051539:SYNC"),
])
def test_a_result_is_keyed_by_its_request_then_its_source_then_its_command(ids: dict[str, str], key: str) -> None:
    result = KmsResult(idempotency_key="S-1:3:4120051539:SYNC", operation="SYNC_ENTITLEMENTS",
                       state=ResultState.COMPLETED, executed_at=datetime(2026, 12, 2, tzinfo=UTC), **ids)

    assert record_key(result) == key


def test_a_record_of_no_known_type_has_no_key() -> None:
    with pytest.raises(TypeError, match="no Kafka key rule for dict"):
        record_key({"subscription_id": "S-1"})


def test_a_request_for_every_subscriber_is_keyed_by_the_global_marker() -> None:
    assert EVERY_SUBSCRIBER == "*"
