"""Measure SOAP throughput against a running simulator: ``python -m kms_adapter.simulator.loadtest``.

Two modes:

- ``client`` (default): ``SoapKmsClient.execute`` with N concurrent workers; reports
  calls/s and this process's CPU time per call, i.e. what one executor core can push.
- ``raw``: pre-built envelopes over plain keep-alive sockets (no zeep, no httpx); reports calls/s,
  i.e. the simulator's capacity, and when ``--server-pid`` is given, the server's CPU time per call.

Each call is an ``overwriteEntitlements`` with a fresh idempotency key over 500 cards. Start the
simulator in another process (``kmsbridge simulator``) so the two do not share a core's GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from schemas.records import KmsCommand, Operation, Product, Source

from ..wsdl import NAMESPACE

__all__ = ["main"]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client_mode(endpoint: str, token: str, concurrency: int, calls: int) -> tuple[float, float]:
    from ..soap_client import SoapKmsClient

    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    products = [Product(product_id="P100", valid_from=now), Product(product_id="P200")]
    queue: asyncio.Queue[KmsCommand] = asyncio.Queue()
    for i in range(calls):
        queue.put_nowait(KmsCommand(idempotency_key=f"{run}-{i}", operation=Operation.SYNC_ENTITLEMENTS,
                                    secure_client_id=f"C{i % 500}", products=products,
                                    source=Source(process_name="loadtest"), created_at=now))
    async with SoapKmsClient(endpoint, "LOAD", token, max_connections=concurrency) as client:
        await client.ping()  # connect and warm up

        async def worker() -> None:
            while not queue.empty():
                await client.execute(queue.get_nowait())

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu


async def _raw_mode(endpoint: str, token: str, concurrency: int, calls: int) -> tuple[float, float]:
    url = urlsplit(endpoint)
    run = uuid.uuid4().hex[:8]
    counter = iter(range(calls))

    def request(i: int) -> bytes:
        body = (
            '<?xml version="1.0"?><e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
            f'<k:overwriteEntitlements xmlns:k="{NAMESPACE}"><k:operatorTag>LOAD</k:operatorTag>'
            f"<k:idempotencyKey>{run}-{i}</k:idempotencyKey><k:card>C{i % 500}</k:card><k:products>"
            "<k:product><k:productId>P100</k:productId><k:validFrom>2026-01-01T00:00:00Z</k:validFrom>"
            "</k:product><k:product><k:productId>P200</k:productId></k:product></k:products>"
            "</k:overwriteEntitlements></e:Body></e:Envelope>"
        ).encode()
        head = (f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: text/xml; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        for i in counter:
            writer.write(request(i))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"simulator answered {head.splitlines()[0]!r}")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
        writer.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8089/kms", help="SOAP endpoint")
    parser.add_argument("--token", default=os.environ.get("KMSBRIDGE_KMS__TOKEN", ""))
    parser.add_argument("--mode", choices=["client", "raw"], default="client")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--server-pid", type=int, help="simulator pid, to report its CPU per call")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set KMSBRIDGE_KMS__TOKEN")
    mode = _client_mode if args.mode == "client" else _raw_mode
    server_cpu = _cpu_seconds(args.server_pid) if args.server_pid else 0.0
    wall, cpu = asyncio.run(mode(args.url, args.token, args.concurrency, args.calls))
    line = (f"{args.mode}: {args.calls} calls, concurrency {args.concurrency}: {args.calls / wall:.0f} calls/s, "
            f"loader CPU {cpu / args.calls * 1e6:.0f} us/call")
    if args.server_pid:
        used = _cpu_seconds(args.server_pid) - server_cpu
        line += f", simulator CPU {used / args.calls * 1e6:.0f} us/call (~{args.calls / used:.0f} calls/s per core)"
    print(line)


if __name__ == "__main__":
    main()
