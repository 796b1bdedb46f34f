"""A whole pipeline on fresh topics, for integration tests, chaos runs and benchmarks.

It creates topics under a unique prefix, writes settings for the product's processes (real broker,
real simulator over HTTP, a database URL), produces records and waits on observable outcomes (the
simulator's state, the results topic) with bounded polls, never with fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer

from kmsbridge.settings import Settings, load_settings
from kmsbridge.wiring import build_codec
from localdev.stack import write_pin_keys
from producers.topics import create_topics
from schemas.keys import record_key
from schemas.records import KmsResult

__all__ = ["Pipeline", "terminate", "wait_until"]

EXAMPLE_PROVIDER = Path(__file__).resolve().parents[2] / "examples" / "provider.yaml"
T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns a truthy value; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = check()
    return last


@dataclass
class Pipeline:
    bootstrap: str
    simulator_url: str
    token: str
    workdir: Path
    partitions: int = 3
    database_url: str | None = None
    provider_file: Path = EXAMPLE_PROVIDER
    extra_env: dict[str, str] = field(default_factory=dict)
    #: replication factor and configs of the topics it creates (a cluster: 3 and min.insync.replicas=2)
    replication: int = 1
    topic_config: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    _producer: Producer | None = None
    _subprocesses: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.workdir / "kms.token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        self.pin_keys_file = write_pin_keys(self.workdir / "pin-keys.json")
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.workdir / 'kmsbridge.db'}"
        self.settings = load_settings(**self._overrides())
        self.codec = build_codec(self.settings)
        create_topics(self.settings.kafka_config(), self.settings.all_topics(), self.partitions, self.replication,
                      topic_config=self.topic_config)

    # --- settings for in-process and subprocess runs ----------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMSBRIDGE_")}
        env.update({
            "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "KMSBRIDGE_TOPIC_PREFIX": self.prefix,
            "KMSBRIDGE_GROUP_PREFIX": f"{self.prefix}kmsbridge",
            "KMSBRIDGE_KMS__ENDPOINT": f"{self.simulator_url.rstrip('/')}/kms",
            "KMSBRIDGE_KMS__TOKEN_FILE": str(self.token_file),
            "KMSBRIDGE_PIN_KEYS__FILE": str(self.pin_keys_file),
            "KMSBRIDGE_DATABASE_URL": str(self.database_url),
            "KMSBRIDGE_PROVIDER_FILE": str(self.provider_file),
            "KMSBRIDGE_TOPICS__PARTITIONS": str(self.partitions),
            "KMSBRIDGE_EXECUTOR__BREAKER_PROBE_SECONDS": "0.5",
            "KMSBRIDGE_EXECUTOR__RETRY_INITIAL_SECONDS": "0.05",
            "KMSBRIDGE_EXECUTOR__RETRY_MAX_SECONDS": "1",
            "KMSBRIDGE_SHUTDOWN_GRACE_SECONDS": "10",
        })
        env.update(self.extra_env)
        return env

    def _overrides(self) -> dict[str, Any]:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env())
            return load_settings().model_dump()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def settings_with(self, **changes: Any) -> Settings:
        data = self.settings.model_dump()
        for dotted, value in changes.items():
            node = data
            *path, last = dotted.split("__")
            for part in path:
                node = node[part]
            node[last] = value
        return Settings(**data)

    # --- processes as a user runs them ------------------------------------------------------------

    def spawn(self, process: str, *, env: dict[str, str] | None = None, log_name: str | None = None,
              args: Iterable[str] = ()) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{log_name or process}.log", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen([sys.executable, "-m", "kmsbridge.cli", "run", process, *args],
                                env={**self.env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self._subprocesses.append(proc)
        return proc

    def spawn_api(self, api_keys: list[str], *, env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
        """``kmsbridge run api`` on a free port, once it answers ``/readyz``: (the process, its base URL)."""
        import httpx

        from localdev.local_broker import free_port

        port = free_port()
        proc = self.spawn("api", env={"KMSBRIDGE_API__PORT": str(port), "KMSBRIDGE_API__API_KEYS": json.dumps(api_keys),
                                      **(env or {})})
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                log = (self.workdir / "api.log").read_text()[-2000:]
                raise RuntimeError(f"the API exited {proc.returncode}: {log}")
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("the Web API is ready", ready, timeout=timeout, interval=0.2)
        return proc, url

    def close(self) -> None:
        for proc in self._subprocesses:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._producer is not None:
            self._producer.flush(10)

    # --- records in and outcomes out ----------------------------------------------------------------

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            # upstream systems may send anything the broker takes (its default message.max.bytes is
            # 1,048,588), so the harness can produce a record just over the product's input limit
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True,
                                       "linger.ms": 5, "message.max.bytes": 1_048_576})
        return self._producer

    def produce(self, logical: str, records: Iterable[Any], *, flush: bool = True) -> int:
        topic = self.settings.topic(logical)
        n = 0
        for record in records:
            while True:
                try:
                    self.producer.produce(topic, key=record_key(record).encode(),
                                          value=self.codec.encode(record, topic))
                    break
                except BufferError:
                    self.producer.poll(0.1)
            n += 1
        if flush:
            self.producer.flush(30)
        return n

    def produce_raw(self, logical: str, value: bytes | None, key: bytes = b"raw") -> None:
        self.producer.produce(self.settings.topic(logical), key=key, value=value)
        self.producer.flush(10)

    def read(self, logical_or_topic: str, until: Callable[[list[Any]], bool], timeout: float = 30.0,
             decode: bool = True) -> list[Any]:
        """Read a topic from the beginning (read_committed) until ``until(records)`` holds."""
        topic = (self.settings.topic(logical_or_topic) if hasattr(self.settings.topics, logical_or_topic)
                 else logical_or_topic)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "isolation.level": "read_committed"})
        consumer.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(out):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out reading {topic}: {len(out)} records so far")
                for msg in consumer.consume(1000, 0.2):
                    if msg.error():
                        continue
                    out.append(self.codec.decode_any(msg.value()) if decode else msg)
        finally:
            consumer.close()
        return out

    def results(self, until: Callable[[list[KmsResult]], bool], timeout: float = 30.0) -> list[KmsResult]:
        return self.read("results", until, timeout)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` and wait for it; SIGKILL when it outlives ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
