"""Traffic control towards the KMS (docs/traffic.md): the express lane, coalescing, the calls-per-second
limit, with the translator and the executor run as users run them (``kmsbridge run ...`` subprocesses)
against the simulator in its own process; every figure comes from the simulator's audit file.

1. **Agent requests during a backlog.** A backlog of SYNC_ENTITLEMENTS commands (one per box) waits on
   ``kms.commands``; the executor starts draining it; once it is draining, agents' PIN requests
   (``kms.requests`` → translator → the express lane) are sent one at a time, a few a second, until
   the backlog is drained. An agent request's latency is the audit ``at`` of its SET_PIN minus the
   time it was produced. Target: p99 < 2 s. The baseline is the same run with the express lane off.
2. **Catch-up after an outage.** Every box got five versions while the KMS was away (the backlog is
   version by version, every box's v1 before any v2, as they accumulate); the executor then catches up
   under a calls-per-second limit. Figures: KMS calls / boxes touched (target <= 1.05), and the
   catch-up time (first to last KMS call) against replaying every version (the same number of
   commands, one per box, so nothing can be coalesced). Run with the product's ``max_buffered`` (with
   the look-ahead, and without it: coalescing then sees only what the executor holds) and with a buffer
   that holds the whole backlog. ``--catch-up-only`` runs this part alone.
3. **The limit held.** One executor drains distinct boxes at three limits; the steady calls per
   second (10 %-trimmed) against the limit, target within 5 %.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.common import BenchEnv, _writer, percentile, print_table, produce_values, steady_rate, write_result
from tests.support.simulator import at_seconds

__all__ = ["main", "run"]

TARGET_AGENT_P99_S = 2.0
TARGET_CALLS_PER_BOX = 1.05
TARGET_LIMIT_ERROR = 0.05
PRODUCT_MAX_BUFFERED = 2000


def sync_values(boxes: int, versions: int, *, run: str, distinct: bool = False) -> list[tuple[bytes, bytes]]:
    """SYNC_ENTITLEMENTS commands, version by version (every box's v1, then every v2, ...); ``distinct``:
    each (box, version) its own box instead, so nothing can be coalesced."""
    from fastavro import schemaless_writer

    header, schema = _writer("KmsCommand")
    start = datetime.now(UTC) - timedelta(hours=1)
    out: list[tuple[bytes, bytes]] = []
    for v in range(1, versions + 1):
        for b in range(boxes):
            card = f"X{run}{(v - 1) * boxes + b:07d}" if distinct else f"X{run}{b:07d}"
            record = {
                "idempotency_key": f"t:{run}:{card}:v{v}", "operation": "SYNC_ENTITLEMENTS",
                "secure_client_id": card, "subscription_id": f"S{card}", "subscription_version": v,
                "distributor": "MAIN", "products": [{"product_id": f"P{100 + v}", "valid_from": None,
                                                     "valid_until": None}],
                "chipset": None, "pin": None, "message": None,
                "source": {"process_name": "bench", "topic": None, "event_id": f"{run}-{b}-{v}", "request_id": None,
                           "communication_id": None, "run_id": None},
                "priority": "REGULAR", "not_before": None, "created_at": start + timedelta(seconds=v),
            }
            buf = BytesIO()
            buf.write(header)
            schemaless_writer(buf, schema, record)
            out.append((card.encode(), buf.getvalue()))
    return out


def _wait_audit(tail: Any, seen: list[dict[str, Any]], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {count} KMS calls after {timeout:.0f} s")
        seen += tail.poll()
        time.sleep(0.1)


def agent_requests(env: BenchEnv, backlog: int, *, express: bool, agents_per_second: float = 4.0) -> dict[str, Any]:
    from pydantic import SecretStr

    from schemas.records import RequestType, ServiceRequest

    run = uuid.uuid4().hex[:6]
    pipe = env.pipeline(f"agents-{run}", extra_env={"KMSBRIDGE_EXECUTOR__EXPRESS_LANE": str(express).lower()})
    produce_values(env.bootstrap, pipe.settings.topic("commands"), sync_values(backlog, 1, run=run))
    tail = env.simulator.tail_audit()
    seen: list[dict[str, Any]] = []
    env.adopt(pipe.spawn("translator", log_name=f"translator-{run}"))
    env.adopt(pipe.spawn("executor", log_name=f"executor-{run}"))
    _wait_audit(tail, seen, min(1000, backlog // 10), timeout=180)
    # one untimed request first: the translator has joined its group and the path is warm (without the
    # express lane it waits behind the backlog, so the baseline only waits for the translator's first output)
    pipe.produce("requests", [ServiceRequest(request_id=f"W{run}", type=RequestType.SET_PIN,
                                             secure_client_id=f"W{run}", pin=SecretStr("4321"),
                                             requested_at=datetime.now(UTC))])
    deadline = time.monotonic() + 120
    while express and not any(e["idempotency_key"].startswith(f"req:W{run}:") for e in seen):
        if time.monotonic() > deadline:
            raise TimeoutError("the warm-up request was not applied")
        seen += tail.poll()
        time.sleep(0.05)
    sent: dict[str, float] = {}
    i = 0
    while sum(1 for e in seen if e["idempotency_key"].startswith("t:")) < backlog * 0.95:
        request_id = f"A{run}{i:05d}"
        sent[request_id] = time.time()
        pipe.produce("requests", [ServiceRequest(request_id=request_id, type=RequestType.SET_PIN,
                                                 secure_client_id=f"AG{run}{i:05d}", pin=SecretStr("4321"),
                                                 requested_by="agent", requested_at=datetime.now(UTC))])
        i += 1
        time.sleep(1 / agents_per_second)
        seen += tail.poll()
    _wait_audit(tail, seen, backlog + len(sent) + 1, timeout=600)
    applied = {e["idempotency_key"].split(":")[1]: at_seconds(e) for e in seen
               if e["idempotency_key"].startswith("req:")}
    latencies = sorted(applied[r] - t for r, t in sent.items() if r in applied)
    backlog_calls = [at_seconds(e) for e in seen if e["idempotency_key"].startswith("t:")]
    return {"express_lane": express, "backlog": backlog, "agent_requests": len(sent),
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
            "max_s": latencies[-1] if latencies else None,
            "backlog_drain_seconds": max(backlog_calls) - min(backlog_calls),
            "backlog_calls_per_second": steady_rate(backlog_calls)}


def catch_up(env: BenchEnv, boxes: int, *, versions: int, limit: float, max_buffered: int,
             distinct: bool = False, lookahead: bool = True) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    extra = {"KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND": str(limit),
             "KMSBRIDGE_EXECUTOR__MAX_BUFFERED": str(max_buffered)}
    if not lookahead:
        extra["KMSBRIDGE_EXECUTOR__LOOKAHEAD_MAX_ENTRIES"] = "0"
    pipe = env.pipeline(f"catchup-{run}", extra_env=extra)
    commands = boxes * versions
    produce_values(env.bootstrap, pipe.settings.topic("commands"), sync_values(boxes, versions, run=run,
                                                                               distinct=distinct))
    tail = env.simulator.tail_audit()
    seen: list[dict[str, Any]] = []
    env.adopt(pipe.spawn("executor", log_name=f"executor-{run}"))
    # every box's newest version applied: then the catch-up is over (older ones are coalesced or stale)
    newest = {f"t:{run}:X{run}{(versions - 1) * boxes + b if distinct else b:07d}:v{versions}" for b in range(boxes)}
    deadline = time.monotonic() + 600
    while not newest <= {e["idempotency_key"] for e in seen}:
        if time.monotonic() > deadline:
            raise TimeoutError("the catch-up did not finish")
        seen += tail.poll()
        time.sleep(0.2)
    mine = [e for e in seen if e["idempotency_key"].startswith(f"t:{run}:")]
    times = sorted(at_seconds(e) for e in mine)
    touched = boxes * versions if distinct else boxes
    return {"boxes": touched, "commands": commands, "versions_per_box": 1 if distinct else versions,
            "max_buffered": max_buffered, "lookahead": lookahead, "limit_per_second": limit, "kms_calls": len(mine),
            "calls_per_box": len(mine) / touched, "catch_up_seconds": times[-1] - times[0]}


def limit_held(env: BenchEnv, limit: float, seconds: float) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    pipe = env.pipeline(f"limit-{run}", extra_env={"KMSBRIDGE_EXECUTOR__RATE_LIMIT_PER_SECOND": str(limit)})
    n = int(limit * seconds)
    produce_values(env.bootstrap, pipe.settings.topic("commands"), sync_values(n, 1, run=run))
    tail = env.simulator.tail_audit()
    seen: list[dict[str, Any]] = []
    env.adopt(pipe.spawn("executor", log_name=f"executor-{run}"))
    _wait_audit(tail, seen, n, timeout=seconds * 3 + 120)
    rate = steady_rate([at_seconds(e) for e in seen if e["idempotency_key"].startswith(f"t:{run}:")])
    return {"limit_per_second": limit, "commands": n, "steady_calls_per_second": rate,
            "error": rate / limit - 1, "met": abs(rate / limit - 1) <= TARGET_LIMIT_ERROR}


def run(*, quick: bool = False, backlog: int = 200_000, boxes: int = 4000, results_dir: Path | None = None,
        catch_up_only: bool = False) -> dict[str, Any]:
    if quick:
        backlog, boxes = 2000, 200
    limits = (20.0, 50.0, 100.0) if quick else (100.0, 300.0, 600.0)
    with BenchEnv("traffic") as env:
        env.simulator.set_latency(5)
        agents = [] if catch_up_only else [agent_requests(env, backlog, express=True)]
        if not quick and not catch_up_only:
            agents.append(agent_requests(env, min(backlog, 50_000), express=False))
        limit = 50.0 if quick else 1000.0
        catch = [catch_up(env, boxes, versions=5, limit=limit, max_buffered=PRODUCT_MAX_BUFFERED),
                 catch_up(env, boxes, versions=5, limit=limit, max_buffered=PRODUCT_MAX_BUFFERED, lookahead=False),
                 catch_up(env, boxes, versions=5, limit=limit, max_buffered=boxes * 5 + 1000),
                 catch_up(env, boxes, versions=5, limit=limit, max_buffered=boxes * 5 + 1000, distinct=True)]
        held = [] if catch_up_only else [limit_held(env, lim, 4.0 if quick else 15.0) for lim in limits]
    replay = catch[-1]["catch_up_seconds"]
    for c in catch[:-1]:
        c["vs_replaying_every_version"] = c["catch_up_seconds"] / replay if replay else None
    met = {"calls_per_box": catch[0]["calls_per_box"] <= TARGET_CALLS_PER_BOX}
    if not catch_up_only:
        met |= {"agent_p99": agents[0]["p99_s"] < TARGET_AGENT_P99_S, "limits": all(h["met"] for h in held)}
    result = {
        "command": "python -m bench.traffic" + (" --quick" if quick else f" --backlog {backlog} --boxes {boxes}")
                   + (" --catch-up-only" if catch_up_only else ""),
        "simulator_latency_ms": 5, "agents": agents, "catch_up": catch, "limits": held, "met": met,
    }
    print_table("agent requests while a backlog drains (simulator 5 ms)",
                ["express lane", "backlog", "requests", "p50 s", "p99 s", "max s", "backlog calls/s"],
                [[a["express_lane"], a["backlog"], a["agent_requests"], a["p50_s"], a["p99_s"], a["max_s"],
                  a["backlog_calls_per_second"]] for a in agents])
    print_table(f"catch-up, 5 versions per box, limit {limit:,.0f}/s",
                ["boxes", "versions/box", "max_buffered", "look-ahead", "KMS calls", "calls/box", "catch-up s",
                 "vs replay"],
                [[c["boxes"], c["versions_per_box"], c["max_buffered"], c["lookahead"], c["kms_calls"],
                  c["calls_per_box"], c["catch_up_seconds"], c.get("vs_replaying_every_version")] for c in catch])
    print_table("calls-per-second limit held (one executor)", ["limit/s", "commands", "steady calls/s", "error"],
                [[h["limit_per_second"], h["commands"], h["steady_calls_per_second"], f"{h['error']:+.1%}"]
                 for h in held])
    write_result("traffic", result, results_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (proves the script works)")
    parser.add_argument("--backlog", type=int, default=200_000, help="commands waiting while agents send requests")
    parser.add_argument("--boxes", type=int, default=4000, help="boxes of the catch-up (five versions each)")
    parser.add_argument("--catch-up-only", action="store_true", help="only the catch-up after an outage")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, backlog=args.backlog, boxes=args.boxes, results_dir=args.results_dir,
                 catch_up_only=args.catch_up_only)
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
