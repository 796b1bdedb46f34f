"""Integration fixtures for the KMS: the real simulator over real HTTP on a loopback port.

- ``kms_simulator``: a simulator (lenient clients) shared by the session, emptied and cleared of faults
  before each test. It is a :class:`tests.support.simulator.SimulatorHandle`: ``url``,
  ``endpoint``, ``token``, ``soap_client(...)``, ``state()``, ``set_state(...)``, ``audit()``,
  ``set_faults(...)``, ``clear_faults()``, ``reset()``.
- ``strict_kms_simulator``: the same with ``strict_clients`` on.
- ``database_url``: each test that asks for it runs twice, on a fresh SQLite file and on a fresh
  PostgreSQL database (``pg.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import new_database, postgres_url  # noqa: F401 (the session fixture database_url asks for)
from tests.support.simulator import SimulatorHandle, running_simulator


@pytest.fixture(scope="session")
def _kms_simulator_server() -> Iterator[SimulatorHandle]:
    with running_simulator() as handle:
        yield handle


@pytest.fixture(scope="session")
def _strict_kms_simulator_server() -> Iterator[SimulatorHandle]:
    with running_simulator(strict_clients=True) as handle:
        yield handle


@pytest.fixture
def kms_simulator(_kms_simulator_server: SimulatorHandle) -> Iterator[SimulatorHandle]:
    _kms_simulator_server.reset()
    yield _kms_simulator_server
    _kms_simulator_server.reset()


@pytest.fixture
def strict_kms_simulator(_strict_kms_simulator_server: SimulatorHandle) -> Iterator[SimulatorHandle]:
    _strict_kms_simulator_server.reset()
    yield _strict_kms_simulator_server
    _strict_kms_simulator_server.reset()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kmsbridge.db'}"
    return new_database(request.getfixturevalue("postgres_url"))
