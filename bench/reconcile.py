"""``make bench-reconcile``: a reset run over 100,000 subscriptions against the KMS simulator.

What it does:

1. starts ``kmsbridge simulator`` as a subprocess on a free port
   (:func:`tests.support.simulator.start_simulator_process`);
2. seeds a fresh SQLite desired-state store through :class:`~reconciler.store.DesiredStateStore`
   (batched upserts, as the projector writes) and the simulator through ``POST /admin/state``
   (the same cards, in sync), then makes ``--drift-share`` of the subscriptions drift (their MAIN
   card loses one product);
3. runs the reset job (``ResetJob``, the same object ``kmsbridge run reconciler`` runs) **in a child
   process**, so the peak RSS it reports is the job's alone, not the seeding's. The job reads the
   KMS over real SOAP/HTTP (``SoapKmsClient``); its commands go to a counting sink instead of Kafka
   (publishing ~1,000 commands is not what is measured here);
4. prints duration, KMS queries, peak RSS and the counts, and writes ``bench/results/reconcile.json``.

Usage: ``python -m bench.reconcile [--subscriptions N] [--twin-share F] [--drift-share F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support.simulator import start_simulator_process

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "reconcile.json"
PROVIDER = ROOT / "examples" / "provider.yaml"
TARGET_SECONDS = 60.0
TARGET_RSS_MB = 300.0
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


# --- the population ----------------------------------------------------------------------------------


def _population(n: int, twin_share: float, drift_share: float, seed: int = 7) -> tuple[list[Any], dict[str, Any],
                                                                                        set[int]]:
    """Events, the KMS state that matches them, and the indices of the subscriptions made to drift."""
    from schemas.records import Device, EventType, Service, ServiceState, SubscriptionEvent, SubscriptionState

    rng = random.Random(seed)
    basic = [{"product_id": "P100"}, {"product_id": "P101"}]
    events: list[Any] = []
    clients: dict[str, Any] = {}
    drifted = set(rng.sample(range(n), int(n * drift_share)))
    for i in range(n):
        main = Device(distributor="MAIN", secure_client_id=f"4{i:09d}", stb_serial=f"STB{i:09d}")
        devices = [main]
        sports = i % 2 == 0
        services = [Service(service_code="BASIC", state=ServiceState.ACTIVE)]
        if sports:
            services.append(Service(service_code="SPORTS", state=ServiceState.ACTIVE))
        main_products = [*basic, {"product_id": "P200"}] if sports else basic
        if i in drifted:
            main_products = main_products[1:]  # the drift: P100 lost
        clients[main.secure_client_id] = {"entitlements": main_products, "paired_chipset": main.stb_serial,
                                          "pin": "0001"}
        if rng.random() < twin_share:
            twin = Device(distributor="TWIN1", secure_client_id=f"5{i:09d}", stb_serial=f"STT{i:09d}")
            devices.append(twin)
            clients[twin.secure_client_id] = {"entitlements": basic, "paired_chipset": twin.stb_serial, "pin": "0001"}
        events.append(SubscriptionEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))), event_type=EventType.ACTIVATED,
            occurred_at=EPOCH + timedelta(minutes=i), subscription_id=f"S{i:08d}", account_id=f"A{i:08d}",
            subscription_type="RESIDENTIAL" if i % 5 else "BUSINESS", created_at=EPOCH + timedelta(minutes=i),
            version=1, state=SubscriptionState.ACTIVE, services=services, devices=devices,
        ))
    return events, clients, drifted


def _seed(database_url: str, sim_url: str, token: str, n: int, twin_share: float, drift_share: float
          ) -> dict[str, Any]:
    from kmsbridge.db import upgrade
    from kmsbridge.settings import Settings
    from kmsbridge.wiring import engine_for
    from reconciler.store import DesiredStateStore

    t0 = time.monotonic()
    events, clients, drifted = _population(n, twin_share, drift_share)
    engine = engine_for(Settings(database_url=database_url))
    upgrade(engine)
    store = DesiredStateStore(engine)
    for start in range(0, len(events), 2000):
        store.upsert(events[start:start + 2000])
    engine.dispose()
    cards = list(clients)
    with httpx.Client(base_url=sim_url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
        for start in range(0, len(cards), 50_000):
            chunk = {card: clients[card] for card in cards[start:start + 50_000]}
            http.post("/admin/state", json={"secure_clients": chunk}).raise_for_status()
    return {"subscriptions": n, "cards": len(cards), "drifted": len(drifted),
            "seconds": round(time.monotonic() - t0, 1)}


# --- the measured run (child process) ----------------------------------------------------------------


class _CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def publish(self, command: Any) -> None:
        self.count += 1

    def flush(self) -> None:
        return None


def _run_job(database_url: str, endpoint: str, token: str, query_concurrency: int) -> dict[str, Any]:
    from kms_adapter.soap_client import SoapKmsClient
    from kmsbridge.settings import Settings
    from kmsbridge.wiring import engine_for
    from provisioning.provider import load_provider
    from reconciler.expectations import Expectations
    from reconciler.job import JobConfig, ResetJob
    from reconciler.lock import RunLock
    from reconciler.store import DesiredStateStore
    from schemas.records import ReconcileRequest

    engine = engine_for(Settings(database_url=database_url))
    provider = load_provider(PROVIDER)
    config = JobConfig(query_concurrency=query_concurrency, progress_log_seconds=5.0)
    sink = _CountingSink()
    rss_before = _rss_mb()

    async def main() -> tuple[Any, Any]:
        kms = SoapKmsClient(endpoint, provider.operator_tag, token, timeout=30)
        try:
            job = ResetJob(DesiredStateStore(engine), kms, sink, provider,
                           expectations=Expectations(engine, config.expectation_ttl), lock=RunLock(engine),
                           config=config)
            report = await job.run(ReconcileRequest(run_id=f"bench-{uuid.uuid4().hex[:8]}"))
            return report, job.last_stats
        finally:
            await kms.aclose()

    cpu0 = time.process_time()
    t0 = time.monotonic()
    report, stats = asyncio.run(main())
    seconds = time.monotonic() - t0
    return {
        "duration_seconds": round(seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "checked": report.checked, "in_sync": report.in_sync, "drifted": report.drifted,
        "commands_published": sink.count, "failed": report.failed, "error": report.error,
        "kms_queries": stats.kms_queries if stats else None,
        "subscriptions_per_second": round(report.checked / seconds, 0) if seconds else None,
        "rss_before_run_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` on Linux. Not ``ru_maxrss``, which Linux carries across
    ``execve`` from the parent (the seeding process), so it would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- orchestration -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--twin-share", type=float, default=0.3, help="share of subscriptions with a TWIN1 box")
    parser.add_argument("--drift-share", type=float, default=0.01, help="share of subscriptions made to drift")
    parser.add_argument("--query-concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("DATABASE_URL", "ENDPOINT", "TOKEN_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from kmsbridge.logs import setup_logging

        setup_logging("INFO")  # the job's progress lines and summary, on stderr
        database_url, endpoint, token_file = args.child
        print(json.dumps(_run_job(database_url, endpoint, Path(token_file).read_text().strip(),
                                  args.query_concurrency)))
        return 0

    with tempfile.TemporaryDirectory(prefix="kmsbridge-bench-") as tmp:
        workdir = Path(tmp)
        database_url = f"sqlite:///{workdir / 'kmsbridge.db'}"
        sim = start_simulator_process(workdir, audit=False, timeout=60)
        url, token = sim.url, sim.token
        try:
            print(f"seeding {args.subscriptions:,} subscriptions (store + simulator) ...", flush=True)
            seeded = _seed(database_url, url, token, args.subscriptions, args.twin_share, args.drift_share)
            print(f"seeded {seeded['cards']:,} cards in {seeded['seconds']} s; running the reset job ...", flush=True)
            sim_cpu_before = sim.cpu_seconds()
            load_before = os.getloadavg()[0]
            child = subprocess.run(
                [sys.executable, "-m", "bench.reconcile", "--query-concurrency", str(args.query_concurrency),
                 "--child", database_url, f"{url}/kms", str(workdir / "kms.token")],
                capture_output=True, text=True, check=False, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            sys.stderr.write(child.stderr[-4000:])
            if child.returncode != 0:
                print(f"the reset job failed (exit {child.returncode})", file=sys.stderr)
                return 1
            run = json.loads(child.stdout.strip().splitlines()[-1])
            simulator_rss = round(psutil.Process(sim.proc.pid).memory_info().rss / 2**20, 1)
            simulator_cpu = round(sim.cpu_seconds() - sim_cpu_before, 1)
        finally:
            sim.stop()
    result = {
        "benchmark": "reconcile",
        "command": "make bench-reconcile",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seeded": seeded,
        "run": run,
        "simulator_rss_mb": simulator_rss,
        "simulator_cpu_seconds_during_run": simulator_cpu,
        "load_average_1m_before_run": round(load_before, 2),
        "targets": {"duration_seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_RSS_MB},
        "met": run["duration_seconds"] < TARGET_SECONDS and run["peak_rss_mb"] < TARGET_RSS_MB,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"reconciled {run['checked']:,} subscriptions ({seeded['cards']:,} cards) in {run['duration_seconds']} s "
          f"({run['subscriptions_per_second']:,.0f}/s), {run['kms_queries']:,} KMS queries, "
          f"peak RSS {run['peak_rss_mb']} MB; drifted {run['drifted']:,}, commands {run['commands_published']:,}, "
          f"failed {run['failed']}")
    print(f"targets: < {TARGET_SECONDS:.0f} s and < {TARGET_RSS_MB:.0f} MB: {'met' if result['met'] else 'NOT met'}"
          f"; results in {args.out}")
    return 0  # a measurement, not a gate: "met" in the JSON says whether the targets held


if __name__ == "__main__":
    raise SystemExit(main())
