"""Projector: events/s of ``kmsbridge run projector`` into SQLite and into PostgreSQL.

For each database: a fresh topic gets ``--events`` SubscriptionEvents (half new subscriptions, then
the same subscriptions again with a higher version: inserts, then version-guarded updates); the
projector runs as a user runs it (subprocess, product defaults: batches of 500 in one transaction,
synchronous offset commit after it); its steady rate and CPU per event come from its group's
committed offsets.

Baseline, same run, same database server: :meth:`reconciler.store.DesiredStateStore.upsert` called
directly with the same events, already decoded, in batches of 500: the database's own speed for this
work, with Kafka and decoding taken out. The ratio says how much of it the projector keeps.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    BenchEnv,
    GroupProgress,
    campaign_values,
    print_table,
    produce_values,
    write_result,
)
from tests.support.pg import new_database, start_postgres
from tests.support.pipeline import terminate

__all__ = ["main"]


def _events(n: int, run: str) -> list[tuple[bytes, bytes]]:
    half = n // 2
    return [*campaign_values(half, run=run, version=2), *campaign_values(n - half, run=run + "u", version=3)]


def store_only(database_url: str, values: list[tuple[bytes, bytes]], batch: int = 500) -> dict[str, float]:
    """The baseline: decoded events upserted straight into the store (no Kafka)."""
    from sqlalchemy import create_engine

    from kmsbridge.db import upgrade
    from reconciler.store import DesiredStateStore
    from schemas.codec import Codec
    from schemas.records import SubscriptionEvent

    codec = Codec()
    events = [codec.decode(v, SubscriptionEvent) for _, v in values]
    engine = _engine(database_url) if database_url.startswith("sqlite") else create_engine(database_url)
    upgrade(engine)
    store = DesiredStateStore(engine)
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(events), batch):
        store.upsert(events[start:start + batch])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.dispose()
    return {"events_per_second": len(events) / wall, "cpu_us_per_event": cpu / len(events) * 1e6}


def _engine(url: str) -> Any:
    from kmsbridge.settings import Settings
    from kmsbridge.wiring import engine_for

    return engine_for(Settings(database_url=url))  # the product's SQLite pragmas (WAL, synchronous=NORMAL)


def _projector(env: BenchEnv, name: str, database_url: str, values: list[tuple[bytes, bytes]]) -> dict[str, float]:
    pipe = env.pipeline(name, database_url=database_url)
    topic = pipe.settings.topic("subscriptions")
    produce_values(env.bootstrap, topic, values)
    proc = env.adopt(pipe.spawn("projector"))
    progress = GroupProgress(env.bootstrap, pipe.settings.group_id("projector"), topic, pipe.partitions, proc.pid)
    progress.wait_for(len(values), timeout=max(300.0, len(values) / 100), alive=lambda: proc.poll() is None)
    steady = progress.steady(len(values))
    progress.close()
    terminate(proc)
    return {"events_per_second": steady["per_second"], "cpu_us_per_event": steady["cpu_us_per_message"]}


def run(events: int, *, results_dir: Path | None) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    values = _events(events, run_id)
    rows: dict[str, dict[str, Any]] = {}
    with BenchEnv("projector", simulator=False) as env:
        print("SQLite: store alone ...", flush=True)
        base = store_only(f"sqlite:///{env.workdir / 'store-only.db'}", values)
        print("SQLite: projector ...", flush=True)
        proj = _projector(env, "sqlite", f"sqlite:///{env.workdir / 'projector.db'}", values)
        rows["sqlite"] = {"store_only": base, "projector": proj,
                          "ratio": proj["events_per_second"] / base["events_per_second"]}
        pg = start_postgres()
        if pg is None:
            rows["postgresql"] = {"skipped": "no PostgreSQL binaries (make system-deps installs them)"}
        else:
            try:
                print("PostgreSQL: store alone ...", flush=True)
                base = store_only(new_database(pg.url), values)
                print("PostgreSQL: projector ...", flush=True)
                proj = _projector(env, "postgresql", new_database(pg.url), values)
                rows["postgresql"] = {"store_only": base, "projector": proj,
                                      "ratio": proj["events_per_second"] / base["events_per_second"]}
            finally:
                pg.stop()
    result = {"command": f"python -m bench.projector --events {events}", "events": events, "databases": rows}
    path = write_result("projector", result, results_dir)
    report(result)
    print(f"results in {path}")
    return result


def report(result: dict[str, Any]) -> None:
    table = []
    for db, r in result["databases"].items():
        if "skipped" in r:
            table.append([db, "-", "-", "-", "-", f"skipped: {r['skipped']}"])
            continue
        table.append([db, r["store_only"]["events_per_second"], r["projector"]["events_per_second"], r["ratio"],
                      r["projector"]["cpu_us_per_event"], ""])
    print_table(f"Projector ({result['events']:,} events: half inserts, half version-guarded updates)",
                ["database", "store alone (baseline) ev/s", "projector ev/s", "ratio", "projector CPU us/ev",
                 "note"], table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projector", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    run(2000 if args.quick else args.events, results_dir=args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
