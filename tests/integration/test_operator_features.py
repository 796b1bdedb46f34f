"""Operator features through the real broker, the real simulator, the translator and the executor.

The Web API runs as ``kmsbridge run api`` in a subprocess (real uvicorn, real outcome feed); the CLI
verbs run in-process through ``click.testing.CliRunner`` with the pipeline's environment. Outcomes are
read from the simulator's state and audit and from the topics; every wait is a bounded poll.

The reconciler is another issue's process: where a reset run needs its report, a test publishes the
ReconcileReport itself (marked "stand-in reconciler") to check the API's half of the contract.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from api_process import spawn_api
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, KafkaException, TopicPartition

from kmsbridge.cli.ops import mail_run_cmd, query_cmd, reauthorise_cmd, send_message_cmd, set_pin_cmd
from producers.topics import wait_for_topics
from schemas.records import (
    CommunicationEvent,
    KmsResult,
    MessageKind,
    ReconcileReport,
    ReconcileRequest,
    ResultState,
    TextMode,
)
from tests.support.pipeline import Pipeline, wait_until
from tests.support.processes import RunningProcess, start_executor, start_translator
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

KEY = "it-key-7c1d9e"
PIN = "5307"
LOG = logging.getLogger(__name__)


def card() -> str:
    return f"71{uuid.uuid4().int % 10**8:08d}"


# --- the running product -------------------------------------------------------------------------------


@dataclass
class Product:
    pipeline: Pipeline
    sim: SimulatorHandle
    api_url: str
    api_proc: subprocess.Popen[bytes]

    def http(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=60)

    def client(self, id_: str) -> dict[str, Any]:
        return self.sim.client_state(id_) or {}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def product(kafka_bootstrap: str, _kms_simulator_server: SimulatorHandle,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    sim = _kms_simulator_server
    # immediate delivery: the continuous translator sends communications (the queue has its own tests)
    pipeline = Pipeline(kafka_bootstrap, sim.url, sim.token, tmp_path_factory.mktemp("operator"),
                        extra_env={"KMSBRIDGE_COMMUNICATIONS__DELIVERY": "immediate"})
    procs: list[RunningProcess] = [start_translator(pipeline.settings), start_executor(pipeline.settings)]
    api: subprocess.Popen[bytes] | None = None
    try:
        api, url = spawn_api(pipeline, {"KMSBRIDGE_API__API_KEYS": json.dumps([KEY]),
                                        "KMSBRIDGE_API__WAIT_SECONDS": "30"})
        yield Product(pipeline, sim, url, api)
    finally:
        if api is not None:
            _stop(api)
        for proc in reversed(procs):
            proc.stop()
        pipeline.close()
    # SIGTERM stops the API gracefully: in-flight calls finish, the feed and the producer are closed
    assert api is not None and api.returncode == 0, (pipeline.workdir / "api.log").read_text()[-2000:]
    assert "web api stopped" in (pipeline.workdir / "api.log").read_text()


@pytest.fixture
def running(product: Product, kms_simulator: SimulatorHandle) -> Product:
    """The module's product with an emptied simulator (``kms_simulator`` resets it around each test)."""
    return product


