"""Shared pieces of the benchmarks: the environment (broker, simulator, work folder), event streams, figures.

Every benchmark measures its baseline **in the same run, on the same broker** as the thing it compares,
and reports the ratio, because absolute figures on a shared two-core machine move with the load of
whatever else runs (the load average is recorded with each result).

- :class:`BenchEnv` gives a broker (``KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS`` when set, else a local
  Apache Kafka started with the C2 JIT, see :mod:`localdev.local_broker`), a KMS simulator in its own
  process (:func:`tests.support.simulator.start_simulator_process`: audit lines to a file, so the
  applied order and ``at`` times of every call can be read back) and a work folder; it stops everything
  it started. The simulator, the audit reader, PostgreSQL and process helpers are the tests' own, under
  ``tests/support/``.
- :func:`campaign_values` makes the event stream of the benchmarks, encoded once (see its docstring).
- :class:`GroupProgress` follows a consumer group's committed offsets, which is how a benchmark sees a
  process's throughput without touching the process.
- :func:`print_table` / :func:`write_result` print and store the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

from tests.support.pipeline import terminate
from tests.support.simulator import SimulatorProcess, start_simulator_process

__all__ = [
    "IMG_DIR",
    "RESULTS_DIR",
    "ROOT",
    "BenchEnv",
    "GroupProgress",
    "campaign_values",
    "command_values",
    "cpu_seconds",
    "fmt",
    "linear_slope",
    "machine",
    "percentile",
    "print_table",
    "produce_values",
    "steady_rate",
    "write_result",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
IMG_DIR = ROOT / "docs" / "img"
PROVIDER = ROOT / "examples" / "provider.yaml"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_JVM_OPTS_ENV = "KMSBRIDGE_LOCAL_BROKER_JVM_OPTS"
_BOOTSTRAP_ENV = "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"


# --- machine and figures ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on, with the load at the time (other work shares the cores)."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table on stdout (the figures a reader compares)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def fmt(value: Any) -> str:
    """A figure as the tables print it (thousands separated, few decimals)."""
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "-+") and cell != "-"


def write_result(name: str, result: dict[str, Any], results_dir: Path | None = None) -> Path:
    """``bench/results/<name>.json`` (or under ``results_dir``), with the machine and the time."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"benchmark": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
               **result}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def steady_rate(times: Sequence[float], *, trim: float = 0.1) -> float:
    """Items per second between the ``trim`` and ``1 - trim`` quantiles of completion ``times``.

    Trimming drops the ramp-up (connections, JIT of the broker, first fetches) and the tail (the last
    partitions to drain), so the figure is the steady throughput, not the run's average.
    """
    ordered = sorted(times)
    n = len(ordered)
    if n < 3:
        return float("nan")
    first, last = int(n * trim), max(int(n * (1 - trim)) - 1, int(n * trim) + 1)
    last = min(last, n - 1)
    span = ordered[last] - ordered[first]
    return (last - first) / span if span > 0 else float("nan")


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 when fewer than two distinct x)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


# --- processes -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (children excluded)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# --- the environment of one benchmark ------------------------------------------------------------------


