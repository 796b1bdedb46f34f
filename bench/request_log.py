"""Request log: search and history over 10 million rows (SQLite, PostgreSQL), and the writer's rate.

**Queries.** For each database a fresh log is seeded with ``--rows`` command rows (default 10,000,000)
and a quarter as many box events, generated inside the database (``generate_series`` on PostgreSQL, a
recursive CTE on SQLite) with the secondary indexes dropped and built again afterwards, as a bulk load
is done. The shape: 1,000,000 boxes, two per subscription, rows spread over 90 days, six operations,
92 % COMPLETED, 6 % REJECTED, 2 % PENDING, four processes. Then each query the support tools make runs
``--repeat`` times with random boxes and subscriptions through :class:`RequestLog` (SQLAlchemy
included), and its p50 / p95 / max are printed next to the **baseline measured in the same run on the
same database**: a primary-key lookup of one row, the cheapest read there is.

**Writer.** On one broker, the same ``--events`` SubscriptionEvents are read by the projector and by
the request-log writer (``kmsbridge run request-log``, product defaults), each as a subprocess into
its own database of the same server; their steady rates come from their groups' committed offsets.
Then the writer alone reads the same number of commands and of results (``kms.commands``,
``kms.results``): the rows it writes per command.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    BenchEnv,
    GroupProgress,
    campaign_values,
    command_values,
    print_table,
    produce_values,
    write_result,
)
from tests.support.pg import new_database, start_postgres
from tests.support.pipeline import terminate

__all__ = ["main", "run"]

T0 = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 90
QUICK_ROWS = 20_000
OPERATIONS = ("SYNC_ENTITLEMENTS", "PAIR", "SET_PIN", "CLEAR_ENTITLEMENTS", "UNPAIR", "REAUTHORISE_SECTOR")


def _shape(rows: int) -> dict[str, int]:
    cards = max(10, min(1_000_000, rows // 10))
    return {"rows": rows, "cards": cards, "events": rows // 4, "step_ms": max(1, DAYS * 86_400_000 // rows)}


def _select_rows(dialect: str, shape: dict[str, int]) -> tuple[str, str]:
    """(log rows SELECT, event rows SELECT) over a series ``g`` (1..n) in the dialect's SQL."""
    cards, step = shape["cards"], shape["step_ms"]
    pg = dialect == "postgresql"

    def mod(expr: str, n: int) -> str:  # psycopg reads a bare percent sign as a placeholder
        return f"mod({expr}, {n})" if pg else f"(({expr}) % {n})"

    def case(expr: str, values: tuple[str, ...]) -> str:
        arms = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
        return f"CASE {mod(expr, len(values))} {arms} END"

    if pg:
        at = f"(TIMESTAMPTZ '{T0.isoformat()}' + g * {step} * INTERVAL '1 millisecond')"
        done = f"({at} + INTERVAL '40 milliseconds')"
        text = "::text"
    else:
        at = (f"(strftime('%Y-%m-%d %H:%M:%S', '{T0.strftime('%Y-%m-%d %H:%M:%S')}', '+' || (g * {step} / 1000)"
              " || ' seconds') || '.000000')")
        done = at
        text = ""
    card = mod("g", cards)
    state = (f"CASE WHEN {mod('g', 50)} = 0 THEN 'PENDING' WHEN {mod('g', 16)} = 0 THEN 'REJECTED' "
             "ELSE 'COMPLETED' END")
    rejected = f"CASE WHEN {mod('g', 50)} <> 0 AND {mod('g', 16)} = 0 THEN 'KMS_REJECTED' END"
    log = (f"SELECT 'ev:E' || g{text} || ':C' || {card}{text} || ':' || {case('g', OPERATIONS)}, 'COMMAND', "
           f"{case('g', OPERATIONS)}, {state}, 'C' || {card}{text}, 'S' || ({card} / 2){text}, 'MAIN', 'event', "
           f"'E' || g{text}, {case('g / 7', ('translator', 'translator', 'reconciler', 'api', 'cli'))}, NULL, "
           f"'REGULAR', {at}, CASE WHEN {mod('g', 50)} = 0 THEN NULL ELSE {done} END, 1, false, 4.5, "
           f"{rejected}, NULL, NULL, NULL, NULL")
    events = (f"SELECT 'E' || g{text}, 'C' || {card}{text}, 'S' || ({card} / 2){text}, "
              f"'SERVICES_CHANGED', 'ACTIVE', g, 'device', 'MAIN', {at}")
    return log, events


