"""Topic administration: the topics kmsbridge uses, their configs, idempotent creation, readiness.

:data:`TOPIC_TABLE` is the one table of each topic's cleanup policy and retention (docs/architecture.md §3);
:class:`TopicPolicy` holds the numbers an operator may change (``KMSBRIDGE_TOPICS__*``, the chart's
``topics`` values). ``kmsbridge topics create`` (run by the local stack and by the Helm hook Job)
plans every topic with :func:`plan_topics` and applies the plan with :func:`ensure_topics`: a missing
topic is created with its config, an existing one gets the planned config keys set (its partitions and
replication factor stay as they are). librdkafka errors are wrapped into
:class:`producers.errors.TopicAdminError` here, at the edge, with the topic name in the message.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType
from pydantic import BaseModel, Field

from kafka_edge.kafka_clients import kafka_error
from producers.errors import TopicAdminError

__all__ = [
    "DLQ",
    "TOPIC_TABLE",
    "EnsuredTopics",
    "PlannedTopic",
    "TopicPolicy",
    "TopicRule",
    "create_topics",
    "ensure_topics",
    "min_insync_replicas_for",
    "plan_topics",
    "wait_for_topics",
]

_HOUR_MS = 3_600_000
#: The kind of every dead-letter topic (``<topic>.dlq``) in :data:`TOPIC_TABLE`.
DLQ = "dlq"


class TopicPolicy(BaseModel):
    """Retention and durability of the topics, as an operator sets them (``KMSBRIDGE_TOPICS__...``).

    Hours, so a value reads the way runbooks speak. Why each default is what it is: :data:`TOPIC_TABLE`.
    """

    #: ``crm.subscriptions``: ``min.compaction.lag.ms``, how long every version stays before compaction
    #: may drop it for a newer one of the same subscription
    subscriptions_min_compaction_lag_hours: int = Field(default=168, ge=1)
    #: ``crm.subscriptions``: ``delete.retention.ms``, how long a tombstone stays once compacted
    subscriptions_delete_retention_hours: int = Field(default=168, ge=1)
    communications_retention_hours: int = Field(default=168, ge=1)
    requests_retention_hours: int = Field(default=96, ge=1)
    commands_retention_hours: int = Field(default=96, ge=1)
    results_retention_hours: int = Field(default=336, ge=1)
    reconcile_retention_hours: int = Field(default=168, ge=1)
    dlq_retention_hours: int = Field(default=720, ge=1)
    #: ``min.insync.replicas`` of every topic; unset: :func:`min_insync_replicas_for` the replication factor
    min_insync_replicas: int | None = Field(default=None, ge=1)


@dataclass(frozen=True, slots=True)
class TopicRule:
    """How one kind of topic is kept: its cleanup policy and the :class:`TopicPolicy` field(s) that time it."""

    cleanup_policy: Literal["compact", "delete"]
    #: the TopicPolicy field of ``retention.ms`` (delete) or of ``min.compaction.lag.ms`` (compact)
    hours_field: str
    #: compact only: the TopicPolicy field of ``delete.retention.ms`` (how long tombstones stay)
    tombstone_hours_field: str | None = None


#: Each topic by its logical name (a field of ``kmsbridge.settings.TopicSettings``; every ``<topic>.dlq``
#: is :data:`DLQ`). ``retention.bytes`` stays unlimited everywhere: a backlog is bounded by time, never
#: by size, so a burst cannot drop records that were not consumed yet.
TOPIC_TABLE: dict[str, TopicRule] = {
    # Every SubscriptionEvent carries the whole state, keyed by subscription id: the compacted topic IS
    # the desired state (`kmsbridge projector rebuild` reads it back). Compaction keeps each version
    # for a week first, because the translator plans from each event's removed_devices: a consumer
    # that is less than a week behind still sees every intermediate version. Tombstones stay a week
    # too, so a consumer that was stopped that long still sees a deletion.
    "subscriptions": TopicRule("compact", "subscriptions_min_compaction_lag_hours",
                               "subscriptions_delete_retention_hours"),
    # Communications are delivered or queued (the communication queue, in the database) when read; a
    # week covers a translator stopped over a holiday.
    "communications": TopicRule("delete", "communications_retention_hours"),
    # Agents' and the Web API's requests, and the commands waiting for the KMS: four days ride out an
    # outage from a Friday evening to a Tuesday morning; a request older than that is better sent anew.
    "requests": TopicRule("delete", "requests_retention_hours"),
    "commands": TopicRule("delete", "commands_retention_hours"),
    # The express lane (agents' requests) is kept as the commands are: it holds the same kind of record.
    "commands_express": TopicRule("delete", "commands_retention_hours"),
    # CRM reads the outcomes to move its provisioning requests on; two weeks let a CRM that was down
    # (or a new CRM consumer) catch up. The durable history is the request log, not this topic.
    "results": TopicRule("delete", "results_retention_hours"),
    # Reset runs and their reports: a week covers the weekly runs and a report read a few days later.
    "reconcile_requests": TopicRule("delete", "reconcile_retention_hours"),
    "reconcile_reports": TopicRule("delete", "reconcile_retention_hours"),
    # Dead letters wait for an operator (`kmsbridge dlq list|replay`): thirty days span a monthly review.
    DLQ: TopicRule("delete", "dlq_retention_hours"),
}


def min_insync_replicas_for(replication: int) -> int:
    """Two in-sync replicas where three or more exist (a write survives one broker lost and one broker may
    be down without stopping writes); one below that (a single node, or two where two in sync would stop
    every write whenever one broker restarts)."""
    return 2 if replication >= 3 else 1


@dataclass(frozen=True, slots=True)
class PlannedTopic:
    name: str
    kind: str
    config: dict[str, str] = field(default_factory=dict)


def plan_topics(kinds: Mapping[str, str], policy: TopicPolicy, replication: int) -> list[PlannedTopic]:
    """``kinds`` maps each full topic name to its kind (a key of :data:`TOPIC_TABLE`); returns the plan,
    in the order given. Raises ``ValueError`` for an unknown kind or a ``min.insync.replicas`` above
    ``replication``."""
    min_isr = policy.min_insync_replicas or min_insync_replicas_for(replication)
    if min_isr > replication:
        raise ValueError(f"min.insync.replicas {min_isr} is above the replication factor {replication}: "
                         "every write would be refused")
    plans: list[PlannedTopic] = []
    for name, kind in kinds.items():
        rule = TOPIC_TABLE.get(kind)
        if rule is None:
            raise ValueError(f"topic {name!r}: unknown kind {kind!r} (one of {sorted(TOPIC_TABLE)})")
        hours: int = getattr(policy, rule.hours_field)
        config = {"cleanup.policy": rule.cleanup_policy, "min.insync.replicas": str(min_isr)}
        if rule.cleanup_policy == "compact":
            assert rule.tombstone_hours_field is not None
            config["min.compaction.lag.ms"] = str(hours * _HOUR_MS)
            config["delete.retention.ms"] = str(getattr(policy, rule.tombstone_hours_field) * _HOUR_MS)
        else:
            config["retention.ms"] = str(hours * _HOUR_MS)
            config["retention.bytes"] = "-1"
        plans.append(PlannedTopic(name, kind, config))
    return plans


def _admin(kafka_config: Mapping[str, str]) -> AdminClient:
    return AdminClient(dict(kafka_config))


def create_topics(
    kafka_config: Mapping[str, str],
    names: Sequence[str],
    partitions: int,
    replication: int,
    timeout: float = 30,
    topic_config: Mapping[str, str] | None = None,
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create ``names`` with ``partitions`` and ``replication``; topics that already exist are fine.

    Each new topic gets ``configs[name]`` when given, else ``topic_config``. Returns the names this call
    created, in the order given. An existing topic is left as it is (its partition count and config are
    not changed: :func:`ensure_topics` aligns configs). Raises :class:`TopicAdminError` for any other
    failure.
    """
    if not names:
        return []
    return _create(_admin(kafka_config), {name: dict((configs or {}).get(name, topic_config or {}))
                                          for name in names}, partitions, replication, timeout)