def invoke(pipeline: Pipeline, command: click.Command, args: list[str]) -> Result:
    """A CLI verb as a user runs it, with the pipeline's settings; restores what the verb installs in-process
    (log handlers, signal handlers) so later tests are unaffected."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sig = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return CliRunner().invoke(command, args, env=pipeline.env(), catch_exceptions=False)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for s, handler in sig.items():
            signal.signal(s, handler)


def results_for(pipeline: Pipeline, **match: str) -> list[KmsResult]:
    def wanted(r: KmsResult) -> bool:
        return all(getattr(r, k) == v for k, v in match.items())

    return [r for r in pipeline.results(lambda rs: any(wanted(r) for r in rs)) if wanted(r)]


# --- Web API: access and validation ---------------------------------------------------------------------


def test_the_api_answers_401_without_a_key_or_with_a_wrong_one(running: Product) -> None:
    for key in (None, "not-the-key"):
        with running.http(key) as http:
            response = http.post("/v1/secure-clients/1/pin", json={"pin": PIN})
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
    assert running.sim.audit() == []


def test_the_api_answers_422_naming_pin_for_a_three_digit_pin_and_does_not_echo_it(running: Product) -> None:
    with running.http() as http:
        response = http.post("/v1/secure-clients/1/pin", json={"pin": "530"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "pin"]
    assert "530" not in response.text


def test_the_api_serves_probes_and_metrics_and_no_openapi_document_by_default(running: Product) -> None:
    with running.http(None) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert "kmsbridge_api_requests_total" in http.get("/metrics").text
        assert http.get("/openapi.json").status_code == 404  # KMSBRIDGE_API__DOCS=off


def test_an_unknown_request_id_is_404(running: Product) -> None:
    with running.http() as http:
        assert http.get(f"/v1/requests/{uuid.uuid4()}").status_code == 404


# --- Web API: PIN, re-authorisation, query ---------------------------------------------------------------


def test_setting_a_pin_with_process_immediately_waits_for_the_kms_and_answers_completed(running: Product) -> None:
    scid = card()
    with running.http() as http:
        response = http.post(f"/v1/secure-clients/{scid}/pin", params={"process_immediately": "true"},
                             json={"pin": PIN})

    assert response.status_code == 200
    assert response.json()["state"] == "COMPLETED"
    assert PIN not in response.text
    assert running.client(scid)["pin"] == PIN  # already applied when the answer came


def test_a_pin_reset_without_process_immediately_is_202_pending_then_completed_with_the_default(
        running: Product) -> None:
    scid = card()
    running.sim.set_state({"secure_clients": {scid: {"pin": "9999"}}})
    with running.http() as http:
        accepted = http.post(f"/v1/secure-clients/{scid}/pin", json={"default": True})
        assert accepted.status_code == 202
        assert accepted.json()["state"] == "PENDING"
        status_url = accepted.json()["status_url"]

        done = wait_until("the reset settles", lambda: (r := http.get(status_url).json())["state"] != "PENDING" and r)

    assert done["state"] == "COMPLETED"
    assert done["type"] == "RESET_PIN"
    assert running.client(scid)["pin"] == "0001"


def test_reauthorisation_through_the_api_synchronises_the_sector_once(running: Product) -> None:
    scid = card()
    with running.http() as http:
        response = http.post(f"/v1/secure-clients/{scid}/reauthorise", params={"process_immediately": "true"})

    assert (response.status_code, response.json()["state"]) == (200, "COMPLETED")
    assert running.client(scid)["sector_syncs"] == 1


def test_a_query_through_the_api_returns_the_sections_from_the_kms(running: Product) -> None:
    scid = card()
    running.sim.set_state({"secure_clients": {scid: {"paired_chipset": "STB-Q", "pin": "1111"}}})
    with running.http() as http:
        everything = http.get(f"/v1/secure-clients/{scid}")
        some = http.get(f"/v1/secure-clients/{scid}", params=[("section", "pairing"), ("section", "security")])

    assert everything.status_code == 200
    assert len(everything.json()["sections"]) == 9
    assert some.json()["sections"] == {"pairing": {"paired": "true", "chipset": "STB-Q"},
                                       "security": {"pin_set": "true"}}
    assert "1111" not in everything.text


# --- Web API: messages -----------------------------------------------------------------------------------


def test_mail_message_and_global_message_through_the_api_reach_the_kms(running: Product) -> None:
    a, b = card(), card()
    bodies = [{"secure_client_id": a, "kind": "MAIL", "text_mode": "ANSI", "text": "Café ouvert à 20h"},
              {"secure_client_id": b, "kind": "MESSAGE", "text_mode": "UNICODE", "text": "Привет 👋"},
              {"all": True, "kind": "MAIL", "text_mode": "RAW", "text": "48656C6C6F"}]
    with running.http() as http:
        states = [http.post("/v1/messages", params={"process_immediately": "true"}, json=body).json()["state"]
                  for body in bodies]

    assert states == ["COMPLETED"] * 3
    state = running.sim.state()
    assert state["secure_clients"][a]["mailbox"] == [{"text": "Café ouvert à 20h", "text_mode": "ANSI"}]
    assert state["secure_clients"][b]["messages"] == [{"text": "Привет 👋", "text_mode": "UNICODE"}]
    assert state["global_mailbox"] == [{"text": "48656C6C6F", "text_mode": "RAW"}]


@pytest.mark.parametrize(("mode", "text", "code"), [
    ("ANSI", "Привет", "TEXT_NOT_ENCODABLE"),
    ("ANSI", "", "TEXT_EMPTY"),
    ("UNICODE", "   ", "TEXT_EMPTY"),
    ("ANSI", "x" * 1025, "TEXT_TOO_LONG"),
    ("RAW", "ABC", "INVALID_RAW_TEXT"),
])
def test_a_text_its_mode_cannot_carry_is_rejected_with_the_reason_and_reaches_no_kms(
        running: Product, mode: str, text: str, code: str) -> None:
    scid = card()
    with running.http() as http:
        response = http.post("/v1/messages", params={"process_immediately": "true"},
                             json={"secure_client_id": scid, "kind": "MAIL", "text_mode": mode, "text": text})

    assert response.status_code == 200
    assert response.json()["state"] == "REJECTED"
    [error] = response.json()["errors"]
    assert error["code"] == code
    assert mode in error["description"]
    assert running.sim.audit() == []


def test_a_message_to_an_unknown_subscription_is_rejected(running: Product) -> None:
    with running.http() as http:
        response = http.post("/v1/messages", params={"process_immediately": "true"},
                             json={"subscription_id": f"S-{uuid.uuid4()}", "kind": "MESSAGE", "text_mode": "ANSI",
                                   "text": "hello"})

    assert response.json()["state"] == "REJECTED"
    assert response.json()["errors"][0]["code"] == "UNKNOWN_SUBSCRIPTION"


# --- Web API: resets -------------------------------------------------------------------------------------


def test_a_subscription_reset_is_handed_to_the_reconciler_and_stays_pending_until_its_report(
        running: Product) -> None:
    sub = f"S-{uuid.uuid4()}"
    with running.http() as http:
        accepted = http.post(f"/v1/subscriptions/{sub}/reset")
        request_id = accepted.json()["request_id"]

        runs = running.pipeline.read("reconcile_requests", lambda rs: any(
            isinstance(r, ReconcileRequest) and r.run_id == request_id for r in rs))
        pending = http.get(f"/v1/requests/{request_id}").json()

    assert accepted.status_code == 202
    [run] = [r for r in runs if r.run_id == request_id]
    assert run.subscription_ids == [sub]
    assert pending["state"] == "PENDING"


def test_a_reconcile_run_with_process_immediately_answers_with_its_report(running: Product) -> None:
    marker = f"TYPE-{uuid.uuid4().hex[:8]}"

    def call() -> httpx.Response:
        with running.http() as http:
            return http.post("/v1/reconcile-runs", params={"process_immediately": "true"},
                             json={"subscription_types": [marker], "preview": True})

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call)
        runs = running.pipeline.read("reconcile_requests", lambda rs: any(
            isinstance(r, ReconcileRequest) and r.subscription_types == [marker] for r in rs))
        [run] = [r for r in runs if r.subscription_types == [marker]]
        now = datetime.now(UTC)  # stand-in reconciler: the report the reconciler process would publish
        running.pipeline.produce("reconcile_reports", [ReconcileReport(
            run_id=run.run_id, preview=True, checked=4, in_sync=3, drifted=1, started_at=now, finished_at=now)])
        response = pending.result(60)

    assert response.status_code == 200
    assert response.json()["request_id"] == run.run_id
    assert response.json()["state"] == "COMPLETED"
    assert response.json()["report"]["drifted"] == 1
    assert run.preview is True


# --- CLI verbs -------------------------------------------------------------------------------------------


def test_cli_set_pin_waits_for_completion_and_never_prints_the_pin(running: Product) -> None:
    scid = card()

    result = invoke(running.pipeline, set_pin_cmd, ["--secure-client", scid, "--pin", PIN, "--wait", "--timeout", "60"])

    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.output
    assert PIN not in result.output
    assert running.client(scid)["pin"] == PIN


def test_cli_a_three_digit_pin_exits_2_naming_pin_and_sends_nothing(running: Product) -> None:
    result = invoke(running.pipeline, set_pin_cmd, ["--secure-client", card(), "--pin", "530", "--wait"])

    assert result.exit_code == 2
    assert "--pin" in result.output
    assert "530" not in result.output
    assert running.sim.audit() == []


def test_cli_pin_needs_exactly_one_of_pin_and_default(running: Product) -> None:
    both = invoke(running.pipeline, set_pin_cmd, ["--secure-client", card(), "--pin", PIN, "--default"])
    neither = invoke(running.pipeline, set_pin_cmd, ["--secure-client", card()])

    assert (both.exit_code, neither.exit_code) == (2, 2)
    assert PIN not in both.output


def test_cli_default_pin_and_reauthorise_wait_for_the_kms(running: Product) -> None:
    scid = card()
    running.sim.set_state({"secure_clients": {scid: {"pin": "9999"}}})

    reset = invoke(running.pipeline, set_pin_cmd, ["--secure-client", scid, "--default", "--wait", "--timeout", "60"])
    reauth = invoke(running.pipeline, reauthorise_cmd, ["--secure-client", scid, "--wait", "--timeout", "60"])

    assert (reset.exit_code, reauth.exit_code) == (0, 0), reset.output + reauth.output
    assert running.client(scid)["pin"] == "0001"
    assert running.client(scid)["sector_syncs"] == 1


def test_cli_without_wait_queues_the_request_and_prints_its_id(running: Product) -> None:
    scid = card()

    result = invoke(running.pipeline, reauthorise_cmd, ["--secure-client", scid])

    assert result.exit_code == 0
    request_id = re.search(r"request (\S+) queued", result.stdout).group(1)  # type: ignore[union-attr]
    [outcome] = results_for(running.pipeline, request_id=request_id)
    assert outcome.state is ResultState.COMPLETED


def test_cli_send_message_to_a_card_and_to_everyone(running: Product) -> None:
    scid = card()

    mail = invoke(running.pipeline, send_message_cmd, ["--secure-client", scid, "--kind", "mail", "--text-mode",
                                                       "ansi", "--text", "Facture prête", "--wait", "--timeout", "60"])
    osd = invoke(running.pipeline, send_message_cmd, ["--all", "--kind", "message", "--text-mode", "unicode",
                                                      "--text", "Ειδοποίηση ✓", "--wait", "--timeout", "60"])

    assert (mail.exit_code, osd.exit_code) == (0, 0), mail.output + osd.output
    assert "Facture" not in mail.output
    state = running.sim.state()
    assert state["secure_clients"][scid]["mailbox"] == [{"text": "Facture prête", "text_mode": "ANSI"}]
    assert state["global_messages"] == [{"text": "Ειδοποίηση ✓", "text_mode": "UNICODE"}]


@pytest.mark.parametrize(("mode", "text", "reason"), [("ansi", "Привет", "TEXT_NOT_ENCODABLE"),
                                                      ("ansi", " ", "TEXT_EMPTY"),
                                                      ("unicode", "y" * 513, "TEXT_TOO_LONG")])
def test_cli_a_text_its_mode_cannot_carry_exits_2_naming_text_and_sends_nothing(
        running: Product, mode: str, text: str, reason: str) -> None:
    result = invoke(running.pipeline, send_message_cmd, ["--secure-client", card(), "--kind", "mail", "--text-mode",
                                                         mode, "--text", text, "--wait"])

    assert result.exit_code == 2
    assert "--text" in result.output and reason in result.output
    assert running.sim.audit() == []


def test_cli_a_rejected_request_exits_1_with_the_code(running: Product) -> None:
    result = invoke(running.pipeline, send_message_cmd, ["--subscription", f"S-{uuid.uuid4()}", "--kind", "mail",
                                                         "--text-mode", "ansi", "--text", "hi", "--wait",
                                                         "--timeout", "60"])

    assert result.exit_code == 1
    assert "REJECTED" in result.output and "UNKNOWN_SUBSCRIPTION" in result.output


def test_cli_query_prints_a_table_of_the_nine_sections_and_json_on_request(running: Product) -> None:
    scid = card()
    running.sim.set_state({"secure_clients": {scid: {"paired_chipset": "STB-T", "sector_syncs": 2}}})

    table = invoke(running.pipeline, query_cmd, ["--secure-client", scid])
    as_json = invoke(running.pipeline, query_cmd, ["--secure-client", scid, "--section", "sector", "--json"])

    assert table.exit_code == 0, table.output
    for section in ("pairing", "entitlements", "basic", "security", "anchoring", "tms_attributes", "sector", "pvr",
                    "device_domain"):
        assert section in table.output
    assert "STB-T" in table.output
    assert json.loads(as_json.stdout) == {"secure_client_id": scid,
                                          "sections": {"sector": {"sector_id": "1", "sector_syncs": "2"}}}


# --- mail runs ---------------------------------------------------------------------------------------------


def communication(comm_id: str, scid: str, *, system: str = "IRDETO", kind: MessageKind = MessageKind.MAIL,
                  mode: TextMode = TextMode.ANSI, text: str = "Your bill is ready") -> CommunicationEvent:
    return CommunicationEvent(communication_id=comm_id, external_system=system, kind=kind, text_mode=mode, text=text,
                              secure_client_id=scid, created_at=datetime.now(UTC))


def test_the_continuous_translator_sends_communications_in_real_time_and_skips_other_systems(
        running: Product) -> None:
    mine, other = card(), card()
    running.pipeline.produce("communications", [
        communication(f"C-{uuid.uuid4()}", other, system="SMS-GATEWAY"),
        communication(f"C-{uuid.uuid4()}", mine, kind=MessageKind.MESSAGE, mode=TextMode.UNICODE, text="Ciao ☀")])

    wait_until("the Message on screen", lambda: running.client(mine).get("messages") == [
        {"text": "Ciao ☀", "text_mode": "UNICODE"}])
    assert other not in running.sim.state()["secure_clients"]


@pytest.fixture
def mail_pipeline(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Pipeline]:
    """Fresh topics with an executor and *no* continuous translator: only mail-run translates."""
    pipe = Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path,
                    extra_env={"KMSBRIDGE_COMMUNICATIONS__DELIVERY": "immediate"})
    # Fresh topics: a new partition's leader may answer NOT_LEADER_FOR_PARTITION to an end-offset query
    # for a moment, and the translator's one-shot mode does not retry that yet (reported to the lead), so
    # wait until the broker answers one for every partition of crm.communications.
    wait_for_topics(pipe.settings.kafka_config(), pipe.settings.all_topics())
    wait_until("end offsets of crm.communications answer", lambda: _watermarks_answer(pipe))
    executor = start_executor(pipe.settings)
    yield pipe
    executor.stop()
    pipe.close()


def _watermarks_answer(pipe: Pipeline) -> bool:
    topic = pipe.settings.topic("communications")
    consumer = Consumer({"bootstrap.servers": pipe.bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        for partition in range(pipe.partitions):
            consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


def test_a_mail_run_sends_skips_and_rejects_what_is_pending_then_exits_and_never_repeats(
        mail_pipeline: Pipeline, kms_simulator: SimulatorHandle) -> None:
    a, b, c, d = card(), card(), card(), card()
    comms = [communication("C-1", a, text="Mail pour vous"),
             communication("C-2", b, kind=MessageKind.MESSAGE, mode=TextMode.UNICODE, text="Hallo 🌍"),
             communication("C-3", c, system="EMAIL"),
             communication("C-4", d, text="Спасибо")]
    mail_pipeline.produce("communications", comms)

    first = invoke(mail_pipeline, mail_run_cmd, ["--json"])

    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert (counts["sent"], counts["skipped"], counts["rejected"]) == (2, 1, 1)
    results = mail_pipeline.results(lambda rs: {r.communication_id for r in rs} >= {"C-1", "C-2", "C-4"})
    by_comm = {r.communication_id: r for r in results}
    assert by_comm["C-1"].state is ResultState.COMPLETED
    assert by_comm["C-2"].state is ResultState.COMPLETED
    assert (by_comm["C-4"].state, by_comm["C-4"].error_code) == (ResultState.REJECTED, "TEXT_NOT_ENCODABLE")
    assert "C-3" not in by_comm  # skipped: no result, no KMS call
    audited = {entry["secure_client_id"] for entry in kms_simulator.audit()}
    assert audited == {a, b}
    assert kms_simulator.client_state(a)["mailbox"] == [{"text": "Mail pour vous", "text_mode": "ANSI"}]  # type: ignore[index]

    mail_pipeline.produce("communications", [communication("C-5", a, text="Second mail")])
    second = invoke(mail_pipeline, mail_run_cmd, [])

    assert second.exit_code == 0, second.output
    assert "1 sent, 0 skipped, 0 rejected" in second.output  # C-1..C-4 were not handled again
    wait_until("the second mail", lambda: len((kms_simulator.client_state(a) or {}).get("mailbox", [])) == 2)
    assert len([e for e in kms_simulator.audit() if e["secure_client_id"] == a and not e["duplicate"]]) == 2


def test_mail_run_refuses_when_communications_wait_in_the_queue(mail_pipeline: Pipeline) -> None:
    queued = Pipeline(mail_pipeline.bootstrap, mail_pipeline.simulator_url, mail_pipeline.token,
                      mail_pipeline.workdir / "queued")
    try:
        result = invoke(queued, mail_run_cmd, [])
    finally:
        queued.close()

    assert result.exit_code == 2
    assert "runs execute" in result.output


def test_a_mail_run_on_an_empty_topic_exits_at_once_with_zero_counts(mail_pipeline: Pipeline) -> None:
    result = invoke(mail_pipeline, mail_run_cmd, [])

    assert result.exit_code == 0
    assert "0 sent, 0 skipped, 0 rejected" in result.output
