"""No PIN is readable in any topic's bytes.

Canary PINs go through every path that writes one: the Web API (``kmsbridge run api`` in a subprocess),
the CLI's ``set-pin``, a RESET_PIN request and an activation (both planned with the provider's default
PIN, itself a canary), and two PIN-bearing records forced into the DLQs (a request and a command
dated 400 days ahead). The KMS simulator receives every canary, so the pipeline did carry them. Then
every topic under the pipeline's prefix, DLQs included, is read raw from the beginning (aborted
transactions too) and no canary may appear in any key, value or header, as ASCII or UTF-16.

Runs of five or more id characters (uuids, card numbers, ids) are cut out before the search, so an
id that happens to contain the four digits cannot fail the test; a PIN written in clear is a field of
its own (Avro length byte, four digits, next field), which the cut leaves intact.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from kmsbridge.cli.io import tail_cmd
from kmsbridge.cli.ops import set_pin_cmd
from schemas.records import (
    Device,
    EventType,
    KmsCommand,
    Operation,
    RequestType,
    Service,
    ServiceRequest,
    ServiceState,
    Source,
    SubscriptionEvent,
    SubscriptionState,
)
from tests.support.pipeline import EXAMPLE_PROVIDER, Pipeline, terminate, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

API_KEY = "canary-key-41d2"
CANARY_API = "7391"  # set through the Web API
CANARY_CLI = "6284"  # set through kmsbridge set-pin
CANARY_DEFAULT = "5820"  # the provider's default PIN: planned for RESET_PIN and at activation
CANARY_DLQ = "4619"  # carried by the records forced into the DLQs
CANARIES = (CANARY_API, CANARY_CLI, CANARY_DEFAULT, CANARY_DLQ)
_ID_RUN = re.compile(rb"[0-9A-Za-z_-]{5,}")


def _forms(pin: str) -> list[bytes]:
    return [pin.encode("ascii"), pin.encode("utf-16-le"), pin.encode("utf-16-be")]


def _bytes(data: str | bytes | None) -> bytes:
    return data.encode() if isinstance(data, str) else data or b""


def _card(n: int) -> str:
    return f"88000000{n:02d}"


@pytest.fixture
def product(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path
            ) -> Iterator[tuple[Pipeline, str]]:
    provider = tmp_path / "provider.yaml"
    text = EXAMPLE_PROVIDER.read_text()
    assert 'default_pin: "0001"' in text
    provider.write_text(text.replace('default_pin: "0001"', f'default_pin: "{CANARY_DEFAULT}"'))
    pipeline = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / "pipe",
                        provider_file=provider, partitions=1)
    procs: list[RunningProcess] = [start_translator(pipeline.settings), start_executor(pipeline.settings)]
    try:
        api, url = pipeline.spawn_api([API_KEY], env={"KMSBRIDGE_API__WAIT_SECONDS": "30"})
        try:
            yield pipeline, url
        finally:
            terminate(api)
    finally:
        for proc in reversed(procs):
            proc.stop()
        pipeline.close()


def _raw_records(pipeline: Pipeline) -> dict[str, list[bytes]]:
    """Every key, value and header of every topic under the pipeline's prefix, aborted ones included."""
    admin = AdminClient({"bootstrap.servers": pipeline.bootstrap})
    topics = {name: meta for name, meta in admin.list_topics(timeout=10).topics.items()
              if name.startswith(pipeline.prefix)}
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": f"canary-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                         "enable.partition.eof": True})
    out: dict[str, list[bytes]] = {}
    try:
        for topic, meta in sorted(topics.items()):
            chunks = out.setdefault(topic, [])
            for partition in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                deadline = datetime.now(UTC) + timedelta(seconds=30)
                at_end = False
                while not at_end:  # the end is the partition EOF: transaction markers hold offsets too
                    assert datetime.now(UTC) < deadline, f"reading {topic}[{partition}] stalled below {high}"
                    for msg in consumer.consume(500, 0.5):
                        error = msg.error()
                        if error is not None:
                            at_end = at_end or error.code() == KafkaError._PARTITION_EOF
                            continue
                        chunks += [_bytes(msg.key()), _bytes(msg.value())]
                        for name, value in list(msg.headers() or []):
                            chunks += [_bytes(name), _bytes(value)]
    finally:
        consumer.close()
    return out


