"""Operator verbs (docs/architecture.md §8): ``set-pin``, ``reauthorise``, ``send-message``, ``query``, ``mail-run``.

Writes publish a ``ServiceRequest`` to ``kms.requests`` (the translator plans it, the executor applies
it). With ``--wait`` the verb waits, at most ``--timeout`` seconds, for the outcome on ``kms.results``
(reading from the end offsets captured *before* publishing, so the result cannot be missed) and prints
it. Exit codes: 0 done (or queued, without ``--wait``), 1 REJECTED, still PENDING at the timeout, or a
failure to publish or reach the KMS, 2 bad arguments.

What can be checked locally is, before anything is sent: a PIN that is not four ASCII digits and a text
its text mode cannot carry (not encodable, empty, too long; the same ``validate_text`` and limits the
pipeline applies) exit 2 with a message naming the option. Neither the PIN nor the text is ever printed.

The composition roots (``kmsbridge.wiring``, ``kmsbridge.wiring_api``) are imported inside the verbs, so
``kmsbridge --help`` does not pay for FastAPI, SQLAlchemy and zeep.

``query`` is a read: it calls the KMS port directly. ``mail-run`` is the translator, one-shot, on
``crm.communications`` only, in the translator's own consumer group (so a communication is never handled
twice); it stops at the end offsets it found on start and prints its counts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import click
from prometheus_client import REGISTRY
from pydantic import SecretStr

from kms_adapter.errors import KmsError
from kms_adapter.port import QUERY_SECTIONS
from kmsbridge.cli.common import EXIT_FAILED, cli_settings, fail
from kmsbridge.settings import Settings, SettingsError
from producers.errors import ProducerError
from producers.outcomes import Outcome, RequestState
from producers.requests import describe_target, new_request
from provisioning.pin import PIN_RULE, is_valid_pin
from provisioning.text import validate_text
from schemas.records import MessageKind, RequestType, ResultState, ServiceRequest, TextMode

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "OPS_COMMANDS",
    "format_client_table",
    "format_outcome",
    "mail_run_cmd",
    "query_cmd",
    "reauthorise_cmd",
    "send_message_cmd",
    "set_pin_cmd",
]

DEFAULT_WAIT_SECONDS = 60.0
PROCESS_NAME = "cli"
_OUTCOMES = ("ok", "skipped", "rejected", "dlq")


# --- shared: publish, and maybe wait -------------------------------------------------------------------


def _wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_WAIT_SECONDS,
                        show_default=True, help="with --wait: give up after this many seconds (exit 1)")(func)
    return click.option("--wait", is_flag=True, help="wait for the outcome; exit 1 if REJECTED")(func)


def format_outcome(outcome: Outcome | None, request_id: str) -> list[str]:
    """The outcome for people: a headline, then one line per result (codes, never payloads)."""
    if outcome is None:
        return [f"request {request_id} PENDING (no result yet)"]
    counted = f" ({len(outcome.results)} of {outcome.expected} results)" if outcome.expected else ""
    lines = [f"request {request_id} {outcome.state.value}{counted}"]
    for r in outcome.results:
        where = r.secure_client_id or "-"
        line = f"  {r.operation:<20} {where:<16} {r.state.value}"
        if r.error_code:
            line += f"  {r.error_code}: {r.error_description or ''}"
        if r.provider_error_code and r.state is not ResultState.COMPLETED:
            line += f"  (KMS {r.provider_error_code}: {r.provider_error_description or ''})"
        lines.append(line)
    if outcome.report is not None:
        rep = outcome.report
        lines.append(f"  report: checked {rep.checked}, in sync {rep.in_sync}, drifted {rep.drifted}, "
                     f"commands {rep.commands_published}, failed {rep.failed}"
                     + (f", unknown: {', '.join(rep.unknown_subscriptions)}" if rep.unknown_subscriptions else "")
                     + (f", error: {rep.error}" if rep.error else ""))
    return lines


def _submit(settings: Settings, req: ServiceRequest, wait: bool, timeout: float) -> NoReturn:
    try:
        outcome = _publish(settings, req, wait, timeout)
    except SettingsError as exc:
        fail(str(exc))
    except ProducerError as exc:
        fail(f"could not queue the request: {exc}", EXIT_FAILED)
    if not wait:
        sys.exit(0)
    for line in format_outcome(outcome, req.request_id):
        click.echo(line)
    if outcome is None or outcome.state is RequestState.PENDING:
        fail(f"no outcome within {timeout:g}s; ask again later: kmsbridge requests show {req.request_id} --wait",
             EXIT_FAILED)
    sys.exit(0 if outcome.state is RequestState.COMPLETED else EXIT_FAILED)


def _publish(settings: Settings, req: ServiceRequest, wait: bool, timeout: float) -> Outcome | None:
    """Publish ``req``; with ``wait``, the outcome as it stands after at most ``timeout`` seconds."""
    from kmsbridge.wiring import load_provider_or_exit
    from kmsbridge.wiring_api import build_outcome_store, build_publisher, start_outcome_feed

    publisher = build_publisher(settings)
    try:
        if not wait:
            publisher.publish_request(req)
            click.echo(f"request {req.request_id} queued: {req.type.value} {describe_target(req)}")
            return None
        store = build_outcome_store(settings, load_provider_or_exit(settings))
        feed = start_outcome_feed(settings, store, name="cli")  # before publishing: no race
        try:
            store.track(req)
            publisher.publish_request(req)
            click.echo(f"request {req.request_id} queued: {req.type.value} {describe_target(req)}; waiting ...")
            return store.wait_sync(req.request_id, timeout)
        finally:
            feed.stop()
    finally:
        publisher.close()


# --- set-pin -------------------------------------------------------------------------------------------


def _pin_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> SecretStr | None:
    if value is None:
        return None
    if not is_valid_pin(value):
        raise click.BadParameter(f"{PIN_RULE} (the value given is not shown)")
    return SecretStr(value)


@click.command("set-pin")
@click.option("--secure-client", "secure_client", required=True, help="the secure client (card) id")
@click.option("--pin", callback=_pin_value, metavar="NNNN", help="the new parental PIN, 4 digits (never printed)")
@click.option("--default", "use_default", is_flag=True, help="reset to the provider's default PIN (0001 if none)")
@_wait_options
def set_pin_cmd(secure_client: str, pin: SecretStr | None, use_default: bool, wait: bool, timeout: float) -> None:
    """Set a secure client's parental PIN, or reset it to the provider's default."""
    if (pin is None) == (not use_default):
        raise click.UsageError("give exactly one of --pin NNNN or --default")
    settings = cli_settings()
    type_ = RequestType.RESET_PIN if use_default else RequestType.SET_PIN
    _submit(settings, new_request(type_, secure_client_id=secure_client, pin=pin, requested_by=PROCESS_NAME,
                                  process_name=PROCESS_NAME), wait, timeout)


# --- reauthorise ---------------------------------------------------------------------------------------


@click.command("reauthorise")
@click.option("--secure-client", "secure_client", required=True, help="the secure client (card) id")
@_wait_options
def reauthorise_cmd(secure_client: str, wait: bool, timeout: float) -> None:
    """Re-authorise a secure client's sector (the troubleshooting refresh for loss of signal)."""
    settings = cli_settings()
    _submit(settings, new_request(RequestType.REAUTHORISE_SECTOR, secure_client_id=secure_client,
                                  requested_by=PROCESS_NAME, process_name=PROCESS_NAME), wait, timeout)