def _create(admin: AdminClient, configs: Mapping[str, dict[str, str]], partitions: int, replication: int,
            timeout: float) -> list[str]:
    names = list(configs)
    new_topics = [NewTopic(name, num_partitions=partitions, replication_factor=replication, config=config)
                  for name, config in configs.items()]
    try:
        futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"creating topics {names}: {exc}", kafka_error(exc)) from exc
    created: list[str] = []
    deadline = time.monotonic() + timeout
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = kafka_error(exc)
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicAdminError(
                f"creating topic {name!r} ({partitions} partitions, replication {replication}): {exc}", error
            ) from exc
        except concurrent.futures.TimeoutError as exc:
            raise TopicAdminError(f"creating topic {name!r}: no answer within {timeout:.0f}s") from exc
        created.append(name)
    order = {name: i for i, name in enumerate(names)}
    return sorted(created, key=order.__getitem__)


@dataclass(frozen=True, slots=True)
class EnsuredTopics:
    """What :func:`ensure_topics` found and did."""

    created: list[str]
    #: existing topics whose config differed from the plan: name -> {key: (value found, value planned)};
    #: set to the planned values unless ``update_existing`` was off
    differed: dict[str, dict[str, tuple[str | None, str]]]
    updated: list[str]
    #: existing topics whose replication factor is not the planned one (changing it is a reassignment
    #: that ``kafka-reassign-partitions`` does, not this job): name -> replicas found
    replication_differs: dict[str, int]


