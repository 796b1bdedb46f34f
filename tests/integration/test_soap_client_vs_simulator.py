"""The SOAP client against the KMS simulator over real HTTP (loopback): operations, faults, the
response-shape faults (chunked, ``Connection: close``, HTTP/1.0, both framing headers, oversized
bodies, lost answers) and mutual TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from tls import write_mutual_tls

from kms_adapter import QUERY_SECTIONS, KmsAuthError, KmsRejected, KmsUnavailable
from kms_adapter.simulator.server import start_in_thread
from kms_adapter.soap_client import SoapKmsClient
from kmsbridge.cli.simulator import simulator_group
from kmsbridge.settings import KmsSettings
from schemas.records import KmsCommand, Message, MessageKind, Operation, Product, Source, TextMode
from tests.support.simulator import SimulatorHandle, running_simulator

pytestmark = pytest.mark.integration

T = TypeVar("T")
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def with_client(sim: SimulatorHandle, fn: Callable[[SoapKmsClient], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        async with sim.soap_client(**kwargs) as client:
            return await fn(client)

    return asyncio.run(main())


def command(operation: Operation, key: str, card: str = "4120051539", **fields: Any) -> KmsCommand:
    return KmsCommand(idempotency_key=key, operation=operation, secure_client_id=card,
                      source=Source(process_name="test"), created_at=NOW, **fields)


def mail(kind: MessageKind, text: str) -> Message:
    return Message(kind=kind, text_mode=TextMode.ANSI, text=text)


def test_every_mutating_operation_reaches_the_simulator_state(kms_simulator: SimulatorHandle) -> None:
    card = "4120051539"
    commands = [
        command(Operation.SYNC_ENTITLEMENTS, "k-sync", products=[
            Product(product_id="P100", valid_from=NOW),
            Product(product_id="P200", valid_until=datetime(2027, 1, 1, tzinfo=UTC))]),
        command(Operation.PAIR, "k-pair", chipset="STB-1"),
        command(Operation.SET_PIN, "k-pin", pin=SecretStr("4321")),
        command(Operation.SEND_MAIL, "k-mail", message=mail(MessageKind.MAIL, "Sports tonight")),
        command(Operation.SEND_MESSAGE, "k-osd", message=mail(MessageKind.MESSAGE, "Welcome <&>")),
        command(Operation.SEND_MAIL_GLOBAL, "k-gmail", card="*", message=mail(MessageKind.MAIL, "to all")),
        command(Operation.SEND_MESSAGE_GLOBAL, "k-gosd", card="*", message=mail(MessageKind.MESSAGE, "osd all")),
        command(Operation.REAUTHORISE_SECTOR, "k-sector"),
    ]

    async def run_all(client: SoapKmsClient) -> list[bool]:
        return [(await client.execute(c)).duplicate for c in commands]

    assert with_client(kms_simulator, run_all) == [False] * len(commands)
    state = kms_simulator.state()
    assert state["secure_clients"][card] == {
        "entitlements": [
            {"product_id": "P100", "valid_from": "2026-11-25T10:00:00Z", "valid_until": None},
            {"product_id": "P200", "valid_from": None, "valid_until": "2027-01-01T00:00:00Z"},
        ],
        "paired_chipset": "STB-1",
        "pin": "4321",
        "mailbox": [{"text": "Sports tonight", "text_mode": "ANSI"}],
        "messages": [{"text": "Welcome <&>", "text_mode": "ANSI"}],
        "sector_syncs": 1,
    }
    assert state["global_mailbox"] == [{"text": "to all", "text_mode": "ANSI"}]
    assert state["global_messages"] == [{"text": "osd all", "text_mode": "ANSI"}]
    assert [a["operation"] for a in state["audit"]] == [c.operation.value for c in commands]

    async def undo(client: SoapKmsClient) -> None:
        await client.execute(command(Operation.UNPAIR, "k-unpair", chipset="STB-1"))
        await client.execute(command(Operation.CLEAR_ENTITLEMENTS, "k-clear"))

    with_client(kms_simulator, undo)
    after = kms_simulator.client_state(card)
    assert after is not None and after["paired_chipset"] is None and after["entitlements"] == []


def test_repeated_idempotency_key_applies_once_and_is_audited_duplicate(kms_simulator: SimulatorHandle) -> None:
    osd = command(Operation.SEND_MESSAGE, "msg-1", message=mail(MessageKind.MESSAGE, "once"))

    async def twice(client: SoapKmsClient) -> tuple[bool, bool]:
        return (await client.execute(osd)).duplicate, (await client.execute(osd)).duplicate

    assert with_client(kms_simulator, twice) == (False, True)
    client_state = kms_simulator.client_state("4120051539")
    assert client_state is not None and client_state["messages"] == [{"text": "once", "text_mode": "ANSI"}]
    assert [(a["idempotency_key"], a["duplicate"]) for a in kms_simulator.audit()] == [
        ("msg-1", False), ("msg-1", True)]


def test_wrong_token_raises_auth_error_on_calls_and_ping(kms_simulator: SimulatorHandle) -> None:
    async def ping(client: SoapKmsClient) -> None:
        await client.ping()

    async def sync(client: SoapKmsClient) -> None:
        await client.execute(command(Operation.CLEAR_ENTITLEMENTS, "k"))

    for fn in (ping, sync):
        with pytest.raises(KmsAuthError) as info:
            with_client(kms_simulator, fn, token="not-the-token")
        assert info.value.status_code == 401 and info.value.retryable
    assert kms_simulator.state()["audit"] == []


@pytest.mark.parametrize(("status", "kind", "retry_after"), [(503, "http_503", 1.0), (429, "http_429", 1.0),
                                                             (502, "http_502", None)])
def test_injected_http_status_raises_unavailable_with_its_kind(
    kms_simulator: SimulatorHandle, status: int, kind: str, retry_after: float | None
) -> None:
    kms_simulator.set_faults(http_status=status)
    with pytest.raises(KmsUnavailable) as info:
        with_client(kms_simulator, lambda c: c.execute(command(Operation.REAUTHORISE_SECTOR, "k")))
    assert (info.value.kind, info.value.retry_after, info.value.retryable) == (kind, retry_after, True)
    assert kms_simulator.state()["secure_clients"] == {}


def test_error_rate_one_answers_http_500_which_is_transient(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(error_rate=1.0)
    with pytest.raises(KmsUnavailable) as info:
        with_client(kms_simulator, lambda c: c.ping())
    assert info.value.kind == "http_500"


def test_outage_answers_503_until_its_window_ends(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(outage_seconds=0.5)

    async def during_and_after(client: SoapKmsClient) -> bool:
        with pytest.raises(KmsUnavailable) as info:
            await client.execute(command(Operation.REAUTHORISE_SECTOR, "k-out"))
        assert info.value.kind == "http_503"
        await asyncio.sleep(0.6)
        return (await client.execute(command(Operation.REAUTHORISE_SECTOR, "k-out"))).duplicate

    assert with_client(kms_simulator, during_and_after) is False
    assert [a["idempotency_key"] for a in kms_simulator.audit()] == ["k-out"]


def test_a_kms_that_hangs_raises_unavailable_timeout(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(timeout=True)
    with pytest.raises(KmsUnavailable) as info:
        with_client(kms_simulator, lambda c: c.ping(), timeout=0.3)
    assert info.value.kind == "timeout"


def test_an_endpoint_nobody_listens_on_raises_unavailable_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused

        async def ping() -> None:
            async with SoapKmsClient(f"http://127.0.0.1:{port}/kms", "ALUX", "t", timeout=2) as client:
                await client.ping()

        with pytest.raises(KmsUnavailable) as info:
            asyncio.run(ping())
    assert info.value.kind == "connect" and not info.value.maybe_applied  # nothing was sent


def test_per_card_business_error_raises_rejected_with_the_code(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(card_errors={"C-BAD": "UNKNOWN_CLIENT"})

    async def calls(client: SoapKmsClient) -> None:
        with pytest.raises(KmsRejected) as info:
            await client.execute(command(Operation.PAIR, "k1", card="C-BAD", chipset="STB-1"))
        assert (info.value.code, info.value.retryable) == ("UNKNOWN_CLIENT", False)
        assert info.value.description == "Unknown secure client"
        with pytest.raises(KmsRejected, match="UNKNOWN_CLIENT"):
            await client.query_client("C-BAD")
        await client.execute(command(Operation.PAIR, "k2", card="C-GOOD", chipset="STB-2"))

    with_client(kms_simulator, calls)
    assert set(kms_simulator.state()["secure_clients"]) == {"C-GOOD"}


def test_latency_injection_delays_each_call_by_at_least_the_latency(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(latency_ms=200)

    async def timed(client: SoapKmsClient) -> float:
        started = time.perf_counter()
        await client.execute(command(Operation.REAUTHORISE_SECTOR, "k-lat"))
        return time.perf_counter() - started

    assert with_client(kms_simulator, timed) >= 0.2


def test_concurrent_calls_for_many_cards_all_apply(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(latency_ms=20)

    async def many(client: SoapKmsClient) -> None:
        await asyncio.gather(*(client.execute(command(Operation.PAIR, f"k{i}", card=f"C{i}", chipset=f"B{i}"))
                               for i in range(60)))

    with_client(kms_simulator, many, max_connections=20)
    clients = kms_simulator.state()["secure_clients"]
    assert {card: c["paired_chipset"] for card, c in clients.items()} == {f"C{i}": f"B{i}" for i in range(60)}


def test_strict_clients_answer_unknown_client(strict_kms_simulator: SimulatorHandle) -> None:
    async def calls(client: SoapKmsClient) -> None:
        with pytest.raises(KmsRejected) as info:
            await client.execute(command(Operation.SET_PIN, "k-pin", card="NEW-1", pin=SecretStr("0001")))
        assert info.value.code == "UNKNOWN_CLIENT"
        with pytest.raises(KmsRejected, match="UNKNOWN_CLIENT"):
            await client.query_client("NEW-1")

    with_client(strict_kms_simulator, calls)
    assert strict_kms_simulator.state()["secure_clients"] == {}

    strict_kms_simulator.set_state({"secure_clients": {"NEW-1": {}}})
    outcome = with_client(strict_kms_simulator, lambda c: c.execute(
        command(Operation.SET_PIN, "k-pin", card="NEW-1", pin=SecretStr("0001"))))
    assert outcome.provider_code == "OK"


def test_query_client_returns_all_nine_sections_or_the_ones_named(kms_simulator: SimulatorHandle) -> None:
    async def query(client: SoapKmsClient) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        await client.execute(command(Operation.PAIR, "k", chipset="STB-7"))
        await client.execute(command(Operation.SET_PIN, "p", pin=SecretStr("9876")))
        return await client.query_client("4120051539"), await client.query_client("4120051539", ["pairing"])

    everything, pairing = with_client(kms_simulator, query)
    assert list(everything) == list(QUERY_SECTIONS)
    assert everything["pairing"] == {"paired": "true", "chipset": "STB-7"}
    assert everything["security"] == {"pin_set": "true"}
    assert "9876" not in json.dumps(everything)
    assert pairing == {"pairing": {"paired": "true", "chipset": "STB-7"}}


def test_query_of_an_unknown_section_is_rejected_without_a_call(kms_simulator: SimulatorHandle) -> None:
    with pytest.raises(KmsRejected) as info:
        with_client(kms_simulator, lambda c: c.query_client("C1", ["astrology"]))
    assert info.value.code == "INVALID_SECTION"


def test_query_clients_batches_and_reads_drift_made_through_admin_state(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_state({"secure_clients": {
        f"C{i}": {"entitlements": [{"product_id": f"P{i}", "valid_from": "2026-01-01T00:00:00Z"}],
                  "paired_chipset": f"B{i}", "pin": "0001" if i % 2 else None}
        for i in range(5)}})
    cards = [f"C{i}" for i in range(7)]  # C5, C6 unknown

    states = with_client(kms_simulator, lambda c: c.query_clients(cards), query_batch_size=3)
    assert list(states) == cards
    assert states["C3"].known and states["C3"].paired_chipset == "B3" and states["C3"].pin_set
    assert states["C2"].entitlements == (Product(product_id="P2", valid_from=datetime(2026, 1, 1, tzinfo=UTC)),)
    assert not states["C2"].pin_set
    assert not states["C6"].known and states["C6"].entitlements == ()


def test_no_log_record_carries_the_pin_or_the_message_text(
    kms_simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    kms_simulator.set_faults(card_errors={"C-BAD": "CARD_BLOCKED"})

    async def calls(client: SoapKmsClient) -> None:
        await client.execute(command(Operation.SET_PIN, "k1", pin=SecretStr("5831")))
        await client.execute(command(Operation.SEND_MAIL, "k2", message=mail(MessageKind.MAIL, "SECRET-TEXT")))
        with pytest.raises(KmsRejected) as info:
            await client.execute(command(Operation.SET_PIN, "k3", card="C-BAD", pin=SecretStr("5831")))
        assert "5831" not in str(info.value)

    with caplog.at_level(logging.DEBUG):
        with_client(kms_simulator, calls)
    assert caplog.records  # the calls were logged, by ids
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "5831" not in logged and "SECRET-TEXT" not in logged


def test_the_wsdl_is_served_with_the_simulators_own_address(kms_simulator: SimulatorHandle) -> None:
    headers = {"Authorization": f"Bearer {kms_simulator.token}"}
    response = httpx.get(f"{kms_simulator.endpoint}?wsdl", headers=headers)
    assert response.status_code == 200
    assert f'location="{kms_simulator.endpoint}"' in response.text


def test_admin_endpoints_require_the_token_but_healthz_does_not(kms_simulator: SimulatorHandle) -> None:
    for method, path in [("GET", "/admin/state"), ("POST", "/admin/state"), ("GET", "/admin/faults"),
                         ("POST", "/admin/faults"), ("POST", "/admin/reset"), ("GET", "/kms?wsdl")]:
        assert httpx.request(method, kms_simulator.url + path, json={}).status_code == 401, path
    assert httpx.get(kms_simulator.url + "/healthz").status_code == 200


def test_a_malformed_request_gets_a_soap_client_fault(kms_simulator: SimulatorHandle) -> None:
    response = httpx.post(kms_simulator.endpoint, content=b"<not-soap/>",
                          headers={"Authorization": f"Bearer {kms_simulator.token}"})
    assert response.status_code == 500
    assert "<faultcode>soap:Client</faultcode>" in response.text


def test_bad_admin_input_is_refused_with_the_field_named(kms_simulator: SimulatorHandle) -> None:
    headers = {"Authorization": f"Bearer {kms_simulator.token}"}
    response = httpx.post(kms_simulator.url + "/admin/faults", json={"error_rate": 3}, headers=headers)
    assert response.status_code == 400 and "error_rate" in response.json()["error"]
    response = httpx.post(kms_simulator.url + "/admin/state",
                          json={"secure_clients": {"C1": {"colour": "red"}}}, headers=headers)
    assert response.status_code == 400 and "secure_clients.C1.colour" in response.json()["error"]


def test_audit_file_gets_one_json_line_per_audit_entry(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    with running_simulator(audit_file=str(audit_file)) as sim:
        osd = command(Operation.REAUTHORISE_SECTOR, "k-a")

        async def twice(client: SoapKmsClient) -> None:
            await client.execute(osd)
            await client.execute(osd)

        with_client(sim, twice)
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [(e["seq"], e["idempotency_key"], e["duplicate"]) for e in lines] == [(1, "k-a", False), (2, "k-a", True)]


def test_simulator_cli_reads_the_token_from_a_file(kms_simulator: SimulatorHandle, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(kms_simulator.token + "\n")
    result = CliRunner().invoke(simulator_group, ["state", "--url", kms_simulator.url, "--json",
                                                  "--token-file", str(token_file)],
                                env={"KMSBRIDGE_KMS__TOKEN": ""})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["secure_clients"] == {}


def test_simulator_cli_reads_state_and_injects_faults(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_state({"secure_clients": {"C1": {"paired_chipset": "STB-1", "pin": "7777"}}})
    runner = CliRunner()
    env = {"KMSBRIDGE_KMS__TOKEN": kms_simulator.token}

    table = runner.invoke(simulator_group, ["state", "--url", kms_simulator.url], env=env)
    assert table.exit_code == 0, table.output
    assert "C1" in table.output and "STB-1" in table.output and "7777" not in table.output

    as_json = runner.invoke(simulator_group, ["state", "--url", kms_simulator.url, "--json"], env=env)
    assert json.loads(as_json.output)["secure_clients"]["C1"]["paired_chipset"] == "STB-1"

    fault = runner.invoke(simulator_group, ["fault", "--url", kms_simulator.url, "--latency-ms", "5",
                                            "--error-rate", "0.5"], env=env)
    assert fault.exit_code == 0, fault.output
    assert kms_simulator.faults()["latency_ms"] == 5 and kms_simulator.faults()["error_rate"] == 0.5
    runner.invoke(simulator_group, ["fault", "--url", kms_simulator.url, "--clear"], env=env)
    assert kms_simulator.faults()["latency_ms"] == 0

    refused = runner.invoke(simulator_group, ["state", "--url", kms_simulator.url],
                            env={"KMSBRIDGE_KMS__TOKEN": "wrong"})
    assert refused.exit_code == 1


def test_simulator_cli_refuses_to_start_without_a_token() -> None:
    result = CliRunner().invoke(simulator_group, ["--port", "0"], env={"KMSBRIDGE_KMS__TOKEN": ""})
    assert result.exit_code == 2
    assert "KMSBRIDGE_KMS__TOKEN" in result.output


# --- response shapes --------------------------------------------------------------------------------


async def five_calls(client: SoapKmsClient, prefix: str) -> tuple[list[bool], list[str], dict[str, str]]:
    """Three mutating calls, a batch query and a single query (zeep's path), one after the other."""
    duplicates = [(await client.execute(command(Operation.SYNC_ENTITLEMENTS, f"{prefix}-{i}",
                                                products=[Product(product_id=f"P{i}")]))).duplicate
                  for i in range(3)]
    states = await client.query_clients(["4120051539"])
    sections = await client.query_client("4120051539", ["entitlements"])
    return duplicates, [p.product_id for p in states["4120051539"].entitlements], sections["entitlements"]


@pytest.mark.parametrize(("shape", "connections"), [
    ("chunked", 1),            # chunked answers keep the connection
    ("connection_close", 5),   # the server closes after each answer
    ("http10", 5),             # HTTP/1.0 without a length: the body ends at close
    ("te_and_cl", 5),          # Transfer-Encoding wins; such an answer's connection is never reused
])
def test_every_response_shape_is_read_and_a_connection_is_reused_only_when_it_may(
        kms_simulator: SimulatorHandle, shape: str, connections: int) -> None:
    kms_simulator.set_faults(response_shape=shape)
    before = kms_simulator.faults()["soap_connections"]

    duplicates, products, entitlements = with_client(kms_simulator, lambda c: five_calls(c, f"k-{shape}"))

    assert duplicates == [False, False, False] and products == ["P2"]
    assert entitlements  # the single query's section was read through zeep over the same connections
    assert kms_simulator.faults()["soap_connections"] - before == connections


@pytest.mark.parametrize("shape", ["oversized", "oversized_chunked"])
def test_an_answer_over_the_size_cap_is_a_transient_error_and_the_next_call_works(
        kms_simulator: SimulatorHandle, shape: str) -> None:
    kms_simulator.set_faults(response_shape=shape, oversized_bytes=3_000_000)

    async def over_then_fine(client: SoapKmsClient) -> bool:
        with pytest.raises(KmsUnavailable) as info:
            await client.execute(command(Operation.REAUTHORISE_SECTOR, "k-big"))
        assert info.value.kind == "response_too_large" and info.value.retryable
        kms_simulator.clear_faults()
        return (await client.execute(command(Operation.REAUTHORISE_SECTOR, "k-big"))).duplicate

    assert with_client(kms_simulator, over_then_fine, max_response_bytes=1_000_000) is True


def test_a_padded_answer_under_the_default_cap_is_read(kms_simulator: SimulatorHandle) -> None:
    kms_simulator.set_faults(response_shape="oversized_chunked", oversized_bytes=3_000_000)
    outcome = with_client(kms_simulator, lambda c: c.execute(command(Operation.REAUTHORISE_SECTOR, "k-padded")))
    assert outcome.provider_code == "OK"


def lost_answer_on_a_kept_connection(sim: SimulatorHandle, cmd: KmsCommand) -> Callable[[SoapKmsClient], Any]:
    async def call(client: SoapKmsClient) -> Any:
        await client.ping()  # the connection the next call reuses
        sim.set_faults(lose_answers=1)
        return await client.execute(cmd)

    return call


def test_a_lost_answer_of_an_absolute_write_is_resent_once_and_the_kms_deduplicates_it(
        kms_simulator: SimulatorHandle) -> None:
    cmd = command(Operation.SYNC_ENTITLEMENTS, "k-lost", products=[Product(product_id="P100")])

    outcome = with_client(kms_simulator, lost_answer_on_a_kept_connection(kms_simulator, cmd))

    assert outcome.duplicate is True  # the resend found the key the lost call had applied
    assert [(a["idempotency_key"], a["duplicate"]) for a in kms_simulator.audit()] == [
        ("k-lost", False), ("k-lost", True)]


@pytest.mark.parametrize("operation", [Operation.SEND_MAIL, Operation.SEND_MESSAGE])
def test_a_lost_answer_of_an_effect_is_raised_and_never_resent_by_the_client(
        kms_simulator: SimulatorHandle, operation: Operation) -> None:
    kind = MessageKind.MAIL if operation is Operation.SEND_MAIL else MessageKind.MESSAGE
    cmd = command(operation, "k-effect", message=mail(kind, "once only"))

    with pytest.raises(KmsUnavailable) as info:
        with_client(kms_simulator, lost_answer_on_a_kept_connection(kms_simulator, cmd))

    # the executor's ledger and retries decide, told the KMS may have applied it
    assert info.value.kind == "network" and info.value.retryable and info.value.maybe_applied
    assert [a["idempotency_key"] for a in kms_simulator.audit()] == ["k-effect"]


def test_shape_faults_are_refused_by_name_when_unknown(kms_simulator: SimulatorHandle) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        kms_simulator.set_faults(response_shape="gzip")
    assert "response_shape" in info.value.response.json()["error"]


# --- mutual TLS -------------------------------------------------------------------------------------


def test_mutual_tls_presents_the_client_certificate_from_the_settings(tmp_path: Path) -> None:
    server, client_cert = write_mutual_tls(tmp_path, key_password=b"key-pass-42")
    token = "mtls-token"
    url, stop = start_in_thread(token, tls={"ssl_certfile": str(server.cert), "ssl_keyfile": str(server.key),
                                            "ssl_ca_certs": str(server.ca), "ssl_cert_reqs": ssl.CERT_REQUIRED})
    plain = KmsSettings(endpoint=f"{url}/kms", token=SecretStr(token), ca_file=server.ca)
    mutual = plain.model_copy(update={"client_cert_file": client_cert.cert, "client_key_file": client_cert.key,
                                      "client_key_password": SecretStr("key-pass-42")})

    async def sync(kms: KmsSettings) -> bool:
        async with SoapKmsClient(kms.endpoint, "ALUX", kms.resolved_token(), verify=kms.verify(),
                                 **kms.client_options()) as client:
            outcome = await client.execute(command(Operation.SYNC_ENTITLEMENTS, "k-mtls",
                                                   products=[Product(product_id="P100")]))
            return outcome.duplicate

    try:
        with pytest.raises(KmsUnavailable) as refused:  # no client certificate: the server ends the handshake
            asyncio.run(sync(plain))
        assert refused.value.kind in ("connect", "network")
        assert asyncio.run(sync(mutual)) is False

        wrong = mutual.model_copy(update={"client_key_password": SecretStr("not-it")})
        with pytest.raises(ValueError, match="KMSBRIDGE_KMS__CLIENT_KEY_PASSWORD") as bad:
            asyncio.run(sync(wrong))
        assert "not-it" not in str(bad.value)
    finally:
        stop()
