"""CPU per KMS call of the SOAP client's HTTP layer, three ways in one run: ``python -m bench.kms_http``.

Every variant sends the same template envelopes (SYNC_ENTITLEMENTS with two products) to the same
simulator (``kmsbridge simulator`` in its own process, no latency) with 64 calls in flight, and reads
the same answers with lxml; only the HTTP layer differs:

- ``httptools``: :class:`kms_adapter.soap_client.SoapKmsClient` of this tree (kms_adapter/http11.py);
- ``hand-written``: the client as of ``--before`` (default ``4c00ec8``, its hand-written HTTP/1.1
  parser), loaded from git into ``kms_adapter._soap_before`` for the run;
- ``httpx``: one ``httpx.AsyncClient`` (pool of 64 keep-alive connections) posting the envelopes,
  the well-kept client the layer could be replaced by.

Variants run in interleaved rounds (``--rounds``, median reported) so drift on a shared machine hits
them alike. Figures: calls/s, client CPU µs per call (this process's ``process_time``), simulator CPU
µs per call.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from bench.common import print_table, write_result
from tests.support.simulator import SimulatorProcess, start_simulator_process

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 64


def _module_at(commit: str) -> ModuleType:
    """``kms_adapter/soap_client.py`` as of ``commit``, importable as ``kms_adapter._soap_before``."""
    source = subprocess.run(["git", "show", f"{commit}:kms_adapter/soap_client.py"], cwd=REPO, check=True,
                            capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "soap_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("kms_adapter._soap_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _commands(calls: int) -> list[Any]:
    from schemas.records import KmsCommand, Operation, Product, Source

    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    return [KmsCommand(idempotency_key=f"kh:{run}:{i}", operation=Operation.SYNC_ENTITLEMENTS,
                       secure_client_id=f"KH{i % 500}", products=[Product(product_id="P100", valid_from=now),
                                                                  Product(product_id="P200")],
                       source=Source(process_name="bench"), created_at=now) for i in range(calls)]


Call = Callable[[Any], Awaitable[object]]


async def _measure(call: Call, commands: list[Any], sim: SimulatorProcess) -> dict[str, float]:
    pending = iter(commands)

    async def worker() -> None:
        for command in pending:
            await call(command)

    sim_cpu, wall, cpu = sim.cpu_seconds(), time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sim_cpu = sim.cpu_seconds() - sim_cpu
    n = len(commands)
    return {"calls_per_second": n / wall, "client_cpu_us_per_call": cpu / n * 1e6,
            "simulator_cpu_us_per_call": sim_cpu / n * 1e6}


async def _soap_client(cls: Any, sim: SimulatorProcess, commands: list[Any]) -> dict[str, float]:
    async with cls(sim.endpoint, "ALUX", sim.token, max_connections=CONCURRENCY) as client:
        await client.ping()
        await _measure(client.execute, commands[:200], sim)  # warm: connections open, code paths hot
        return await _measure(client.execute, commands[200:], sim)


async def _httpx(sim: SimulatorProcess, commands: list[Any]) -> dict[str, float]:
    from kms_adapter.commands import command_fields
    from kms_adapter.envelopes import mutation_result
    from kms_adapter.soap_client import SoapKmsClient
    from kms_adapter.wsdl import SOAP_OPERATION_OF

    templates = SoapKmsClient(sim.endpoint, "ALUX", sim.token)  # its envelopes only
    envelopes = templates._envelopes
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=5.0, trust_env=False,
                                 headers={"Authorization": f"Bearer {sim.token}"}) as http:
        async def execute(command: Any) -> object:
            f = command_fields(command)
            soap_op = SOAP_OPERATION_OF[f.operation]
            response = await http.post(sim.endpoint, content=envelopes.build(soap_op, f), headers={
                "Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{envelopes.actions[soap_op]}"'})
            return mutation_result(response.content, soap_op)

        await _measure(execute, commands[:200], sim)
        result = await _measure(execute, commands[200:], sim)
    await templates.aclose()
    return result


def run(*, calls: int, rounds: int, before: str, results_dir: Path | None,
        only: frozenset[str] = frozenset({"httptools", "hand-written", "httpx"})) -> dict[str, Any]:
    from kms_adapter.soap_client import SoapKmsClient

    old = _module_at(before).SoapKmsClient
    every: dict[str, tuple[str, Callable[[SimulatorProcess, list[Any]], Coroutine[Any, Any, dict[str, float]]]]] = {
        "httptools": ("httptools (this tree)", lambda sim, cmds: _soap_client(SoapKmsClient, sim, cmds)),
        "hand-written": (f"hand-written parser ({before})", lambda sim, cmds: _soap_client(old, sim, cmds)),
        "httpx": ("httpx pool of 64", _httpx),
    }
    variants = dict(every[key] for key in every if key in only)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as workdir:
        sim = start_simulator_process(Path(workdir), audit=False)
        try:
            for r in range(rounds):
                for name, variant in variants.items():
                    print(f"round {r + 1}/{rounds}: {name} ...", flush=True)
                    samples[name].append(asyncio.run(variant(sim, _commands(calls + 200))))
                    sim.reset()
        finally:
            sim.stop()
    medians = {name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
               for name, runs in samples.items()}
    print_table(f"KMS HTTP layer, SYNC_ENTITLEMENTS, {CONCURRENCY} in flight, L = 0 (median of {rounds} rounds "
                f"of {calls} calls)", ["HTTP layer", "calls/s", "client CPU us/call", "simulator CPU us/call"],
                [[name, m["calls_per_second"], m["client_cpu_us_per_call"], m["simulator_cpu_us_per_call"]]
                 for name, m in medians.items()])
    result = {"calls": calls, "rounds": rounds, "concurrency": CONCURRENCY, "before": before,
              "medians": medians, "samples": samples}
    write_result("kms_http", result, results_dir)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="4c00ec8", help="commit whose client is the hand-written baseline")
    parser.add_argument("--only", default="httptools,hand-written,httpx",
                        help="comma-separated variants to run (httptools, hand-written, httpx)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    run(calls=args.calls, rounds=args.rounds, before=args.before, results_dir=args.results_dir,
        only=frozenset(args.only.split(",")))


if __name__ == "__main__":
    main()