# --- send-message --------------------------------------------------------------------------------------


@click.command("send-message")
@click.option("--secure-client", "secure_client", help="one device")
@click.option("--subscription", help="every device of a subscription")
@click.option("--all", "all_", is_flag=True, help="every subscriber (global)")
@click.option("--kind", type=click.Choice(["mail", "message"], case_sensitive=False), required=True,
              help="mail: the set-top box mailbox; message: on-screen display")
@click.option("--text-mode", type=click.Choice(["ansi", "unicode", "raw"], case_sensitive=False), required=True,
              help="ansi (Windows-1252), unicode, raw (hexadecimal bytes)")
@click.option("--text", required=True, help="the text (never printed)")
@_wait_options
def send_message_cmd(secure_client: str | None, subscription: str | None, all_: bool, kind: str, text_mode: str,
                     text: str, wait: bool, timeout: float) -> None:
    """Send a Mail or an on-screen Message to one device, a subscription's devices or everyone."""
    chosen = [name for name, on in (("--secure-client", secure_client), ("--subscription", subscription),
                                    ("--all", all_)) if on]
    if len(chosen) != 1:
        raise click.UsageError(f"give exactly one of --secure-client, --subscription, --all (got "
                               f"{', '.join(chosen) or 'none'})")
    settings = cli_settings()
    from kmsbridge.wiring import text_limits

    mode = TextMode(text_mode.upper())
    rejection = validate_text(mode, text, text_limits(settings))
    if rejection is not None:
        raise click.BadParameter(f"{rejection.code}: {rejection.description}", param_hint="'--text'")
    req = new_request(RequestType.SEND_MESSAGE, secure_client_id=secure_client, subscription_id=subscription,
                      all_=all_, kind=MessageKind(kind.upper()), text_mode=mode, text=text,
                      requested_by=PROCESS_NAME, process_name=PROCESS_NAME)
    _submit(settings, req, wait, timeout)


