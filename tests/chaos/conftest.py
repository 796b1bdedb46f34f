"""Chaos fixtures: a dedicated broker the drills may stop, a simulator process per drill, the table.

The broker is this suite's own (never the session broker other tests share): the broker-outage drill
stops it and starts it again on the same data dir and port. Each drill gets a fresh simulator process
(``kmsbridge simulator --audit-file``) and a fresh pipeline (topics under a unique prefix, its own
ledger). Reports of every drill are printed as one table at the end of the run and written to
``var/chaos/last-run.md``.

Selection: every drill is marked ``chaos``; the full-size form is also marked ``full``. ``make test``
runs ``-m "not full"`` (the short forms); ``pytest tests/chaos -m "chaos and full"`` runs the full ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localdev.local_broker import repo_root, start_broker
from tests.support.chaos import DrillReport, RestartableBroker, markdown_table
from tests.support.pipeline import Pipeline
from tests.support.simulator import SimulatorHandle, SimulatorProcess, start_simulator_process

_REPORTS = pytest.StashKey[list[DrillReport]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: the full-size form of a chaos drill (minutes; make chaos)")
    config.stash[_REPORTS] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    reports = config.stash.get(_REPORTS, [])
    if not reports:
        return
    table = markdown_table(reports)
    terminalreporter.section("chaos drills")
    terminalreporter.write(table)
    for report in reports:
        for note in report.notes:
            terminalreporter.write_line(f"{report.case} ({report.size}): {note}")
    out = repo_root() / "var" / "chaos" / "last-run.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")


@pytest.fixture
def chaos_reports(request: pytest.FixtureRequest) -> list[DrillReport]:
    return request.config.stash[_REPORTS]


@pytest.fixture(scope="session")
def chaos_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableBroker]:
    broker = RestartableBroker(start_broker(tmp_path_factory.mktemp("chaos-kafka")))
    try:
        yield broker
    finally:
        broker.close()


DrillEnv = tuple[Pipeline, SimulatorHandle, Path]


@pytest.fixture
def drill_env(chaos_broker: RestartableBroker, tmp_path: Path) -> Iterator[Callable[..., DrillEnv]]:
    """``make(partitions=6) -> (pipeline, simulator, audit file)``: a simulator process and a pipeline."""
    made: list[tuple[Pipeline, SimulatorProcess]] = []

    def make(partitions: int = 6) -> DrillEnv:
        sim = start_simulator_process(tmp_path)
        assert sim.audit_file is not None
        pipeline = Pipeline(chaos_broker.bootstrap, sim.url, sim.token, tmp_path / "pipeline", partitions=partitions)
        made.append((pipeline, sim))
        return pipeline, sim, sim.audit_file

    yield make
    for pipeline, sim in made:
        pipeline.close()
        sim.stop()
