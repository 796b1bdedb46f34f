"""Translator vs passthrough: events/s of ``kmsbridge run translator`` against the best the same
transactional consume-produce loop can do on the same broker in the same run.

1. Produce ``--events`` campaign events (:func:`bench.common.campaign_values`) to a fresh
   ``crm.subscriptions`` topic (6 partitions, as the product's default topic setting).
2. **Passthrough** (the baseline): a child process with the translator's own Kafka settings
   (:func:`kafka_edge.kafka_clients.consumer_config` / ``producer_config``, read_committed, one
   transaction per polled batch of up to ``KMSBRIDGE_TRANSLATOR__BATCH_SIZE`` messages or
   ``__BATCH_SECONDS``, ``send_offsets_to_transaction``) that
   copies every value unchanged to another topic. Nothing is decoded.
3. **Translator**: ``kmsbridge run translator`` as a user runs it, on the same topic from the start:
   decode, validate, plan, encode and produce the commands transactionally. ``--batch-sizes`` repeats
   both at other batch sizes (the setting, passed through the environment) on the same input.
4. Each rate is the steady rate between 10 % and 90 % of the events committed by the group (start-up
   and the tail excluded), read from the group's committed offsets; CPU is the child's own.
5. The CPU budget per event of the stages the translator adds (decode, plan, encode), measured in
   this process on the same values, and with ``--profile`` a cProfile of a third translator run.

Targets: translator >= 40 % of passthrough and >= 30,000 events/s per process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    BenchEnv,
    GroupProgress,
    campaign_values,
    print_table,
    produce_values,
    write_result,
)
from kmsbridge.settings import TranslatorSettings
from tests.support.pipeline import terminate

__all__ = ["main"]

PRODUCT_BATCH = TranslatorSettings().batch_size
#: the smoke size: small, yet long enough (about a second for the passthrough) that the committed
#: offsets are sampled several times and a steady rate exists
QUICK_EVENTS = 20_000
#: compared with the product's batch in the same run (ten times larger, or the old default)
OTHER_BATCH = 5000 if PRODUCT_BATCH != 5000 else 500

TARGET_RATIO = 0.40
TARGET_EVENTS_PER_SECOND = 30_000


# --- the passthrough child ----------------------------------------------------------------------------


def _passthrough(bootstrap: str, topic_in: str, topic_out: str, group: str, txn_id: str, batch_size: str) -> None:
    """The translator's loop with the work taken out: consume, copy bytes, send offsets, commit."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    from consumers.translator import TranslatorConfig
    from kafka_edge.kafka_clients import consumer_config, make_consumer, make_producer, producer_config
    from kmsbridge.settings import TranslatorSettings

    defaults = TranslatorConfig(inputs={}, commands_topic="", results_topic="",
                                batch_seconds=TranslatorSettings().batch_seconds)
    base = {"bootstrap.servers": bootstrap}
    consumer = make_consumer(consumer_config(base, group, transactional_input=True))
    producer = make_producer(producer_config(base, transactional_id=txn_id))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer.init_transactions(30)
    consumer.subscribe([topic_in])
    try:
        while not stop.is_set():
            msgs = [m for m in consumer.consume(int(batch_size), defaults.batch_seconds) if m.error() is None]
            if not msgs:
                continue
            producer.begin_transaction()
            nxt: dict[tuple[str, int], int] = {}
            for m in msgs:
                while True:
                    try:
                        producer.produce(topic_out, value=m.value(), key=m.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
                part = (m.topic() or "", m.partition() or 0)
                nxt[part] = max(nxt.get(part, 0), (m.offset() or 0) + 1)
            try:
                producer.send_offsets_to_transaction([TopicPartition(t, p, o) for (t, p), o in nxt.items()],
                                                     consumer.consumer_group_metadata(),
                                                     defaults.transaction_timeout_seconds)
                producer.commit_transaction(defaults.transaction_timeout_seconds)
            except KafkaException as exc:
                # several passthroughs in one group (bench.scaling): a rebalance between the poll and the
                # commit; abort and rewind to the committed offsets, as the translator does
                if not exc.args[0].txn_requires_abort():
                    raise
                producer.abort_transaction(defaults.transaction_timeout_seconds)
                for tp in consumer.committed(consumer.assignment(), timeout=10):
                    with contextlib.suppress(KafkaException):  # a partition revoked meanwhile
                        consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                     tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
    finally:
        consumer.close()


# --- in-process stage costs ---------------------------------------------------------------------------


def stage_costs(values: list[bytes], repeat: int = 3) -> dict[str, float]:
    """CPU microseconds per event of decode, plan and encode (best of ``repeat``), on these values."""
    from consumers.translation import HandlerContext, build_handlers
    from provisioning.provider import load_provider
    from provisioning.text import TextLimits
    from schemas.codec import Codec
    from schemas.records import SubscriptionEvent

    codec = Codec()
    handler = build_handlers(HandlerContext(load_provider(ROOT / "examples" / "provider.yaml"), TextLimits()))[
        "subscriptions"][1]
    n = len(values)

    def best(fn: Any) -> tuple[float, Any]:
        out, times = None, []
        for _ in range(repeat):
            t0 = time.process_time()
            out = fn()
            times.append(time.process_time() - t0)
        return min(times) / n * 1e6, out

    decode_us, events = best(lambda: [codec.decode(v, SubscriptionEvent) for v in values])
    plan_us, translations = best(lambda: [handler(e, "crm.subscriptions") for e in events])
    commands = [c for t in translations for c in t.commands]
    encode_us, _ = best(lambda: [codec.encode(c, "kms.commands") for c in commands])
    return {"decode_us": decode_us, "plan_us": plan_us, "encode_us": encode_us,
            "commands_per_event": len(commands) / n, "total_us": decode_us + plan_us + encode_us}


# --- profile ------------------------------------------------------------------------------------------

#: (label, file suffix or "~" for C functions, function names) of the loop's stages in a cProfile.
_PROFILE_ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("consume (librdkafka poll)", "~", ("<method 'consume' of 'cimpl.Consumer' objects>",)),
    ("decode (Codec.decode)", "schemas/codec.py", ("decode",)),
    ("plan (translate_subscription)", "consumers/translation.py", ("translate_subscription",)),
    ("encode (Codec.encode)", "schemas/codec.py", ("encode",)),
    ("produce (Producer.produce)", "~", ("<method 'produce' of 'cimpl.Producer' objects>",)),
    ("send_offsets_to_transaction", "~", ("<method 'send_offsets_to_transaction' of 'cimpl.Producer' objects>",)),
    ("commit_transaction", "~", ("<method 'commit_transaction' of 'cimpl.Producer' objects>",)),
    ("begin_transaction", "~", ("<method 'begin_transaction' of 'cimpl.Producer' objects>",)),
    ("metrics (prometheus_client)", "prometheus_client/metrics.py", ("inc", "observe", "labels")),
    ("screen_times / screen_size", "consumers/dlq.py", ("screen_times", "screen_size")),
]


