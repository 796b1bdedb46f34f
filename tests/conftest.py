"""Root fixtures: the Kafka broker, one per test session (docs/architecture.md §6).

The broker is chosen in this order: ``KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS`` if set (with any other
``KMSBRIDGE_KAFKA__*`` client settings); else a testcontainers Kafka when a Docker engine answers; else
the local Apache Kafka broker of :mod:`localdev.local_broker` under a temporary folder. Session
fixtures start lazily, so unit tests never start a broker. Tier fixtures belong in
``tests/<tier>/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localdev.local_broker import BrokerHandle, start_broker, stop_broker
from producers.topics import create_topics, wait_for_topics

BOOTSTRAP_ENV = "KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS"
_KAFKA_ENV_PREFIX = "KMSBRIDGE_KAFKA__"
# Confluent Platform 8.0 ships Apache Kafka 4.0 (KRaft only); override to test another version.
_CONTAINER_IMAGE = os.environ.get("KMSBRIDGE_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:8.0.0")

MakeTopics = Callable[..., list[str]]


def _docker_answers() -> bool:
    """A cheap, bounded check that a Docker engine is reachable (no engine here: fall through fast)."""
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host and not any(Path(p).exists() for p in ("/var/run/docker.sock", "/run/docker.sock")):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        container = (
            KafkaContainer(_CONTAINER_IMAGE)
            .with_kraft()
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        )
        with container:
            yield container.get_bootstrap_server()
        return
    handle = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield handle.bootstrap
    finally:
        stop_broker(handle.pid)


@pytest.fixture(scope="session")
def kafka_config(kafka_bootstrap: str) -> dict[str, str]:
    """librdkafka client settings for the session's broker (``bootstrap.servers`` plus any
    ``KMSBRIDGE_KAFKA__*`` settings, e.g. SASL, when an external cluster is used)."""
    config: dict[str, str] = {}
    if os.environ.get(BOOTSTRAP_ENV):
        for key, value in os.environ.items():
            if key.upper().startswith(_KAFKA_ENV_PREFIX):
                config[key[len(_KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
    config["bootstrap.servers"] = kafka_bootstrap
    return config


@pytest.fixture
def fresh_topics(kafka_config: dict[str, str], request: pytest.FixtureRequest) -> Iterator[MakeTopics]:
    """A factory ``make(*, partitions=1, count=1) -> list[str]`` of new, uniquely named topics, created
    and ready (every partition has a leader). They are deleted, best effort, after the test."""
    made: list[str] = []
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:60]

    def make(*, partitions: int = 1, count: int = 1) -> list[str]:
        names = [f"{stem}-{uuid.uuid4().hex[:12]}" for _ in range(count)]
        create_topics(kafka_config, names, partitions=partitions, replication=1)
        made.extend(names)
        wait_for_topics(kafka_config, names)
        return names

    yield make
    if made:
        from confluent_kafka.admin import AdminClient

        # Keep the shared broker small; deletion is asynchronous and its outcome does not matter.
        with contextlib.suppress(Exception):
            AdminClient(dict(kafka_config)).delete_topics(made, operation_timeout=5)


@pytest.fixture(scope="session")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerHandle, str, str]]:
    """``(handle, username, password)`` of a second local broker with a SASL_PLAINTEXT listener
    (SCRAM-SHA-512, ``handle.sasl_bootstrap``) and one user; started only when a test asks for it."""
    username = "kmsbridge"
    password = secrets.token_urlsafe(18)
    handle = start_broker(tmp_path_factory.mktemp("kafka-scram"), scram_users={username: password})
    try:
        yield handle, username, password
    finally:
        stop_broker(handle.pid)
