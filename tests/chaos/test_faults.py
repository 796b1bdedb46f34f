"""The fault suite: each drill against the real broker, the simulator process and the
product's processes started as a user starts them, with a ledger of produced vs applied.

Pass criteria for every drill: no event lost (the final KMS state equals what the events ask for),
no idempotency key applied twice, no DLQ entry for a transient fault (poison: exactly the poison),
nothing applied that no event asked for, a result for every applied command, and recovery without
manual steps (no process had to be restarted for having exited on its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kafka_edge.kafka_clients import WATCHDOG_EXIT_CODE
from provisioning.provider import load_provider
from tests.support.chaos import FULL, SHORT, Drill, DrillReport, RestartableBroker, Size
from tests.support.pipeline import Pipeline
from tests.support.simulator import SimulatorHandle

DrillEnv = tuple[Pipeline, SimulatorHandle, Path]

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(3600)]

SIZES = [pytest.param(SHORT, id="short"), pytest.param(FULL, id="full", marks=pytest.mark.full)]
GRACE_SECONDS = 10.0  # KMSBRIDGE_SHUTDOWN_GRACE_SECONDS in the pipeline's environment


def drill(case: str, size: Size, drill_env: Callable[..., DrillEnv], **kwargs: Any) -> Drill:
    pipeline, sim, audit = drill_env()
    return Drill(case, size, pipeline, sim, audit, load_provider(pipeline.provider_file), **kwargs)


def assert_survived(report: DrillReport, reports: list[DrillReport], *, restarts_allowed: bool = False) -> None:
    reports.append(report)
    assert report.lost == 0, report
    assert report.applied_twice == 0, report
    assert report.dlq == report.dlq_expected, report
    assert report.foreign_applied == 0, report
    assert report.results_missing == 0, report
    if not restarts_allowed:
        assert report.unplanned_restarts == 0, report


@pytest.mark.parametrize("size", SIZES)
def test_executor_killed_three_times_mid_stream_loses_nothing_and_applies_nothing_twice(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill("executor kill -9 x3", size, drill_env)

    report = d.run([(at, "kill -9 executor", lambda d: d.kill_and_restart("executor-0")) for at in (0.2, 0.45, 0.7)])

    assert_survived(report, chaos_reports)
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_translator_killed_twice_mid_stream_loses_nothing_and_applies_nothing_twice(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill("translator kill -9 x2", size, drill_env)

    report = d.run([(at, "kill -9 translator", lambda d: d.kill_and_restart("translator-0")) for at in (0.3, 0.65)])

    assert_survived(report, chaos_reports)
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_broker_stopped_mid_stream_and_started_again_loses_nothing(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_broker: RestartableBroker,
        chaos_reports: list[DrillReport]) -> None:
    d = drill(f"broker stopped {size.broker_outage:.0f} s", size, drill_env)

    def outage(_d: Drill) -> float:
        chaos_broker.stop()
        time.sleep(size.broker_outage)  # the fault itself: the broker stays down this long
        chaos_broker.start()
        return time.monotonic()

    report = d.run([(0.4, "broker stop", outage)])

    # After the coordinator comes back a static member may be fenced by its own rejoin (KAFKA-20985),
    # which librdkafka makes fatal (exit 1, naming it), or send_offsets_to_transaction may hang past its
    # timeout (librdkafka #5456, the watchdog exits 75): either way the supervisor starts the process
    # again, as Kubernetes does, and nothing is lost or applied twice.
    assert_survived(report, chaos_reports, restarts_allowed=True)
    assert all(code in (1, WATCHDOG_EXIT_CODE) for _, code in d.supervisor.unplanned), d.supervisor.unplanned
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_kms_outage_mid_stream_dead_letters_nothing_and_drains_by_itself(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill(f"KMS outage {size.kms_outage:.0f} s", size, drill_env)

    def outage(d: Drill) -> float:
        d.sim.set_faults(outage_seconds=size.kms_outage)
        return time.monotonic() + size.kms_outage

    report = d.run([(0.4, "KMS outage", outage)])

    assert_survived(report, chaos_reports)
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_degraded_kms_with_latency_and_errors_dead_letters_nothing(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill(f"KMS degraded {size.degraded:.0f} s (+200 ms, 20 % errors)", size, drill_env)

    def degrade(d: Drill) -> float:
        sim: SimulatorHandle = d.sim
        sim.set_faults(latency_ms=200, error_rate=0.2)
        timer = threading.Timer(size.degraded, sim.clear_faults)
        timer.daemon = True
        timer.start()
        return time.monotonic() + size.degraded

    report = d.run([(0.3, "KMS degraded", degrade)])

    assert_survived(report, chaos_reports)
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_rolling_restart_under_load_drains_each_process_within_its_grace_time_and_loses_nothing(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill("rolling restart (SIGTERM, start)", size, drill_env, executors=2)

    report = d.run([
        (0.3, "restart executor-0", lambda d: d.sigterm_and_restart("executor-0", GRACE_SECONDS)),
        (0.5, "restart executor-1", lambda d: d.sigterm_and_restart("executor-1", GRACE_SECONDS)),
        (0.7, "restart translator-0", lambda d: d.sigterm_and_restart("translator-0", GRACE_SECONDS)),
    ])

    assert_survived(report, chaos_reports)
    assert report.dlq == 0


@pytest.mark.parametrize("size", SIZES)
def test_one_percent_poison_goes_to_the_dlq_and_everything_else_is_applied(
        size: Size, drill_env: Callable[..., DrillEnv], chaos_reports: list[DrillReport]) -> None:
    d = drill("1 % poison", size, drill_env, poison_every=100, command_poison=max(7, size.events // 200))

    report = d.run([])

    assert_survived(report, chaos_reports)
    assert report.dlq_expected > 0
