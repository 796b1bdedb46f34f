"""``kmsbridge run api`` as a subprocess of a test :class:`~tests.support.pipeline.Pipeline`, ready to call."""

from __future__ import annotations

import subprocess

import httpx

from localdev.local_broker import free_port
from tests.support.pipeline import Pipeline, wait_until

__all__ = ["spawn_api"]


def spawn_api(pipeline: Pipeline, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start the Web API on a free port with ``env`` added, wait until ``/readyz`` is 200 (at most 60 s),
    and return the process and its base URL. A process that exits first fails, naming its log."""
    port = free_port()
    proc = pipeline.spawn("api", env={"KMSBRIDGE_API__PORT": str(port), **env})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited {proc.returncode}; see {pipeline.workdir / 'api.log'}")
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until("the Web API is ready", ready, timeout=60, interval=0.2)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, url
