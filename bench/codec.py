"""``python -m bench.codec``: what the codec's compiled Avro paths save against fastavro, per record.

For the records the hot processes read and write (the translator decodes ``SubscriptionEvent`` and
encodes ``KmsCommand``; the executor decodes ``KmsCommand`` and encodes ``KmsResult``), it times
``Codec.encode`` and ``Codec.decode`` twice in one process: once as the product runs them (the
compiled reader and writer of ``schemas/codec.py``), once with the compiled paths switched off, so
fastavro's ``schemaless_writer`` / ``schemaless_reader`` do the Avro part. Decoding includes the
pydantic validation either way; ``encode`` includes sealing no PIN (the records carry none).

CPU time (``time.process_time``), warm, best of ``--repeat`` interleaved rounds, in µs per record;
each round handles one batch of ``--records`` records and keeps the results, as a process keeps a
batch until it commits (garbage collection then counts as it does in the processes).

Usage: ``python -m bench.codec [--records N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from bench.common import ROOT, campaign_values, print_table

__all__ = ["main", "measure"]


@contextlib.contextmanager
def _fastavro_only() -> Iterator[None]:
    """The codec with its compiled paths off: every record goes through fastavro."""
    import schemas.codec as codec_module

    compiled = codec_module._compiled
    codec_module._compiled = lambda schema, reader: None
    try:
        yield
    finally:
        codec_module._compiled = compiled


def _records(n: int) -> dict[str, list[BaseModel]]:
    from consumers.translation import HandlerContext, build_handlers
    from provisioning.provider import load_provider
    from provisioning.text import TextLimits
    from schemas.codec import Codec
    from schemas.records import KmsCommand, KmsResult, ResultState, SubscriptionEvent

    codec = Codec()
    events = [codec.decode(v, SubscriptionEvent) for _, v in campaign_values(n, run="codec000")]
    handler = build_handlers(HandlerContext(load_provider(ROOT / "examples" / "provider.yaml"), TextLimits()))[
        "subscriptions"][1]
    commands: list[KmsCommand] = [c for e in events for c in handler(e, "crm.subscriptions").commands][:n]
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    results = [KmsResult(idempotency_key=c.idempotency_key, operation=c.operation.value,
                         secure_client_id=c.secure_client_id, subscription_id=c.subscription_id,
                         event_id=c.source.event_id, state=ResultState.COMPLETED, attempts=1, executed_at=at,
                         latency_ms=12.5) for c in commands]
    return {"SubscriptionEvent": list(events), "KmsCommand": list(commands), "KmsResult": list(results)}


def _time(fn: Callable[[], Any], n: int) -> float:
    gc.collect()
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) / n * 1e6


def _one_type(codec: Any, records: list[BaseModel], repeat: int) -> dict[str, float]:
    expected = type(records[0])
    values = [codec.encode(r, "bench") for r in records]
    n = len(records)

    # the results are kept, as a process keeps a batch until it is committed
    def encode() -> list[bytes]:
        return [codec.encode(r, "bench") for r in records]

    def decode() -> list[BaseModel]:
        return [codec.decode(v, expected) for v in values]

    runs: dict[str, list[float]] = {k: [] for k in ("encode", "encode_fastavro", "decode", "decode_fastavro")}
    for _ in range(repeat):  # interleaved, so drift in the machine's load hits both alike
        runs["encode"].append(_time(encode, n))
        runs["decode"].append(_time(decode, n))
        with _fastavro_only():
            runs["encode_fastavro"].append(_time(encode, n))
            runs["decode_fastavro"].append(_time(decode, n))
    with _fastavro_only():
        assert [codec.encode(r, "bench") for r in records] == values  # the same bytes either way
    best = {k: min(v) for k, v in runs.items()}
    best["encode_saved"] = 1 - best["encode"] / best["encode_fastavro"]
    best["decode_saved"] = 1 - best["decode"] / best["decode_fastavro"]
    return best


def measure(n: int = 500, repeat: int = 20) -> dict[str, dict[str, float]]:
    """µs per record of encode and decode, compiled and fastavro-only, for each hot record type."""
    from schemas.codec import Codec

    codec = Codec()
    return {name: _one_type(codec, records, repeat) for name, records in _records(n).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500, help="records per type: one batch, kept until timed")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.records, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_table(f"Codec, CPU µs per record (best of {args.repeat}, {args.records} records)",
                ["record", "encode", "encode fastavro", "saved", "decode", "decode fastavro", "saved"],
                [[name, f"{r['encode']:.1f}", f"{r['encode_fastavro']:.1f}", f"{r['encode_saved']:.0%}",
                  f"{r['decode']:.1f}", f"{r['decode_fastavro']:.1f}", f"{r['decode_saved']:.0%}"]
                 for name, r in result.items()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
