"""A fenced static member ends its process, and the supervisor's restart brings it back.

Every process with static membership (``group.instance.id`` from ``KMSBRIDGE_GROUP_INSTANCE_ID``, else
``$POD_NAME``, plus ``-<process>``) is started as ``kmsbridge run`` under the chaos drills'
:class:`~tests.support.chaos.Supervisor` (``restartPolicy: Always``): the translator, the executor,
the projector, the reconciler runner and the request-log writer (the Web API's outcome feeds read
without a consumer group, so they have no static member to fence), and the reconciler's queue reader,
whose consumer lives in the reconciler process too. Once the process is a member of its group, a
second consumer joins with the same ``group.instance.id`` (as a second replica with the same pod name
would); the broker fences the first. The test then shows, against the real broker:

1. the fenced process exits with status 1, and its log names ``group.instance.id`` and the setting;
2. the supervisor restarts it, and the restarted process is the group's member for that instance id
   again, with partitions: a new member, not the fenced one polling on as a zombie.

The five cases run side by side (one broker session, one pipeline each), so the whole takes about
as long as the slowest one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from kafka_edge.kafka_clients import consumer_config
from kafka_edge.messages import INSTANCE_ID_SETTING
from tests.support.chaos import Supervisor
from tests.support.pipeline import Pipeline, wait_until
from tests.support.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

INSTANCE = "fence-a"
INTRUDER = "kmsbridge-test-intruder"


@dataclass(frozen=True)
class Case:
    name: str  # the supervised process's name in the report
    process: str  # ``kmsbridge run PROCESS``
    group: str  # ``Settings.group_id`` / ``Settings.instance_id`` suffix of the fenced consumer
    topic: str  # a logical topic that consumer reads (the intruder subscribes to it)


CASES = [
    Case("translator", "translator", "translator", "subscriptions"),
    Case("executor", "executor", "executor", "commands"),
    Case("projector", "projector", "projector", "subscriptions"),
    Case("reconciler", "reconciler", "reconciler", "reconcile_requests"),
    Case("request-log", "request-log", "request-log", "results"),
    Case("queue-reader", "reconciler", "communication-queue", "results"),
]


def member(bootstrap: str, group: str, instance_id: str) -> Any | None:
    """The group's member with ``instance_id``, once it holds partitions; else None."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    for m in description.members:
        if m.group_instance_id == instance_id and m.assignment and m.assignment.topic_partitions:
            return m
    return None


def fence_and_restart(pipeline: Pipeline, case: Case) -> None:
    supervisor = Supervisor(pipeline)
    group = pipeline.settings.group_id(case.group)
    instance_id = f"{INSTANCE}-{case.group}"
    proc = supervisor.start(case.name, case.process, env={"KMSBRIDGE_GROUP_INSTANCE_ID": INSTANCE})
    try:
        def joined() -> Any | None:
            return member(pipeline.bootstrap, group, instance_id) if proc.poll() is None else None

        first: Any = wait_until(f"the {case.name} joined {group} as {instance_id}", joined, 60, 0.5)
        assert proc.poll() is None, f"the {case.name} exited before it was fenced"

        # a second member with the same group.instance.id: the broker fences the first
        config = consumer_config(pipeline.settings.kafka_config(), group, instance_id=instance_id)
        intruder = Consumer({**config, "client.id": INTRUDER})
        intruder.subscribe([pipeline.settings.topic(case.topic)])
        try:
            def fenced_exited() -> bool:
                intruder.poll(0.2)  # joins, and stays in the group while the fenced one ends
                return proc.poll() is not None

            wait_until(f"the fenced {case.name} exited", fenced_exited, 45, 0)
        finally:
            intruder.close()  # a static member does not leave: the restarted process takes its place

        assert proc.returncode == 1, f"the fenced {case.name} exited with {proc.returncode}"
        log = (pipeline.workdir / f"{case.name}.1.log").read_text()
        assert "group.instance.id" in log and INSTANCE_ID_SETTING in log, log[-3000:]

        supervisor.check()  # restartPolicy: Always
        assert supervisor.unplanned == [(case.name, 1)]
        restarted = supervisor.procs[case.name]

        def rejoined() -> Any | None:
            if restarted.poll() is not None:
                return None
            m = member(pipeline.bootstrap, group, instance_id)
            return m if m is not None and m.client_id != INTRUDER and m.member_id != first.member_id else None

        wait_until(f"the restarted {case.name} is the member for {instance_id} again", rejoined, 60, 0.5)
        assert restarted.poll() is None, (pipeline.workdir / f"{case.name}.2.log").read_text()[-3000:]
    finally:
        supervisor.stop_all(30)


@pytest.fixture
def pipelines(kafka_bootstrap: str, kms_simulator: SimulatorHandle, tmp_path: Path) -> Iterator[dict[str, Pipeline]]:
    pipes = {case.name: Pipeline(kafka_bootstrap, kms_simulator.url, kms_simulator.token, tmp_path / case.name,
                                 partitions=1)
             for case in CASES}
    yield pipes
    for pipe in pipes.values():
        pipe.close()


def test_each_fenced_static_member_exits_with_status_1_naming_the_instance_id_and_is_restarted(
        pipelines: dict[str, Pipeline]) -> None:
    failures: dict[str, BaseException] = {}

    def run(case: Case) -> None:
        try:
            fence_and_restart(pipelines[case.name], case)
        except BaseException as exc:
            failures[case.name] = exc

    workers = [threading.Thread(target=run, args=(case,), name=f"fence-{case.name}") for case in CASES]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
    assert not [w.name for w in workers if w.is_alive()]
    assert not failures, "\n".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in sorted(failures.items()))