# --- query ---------------------------------------------------------------------------------------------


def format_client_table(secure_client_id: str, sections: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The sections of a query as a three-column table (section, field, value), in the KMS's order."""
    lines = [f"secure client {secure_client_id}", f"  {'section':<16} {'field':<20} value"]
    order = [s for s in QUERY_SECTIONS if s in sections] + [s for s in sections if s not in QUERY_SECTIONS]
    for name in order:
        fields = sections[name]
        if not fields:
            lines.append(f"  {name:<16} {'(none)':<20}")
            continue
        for i, (key, value) in enumerate(fields.items()):
            shown = _validity(value) if name == "entitlements" else value or "-"
            lines.append(f"  {name if i == 0 else '':<16} {key:<20} {shown}")
    return lines


def _validity(interval: str) -> str:
    """An entitlement's ``valid_from/valid_until`` (either end may be empty) in words."""
    start, _, end = interval.partition("/")
    words = ([f"from {start}"] if start else []) + ([f"until {end}"] if end else [])
    return " ".join(words) or "no end date"


async def _query(settings: Settings, secure_client_id: str, sections: list[str]) -> dict[str, dict[str, str]]:
    from kmsbridge.wiring import load_provider_or_exit
    from kmsbridge.wiring_api import build_kms

    kms = build_kms(settings, load_provider_or_exit(settings))
    try:
        return await kms.query_client(secure_client_id, sections)
    finally:
        await kms.aclose()


@click.command("query")
@click.option("--secure-client", "secure_client", required=True, help="the secure client (card) id")
@click.option("--section", "sections", multiple=True, type=click.Choice(QUERY_SECTIONS),
              help="one information section (repeat for several; all nine when omitted)")
@click.option("--json", "as_json", is_flag=True, help="print the sections as one JSON object")
def query_cmd(secure_client: str, sections: tuple[str, ...], as_json: bool) -> None:
    """Query a secure client's information sections directly from the KMS."""
    settings = cli_settings()
    try:
        info = asyncio.run(_query(settings, secure_client, list(sections)))
    except SettingsError as exc:
        fail(str(exc))
    except KmsError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"secure_client_id": secure_client, "sections": info}, ensure_ascii=False))
        return
    for line in format_client_table(secure_client, info):
        click.echo(line)


# --- mail-run ------------------------------------------------------------------------------------------


def _processed(topic: str) -> dict[str, float]:
    """The translator's ``kmsbridge_messages_processed_total`` for ``topic``, by outcome (this process)."""
    return {outcome: REGISTRY.get_sample_value("kmsbridge_messages_processed_total",
                                               {"process": "translator", "topic": topic, "outcome": outcome}) or 0.0
            for outcome in _OUTCOMES}


@click.command("mail-run")
@click.option("--json", "as_json", is_flag=True, help="print the counts as one JSON object")
def mail_run_cmd(as_json: bool) -> None:
    """Send the pending communications up to the current end of crm.communications, then exit."""
    settings = cli_settings()
    if settings.communications.delivery == "queue":
        fail("communications wait in the queue (KMSBRIDGE_COMMUNICATIONS__DELIVERY=queue): execute a mail run "
             "definition instead (kmsbridge runs execute NAME); mail-run is for immediate delivery")
    from kmsbridge.wiring import run_translator

    topic = settings.topic("communications")
    before = _processed(topic)
    try:
        run_translator(settings, until_end=True, only=["communications"])
    except SettingsError as exc:
        fail(str(exc))
    after = _processed(topic)
    counts = {name: int(after[o] - before[o]) for name, o in
              (("sent", "ok"), ("skipped", "skipped"), ("rejected", "rejected"), ("dead_lettered", "dlq"))}
    if as_json:
        click.echo(json.dumps({"topic": topic, **counts}))
        return
    click.echo(f"mail run on {topic}: {counts['sent']} sent, {counts['skipped']} skipped, "
               f"{counts['rejected']} rejected, {counts['dead_lettered']} dead-lettered")
    click.echo(f"each outcome (COMPLETED / REJECTED) is published on {settings.topic('results')}")


#: The verbs of this module; ``kmsbridge.cli`` registers them.
OPS_COMMANDS: list[click.Command] = [set_pin_cmd, reauthorise_cmd, send_message_cmd, query_cmd, mail_run_cmd]