def profile_summary(path: Path) -> dict[str, Any]:
    """Cumulative time of the loop's stages, as a share of ``TransactionalTranslator.run``."""
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    total = next((v[3] for k, v in table.items() if k[0].endswith("consumers/translator.py") and k[2] == "run"),
                 0.0)
    rows: dict[str, dict[str, float]] = {}
    for label, file_suffix, names in _PROFILE_ROWS:
        hits = [v for (file, _line, name), v in table.items()
                if name in names and (file == "~" if file_suffix == "~" else file.endswith(file_suffix))]
        cum = sum(v[3] for v in hits)
        rows[label] = {"seconds": round(cum, 3), "calls": sum(v[1] for v in hits),
                       "share": round(cum / total, 3) if total else float("nan")}
    top = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    return {"loop_seconds": round(total, 3), "stages": rows,
            "top_self_time": [{"function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "self_seconds": round(v[2], 3),
                               "calls": v[1]} for k, v in top]}


# --- orchestration ------------------------------------------------------------------------------------


def _measure(proc: subprocess.Popen[bytes], progress: GroupProgress, total: int, timeout: float) -> dict[str, float]:
    samples = progress.wait_for(total, timeout=timeout, alive=lambda: proc.poll() is None)
    steady = progress.steady(total)
    first = next(t for t, n, _ in samples if n > 0)
    return {"events_per_second": steady["per_second"], "cpu_us_per_event": steady["cpu_us_per_message"],
            "wall_seconds": samples[-1][0] - first}