class BenchEnv:
    """Broker + simulator + work folder for one benchmark; a context manager that stops all of it."""

    def __init__(self, name: str, *, simulator: bool = True, keep: bool = False) -> None:
        self.name = name
        self._want_simulator = simulator
        self._keep = keep
        self._stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kmsbridge-bench-{name}-"))
        self.bootstrap = ""
        self.broker_started = False
        self._simulator: SimulatorProcess | None = None

    def __enter__(self) -> BenchEnv:
        try:
            self.bootstrap = os.environ.get(_BOOTSTRAP_ENV) or self._start_broker()
            if self._want_simulator:
                self._simulator = start_simulator_process(self.workdir, timeout=60)
                self._stack.callback(self._simulator.stop)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def simulator(self) -> SimulatorProcess:
        if self._simulator is None:
            raise RuntimeError("this benchmark runs without a simulator")
        return self._simulator

    def _start_broker(self) -> str:
        from localdev.local_broker import start_broker, stop_broker

        # Throughput figures want the broker's full JIT; the C1-only default is for fast test start-up.
        os.environ.setdefault(_JVM_OPTS_ENV, "-XX:TieredStopAtLevel=4")
        print(f"[{self.name}] starting a local Kafka broker ...", flush=True)
        handle = start_broker(self.workdir / "kafka")
        self.broker_started = True
        self._stack.callback(stop_broker, handle.pid)
        self.broker_pid = handle.pid
        return handle.bootstrap

    def pipeline(self, run: str, *, partitions: int = 6, database_url: str | None = None,
                 extra_env: dict[str, str] | None = None) -> Any:
        """A :class:`~tests.support.pipeline.Pipeline` on fresh topics; its processes die with the env."""
        from tests.support.pipeline import Pipeline

        sim_url = self._simulator.url if self._simulator else "http://127.0.0.1:9"
        token = self._simulator.token if self._simulator else "unused"
        pipe = Pipeline(self.bootstrap, sim_url, token, self.workdir / run, partitions=partitions,
                        database_url=database_url, extra_env=dict(extra_env or {}))
        self._stack.callback(pipe.close)
        return pipe

    def adopt(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Stop ``proc`` (SIGTERM, then SIGKILL) when the environment closes."""
        self._stack.callback(terminate, proc)
        return proc


# --- event streams -------------------------------------------------------------------------------------


def _writer(record: str) -> tuple[bytes, dict[str, Any]]:
    from schemas.codec import SINGLE_OBJECT_MAGIC, shipped_schemas

    schema = shipped_schemas()[record]
    return SINGLE_OBJECT_MAGIC + schema.fingerprint, schema.parsed


def campaign_values(n: int, *, start: int = 0, twin_share: float = 0.3, run: str = "",
                    version: int = 2) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of ``n`` SubscriptionEvents as billing sends them during a campaign.

    The mix is an operator campaign (a free weekend on every box): SERVICES_CHANGED on an
    ACTIVE subscription with BASIC and SPORTS, a MAIN box and, for ``twin_share`` of subscriptions, a
    TWIN1 box; so 1 + ``twin_share`` SYNC_ENTITLEMENTS commands per event. Values are written straight
    from dicts with fastavro in the registry-free single-object framing (the translator reads them
    through the same codec and pydantic validation as any event); ``event_id`` is
    ``<run>-<index>`` padded so latency runs can find an event from its commands' idempotency keys.
    Subscription ``i`` is ``S<i>``: a second stream over the same indexes with a higher ``version``
    updates the same subscriptions.
    """
    from fastavro import schemaless_writer

    header, schema = _writer("SubscriptionEvent")
    services = [{"service_code": "BASIC", "state": "ACTIVE", "valid_from": None, "valid_until": None},
                {"service_code": "SPORTS", "state": "ACTIVE", "valid_from": None, "valid_until": None}]
    twin_every = round(1 / twin_share) if twin_share > 0 else 0
    run = run or uuid.uuid4().hex[:8]
    for i in range(start, start + n):
        devices = [{"distributor": "MAIN", "secure_client_id": f"4{i:011d}", "stb_serial": f"B{i:011d}"}]
        if twin_every and i % twin_every == 0:
            devices.append({"distributor": "TWIN1", "secure_client_id": f"5{i:011d}", "stb_serial": f"T{i:011d}"})
        sub = f"S{i:011d}"
        record = {
            "event_id": f"{run}-{i:012d}", "event_type": "SERVICES_CHANGED",
            "occurred_at": EPOCH + timedelta(seconds=i), "subscription_id": sub, "account_id": f"A{i:011d}",
            "subscription_type": "RESIDENTIAL", "created_at": EPOCH, "version": version, "state": "ACTIVE",
            "services": services, "devices": devices, "removed_devices": [], "added_devices": [],
        }
        out = BytesIO()
        out.write(header)
        schemaless_writer(out, schema, record)
        yield sub.encode(), out.getvalue()


def command_values(cards: int, per_card: int, *, run: str, products: int = 2) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of SYNC_ENTITLEMENTS commands: ``per_card`` for each of ``cards`` cards, in
    rounds (every card's j-th command before any card's j+1-th), so each card's commands are spread
    over the run. Key ``b:<run>:<card>:<j>`` lets the order the KMS applied them be checked against
    the order they were produced. A card's commands share one origin (subscription, version and
    ``created_at``), as the commands of one input do, so none supersedes another
    (:mod:`consumers.coalesce`) and every one of them reaches the KMS: the benchmarks of the KMS path
    measure calls, not the coalescing of a backlog."""
    from fastavro import schemaless_writer

    header, schema = _writer("KmsCommand")
    prods = [{"product_id": f"P{100 + p}", "valid_from": None, "valid_until": None} for p in range(products)]
    now = datetime.now(UTC)
    out_list: list[tuple[bytes, bytes]] = []
    for j in range(per_card):
        for c in range(cards):
            card = f"C{run}{c:06d}"
            record = {
                "idempotency_key": f"b:{run}:{card}:{j:06d}", "operation": "SYNC_ENTITLEMENTS",
                "secure_client_id": card, "subscription_id": f"S{run}{c:06d}", "subscription_version": 1,
                "distributor": "MAIN", "products": prods, "chipset": None, "pin": None, "message": None,
                "source": {"process_name": "bench", "topic": None, "event_id": None, "request_id": None,
                           "communication_id": None, "run_id": run},
                "priority": "REGULAR", "not_before": None, "created_at": now,
            }
            out = BytesIO()
            out.write(header)
            schemaless_writer(out, schema, record)
            out_list.append((card.encode(), out.getvalue()))
    return out_list


def produce_values(bootstrap: str, topic: str, values: Iterator[tuple[bytes, bytes]] | Sequence[tuple[bytes, bytes]],
                   *, pace_per_second: float | None = None,
                   on_produce: Callable[[int, float], None] | None = None) -> int:
    """Produce pre-encoded ``(key, value)`` pairs; with ``pace_per_second`` at that steady rate.

    ``on_produce(i, wall_time)`` is called just before each message is handed to the client (what
    end-to-end latency is measured from).
    """
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5 if pace_per_second
                         else 50, "compression.type": "lz4", "queue.buffering.max.messages": 500_000,
                         "batch.num.messages": 10_000})
    if pace_per_second:
        # warm, as a CRM's long-lived producer is: connections and the idempotent producer id are
        # acquired before the first timed event (a tombstone, which the translator counts as skipped),
        # or the first events' wait for them would be the latency percentiles' tail
        producer.produce(topic, value=None, key=b"warm-up")
        producer.flush(30)
    started = time.monotonic()
    n = 0
    for key, value in values:
        if pace_per_second:
            due = started + n / pace_per_second
            delay = due - time.monotonic()
            if delay > 0.0005:
                time.sleep(delay)
        if on_produce is not None:
            on_produce(n, time.time())
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"could not deliver every message to {topic}")
    return n


# --- following a consumer group ----------------------------------------------------------------------


class GroupProgress:
    """Committed offsets of ``group`` on ``topic``, summed over partitions, sampled over time with the
    CPU seconds of the process under test (``pid``), so rate and CPU per message come from the same
    steady window.

    A separate client with the group's id that never subscribes: it reads the group's commits
    (OffsetFetch) without joining, so the process under test is not disturbed.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, pid: int | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        self._parts = [TopicPartition(topic, p) for p in range(partitions)]
        self._pid = pid
        self.samples: list[tuple[float, int, float]] = []  # (monotonic time, committed, CPU seconds)

    def committed(self) -> int:
        """Committed offsets summed; the last answer again while the coordinator is loading or moving
        (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS on a fresh broker)."""
        from confluent_kafka import KafkaException

        try:
            parts = self._consumer.committed(self._parts, timeout=10)
        except KafkaException:
            return self.samples[-1][1] if self.samples else 0
        return sum(max(tp.offset, 0) for tp in parts)

    def sample(self) -> int:
        done = self.committed()
        cpu = cpu_seconds(self._pid) if self._pid else 0.0
        self.samples.append((time.monotonic(), done, cpu))
        return done

    def wait_for(self, total: int, *, timeout: float, interval: float = 0.05,
                 alive: Callable[[], bool] | None = None) -> list[tuple[float, int, float]]:
        """Sample until ``total`` messages are committed; the samples."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.sample()
            if done >= total:
                return self.samples
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done:,} of {total:,} messages committed after {timeout:.0f} s")
            if alive is not None and not alive():
                raise RuntimeError("the process under test exited")
            time.sleep(interval)

    def steady(self, total: int, *, trim: float = 0.1) -> dict[str, float]:
        """Messages/s and CPU microseconds per message between ``trim`` and ``1 - trim`` of ``total``."""
        lo = next((s for s in self.samples if s[1] >= total * trim), None)
        hi = next((s for s in self.samples if s[1] >= total * (1 - trim)), None)
        if lo is None or hi is None or hi[0] <= lo[0] or hi[1] <= lo[1]:
            first = next((s for s in self.samples if s[1] > 0), self.samples[0])
            lo, hi = first, self.samples[-1]
        if hi[0] <= lo[0] or hi[1] <= lo[1]:
            return {"per_second": float("nan"), "cpu_us_per_message": float("nan")}
        n = hi[1] - lo[1]
        return {"per_second": n / (hi[0] - lo[0]), "cpu_us_per_message": (hi[2] - lo[2]) / n * 1e6}

    def close(self) -> None:
        self._consumer.close()

