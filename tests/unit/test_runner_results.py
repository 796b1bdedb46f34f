"""The results the command runner builds without validation (``KmsResult.trusted``) are the records
validation builds: equal, with the same fields in the same order, dumped and encoded alike."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from consumers.breaker import Breaker
from consumers.command_runner import KMS_ERROR, STALE_COMMAND, CommandRunner
from consumers.ledger import LEDGER_METADATA, Ledger
from kms_adapter.fake import InMemoryKms
from schemas.codec import Codec
from schemas.records import KmsCommand, KmsResult, Operation, Product, ResultState, Source


def command() -> KmsCommand:
    return KmsCommand(idempotency_key="k-1", operation=Operation.SYNC_ENTITLEMENTS, secure_client_id="C1",
                      subscription_id="S-1", subscription_version=3, products=[Product(product_id="P100")],
                      source=Source(process_name="test", event_id="E-1", run_id="R-1"),
                      created_at=datetime.now(UTC))


def assert_validated(result: KmsResult) -> None:
    twin = KmsResult(**{name: getattr(result, name) for name in KmsResult.model_fields})
    assert result == twin
    assert list(result.__dict__.items()) == list(twin.__dict__.items())
    assert result.model_fields_set == twin.model_fields_set
    assert result.model_dump_json() == twin.model_dump_json()
    codec = Codec()
    assert codec.encode(result, "kms.results") == codec.encode(twin, "kms.results")


def test_a_completed_result_equals_the_validated_record(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    LEDGER_METADATA.create_all(engine)
    kms = InMemoryKms()

    async def main() -> KmsResult:
        breaker = Breaker(kms.ping, threshold=5, probe_seconds=0.01)
        try:
            return (await CommandRunner(kms, Ledger(engine), breaker).run(command())).result
        finally:
            await breaker.aclose()

    result = asyncio.run(main())

    assert result.state is ResultState.COMPLETED
    assert_validated(result)


@pytest.mark.parametrize("fields", [
    {"state": ResultState.REJECTED, "attempts": 2, "error_code": KMS_ERROR, "error_description": "rejected",
     "provider_error_code": "E42", "provider_error_description": "no such card"},
    {"state": ResultState.REJECTED, "attempts": 0, "error_code": STALE_COMMAND, "error_description": "older"},
    {"state": ResultState.COMPLETED, "attempts": 0, "superseded_by": "k-2"},
])
def test_rejected_and_superseded_results_equal_the_validated_record(fields: dict[str, object]) -> None:
    result = CommandRunner._result(command(), started=time.monotonic(), **fields)  # type: ignore[arg-type]

    assert_validated(result)
