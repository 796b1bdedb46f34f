"""A throwaway PostgreSQL cluster for integration tests (import the fixture into a test module).

``postgres_url`` (session) starts a cluster with the Debian packages' ``initdb``/``pg_ctl``
(``/usr/lib/postgresql/<version>/bin``, newest version first) in a fresh temporary folder, on a free
loopback port, with ``trust`` authentication for the superuser ``kmsbridge`` and durability switched
off (it is thrown away), and stops it and removes the folder at the end. PostgreSQL refuses to run as
root, so when the tests run as root the server runs as the ``postgres`` user the package created
(the folder is handed to it). The test is skipped, saying why, only when no PostgreSQL binaries are
installed (``make system-deps`` installs them).

:func:`new_database` gives each test its own empty database on that cluster. The benchmarks start the
same cluster with :func:`start_postgres` (``None`` without binaries) and stop it with
:meth:`PostgresCluster.stop`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from localdev.local_broker import free_port

__all__ = ["PostgresCluster", "find_pg_bin", "new_database", "postgres_url", "start_postgres"]

SUPERUSER = "kmsbridge"


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``pg_ctl`` (or ``$PG_BIN``)."""
    candidates = [os.environ["PG_BIN"]] if os.environ.get("PG_BIN") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                         reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")


@dataclass(frozen=True)
class PostgresCluster:
    """A running throwaway cluster: ``url`` is the SQLAlchemy URL of its ``postgres`` database."""

    url: str
    bin_dir: Path
    data_dir: Path
    root: Path

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        try:
            _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresCluster | None:
    """A cluster on a free loopback port (see the module docstring), or ``None`` when no PostgreSQL
    binaries are installed."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="kmsbridge-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
    root.chmod(0o755)
    port = free_port()
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
              "--no-instructions"])
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return PostgresCluster(f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres", bin_dir, data, root)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of the ``postgres`` database of a throwaway cluster (see the module docstring)."""
    cluster = start_postgres()
    if cluster is None:
        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (run `make system-deps`)")
    try:
        yield cluster.url
    finally:
        cluster.stop()


def new_database(server_url: str, prefix: str = "t") -> str:
    """Create an empty database (named ``<prefix>_<random>``) on the cluster of ``server_url``; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
