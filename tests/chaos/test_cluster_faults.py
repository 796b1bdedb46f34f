"""Fault drills on a three-node KRaft cluster (RF 3, ``min.insync.replicas=2``) with two translators, two
executors, two projectors and two reconcilers on one PostgreSQL database, as ``tests/chaos/test_faults.py``
runs them on one broker: a real simulator process, the processes as ``kmsbridge run``, a ledger of
produced vs applied (:mod:`tests.support.cluster`).

Pass criteria for every drill: nothing lost, nothing applied twice, no DLQ entry, nothing applied that no
event asked for, a result for every applied command, and no duplicate command on ``kms.commands`` read
with read_committed (exactly once into the topic, counted there, not behind the executor's ledger); the
desired-state store holds every subscription at its newest version; every sample of the reconcilers'
run lock held names one running reconciler and both held it, every reset run during the drill reported
without a lock error, and a reset run after the drill finds no drift. The control drill runs one
translator without transactions (and no projector or reconciler: it is about the translator) and must
show duplicates, so the count is shown to see them. A drill that moves a group coordinator may make a
process exit on its own (a static member fenced by its own rejoin, KAFKA-20985: exit 1; the transactional
watchdog: exit 75); the supervisor starts it again, as Kubernetes does, and the restarts are counted in
the table.

The cluster is this module's own (the drills kill and stop its nodes); every drill starts with all three
nodes running and no partition under-replicated. ``var/chaos/cluster-last-run.md`` gets the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from kafka_edge.kafka_clients import WATCHDOG_EXIT_CODE
from localdev.cluster import LocalCluster, start_cluster
from localdev.local_broker import repo_root
from provisioning.provider import load_provider
from tests.support.chaos import DrillReport
from tests.support.cluster import (
    CLUSTER_FULL,
    CLUSTER_SHORT,
    ClusterDrill,
    ClusterReport,
    ClusterSize,
    RestartablePostgres,
    cluster_pipeline,
    cluster_table,
)
from tests.support.pg import new_database, start_postgres
from tests.support.simulator import SimulatorProcess, start_simulator_process

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(3600)]

#: The short node-fault stream: long enough for its four faults one after the other (rolling restart last).
NODE_FAULTS_SHORT = replace(CLUSTER_SHORT, events=4200)
RESTART_CODES = (1, WATCHDOG_EXIT_CODE)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def cluster_reports(request: pytest.FixtureRequest) -> Iterator[list[ClusterReport]]:
    reports: list[ClusterReport] = []
    yield reports
    if not reports:
        return
    table = cluster_table(reports)
    out = repo_root() / "var" / "chaos" / "cluster-last-run.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = start_cluster(tmp_path_factory.mktemp("kafka-cluster"), nodes=3)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def drill_database_server() -> Iterator[str]:
    """A PostgreSQL server the drills' databases live on (one database per drill)."""
    server = start_postgres()
    if server is None:
        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (run `make system-deps`)")
    try:
        yield server.url
    finally:
        server.stop()


MakeDrill = Callable[..., ClusterDrill]


@pytest.fixture
def cluster_drill(cluster: LocalCluster, drill_database_server: str, tmp_path: Path) -> Iterator[MakeDrill]:
    """``make(case, size, database_url=None, **drill_options) -> ClusterDrill`` on a healthy cluster, on a
    fresh database of :func:`drill_database_server` unless ``database_url`` names another."""
    for i in range(len(cluster.nodes)):
        if not cluster.running(i):
            cluster.start(i)
    cluster.wait_in_sync()
    made: list[tuple[ClusterDrill, SimulatorProcess]] = []

    def make(case: str, size: ClusterSize, *, database_url: str | None = None, **options: Any) -> ClusterDrill:
        sim = start_simulator_process(tmp_path)
        assert sim.audit_file is not None
        pipeline = cluster_pipeline(cluster, sim.url, sim.token, tmp_path / "pipeline",
                                    database_url=database_url or new_database(drill_database_server))
        drill = ClusterDrill(case, size, pipeline, sim, sim.audit_file, load_provider(pipeline.provider_file),
                             cluster=cluster, **options)
        made.append((drill, sim))
        return drill

    yield make
    for drill, sim in made:
        drill.pipeline.close()
        sim.stop()
        drill.start_stopped_nodes()
        # the drill's topics go, so the cluster carries one drill's partitions at a time
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        for future in admin.delete_topics(drill.pipeline.settings.all_topics(), operation_timeout=30).values():
            future.result(timeout=60)


@pytest.fixture
def postgres() -> Iterator[RestartablePostgres]:
    try:
        server = RestartablePostgres()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


def assert_survived(report: DrillReport, d: ClusterDrill, reports: list[ClusterReport],
                    chaos_reports: list[DrillReport]) -> None:
    assert isinstance(report, ClusterReport)
    reports.append(report)
    chaos_reports.append(report)
    assert report.lost == 0, report
    assert report.applied_twice == 0, report
    assert report.dlq == 0, report
    assert report.foreign_applied == 0, report
    assert report.results_missing == 0, report
    assert all(code in RESTART_CODES for _, code in d.supervisor.unplanned), d.supervisor.unplanned
    assert sorted(report.recoveries) == sorted(d.faults_scheduled), report.recoveries  # every fault recovered
    assert report.commands_on_topic > 0, report
    if report.duplicates_expected:
        assert report.duplicate_commands > 0, report
    else:
        assert report.duplicate_commands == 0, report
    assert report.projectors == len(d.projectors) and report.reconcilers == len(d.reconcilers), report
    if d.projectors:
        assert report.projection_behind == 0, report
    if d.reconcilers:
        assert report.reconcile_runs > 0 and report.reconcile_unreported == 0, report
        assert report.reconcile_lock_errors == 0, report
        assert report.lease_exclusive, report.lease_held
        assert report.final_checked == report.subscriptions, report
        assert report.final_drift == 0 and report.final_failed == 0, report
    assert report.passed, report


