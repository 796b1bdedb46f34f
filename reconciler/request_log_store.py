"""The provisioning request log (docs/architecture.md §1 item 14): writes, search, a box's history, outcomes.

**Writes** (:meth:`RequestLog.write`) take one batch of decoded records and apply it in one
transaction, with ``INSERT ... ON CONFLICT`` statements of a few hundred rows each:

1. events → ``provisioning_log_events`` (insert if missing: an event is immutable);
2. commands → PENDING rows; on conflict only the command's own columns are set
   (:data:`~reconciler.request_log_rows.COMMAND_COLUMNS`), never the state;
3. results → on conflict the result columns are set **only while the row is PENDING**, and
   ``duplicate`` becomes true if any delivery was a duplicate: the first final answer stays;
4. service requests and run requests → their own columns, never the state;
5. reports → the run's final state;
6. the state of every request the batch touched is derived again from its rows with the rule the
   Web API uses (:func:`provisioning.outcomes.settle`): expected results = the request's commands.

Each step writes the same values for the same record, so a replayed batch changes nothing, and the
steps commute, so the order in which the six topics are read does not change the outcome.

**Reads** walk an index newest first with keyset pagination on ``(created_at, entry_key)`` (no
OFFSET: page *n* costs what page 1 costs); :meth:`RequestLog.history` merges a box's events, commands
and results into one timeline, oldest first. :meth:`RequestLog.purge` enforces the retention.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, desc, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Engine, Row

from provisioning.outcomes import Outcome, settle
from reconciler.dialect import dialect_insert, insert_missing
from reconciler.request_log_rows import (
    COMMAND_COLUMNS,
    REQUEST_COLUMNS,
    RESULT_COLUMNS,
    EntryKind,
    SourceKind,
    command_row,
    event_rows,
    parse_detail,
    report_row,
    request_row,
    result_row,
    run_row,
)
from reconciler.request_log_tables import LOG_METADATA, dlq_replays_table, log_events_table, log_table
from schemas.records import (
    KmsCommand,
    KmsResult,
    ReconcileReport,
    ReconcileRequest,
    RequestType,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = [
    "LOG_METADATA",
    "BadCursor",
    "HistoryItem",
    "LogBatch",
    "LogFilter",
    "LogPage",
    "RequestLog",
    "entry_view",
    "search_statement",
]

#: Rows per INSERT statement: 22 columns x 500 rows stays far below SQLite's 32,766 parameters.
_CHUNK = 500
_PURGE_CHUNK = 10_000
T = log_table
E = log_events_table


class BadCursor(ValueError):
    """A pagination cursor that this log did not hand out."""


@dataclass
class LogBatch:
    """Decoded records of one polled batch; ``seen_at`` stamps a run request without ``requested_at``."""

    events: list[SubscriptionEvent] = field(default_factory=list)
    commands: list[KmsCommand] = field(default_factory=list)
    results: list[KmsResult] = field(default_factory=list)
    requests: list[ServiceRequest] = field(default_factory=list)
    runs: list[tuple[ReconcileRequest, datetime]] = field(default_factory=list)
    reports: list[ReconcileReport] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.events) + len(self.commands) + len(self.results) + len(self.requests) + len(self.runs)
                + len(self.reports))


@dataclass(frozen=True)
class LogFilter:
    """The filters of ``kmsbridge requests list`` / ``GET /v1/provisioning-requests`` (all optional)."""

    secure_client_id: str | None = None
    subscription_id: str | None = None
    operation: str | None = None  # a KMS operation or a request type (--type)
    state: str | None = None
    process_name: str | None = None
    kind: str | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until


@dataclass(frozen=True)
class LogPage:
    entries: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class HistoryItem:
    """One line of a box's timeline: an ``event``, a ``command`` planned, or its ``result``."""

    at: datetime
    what: str  # event, command, result
    detail: dict[str, Any]

    def view(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "what": self.what, **self.detail}


_VIEW_COLUMNS = [c.name for c in T.columns if c.name != "detail_json"]


def entry_view(row: Row[Any] | dict[str, Any]) -> dict[str, Any]:
    """A log row as JSON-ready data (times ISO 8601; the stored result document is left out)."""
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    out: dict[str, Any] = {}
    for name in _VIEW_COLUMNS:
        value = data.get(name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _encode_cursor(created_at: datetime, key: str) -> str:
    raw = f"{created_at.astimezone(UTC).isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|", 1)
        return datetime.fromisoformat(at), key
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("invalid cursor: pass the next_cursor of a previous page") from exc


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), _CHUNK):
        yield rows[start:start + _CHUNK]


