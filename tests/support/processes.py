"""Run the product's processes in-process (threads) for integration tests and benchmarks.

Each helper builds the process exactly as ``kmsbridge run`` does (same wiring, real Kafka, real KMS
over HTTP); only signals are replaced by an explicit ``stop()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from consumers.translator import TransactionalTranslator
from kmsbridge.settings import Settings
from kmsbridge.wiring import ExecutorApp, build_executor, build_translator

__all__ = ["RunningProcess", "alive", "process_environ", "start_executor", "start_in_thread", "start_translator"]


@dataclass
class RunningProcess:
    name: str
    thread: threading.Thread
    stop_fn: Callable[[], None]
    error: list[BaseException] = field(default_factory=list)
    handle: Any = None

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_fn()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"{self.name} did not stop within {timeout}s")
        if self.error:
            raise RuntimeError(f"{self.name} failed") from self.error[0]


def start_in_thread(name: str, run: Callable[[], None], stop: Callable[[], None],
                    handle: Any = None) -> RunningProcess:
    """Run a blocking ``run`` (a built process's loop) in a daemon thread; ``stop`` asks it to end."""
    proc = RunningProcess(name, threading.Thread(), stop, handle=handle)

    def target() -> None:
        try:
            run()
        except BaseException as exc:
            proc.error.append(exc)

    proc.thread = threading.Thread(target=target, name=name, daemon=True)
    proc.thread.start()
    return proc


def start_translator(settings: Settings, **kwargs: Any) -> RunningProcess:
    translator: TransactionalTranslator = build_translator(settings, **kwargs)
    return start_in_thread("translator", translator.run, translator.request_stop, handle=translator)


def start_executor(settings: Settings) -> RunningProcess:
    ready = threading.Event()
    box: dict[str, Any] = {}
    proc = RunningProcess("executor", threading.Thread(), lambda: None)

    def target() -> None:
        async def main() -> None:
            app: ExecutorApp = build_executor(settings)
            box["app"], box["loop"] = app, asyncio.get_running_loop()
            ready.set()
            await app.run()

        try:
            asyncio.run(main())
        except BaseException as exc:
            proc.error.append(exc)
            ready.set()

    proc.thread = threading.Thread(target=target, name="executor", daemon=True)
    proc.thread.start()
    if not ready.wait(30):
        raise TimeoutError("executor did not start")
    if proc.error:
        raise RuntimeError("executor failed to start") from proc.error[0]

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["app"].executor.request_stop)

    proc.stop_fn = stop
    proc.handle = box["app"]
    return proc


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def process_environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with (``/proc/<pid>/environ``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)