# --------------------------------------------------------------------------------------------------
# The short form (make test): the same faults, one after another in three streams


def test_node_faults_one_after_another_under_load_lose_nothing_and_publish_no_command_twice(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = NODE_FAULTS_SHORT
    d = cluster_drill(f"node faults in turn: commands leader kill -9 ({size.node_down:.0f} s), broker stopped "
                      f"({size.broker_outage:.0f} s), quorum voter kill -9 ({size.node_down:.0f} s), "
                      "rolling restart", size)

    report = d.run([*d.leader_kill(3, size.node_down), *d.broker_stop(14, size.broker_outage),
                    *d.voter_kill(32, size.node_down), *d.rolling_restart(43)])

    assert_survived(report, d, cluster_reports, chaos_reports)


def test_replicas_translator_kills_and_a_database_restart_on_postgresql_lose_nothing_and_publish_no_command_twice(
        cluster_drill: MakeDrill, postgres: RestartablePostgres, cluster_reports: list[ClusterReport],
        chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_SHORT
    d = cluster_drill(f"on PostgreSQL: replicas added and removed, translator kill -9 x3, database restarted "
                      f"({size.database_outage:.0f} s)", size, database_url=new_database(postgres.url),
                      database=postgres)

    report = d.run([*d.replicas_added_then_removed(3, 8), *d.translator_kills((6, 12, 18)),
                    *d.database_restart(14, size.database_outage)])

    assert_survived(report, d, cluster_reports, chaos_reports)


def test_translator_without_transactions_killed_mid_stream_publishes_duplicates_the_count_sees(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_SHORT
    # one translator: the one killed owns every input partition (of two, the other may hold them all)
    d = cluster_drill("translator kill -9 x3, no transactions (control)", size, transactions=False, translators=1,
                      projectors=0, reconcilers=0)

    report = d.run(d.translator_kills((5, 11, 17)))

    # nothing lost or applied twice (the executor's ledger hides the duplicates from the KMS); the topic shows them
    assert_survived(report, d, cluster_reports, chaos_reports)


# --------------------------------------------------------------------------------------------------
# The full form (make chaos): one fault per drill, 20,000 events each


@pytest.mark.full
def test_partition_leader_of_kms_commands_killed_and_brought_back_loses_nothing(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill(f"leader of kms.commands kill -9, back after {size.node_down:.0f} s", size)

    report = d.run(d.leader_kill(0.25 * size.duration, size.node_down))

    assert_survived(report, d, cluster_reports, chaos_reports)


@pytest.mark.full
def test_broker_stopped_for_a_minute_loses_nothing(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill(f"broker stopped {size.broker_outage:.0f} s", size)

    report = d.run(d.broker_stop(0.25 * size.duration, size.broker_outage))

    assert_survived(report, d, cluster_reports, chaos_reports)


@pytest.mark.full
def test_controller_quorum_losing_one_voter_elects_another_and_loses_nothing(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill(f"quorum loses a voter (active controller kill -9, back after {size.node_down:.0f} s)", size)

    report = d.run(d.voter_kill(0.25 * size.duration, size.node_down))

    assert_survived(report, d, cluster_reports, chaos_reports)


@pytest.mark.full
def test_rolling_restart_of_every_broker_under_load_loses_nothing(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill("rolling restart of the 3 brokers (SIGTERM, start, in sync)", size)

    report = d.run(d.rolling_restart(0.25 * size.duration))

    assert_survived(report, d, cluster_reports, chaos_reports)


@pytest.mark.full
def test_translator_and_executor_replicas_added_then_removed_under_load_lose_nothing(
        cluster_drill: MakeDrill, cluster_reports: list[ClusterReport], chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill("a translator and an executor added, then removed (cooperative rebalances)", size)

    report = d.run(d.replicas_added_then_removed(0.25 * size.duration, 0.4 * size.duration))

    assert_survived(report, d, cluster_reports, chaos_reports)
    assert report.unplanned_restarts == 0, d.supervisor.unplanned


@pytest.mark.full
def test_two_executors_on_postgresql_while_the_database_restarts_lose_nothing(
        cluster_drill: MakeDrill, postgres: RestartablePostgres, cluster_reports: list[ClusterReport],
        chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    d = cluster_drill(f"PostgreSQL ledger restarted ({size.database_outage:.0f} s down), 2 executors", size,
                      database_url=new_database(postgres.url), database=postgres)

    report = d.run(d.database_restart(0.3 * size.duration, size.database_outage))

    assert_survived(report, d, cluster_reports, chaos_reports)


@pytest.mark.full
@pytest.mark.parametrize("transactions", [pytest.param(True, id="transactions"),
                                          pytest.param(False, id="no-transactions")])
def test_translator_killed_mid_stream_publishes_each_command_once_only_with_transactions(
        transactions: bool, cluster_drill: MakeDrill, cluster_reports: list[ClusterReport],
        chaos_reports: list[DrillReport]) -> None:
    size = CLUSTER_FULL
    label = "transactions" if transactions else "no transactions (control)"
    d = cluster_drill(f"translator kill -9 x3, {label}", size, transactions=transactions, translators=1,
                      projectors=0, reconcilers=0)

    report = d.run(d.translator_kills([f * size.duration for f in (0.2, 0.45, 0.7)]))

    assert_survived(report, d, cluster_reports, chaos_reports)
