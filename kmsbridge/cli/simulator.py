"""``kmsbridge simulator``: run the KMS simulator, read its state, inject faults (docs/architecture.md §8).

::

    kmsbridge simulator [--host H] [--port P] [--token-file F] [--strict-clients] [--audit-file F]
    kmsbridge simulator state [--url U] [--json] [--token-file F]
    kmsbridge simulator fault [--url U] [--token-file F] (--outage SECONDS | --latency-ms N | --error-rate R
                                         | --http-status N | --timeout SECONDS | --card-error CARD=CODE
                                         | --clear)

The token comes from ``KMSBRIDGE_KMS__TOKEN`` or ``--token-file`` (the server refuses to start without
one; the client verbs need it too, every admin endpoint requires it). ``--url`` defaults to
``KMSBRIDGE_SIMULATOR_URL``, else ``http://127.0.0.1:8089``. Exit codes: 0 done, 1 the simulator
could not be reached or refused, 2 bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import httpx

__all__ = ["simulator_group"]

TOKEN_ENV = "KMSBRIDGE_KMS__TOKEN"
URL_ENV = "KMSBRIDGE_SIMULATOR_URL"
DEFAULT_PORT = 8089
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
_TOKEN_FILE_KEY = "kmsbridge.simulator.token_file"

_token_file_option = click.option(
    "--token-file", type=click.Path(dir_okay=False), help=f"File holding the bearer token (else {TOKEN_ENV})."
)


def _token(token_file: str | None) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
        if not token:
            raise click.UsageError(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    stack_token_file = _stack_value("token_file")
    if not token and stack_token_file:  # the local stack's token, like every other verb's defaults
        return _token(stack_token_file)
    if not token:
        raise click.UsageError(
            f"no KMS token: set {TOKEN_ENV} or pass --token-file (the simulator requires a token)"
        )
    return token


def _stack_value(name: str) -> str:
    from kmsbridge.stack_state import load_state

    state = load_state()
    return str(getattr(state, name, "") or "") if state is not None else ""


def _base_url(url: str | None) -> str:
    base = (url or os.environ.get(URL_ENV) or _stack_value("simulator_url") or DEFAULT_URL).rstrip("/")
    return base.removesuffix("/kms")


def _admin(method: str, url: str | None, path: str, token: str, body: Any = None) -> Any:
    base = _base_url(url)
    try:
        response = httpx.request(method, base + path, json=body, timeout=10.0,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach the KMS simulator at {base} ({type(exc).__name__}); "
                   f"is it running? (--url or {URL_ENV})", err=True)
        sys.exit(1)
    if response.status_code == 401:
        click.echo(f"error: the simulator at {base} refused the token ({TOKEN_ENV} / --token-file)", err=True)
        sys.exit(1)
    if response.status_code == 400:
        click.echo(f"error: {response.json().get('error', response.text)}", err=True)
        sys.exit(2)
    if response.status_code != 200:
        click.echo(f"error: the simulator at {base} answered HTTP {response.status_code}", err=True)
        sys.exit(1)
    return response.json()


@click.group("simulator", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on.")
@_token_file_option
@click.option("--strict-clients", is_flag=True,
              help="Answer UNKNOWN_CLIENT for cards never seen, instead of creating them.")
@click.option("--audit-file", type=click.Path(dir_okay=False),
              help="Append every audit entry to this file as JSON Lines.")
@click.pass_context
def simulator_group(ctx: click.Context, host: str, port: int, token_file: str | None,
                    strict_clients: bool, audit_file: str | None) -> None:
    """Run the KMS simulator (SOAP at /kms), or read its state and inject faults."""
    ctx.meta[_TOKEN_FILE_KEY] = token_file
    if ctx.invoked_subcommand is not None:
        return
    from kms_adapter.simulator import serve

    token = _token(token_file)
    click.echo(f"KMS simulator: SOAP endpoint http://{host}:{port}/kms "
               f"(strict clients: {'on' if strict_clients else 'off'})", err=True)
    serve(host, port, token, strict_clients, audit_file)


@simulator_group.command("state")
@click.option("--url", help=f"Simulator base URL (else {URL_ENV}, else {DEFAULT_URL}).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole state as JSON.")
@_token_file_option
@click.pass_context
def state_command(ctx: click.Context, url: str | None, as_json: bool, token_file: str | None) -> None:
    """Print the simulator's state: a table of secure clients, or the whole state as JSON."""
    state = _admin("GET", url, "/admin/state", _token(token_file or ctx.meta.get(_TOKEN_FILE_KEY)))
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=False))
        return
    click.echo(_table(state))


