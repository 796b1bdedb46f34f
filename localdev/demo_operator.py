"""The operator part of ``kmsbridge demo``: what support agents and CRM do every day.

:func:`operator_steps` runs after the real-time steps, on the same household: a mail run (a Mail in
ANSI and an on-screen Message in Unicode), a message to every subscriber, a PIN set and a reset to the
provider's default, a sector re-authorisation, a query printed as a table, and a message whose text
Windows-1252 cannot encode, which is REJECTED. Everything goes through Kafka as a user's records would
(``crm.communications``, ``kms.requests``); only the query reads the KMS directly, as the product does.
The PIN is never printed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import click
from pydantic import SecretStr

from kmsbridge.cli.ops import format_client_table
from kmsbridge.kms import build_kms
from kmsbridge.wiring import load_provider_or_exit
from kmsbridge.wiring_runs import open_queue, open_run_store
from localdev.demo_kit import WAIT_SECONDS, Demo, Household
from provisioning.errors import TEXT_NOT_ENCODABLE
from provisioning.provider import ProviderConfig
from reconciler.communications_queue import CommunicationState
from reconciler.run_definitions import RunDefinition, RunKind
from schemas.records import (
    CommunicationEvent,
    KmsResult,
    MessageKind,
    RequestType,
    ResultState,
    ServiceRequest,
    TextMode,
)

__all__ = ["operator_steps"]

PROCESS_NAME = "demo"


def _client(state: dict[str, Any], card: str) -> dict[str, Any]:
    found: dict[str, Any] = state["secure_clients"].get(card) or {}
    return found


def _texts(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("text")) for e in entries]


def _request(type_: RequestType, **fields: Any) -> ServiceRequest:
    return ServiceRequest(request_id=str(uuid.uuid4()), type=type_, requested_at=datetime.now(UTC),
                          requested_by="demo", process_name=PROCESS_NAME, **fields)


def _submit(d: Demo, req: ServiceRequest, expect: ResultState) -> KmsResult | None:
    """Publish ``req``, wait for its result and check its state; print the outcome (codes only)."""
    d.produce("requests", req)
    result = d.wait_result(f"a {expect.value} result for {req.type.value}", lambda r: r.request_id == req.request_id)
    if result is None:
        return None
    line = f"  result: {result.state.value} {result.operation}"
    if result.error_code:
        line += f" {result.error_code}: {result.error_description}"
    click.echo(line)
    if result.state is not expect:
        d.failures.append(f"{req.type.value} ended {result.state.value}, expected {expect.value}")
    return result


def _mail_run(d: Demo, provider: ProviderConfig, main: str, twin: str) -> None:
    d.step("A mail run: a Mail (ANSI) for the MAIN box and an on-screen Message (Unicode) for TWIN1")
    click.echo("  the communications wait PENDING in the queue until a mail run definition executes")
    mail_text = f"Your sports package starts tonight at 20:00 (run {d.run})"
    osd_text = f"Добро пожаловать — 欢迎 — καλώς ήρθατε ✓ ({d.run})"
    now = datetime.now(UTC)
    for n, (kind, mode, text, card) in enumerate([(MessageKind.MAIL, TextMode.ANSI, mail_text, main),
                                                  (MessageKind.MESSAGE, TextMode.UNICODE, osd_text, twin)], 1):
        d.produce("communications", CommunicationEvent(
            communication_id=f"C-{d.run}-{n}", external_system=provider.mail_run.external_system, kind=kind,
            text_mode=mode, text=text, secure_client_id=card, created_at=now))
    if not _queued(d, {f"C-{d.run}-1", f"C-{d.run}-2"}):
        return
    runs = open_run_store(d.settings)
    name = f"demo-mail-{d.run}"
    runs.define(RunDefinition(name=name, kind=RunKind.MAIL, external_systems=[provider.mail_run.external_system]))
    execution = runs.request(name)
    click.echo(f"  mail run definition {name} executed ({execution.execution_id})")
    if d.wait_for("the Mail in MAIN's mailbox and the Message on TWIN1's screen",
                  lambda s: mail_text in _texts(_client(s, main).get("mailbox", []))
                  and osd_text in _texts(_client(s, twin).get("messages", []))):
        click.echo(f"  MAIN mailbox:   \"{mail_text}\" (ANSI)")
        click.echo(f"  TWIN1 screen:   \"{osd_text}\" (UNICODE)")


def _queued(d: Demo, communication_ids: set[str]) -> bool:
    """Wait (bounded) until the reconciler has queued every one of ``communication_ids``."""
    queue = open_queue(d.settings)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        pending = {e["communication_id"] for e in queue.entries(state=CommunicationState.PENDING, limit=1000)}
        if communication_ids <= pending:
            click.echo(f"  {len(communication_ids)} communications PENDING in the queue")
            return True
        time.sleep(0.2)
    d.failures.append("the communications queued PENDING")
    click.echo(click.style("  ✗ expected: the communications queued PENDING", fg="red"))
    return False


def _global_message(d: Demo) -> None:
    d.step("An on-screen Message to every subscriber (the KMS's global operation)")
    text = f"Planned maintenance tonight 02:00-03:00 (run {d.run})"
    req = _request(RequestType.SEND_MESSAGE, all=True, kind=MessageKind.MESSAGE, text_mode=TextMode.ANSI, text=text)
    _submit(d, req, ResultState.COMPLETED)
    if d.wait_for("the Message among the global messages", lambda s: text in _texts(s.get("global_messages", []))):
        click.echo(f"  every screen:   \"{text}\"")


def _pins(d: Demo, provider: ProviderConfig, hh: Household, main: str) -> None:
    d.step("The parental PIN of MAIN is set to a new value, then reset to the provider's default")
    default = provider.default_pin.get_secret_value()
    new_pin = default
    while new_pin == default:  # a value that differs from the default, so both steps show a change
        new_pin = f"{secrets.randbelow(9000) + 1000}"
    _submit(d, _request(RequestType.SET_PIN, secure_client_id=main, pin=SecretStr(new_pin)), ResultState.COMPLETED)
    if d.wait_for("MAIN's PIN is the new value", lambda s: _client(s, main).get("pin") == new_pin):
        click.echo("  PIN set (the value is not shown)")
    _submit(d, _request(RequestType.RESET_PIN, secure_client_id=main), ResultState.COMPLETED)
    if d.wait_for("MAIN's PIN is the provider's default", lambda s: _client(s, main).get("pin") == default):
        click.echo("  PIN reset to the provider's default")
    d.table(hh)


def _reauthorise(d: Demo, main: str) -> None:
    d.step("MAIN reports a loss of signal: its sector is re-authorised")
    before = int(_client(d.state(), main).get("sector_syncs", 0))
    _submit(d, _request(RequestType.REAUTHORISE_SECTOR, secure_client_id=main), ResultState.COMPLETED)
    if d.wait_for("one more sector synchronisation on MAIN",
                  lambda s: int(_client(s, main).get("sector_syncs", 0)) == before + 1):
        click.echo(f"  sector synchronisations of MAIN: {before} -> {before + 1}")


def _query(d: Demo, provider: ProviderConfig, hh: Household, main: str) -> None:
    d.step("A support agent queries MAIN: the nine information sections")

    async def query() -> dict[str, dict[str, str]]:
        kms = build_kms(d.settings, provider)
        try:
            return await kms.query_client(main)
        finally:
            await kms.aclose()

    try:
        sections = asyncio.run(query())
    except Exception as exc:  # the demo reports every failed expectation and carries on
        d.failures.append(f"query of MAIN failed: {exc}")
        click.echo(click.style(f"  ✗ query failed: {exc}", fg="red"))
        return
    for line in format_client_table(main, sections):
        click.echo(f"  {line}")
    if len(sections) != 9 or sections.get("pairing", {}).get("chipset") != hh.boxes["MAIN"]:
        d.failures.append("the query did not show nine sections with MAIN's box in pairing")


def _rejected_text(d: Demo, main: str) -> None:
    d.step("A Mail whose text Windows-1252 cannot encode (Cyrillic and an emoji, sent as ANSI) is rejected")
    before = len(_client(d.state(), main).get("mailbox", []))
    req = _request(RequestType.SEND_MESSAGE, secure_client_id=main, kind=MessageKind.MAIL, text_mode=TextMode.ANSI,
                   text="Спасибо за вашу подписку 🎉")
    result = _submit(d, req, ResultState.REJECTED)
    if result is not None and result.error_code != TEXT_NOT_ENCODABLE:
        d.failures.append(f"non-ANSI text rejected with {result.error_code}, expected {TEXT_NOT_ENCODABLE}")
    after = len(_client(d.state(), main).get("mailbox", []))
    if after != before:
        d.failures.append("the rejected Mail reached the mailbox")
    else:
        click.echo(f"  MAIN mailbox unchanged ({after} mail)")


def operator_steps(d: Demo, hh: Household) -> None:
    """The scenario on the household of the real-time steps (see the module docstring)."""
    provider = load_provider_or_exit(d.settings)
    main, twin = hh.cards["MAIN"], hh.cards["TWIN1"]
    _mail_run(d, provider, main, twin)
    _global_message(d)
    _pins(d, provider, hh, main)
    _reauthorise(d, main)
    _query(d, provider, hh, main)
    _rejected_text(d, main)