def _last_per_key(rows: Iterable[dict[str, Any]], key: str = "entry_key") -> list[dict[str, Any]]:
    # one row per key and statement: PostgreSQL refuses to update a row twice in one INSERT
    return list({row[key]: row for row in rows}.values())


class RequestLog:
    """SQLAlchemy Core over the request-log tables (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- writes (see the module docstring for the steps) --------------------------------------------

    def write(self, batch: LogBatch) -> None:
        with self._engine.begin() as conn:
            self._write_events(conn, batch.events)  # step 1
            self._upsert(conn, _last_per_key(command_row(c) for c in batch.commands), COMMAND_COLUMNS)  # step 2
            self._write_results(conn, batch.results)  # step 3
            self._upsert(conn, _last_per_key(request_row(r) for r in batch.requests), REQUEST_COLUMNS)  # step 4
            self._upsert(conn, _last_per_key(run_row(r, at) for r, at in batch.runs), REQUEST_COLUMNS)
            self._write_reports(conn, batch.reports)  # step 5
            touched = {r.request_id for r in batch.requests}
            touched |= {r.request_id for r in batch.results if r.request_id}
            touched |= {c.source.request_id for c in batch.commands if c.source.request_id}
            touched |= {r.run_id for r in batch.reports}
            self._settle_requests(conn, sorted(touched))  # step 6

    def _write_events(self, conn: Connection, events: Sequence[SubscriptionEvent]) -> None:
        rows = [row for e in events for row in event_rows(e)]
        unique = list({(r["event_id"], r["secure_client_id"]): r for r in rows}.values())
        for chunk in _chunks(unique):
            conn.execute(insert_missing(conn.dialect, E, chunk, keys=("event_id", "secure_client_id")))

    def _upsert(self, conn: Connection, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        for chunk in _chunks(rows):
            stmt = dialect_insert(conn.dialect, T).values(list(chunk))
            stmt = stmt.on_conflict_do_update(index_elements=[T.c.entry_key],
                                              set_={name: stmt.excluded[name] for name in columns})
            conn.execute(stmt)

    def _write_results(self, conn: Connection, results: Sequence[KmsResult]) -> None:
        merged: dict[str, dict[str, Any]] = {}
        for result in results:  # the first answer per key stays; any duplicate delivery marks it
            row = result_row(result)
            held = merged.setdefault(row["entry_key"], row)
            held["duplicate"] = held["duplicate"] or row["duplicate"]
        for chunk in _chunks(list(merged.values())):
            stmt = dialect_insert(conn.dialect, T).values(list(chunk))
            pending = T.c.state == "PENDING"
            values: dict[str, Any] = {name: case((pending, stmt.excluded[name]), else_=T.c[name])
                                      for name in RESULT_COLUMNS}
            values["duplicate"] = or_(T.c.duplicate, stmt.excluded.duplicate)
            conn.execute(stmt.on_conflict_do_update(index_elements=[T.c.entry_key], set_=values))

    def _write_reports(self, conn: Connection, reports: Sequence[ReconcileReport]) -> None:
        rows = []
        for report in reports:
            outcome = Outcome(request_id=report.run_id, report=report,
                              state=settle((), None, is_reset=True, report=report, commands_seen=False))
            errors = outcome.errors
            rows.append(report_row(report, errors[0] if errors else None))
        for chunk in _chunks(_last_per_key(rows)):
            stmt = dialect_insert(conn.dialect, T).values(list(chunk))
            conn.execute(stmt.on_conflict_do_update(index_elements=[T.c.entry_key],
                                                    set_={n: stmt.excluded[n] for n in RESULT_COLUMNS}))

    def _settle_requests(self, conn: Connection, request_ids: Sequence[str]) -> None:
        for start in range(0, len(request_ids), _CHUNK):
            ids = request_ids[start:start + _CHUNK]
            rows = conn.execute(select(T).where(T.c.source_id.in_(ids), or_(
                T.c.source_kind == SourceKind.REQUEST.value,
                and_(T.c.kind == EntryKind.RUN.value, T.c.source_kind == SourceKind.RESET.value)))).all()
            by_id: dict[str, list[Row[Any]]] = {}
            for row in rows:
                by_id.setdefault(row.source_id, []).append(row)
            for request_id, group in by_id.items():
                request = next((r for r in group if r.kind == EntryKind.REQUEST.value), None)
                if request is None:
                    continue
                outcome = _outcome(request_id, group)
                errors = outcome.errors
                executed = max((r.executed_at for r in group if r.executed_at and r is not request), default=None)
                conn.execute(update(T).where(T.c.entry_key == request.entry_key).values(
                    state=outcome.state.value, executed_at=executed if outcome.settled else None,
                    error_code=errors[0][0] if errors else None,
                    error_description=errors[0][1] if errors else None))

    def purge(self, before: datetime) -> int:
        """Delete what is older than ``before`` (rows by ``created_at``, events by ``occurred_at``), in
        chunks so no transaction holds the tables long; the number of rows deleted."""
        total = 0
        for table, column, key in ((T, T.c.created_at, T.c.entry_key),
                                   (E, E.c.occurred_at, None),
                                   (dlq_replays_table, dlq_replays_table.c.replayed_at, None)):
            while True:
                with self._engine.begin() as conn:
                    if key is not None:
                        old = select(key).where(column < before).limit(_PURGE_CHUNK).scalar_subquery()
                        deleted = conn.execute(delete(table).where(key.in_(old))).rowcount
                    else:
                        deleted = conn.execute(delete(table).where(column < before)).rowcount
                total += deleted
                if key is None or deleted < _PURGE_CHUNK:
                    break
        return total

    # --- reads ------------------------------------------------------------------------------------------

    def search(self, where: LogFilter, *, limit: int = 50, cursor: str | None = None) -> LogPage:
        """Entries matching every filter, newest first; ``next_cursor`` continues after the last one."""
        with self._engine.connect() as conn:
            rows = conn.execute(search_statement(where, limit=limit, cursor=cursor)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1].created_at, rows[-1].entry_key) if more else None
        return LogPage([entry_view(r) for r in rows], next_cursor)

    def history(self, secure_client_id: str, *, limit: int = 500) -> list[HistoryItem]:
        """The box's newest ``limit`` timeline items (events, commands, results), oldest first."""
        events = (select(E).where(E.c.secure_client_id == secure_client_id)
                  .order_by(desc(E.c.occurred_at)).limit(limit))
        entries = (select(T).where(T.c.secure_client_id == secure_client_id)
                   .order_by(desc(T.c.created_at), desc(T.c.entry_key)).limit(limit))
        with self._engine.connect() as conn:
            event_rows_ = conn.execute(events).all()
            entry_rows = conn.execute(entries).all()
        items: list[tuple[datetime, int, HistoryItem]] = []
        for ev in reversed(event_rows_):
            items.append((ev.occurred_at, 0, HistoryItem(ev.occurred_at, "event", {
                "event_id": ev.event_id, "event_type": ev.event_type, "subscription_id": ev.subscription_id,
                "version": ev.version, "subscription_state": ev.subscription_state, "role": ev.role,
                "distributor": ev.distributor})))
        # rows come newest first; read oldest first so entries of one instant keep their key order (the
        # commands of one event: PAIR, SET_PIN, SYNC_ENTITLEMENTS; CLEAR_ENTITLEMENTS, UNPAIR), which the
        # stable sort below preserves
        for row in reversed(entry_rows):
            view = entry_view(row)
            planned = {k: view[k] for k in ("entry_key", "kind", "operation", "subscription_id", "distributor",
                                            "source_kind", "source_id", "process_name", "priority")}
            if row.kind != EntryKind.REJECTION.value:
                # at one instant: the event, then the request, then the commands it planned, then results
                rank = 2 if row.kind == EntryKind.COMMAND.value else 1
                items.append((row.created_at, rank, HistoryItem(row.created_at, _planned_name(row.kind), planned)))
            if row.state != "PENDING":
                at = row.executed_at or row.created_at
                items.append((at, 3, HistoryItem(at, "result", {
                    "entry_key": row.entry_key, "operation": row.operation, "state": row.state,
                    "attempts": row.attempts, "duplicate": row.duplicate, "error_code": row.error_code,
                    "error_description": row.error_description, "provider_error_code": row.provider_error_code,
                    "provider_error_description": row.provider_error_description,
                    "superseded_by": _superseded_by(row.kind, row.detail_json)})))
        items.sort(key=lambda item: (item[0], item[1]))
        return [item for _, _, item in items[-limit:]]

    def outcome(self, request_id: str) -> Outcome | None:
        """A request's (or reset run's) outcome from the log, or ``None`` when the log never saw it."""
        with self._engine.connect() as conn:
            group = conn.execute(select(T).where(T.c.source_id == request_id, T.c.source_kind.in_(
                [SourceKind.REQUEST.value, SourceKind.RESET.value]))).all()
        group = [r for r in group if r.source_kind == SourceKind.REQUEST.value or r.kind == EntryKind.RUN.value]
        if not group:
            return None
        return _outcome(request_id, group)

    def replayed(self, dlq_topic: str, positions: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of ``(partition, offset)`` of ``dlq_topic`` were replayed already."""
        wanted = set(positions)
        if not wanted:
            return set()
        d = dlq_replays_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(d.c.partition, d.c.offset).where(
                d.c.dlq_topic == dlq_topic, d.c.offset.in_(sorted({o for _, o in wanted})))).all()
        return {(int(p), int(o)) for p, o in rows} & wanted

    def record_replays(self, rows: Sequence[dict[str, Any]]) -> None:
        with self._engine.begin() as conn:
            for chunk in _chunks(list(rows)):
                conn.execute(insert_missing(conn.dialect, dlq_replays_table, chunk,
                                            keys=("dlq_topic", "partition", "offset")))

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(T)).scalar_one())


def search_statement(where: LogFilter, *, limit: int = 50, cursor: str | None = None) -> Select[Any]:
    """The SELECT of :meth:`RequestLog.search`: ``limit + 1`` rows, newest first (one more says "more")."""
    query: Select[Any] = select(*[T.c[n] for n in _VIEW_COLUMNS])
    # The most selective filter given leads (its index ending in (created_at, entry_key) serves the
    # range and the order); the others are written `column || '' = value`, which no index serves, so
    # a planner without statistics (SQLite) cannot walk, say, every REJECTED row to find one box's.
    leading = True
    for column, value in ((T.c.secure_client_id, where.secure_client_id),
                          (T.c.subscription_id, where.subscription_id), (T.c.process_name, where.process_name),
                          (T.c.operation, where.operation), (T.c.state, where.state), (T.c.kind, where.kind)):
        if value is None:
            continue
        query = query.where(column == value if leading else column.concat("") == value)
        leading = False
    if where.since is not None:
        query = query.where(T.c.created_at >= where.since)
    if where.until is not None:
        query = query.where(T.c.created_at < where.until)
    if cursor:
        at, key = _decode_cursor(cursor)
        query = query.where(tuple_(T.c.created_at, T.c.entry_key) < tuple_(
            bindparam("cursor_at", at, type_=T.c.created_at.type), bindparam("cursor_key", key)))
    return query.order_by(desc(T.c.created_at), desc(T.c.entry_key)).limit(limit + 1)


def _planned_name(kind: str) -> str:
    return {EntryKind.REQUEST.value: "request", EntryKind.RUN.value: "run"}.get(kind, "command")


def _outcome(request_id: str, group: Sequence[Row[Any]]) -> Outcome:
    """The one rule (:func:`provisioning.outcomes.settle`) over a request's rows."""
    request = next((r for r in group if r.kind == EntryKind.REQUEST.value), None)
    run = next((r for r in group if r.kind == EntryKind.RUN.value), None)
    report = parse_detail(run.kind, run.detail_json).report if run is not None else None
    children = [r for r in group if r.kind in (EntryKind.COMMAND.value, EntryKind.REJECTION.value)
                and r.source_kind == SourceKind.REQUEST.value]
    results = [res for r in children if (res := parse_detail(r.kind, r.detail_json).result) is not None]
    is_reset = run is not None or (request is not None and request.operation == RequestType.RESET_SUBSCRIPTION.value)
    expected = sum(1 for r in children if r.kind == EntryKind.COMMAND.value) or None
    state = settle(results, expected, is_reset=is_reset, report=report, commands_seen=False)
    first = request if request is not None else run
    return Outcome(request_id=request_id, state=state,
                   request_type=request.operation if request is not None else ("RECONCILE_RUN" if run else None),
                   expected=expected, results=tuple(results), report=report,
                   submitted_at=first.created_at if first is not None else None)


def _superseded_by(kind: str, detail_json: str | None) -> str | None:
    """The key of the newer command a result was superseded by (coalesced or older than the last applied)."""
    if kind != EntryKind.COMMAND.value or not detail_json or "superseded_by" not in detail_json:
        return None
    result = parse_detail(kind, detail_json).result
    return result.superseded_by if result is not None else None