def seed(engine: Any, rows: int) -> dict[str, float]:
    """Fill an empty, migrated log with ``rows`` rows (see the module docstring); the seconds each step took."""
    from sqlalchemy import text

    from reconciler.request_log_tables import log_events_table, log_table

    shape = _shape(rows)
    dialect = engine.dialect.name
    log_select, event_select = _select_rows(dialect, shape)
    columns = ", ".join(c.name for c in log_table.columns)
    event_columns = ", ".join(c.name for c in log_events_table.columns)
    indexes = [*log_table.indexes, *log_events_table.indexes]
    took: dict[str, float] = {}
    with engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
    chunk = 1_000_000
    t0 = time.perf_counter()
    for table, cols, select, total in ((log_table.name, columns, log_select, rows),
                                       (log_events_table.name, event_columns, event_select, shape["events"])):
        for start in range(1, total + 1, chunk):
            stop = min(total, start + chunk - 1)
            if dialect == "postgresql":
                series = f"FROM generate_series({start}::bigint, {stop}::bigint) AS s(g)"
                sql = f"INSERT INTO {table} ({cols}) {select} {series}"
            else:
                sql = (f"WITH RECURSIVE s(g) AS (SELECT {start} UNION ALL SELECT g + 1 FROM s WHERE g < {stop}) "
                       f"INSERT INTO {table} ({cols}) {select} FROM s")
            with engine.begin() as conn:
                conn.exec_driver_sql(sql)
    took["insert_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for index in indexes:
            index.create(conn)
        if dialect == "postgresql":
            conn.execute(text("ANALYZE"))  # what autovacuum does after a bulk load
    took["index_seconds"] = time.perf_counter() - t0
    return took


def _timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm: the first call compiles the statement and faults pages in
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))],
            "max_ms": times[-1]}