def test_no_canary_pin_is_readable_in_any_topic_or_dlq(product: tuple[Pipeline, str], kms_simulator: SimulatorHandle,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    pipeline, url = product
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    # the Web API, the CLI, a reset to the default and an activation: four ways a PIN is written
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        answer = http.post(f"/v1/secure-clients/{_card(1)}/pin", params={"process_immediately": "true"},
                           json={"pin": CANARY_API})
        assert answer.status_code == 200 and answer.json()["state"] == "COMPLETED", answer.text
        answer = http.post(f"/v1/secure-clients/{_card(3)}/pin", params={"process_immediately": "true"},
                           json={"default": True})
        assert answer.status_code == 200 and answer.json()["state"] == "COMPLETED", answer.text
    cli = CliRunner().invoke(set_pin_cmd, ["--secure-client", _card(2), "--pin", CANARY_CLI, "--wait",
                                           "--timeout", "60"], env=pipeline.env(), catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    now = datetime.now(UTC)
    pipeline.produce("subscriptions", [SubscriptionEvent(
        event_id=str(uuid.uuid4()), event_type=EventType.ACTIVATED, occurred_at=now, subscription_id="SUB-CANARY",
        account_id="ACC-CANARY", subscription_type="RESIDENTIAL", created_at=now, version=1,
        state=SubscriptionState.ACTIVE, services=[Service(service_code="BASIC", state=ServiceState.ACTIVE)],
        devices=[Device(distributor="MAIN", secure_client_id=_card(4), stb_serial="STB-CANARY")])])

    # two PIN-bearing records the consumers must dead-letter (dated 400 days ahead)
    ahead = now + timedelta(days=400)
    pipeline.produce("requests", [ServiceRequest(
        request_id=f"req-dlq-{uuid.uuid4().hex}", type=RequestType.SET_PIN, secure_client_id=_card(5),
        pin=SecretStr(CANARY_DLQ), requested_at=ahead)])
    pipeline.produce("commands", [KmsCommand(
        idempotency_key=f"cmd-dlq-{uuid.uuid4().hex}", operation=Operation.SET_PIN, secure_client_id=_card(6),
        pin=SecretStr(CANARY_DLQ), source=Source(process_name="canary"), created_at=ahead)])

    def pins() -> dict[str, str | None]:
        return {card: (kms_simulator.client_state(card) or {}).get("pin") for card in map(_card, (1, 2, 3, 4))}

    expected = {_card(1): CANARY_API, _card(2): CANARY_CLI, _card(3): CANARY_DEFAULT, _card(4): CANARY_DEFAULT}
    wait_until("every canary PIN applied by the KMS", lambda: pins() == expected, timeout=60)
    settings = pipeline.settings
    for logical in ("requests", "commands"):
        dlq = settings.dlq(settings.topic(logical))
        # read back through the product's codec: the DLQ copy is the sealed original, and it opens
        records = pipeline.read(dlq, lambda rs: len(rs) >= 1, timeout=60)
        assert [r.pin.get_secret_value() for r in records] == [CANARY_DLQ], dlq
    assert CANARY_DLQ not in {state for state in (
        (kms_simulator.client_state(card) or {}).get("pin") for card in (_card(5), _card(6)))}

    raw = _raw_records(pipeline)
    for name in ("requests", "commands"):  # the PIN-bearing topics and their DLQs were scanned, not empty
        topic = settings.topic(name)
        assert raw.get(topic) and raw.get(settings.dlq(topic)), sorted(raw)
    for topic, chunks in raw.items():
        for chunk in chunks:
            scrubbed = _ID_RUN.sub(b"", chunk)
            for pin in CANARIES:
                for form in _forms(pin):
                    assert form not in scrubbed, f"PIN {pin} readable in {topic}: {chunk!r}"

    # what an operator sees: `tail --json` masks the PIN and needs no key
    for name in ("requests", "commands"):
        shown = CliRunner().invoke(tail_cmd, [settings.dlq(settings.topic(name)), "--json", "--max", "1"],
                                   env={**pipeline.env(), "KMSBRIDGE_PIN_KEYS__FILE": None}, catch_exceptions=False)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output.splitlines()[0])["pin"] == "****"
        assert CANARY_DLQ not in shown.output

    logs = caplog.text + (pipeline.workdir / "api.log").read_text()
    for pin in CANARIES:
        assert not re.search(rf"(?<![0-9A-Za-z_-]){pin}(?![0-9A-Za-z_-])", logs), f"PIN {pin} in a log line"