def ensure_topics(
    kafka_config: Mapping[str, str],
    plans: Sequence[PlannedTopic],
    partitions: int,
    replication: int,
    *,
    update_existing: bool = True,
    timeout: float = 30,
) -> EnsuredTopics:
    """Create the planned topics that are missing, with their config; set the planned config keys of
    those that exist (unless ``update_existing`` is off; keys the plan does not name stay as they are).

    Raises :class:`TopicAdminError` naming the topic for a failure of any step.
    """
    admin = _admin(kafka_config)
    configs = {plan.name: dict(plan.config) for plan in plans}
    created = _create(admin, configs, partitions, replication, timeout) if configs else []
    existing = [name for name in configs if name not in created]
    differed = {name: diff for name, diff in _config_differences(admin, configs, existing, timeout).items() if diff}
    updated: list[str] = []
    if update_existing and differed:
        _set_configs(admin, {name: {key: planned for key, (_found, planned) in diff.items()}
                             for name, diff in differed.items()}, timeout)
        updated = list(differed)
    return EnsuredTopics(created, differed, updated, _replication_differs(admin, existing, replication, timeout))


def _config_differences(admin: AdminClient, configs: Mapping[str, dict[str, str]], names: Sequence[str],
                        timeout: float) -> dict[str, dict[str, tuple[str | None, str]]]:
    if not names:
        return {}
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in names],
                                         request_timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"reading the configs of topics {list(names)}: {exc}", kafka_error(exc)) from exc
    out: dict[str, dict[str, tuple[str | None, str]]] = {}
    for resource, future in futures.items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException as exc:
            raise TopicAdminError(f"reading the config of topic {resource.name!r}: {exc}", kafka_error(exc)) from exc
        found = {key: entry.value for key, entry in entries.items()}
        out[resource.name] = {key: (found.get(key), value) for key, value in configs[resource.name].items()
                              if found.get(key) != value}
    return out


def _set_configs(admin: AdminClient, changes: Mapping[str, dict[str, str]], timeout: float) -> None:
    resources = [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in keys.items()])
        for name, keys in changes.items()]
    try:
        futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"setting the configs of topics {list(changes)}: {exc}", kafka_error(exc)) from exc
    for resource, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            raise TopicAdminError(f"setting {sorted(changes[resource.name])} of topic {resource.name!r}: {exc}",
                                  kafka_error(exc)) from exc


def _replication_differs(admin: AdminClient, names: Sequence[str], replication: int,
                         timeout: float) -> dict[str, int]:
    if not names:
        return {}
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"reading the metadata of topics {list(names)}: {exc}", kafka_error(exc)) from exc
    out: dict[str, int] = {}
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or not topic.partitions:
            continue
        found = min(len(p.replicas) for p in topic.partitions.values())
        if found != replication:
            out[name] = found
    return out


def wait_for_topics(
    kafka_config: Mapping[str, str],
    names: Sequence[str],
    timeout: float = 30,
    poll_interval: float = 0.2,
) -> None:
    """Wait until every topic in ``names`` exists and each of its partitions has a leader.

    Raises :class:`TopicAdminError` naming the topics still missing when ``timeout`` passes.
    """
    admin = _admin(kafka_config)
    deadline = time.monotonic() + timeout
    pending = list(dict.fromkeys(names))
    while True:
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            error = kafka_error(exc)
            if time.monotonic() > deadline:
                raise TopicAdminError(f"waiting for topics {pending}: {exc}", error) from exc
        else:
            pending = [name for name in pending if not _ready(metadata.topics.get(name))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopicAdminError(f"topics {pending} not ready (exist with a leader) after {timeout:.0f}s")
        time.sleep(poll_interval)


def _ready(topic: object) -> bool:
    if topic is None or getattr(topic, "error", None) is not None:
        return False
    partitions = getattr(topic, "partitions", {})
    return bool(partitions) and all(p.leader >= 0 and p.error is None for p in partitions.values())