def query_times(engine: Any, rows: int, repeat: int) -> dict[str, dict[str, float]]:
    from sqlalchemy import select

    from reconciler.request_log_store import LogFilter, RequestLog
    from reconciler.request_log_tables import log_table

    log = RequestLog(engine)
    shape = _shape(rows)
    rnd = random.Random(7)

    def card() -> str:
        return f"C{rnd.randrange(shape['cards'])}"

    def sub() -> str:
        return f"S{rnd.randrange(shape['cards'] // 2)}"

    def some_key() -> str:
        g = rnd.randrange(1, rows + 1)
        return f"ev:E{g}:C{g % shape['cards']}:{OPERATIONS[g % len(OPERATIONS)]}"

    def primary_key() -> None:
        with engine.connect() as conn:
            conn.execute(select(log_table.c.state).where(log_table.c.entry_key == some_key())).first()

    deep = log.search(LogFilter(state="COMPLETED"), limit=50)
    for _ in range(20):  # 20 pages down, through the cursor
        assert deep.next_cursor
        deep = log.search(LogFilter(state="COMPLETED"), limit=50, cursor=deep.next_cursor)
    cursor = deep.next_cursor
    mid = T0 + timedelta(days=DAYS // 2)
    halfway = log.search(LogFilter(state="COMPLETED", until=mid), limit=50).next_cursor  # a position 45 days back
    cases: dict[str, Callable[[], Any]] = {
        "baseline: primary-key lookup": primary_key,
        "by secure client": lambda: log.search(LogFilter(secure_client_id=card()), limit=50),
        "by subscription": lambda: log.search(LogFilter(subscription_id=sub()), limit=50),
        "by secure client + state REJECTED": lambda: log.search(LogFilter(secure_client_id=card(),
                                                                          state="REJECTED"), limit=50),
        "by type SET_PIN + state REJECTED": lambda: log.search(LogFilter(operation="SET_PIN", state="REJECTED"),
                                                               limit=50),
        "by process api, one day": lambda: log.search(LogFilter(process_name="api", since=mid,
                                                                until=mid + timedelta(days=1)), limit=50),
        "newest 50, no filter": lambda: log.search(LogFilter(), limit=50),
        "state COMPLETED, page 21 (keyset)": lambda: log.search(LogFilter(state="COMPLETED"), limit=50,
                                                                cursor=cursor),
        "state COMPLETED, 45 days back (keyset)": lambda: log.search(LogFilter(state="COMPLETED"), limit=50,
                                                                     cursor=halfway),
        "history of a box": lambda: log.history(card()),
    }
    return {name: _timed(fn, repeat) for name, fn in cases.items()}


def _sqlite_engine(url: str) -> Any:
    from kmsbridge.settings import Settings
    from kmsbridge.wiring import engine_for

    return engine_for(Settings(database_url=url))  # the product's pragmas (WAL, synchronous=NORMAL)


def _queries(url: str, rows: int, repeat: int) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from kmsbridge.db import upgrade

    engine = _sqlite_engine(url) if url.startswith("sqlite") else create_engine(url)
    upgrade(engine)
    print(f"  seeding {rows:,} rows ...", flush=True)
    seeding = seed(engine, rows)
    print(f"  seeded in {seeding['insert_seconds']:.0f} s + indexes {seeding['index_seconds']:.0f} s; querying ...",
          flush=True)
    times = query_times(engine, rows, repeat)
    engine.dispose()
    return {"seeding": seeding, "queries": times}


def _rate(env: BenchEnv, pipe: Any, process: str, logical: str, total: int) -> dict[str, float]:
    proc = env.adopt(pipe.spawn(process))
    progress = GroupProgress(env.bootstrap, pipe.settings.group_id(process), pipe.settings.topic(logical),
                             pipe.partitions, proc.pid)
    progress.wait_for(total, timeout=max(300.0, total / 50), alive=lambda: proc.poll() is None)
    steady = progress.steady(total)
    progress.close()
    terminate(proc)
    return {"per_second": steady["per_second"], "cpu_us_per_message": steady["cpu_us_per_message"]}


def _result_values(commands: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    from schemas.codec import Codec
    from schemas.records import KmsCommand, KmsResult, ResultState

    codec = Codec()
    out = []
    now = datetime.now(UTC)
    for key, value in commands:
        cmd = codec.decode(value, KmsCommand)
        result = KmsResult(idempotency_key=cmd.idempotency_key, operation=cmd.operation.value,
                           secure_client_id=cmd.secure_client_id, subscription_id=cmd.subscription_id,
                           event_id=cmd.source.event_id, state=ResultState.COMPLETED, attempts=1, executed_at=now)
        out.append((key, codec.encode(result, "kms.results")))
    return out


def _writer(env: BenchEnv, name: str, new_db: Callable[[], str], events: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    values = list(campaign_values(events, run=run_id))
    pipe = env.pipeline(f"{name}-events", database_url=new_db())
    produce_values(env.bootstrap, pipe.settings.topic("subscriptions"), values)
    print(f"  {name}: projector on {events:,} events ...", flush=True)
    projector = _rate(env, pipe, "projector", "subscriptions", events)
    log_pipe = env.pipeline(f"{name}-log", database_url=new_db())
    produce_values(env.bootstrap, log_pipe.settings.topic("subscriptions"), values)
    print(f"  {name}: request-log on the same events ...", flush=True)
    log_events = _rate(env, log_pipe, "request-log", "subscriptions", events)
    commands = command_values(max(1, events // 4), 4, run=run_id)[:events]
    cmd_pipe = env.pipeline(f"{name}-commands", database_url=new_db())
    produce_values(env.bootstrap, cmd_pipe.settings.topic("commands"), commands)
    print(f"  {name}: request-log on {len(commands):,} commands ...", flush=True)
    log_commands = _rate(env, cmd_pipe, "request-log", "commands", len(commands))
    produce_values(env.bootstrap, cmd_pipe.settings.topic("results"), _result_values(commands))
    print(f"  {name}: request-log on their {len(commands):,} results ...", flush=True)
    log_results = _rate(env, cmd_pipe, "request-log", "results", len(commands))
    return {"projector_events": projector, "log_events": log_events, "log_commands": log_commands,
            "log_results": log_results, "ratio_events": log_events["per_second"] / projector["per_second"]}


def run(rows: int, events: int, *, repeat: int = 30, results_dir: Path | None = None,
        writer: bool = True, pg_writer: bool = True) -> dict[str, Any]:
    databases: dict[str, Any] = {}
    with BenchEnv("request-log", simulator=False) as env:
        print(f"SQLite: {rows:,} rows ...", flush=True)
        databases["sqlite"] = {"queries": _queries(f"sqlite:///{env.workdir / 'log.db'}", rows, repeat)}
        (env.workdir / "log.db").unlink(missing_ok=True)
        counter = iter(range(1_000_000))
        if writer:
            databases["sqlite"]["writer"] = _writer(
                env, "sqlite", lambda: f"sqlite:///{env.workdir / f'w{next(counter)}.db'}", events)
        pg = start_postgres()
        if pg is None:
            databases["postgresql"] = {"skipped": "no PostgreSQL binaries (make system-deps installs them)"}
        else:
            try:
                print(f"PostgreSQL: {rows:,} rows ...", flush=True)
                databases["postgresql"] = {"queries": _queries(new_database(pg.url), rows, repeat)}
                if writer and pg_writer:
                    databases["postgresql"]["writer"] = _writer(env, "postgresql", lambda: new_database(pg.url),
                                                                events)
            finally:
                pg.stop()
    flags = "" if writer else " --queries-only"
    result = {"command": f"python -m bench.request_log --rows {rows} --events {events}{flags}", "rows": rows,
              "events": events, "repeat": repeat, "databases": databases}
    path = write_result("request_log", result, results_dir)
    report(result)
    print(f"results in {path}")
    return result


def report(result: dict[str, Any]) -> None:
    for db, r in result["databases"].items():
        if "skipped" in r:
            print(f"\n{db}: skipped ({r['skipped']})")
            continue
        q = r["queries"]
        base = q["queries"]["baseline: primary-key lookup"]["p50_ms"]
        print_table(f"Request log on {db}, {result['rows']:,} rows (seeded in {q['seeding']['insert_seconds']:.0f} s, "
                    f"indexes {q['seeding']['index_seconds']:.0f} s), {result['repeat']} runs each",
                    ["query (limit 50)", "p50 ms", "p95 ms", "max ms", "p50 vs primary-key lookup"],
                    [[name, t["p50_ms"], t["p95_ms"], t["max_ms"], t["p50_ms"] / base if base else None]
                     for name, t in q["queries"].items()])
        w = r.get("writer")
        if w is None:
            continue
        print_table(f"Writer on {db} ({result['events']:,} each, same broker, same run)",
                    ["process", "input", "records/s", "CPU us/record"],
                    [["projector (baseline)", "events", w["projector_events"]["per_second"],
                      w["projector_events"]["cpu_us_per_message"]],
                     ["request-log", "events", w["log_events"]["per_second"], w["log_events"]["cpu_us_per_message"]],
                     ["request-log", "commands", w["log_commands"]["per_second"],
                      w["log_commands"]["cpu_us_per_message"]],
                     ["request-log", "results", w["log_results"]["per_second"],
                      w["log_results"]["cpu_us_per_message"]]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_log", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--queries-only", action="store_true", help="seed and query; do not measure the writer")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        run(QUICK_ROWS, 1000, repeat=3, results_dir=args.results_dir, pg_writer=False)  # the smoke test's form
    else:
        run(args.rows, args.events, repeat=args.repeat, results_dir=args.results_dir, writer=not args.queries_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
