"""Records → rows of the request log (pure functions, no I/O; the tables are ``request_log_tables``).

Which columns each record owns, so the writes commute (a result may be read before its command, a
report before its run request, and the outcome is the same):

- a **command** owns the "what was asked" columns (:data:`COMMAND_COLUMNS`) and inserts as PENDING;
- a **result** owns the "what the KMS answered" columns (:data:`RESULT_COLUMNS`), and fills the
  command columns only when it is the first to insert the row;
- a **service request** and a **reset run** own their "what was asked" columns; their state is
  derived from their children (:func:`reconciler.request_log_store.RequestLog.write`).

Nothing here copies a PIN or a message text: only ids, operations, codes and times are taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from provisioning.keys import KeySource, rejection_key
from schemas.records import (
    KmsCommand,
    KmsResult,
    ReconcileReport,
    ReconcileRequest,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = [
    "COMMAND_COLUMNS",
    "REQUEST_COLUMNS",
    "RESULT_COLUMNS",
    "EntryKind",
    "LogState",
    "SourceKind",
    "command_row",
    "event_rows",
    "report_row",
    "request_key",
    "request_row",
    "result_row",
    "run_key",
    "run_row",
    "source_of",
]

RESET_RUN = "RESET_RUN"


class EntryKind(StrEnum):
    COMMAND = "COMMAND"  # a KmsCommand on kms.commands
    REJECTION = "REJECTION"  # a whole input the translator rejected before planning any command
    REQUEST = "REQUEST"  # a ServiceRequest (Web API or CLI)
    RUN = "RUN"  # a reset run (reconcile.requests / reconcile.reports)


class LogState(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


class SourceKind(StrEnum):
    EVENT = "event"  # a SubscriptionEvent
    REQUEST = "request"  # a ServiceRequest: process_name says Web API ("api") or CLI ("cli")
    RESET = "reset"  # a reset run
    MAIL = "mail"  # a communication (mail run or single message)


COMMAND_COLUMNS = ("kind", "operation", "secure_client_id", "subscription_id", "distributor", "source_kind",
                   "source_id", "process_name", "priority", "created_at")
RESULT_COLUMNS = ("state", "executed_at", "attempts", "latency_ms", "error_code", "error_description",
                  "provider_error_code", "provider_error_description", "detail_json")
REQUEST_COLUMNS = ("operation", "secure_client_id", "subscription_id", "process_name", "requested_by",
                   "created_at")

_EMPTY_RESULT: dict[str, Any] = {name: None for name in RESULT_COLUMNS if name != "state"}


def request_key(request_id: str) -> str:
    """The row of a service request. ``@`` never starts an idempotency key, so it equals none."""
    return f"@request:{request_id}"


def run_key(run_id: str) -> str:
    return f"@run:{run_id}"


def source_of(*, event_id: str | None, request_id: str | None, communication_id: str | None,
              run_id: str | None) -> tuple[SourceKind, str]:
    """What caused a command or result: a request first, then a communication, a run, an event."""
    if request_id:
        return SourceKind.REQUEST, request_id
    if communication_id:
        return SourceKind.MAIL, communication_id
    if run_id:
        return SourceKind.RESET, run_id
    return SourceKind.EVENT, event_id or ""


_KEY_SOURCE = {SourceKind.EVENT: KeySource.EVENT, SourceKind.REQUEST: KeySource.REQUEST,
               SourceKind.MAIL: KeySource.COMMUNICATION, SourceKind.RESET: KeySource.RUN}


def command_row(cmd: KmsCommand) -> dict[str, Any]:
    s = cmd.source
    kind, source_id = source_of(event_id=s.event_id, request_id=s.request_id,
                                communication_id=s.communication_id, run_id=s.run_id)
    return {
        "entry_key": cmd.idempotency_key, "kind": EntryKind.COMMAND.value, "operation": cmd.operation.value,
        "state": LogState.PENDING.value, "secure_client_id": cmd.secure_client_id,
        "subscription_id": cmd.subscription_id, "distributor": cmd.distributor, "source_kind": kind.value,
        "source_id": source_id, "process_name": s.process_name, "requested_by": None,
        "priority": cmd.priority.value, "created_at": cmd.created_at, "duplicate": False, **_EMPTY_RESULT,
    }


def result_row(result: KmsResult) -> dict[str, Any]:
    kind, source_id = source_of(event_id=result.event_id, request_id=result.request_id,
                                communication_id=result.communication_id, run_id=result.run_id)
    whole_input = result.idempotency_key == rejection_key(_KEY_SOURCE[kind], source_id) if source_id else False
    return {
        "entry_key": result.idempotency_key,
        "kind": (EntryKind.REJECTION if whole_input else EntryKind.COMMAND).value,
        "operation": result.operation, "state": result.state.value,
        "secure_client_id": result.secure_client_id, "subscription_id": result.subscription_id,
        "distributor": None, "source_kind": kind.value, "source_id": source_id,
        # the command (read later or earlier) names the process that planned it; until then, the source
        "process_name": "translator" if whole_input else "executor", "requested_by": None, "priority": None,
        "created_at": result.executed_at, "executed_at": result.executed_at, "attempts": result.attempts,
        "duplicate": result.duplicate, "latency_ms": result.latency_ms, "error_code": result.error_code,
        "error_description": result.error_description, "provider_error_code": result.provider_error_code,
        "provider_error_description": result.provider_error_description,
        "detail_json": result.model_dump_json(exclude={"client_info"}),
    }


def request_row(req: ServiceRequest) -> dict[str, Any]:
    return {
        "entry_key": request_key(req.request_id), "kind": EntryKind.REQUEST.value, "operation": req.type.value,
        "state": LogState.PENDING.value, "secure_client_id": req.secure_client_id,
        "subscription_id": req.subscription_id, "distributor": None, "source_kind": SourceKind.REQUEST.value,
        "source_id": req.request_id, "process_name": req.process_name, "requested_by": req.requested_by,
        "priority": None, "created_at": req.requested_at, "duplicate": False, **_EMPTY_RESULT,
    }


def run_row(run: ReconcileRequest, seen_at: datetime) -> dict[str, Any]:
    only = run.subscription_ids[0] if len(run.subscription_ids) == 1 else None
    return {
        "entry_key": run_key(run.run_id), "kind": EntryKind.RUN.value, "operation": RESET_RUN,
        "state": LogState.PENDING.value, "secure_client_id": None, "subscription_id": only, "distributor": None,
        "source_kind": SourceKind.RESET.value, "source_id": run.run_id, "process_name": "reconciler",
        "requested_by": run.requested_by, "priority": None, "created_at": run.requested_at or seen_at,
        "duplicate": False, **_EMPTY_RESULT,
    }


def report_row(report: ReconcileReport, error: tuple[str, str] | None) -> dict[str, Any]:
    """The run's row as its report settles it (``error``: the code and text of a failed run)."""
    return {
        "entry_key": run_key(report.run_id), "kind": EntryKind.RUN.value, "operation": RESET_RUN,
        "state": (LogState.REJECTED if error else LogState.COMPLETED).value, "secure_client_id": None,
        "subscription_id": None, "distributor": None, "source_kind": SourceKind.RESET.value,
        "source_id": report.run_id, "process_name": "reconciler", "requested_by": None, "priority": None,
        "created_at": report.started_at, "executed_at": report.finished_at, "attempts": None, "duplicate": False,
        "latency_ms": report.duration_seconds * 1000, "error_code": error[0] if error else None,
        "error_description": error[1] if error else None, "provider_error_code": None,
        "provider_error_description": None, "detail_json": report.model_dump_json(),
    }


def event_rows(event: SubscriptionEvent) -> Iterator[dict[str, Any]]:
    """One row per box the event names; a box listed twice keeps its strongest role (removed, added)."""
    roles: dict[str, tuple[str, str]] = {}
    for role, devices in (("device", event.devices), ("added", event.added_devices),
                          ("removed", event.removed_devices)):
        for d in devices:
            roles[d.secure_client_id] = (role, d.distributor)
    for card, (role, distributor) in roles.items():
        yield {"event_id": event.event_id, "secure_client_id": card, "subscription_id": event.subscription_id,
               "event_type": event.event_type.value, "subscription_state": event.state.value,
               "version": event.version, "role": role, "distributor": distributor,
               "occurred_at": event.occurred_at}


@dataclass(frozen=True)
class ParsedDetail:
    result: KmsResult | None
    report: ReconcileReport | None


def parse_detail(kind: str, detail_json: str | None) -> ParsedDetail:
    """The stored result of a command or rejection row, or the report of a run row."""
    if not detail_json:
        return ParsedDetail(None, None)
    if kind == EntryKind.RUN.value:
        return ParsedDetail(None, ReconcileReport.model_validate_json(detail_json))
    return ParsedDetail(KmsResult.model_validate(json.loads(detail_json)), None)