def run(events: int, *, twin_share: float, profile: bool, results_dir: Path | None, partitions: int = 6,
        batch_sizes: tuple[int, ...] = (PRODUCT_BATCH,), compare_tree: Path | None = None) -> dict[str, Any]:
    """``batch_sizes[0]`` is the headline comparison (the product's setting unless ``--quick``)."""
    headline = batch_sizes[0]
    loops: list[dict[str, Any]] = []
    with BenchEnv("translator", simulator=False) as env:
        pipe = env.pipeline("run", partitions=partitions)
        topic_in = pipe.settings.topic("subscriptions")
        run_id = os.urandom(4).hex()
        print(f"producing {events:,} events to {topic_in} ...", flush=True)
        produce_values(env.bootstrap, topic_in, campaign_values(events, twin_share=twin_share, run=run_id))
        timeout = max(120.0, events / 500)
        out_topic = pipe.settings.topic("results")  # any fresh topic of this run will do

        def measure(name: str, batch: int, argv: list[str], group: str, env_vars: dict[str, str] | None,
                    cwd: Path = ROOT) -> None:
            print(f"{name} (batch {batch}) running ...", flush=True)
            proc = env.adopt(subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, env=env_vars,
                                              stdout=subprocess.DEVNULL if env_vars else None))
            progress = GroupProgress(env.bootstrap, group, topic_in, partitions, proc.pid)
            figures = _measure(proc, progress, events, timeout)
            progress.close()
            terminate(proc)
            loops.append({"loop": name, "batch_size": batch, **figures})

        for batch in batch_sizes:
            # 2. the passthrough baseline, then 3. the translator, on the same input
            group = f"{pipe.prefix}passthrough-{batch}"
            measure("passthrough", batch, [sys.executable, "-m", "bench.translator", "--passthrough-child",
                                           env.bootstrap, topic_in, out_topic, group, f"{group}-tx", str(batch)],
                    group, None)
            prefix = f"{pipe.prefix}tr{batch}"
            child_env = {**pipe.env(), "KMSBRIDGE_GROUP_PREFIX": prefix,
                         "KMSBRIDGE_TRANSLATOR__BATCH_SIZE": str(batch)}
            argv = [sys.executable, "-m", "kmsbridge.cli", "run", "translator"]
            measure("translator", batch, argv, f"{prefix}-translator", child_env)
            if compare_tree is not None and batch == headline:
                # the translator of another source tree (e.g. before an optimisation), same input, with
                # that tree's own settings; its packages come first, this bench module from here
                prefix = f"{pipe.prefix}before{batch}"
                measure("translator (before)", batch, argv, f"{prefix}-translator",
                        {**pipe.env(), "KMSBRIDGE_GROUP_PREFIX": prefix, "PYTHONPATH": f"{compare_tree}:{ROOT}"},
                        cwd=compare_tree)
        sample = pipe.read("commands", lambda got: len(got) >= 100, timeout=60)
        assert all(type(c).__name__ == "KmsCommand" for c in sample)

        # 5. stage costs and profile
        values = [v for _, v in campaign_values(min(events, 5000), twin_share=twin_share, run=run_id)]
        stages = stage_costs(values)
        prof: dict[str, Any] | None = None
        if profile:
            prof_path = pipe.workdir / "translator.prof"
            proc = env.adopt(subprocess.Popen(
                [sys.executable, "-m", "cProfile", "-o", str(prof_path), "-m", "kmsbridge.cli", "run", "translator"],
                env={**pipe.env(), "KMSBRIDGE_GROUP_PREFIX": f"{pipe.prefix}profiled"}, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            progress = GroupProgress(env.bootstrap, f"{pipe.prefix}profiled-translator", topic_in, partitions,
                                     proc.pid)
            print("profiled translator running ...", flush=True)
            profiled = _measure(proc, progress, events, timeout * 3)
            progress.close()
            terminate(proc, 60)
            prof = {"events_per_second_under_cprofile": profiled["events_per_second"],
                    **profile_summary(prof_path)}

    def pick(loop: str, batch: int) -> dict[str, Any]:
        return next(x for x in loops if x["loop"] == loop and x["batch_size"] == batch)

    passthrough, translator = pick("passthrough", headline), pick("translator", headline)
    ratio = translator["events_per_second"] / passthrough["events_per_second"]
    for x in loops:
        x["ratio_to_passthrough_same_batch"] = x["events_per_second"] / pick("passthrough", x["batch_size"])[
            "events_per_second"]
    result: dict[str, Any] = {
        "command": f"python -m bench.translator --events {events}"
                   + f" --batch-sizes {','.join(map(str, batch_sizes))}"
                   + (f" --compare-tree {compare_tree}" if compare_tree else ""),
        "events": events, "partitions": partitions, "twin_share": twin_share,
        "commands_per_event": stages["commands_per_event"],
        "passthrough": passthrough, "translator": translator, "ratio": ratio, "loops": loops,
        "stage_cpu_us_per_event": stages, "profile": prof,
        "targets": {"ratio": TARGET_RATIO, "events_per_second": TARGET_EVENTS_PER_SECOND},
        "met": {"ratio": ratio >= TARGET_RATIO,
                "events_per_second": translator["events_per_second"] >= TARGET_EVENTS_PER_SECOND},
    }
    path = write_result("translator", result, results_dir)
    report(result)
    print(f"results in {path}")
    return result


def report(result: dict[str, Any]) -> None:
    verdict = "met" if all(result["met"].values()) else "NOT met"
    print_table(
        f"Translator vs passthrough ({result['events']:,} events, {result['partitions']} partitions, "
        f"{result['commands_per_event']:.2f} commands/event); target >= {TARGET_RATIO:.0%} of passthrough and "
        f">= {TARGET_EVENTS_PER_SECOND:,} events/s: {verdict}",
        ["loop", "batch", "events/s", "CPU us/event", "vs passthrough (same batch)"],
        [[x["loop"] + (" (baseline)" if x["loop"] == "passthrough" else ""), x["batch_size"],
          x["events_per_second"], x["cpu_us_per_event"], x["ratio_to_passthrough_same_batch"]]
         for x in result["loops"]],
    )
    st = result["stage_cpu_us_per_event"]
    print_table("Translator stages, CPU per event (in-process, best of 3)", ["stage", "us/event"],
                [["decode + validate", st["decode_us"]], ["plan", st["plan_us"]],
                 ["encode commands", st["encode_us"]], ["total", st["total_us"]]])
    prof = result.get("profile")
    if prof:
        print_table(f"Profile of the translator loop (cProfile, {prof['loop_seconds']} s in run())",
                    ["stage", "seconds", "share of loop"],
                    [[k, v["seconds"], f"{v['share']:.1%}"] for k, v in prof["stages"].items()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.translator", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--twin-share", type=float, default=0.3)
    parser.add_argument("--profile", action="store_true", help="also profile a translator run (cProfile)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--results-dir", type=Path)
    parser.add_argument("--batch-sizes", default=f"{PRODUCT_BATCH},{OTHER_BATCH}",
                        help=f"comma-separated transaction batch sizes; the first is the headline "
                             f"({PRODUCT_BATCH} is the product's default)")
    parser.add_argument("--compare-tree", type=Path,
                        help="also run the translator from this source tree (before/after on the same input)")
    parser.add_argument("--stages-only", action="store_true",
                        help="print the in-process stage costs as JSON (run with PYTHONPATH=<tree> to compare)")
    parser.add_argument("--passthrough-child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.passthrough_child:
        _passthrough(*args.passthrough_child)
        return 0
    if args.stages_only:
        values = [v for _, v in campaign_values(5000, twin_share=args.twin_share, run="stages00")]
        print(json.dumps(stage_costs(values, repeat=5)))
        return 0
    events = QUICK_EVENTS if args.quick else args.events
    # quick: several transactions even in a tiny run, so a steady rate exists
    sizes = (500,) if args.quick else tuple(int(x) for x in args.batch_sizes.split(","))
    run(events, twin_share=args.twin_share, profile=args.profile, results_dir=args.results_dir, batch_sizes=sizes,
        compare_tree=args.compare_tree)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