def _table(state: dict[str, Any]) -> str:
    header = ("SECURE CLIENT", "PRODUCTS", "CHIPSET", "PIN", "MAIL", "MSG", "SYNCS")
    rows = [header]
    for card, c in sorted(state.get("secure_clients", {}).items()):
        products = ",".join(e["product_id"] for e in c.get("entitlements", [])) or "-"
        rows.append((card, products, c.get("paired_chipset") or "-",
                     "set" if c.get("pin") is not None else "-",  # never print the PIN itself
                     str(len(c.get("mailbox", []))), str(len(c.get("messages", []))),
                     str(c.get("sector_syncs", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    audit = state.get("audit", [])
    lines.append("")
    lines.append(f"secure clients: {len(rows) - 1}  global mail: {len(state.get('global_mailbox', []))}  "
                 f"global messages: {len(state.get('global_messages', []))}  audit entries: {len(audit)}"
                 + (f" (last seq {audit[-1]['seq']})" if audit else ""))
    return "\n".join(lines)


@simulator_group.command("fault")
@click.option("--url", help=f"Simulator base URL (else {URL_ENV}, else {DEFAULT_URL}).")
@click.option("--outage", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Answer 503 to every SOAP call for this many seconds.")
@click.option("--latency-ms", type=click.FloatRange(min=0), metavar="N", help="Delay every SOAP call.")
@click.option("--error-rate", type=click.FloatRange(0, 1), metavar="R",
              help="Answer HTTP 500 with this probability.")
@click.option("--http-status", type=click.IntRange(0, 599), metavar="N",
              help="Answer every SOAP call with this status (e.g. 429, 503); 0 turns it off.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Hang every SOAP call this long (longer than clients wait); 0 turns it off.")
@click.option("--card-error", "card_errors", multiple=True, metavar="CARD=CODE",
              help="Answer calls for CARD with business error CODE (e.g. UNKNOWN_CLIENT); repeatable.")
@click.option("--clear", is_flag=True, help="Clear every fault (applied before the other options).")
@_token_file_option
@click.pass_context
def fault_command(ctx: click.Context, url: str | None, outage: float | None, latency_ms: float | None,
                  error_rate: float | None, http_status: int | None, timeout: float | None,
                  card_errors: tuple[str, ...], clear: bool, token_file: str | None) -> None:
    """Inject faults into the simulator's SOAP endpoint; prints the faults now in force."""
    body: dict[str, Any] = {}
    if clear:
        body["clear"] = True
    if outage is not None:
        body["outage_seconds"] = outage
    if latency_ms is not None:
        body["latency_ms"] = latency_ms
    if error_rate is not None:
        body["error_rate"] = error_rate
    if http_status is not None:
        if http_status and http_status < 400:
            raise click.BadParameter("must be an error status 400-599, or 0 to turn it off",
                                     param_hint="--http-status")
        body["http_status"] = http_status or None
    if timeout is not None:
        body["timeout"] = timeout or None
    if card_errors:
        parsed: dict[str, str] = {}
        for item in card_errors:
            card, sep, code = item.partition("=")
            if not sep or not card or not code:
                raise click.BadParameter(f"{item!r} is not CARD=CODE", param_hint="--card-error")
            parsed[card] = code
        body["card_errors"] = parsed
    if not body:
        raise click.UsageError(
            "name a fault: --outage, --latency-ms, --error-rate, --http-status, --timeout, "
            "--card-error or --clear")
    faults = _admin("POST", url, "/admin/faults", _token(token_file or ctx.meta.get(_TOKEN_FILE_KEY)), body)
    click.echo(json.dumps(faults))
