"""The Kafka key of every record (docs/architecture.md, "Topics and records"): one rule, used by every
producer, the CLI and the test harness, so a record lands on the same partition whoever writes it.

Keys decide ordering: the executor applies the commands of one secure client in order because they
share a key, and the translator sees every version of a subscription in order for the same reason.
"""

from __future__ import annotations

from schemas.records import (
    CommunicationEvent,
    KmsCommand,
    KmsResult,
    ReconcileReport,
    ReconcileRequest,
    ServiceRequest,
    SubscriptionEvent,
)

__all__ = ["EVERY_SUBSCRIBER", "record_key", "request_key", "result_key"]

#: The key of a request for every subscriber (and the secure client id of a global command).
EVERY_SUBSCRIBER = "*"


def request_key(req: ServiceRequest) -> str:
    """A request's target id: its secure client, else its subscription, else every subscriber."""
    return req.secure_client_id or req.subscription_id or EVERY_SUBSCRIBER


def result_key(result: KmsResult) -> str:
    """A result's request or source id: what the CRM and the Web API look it up by."""
    return (result.request_id or result.communication_id or result.event_id or result.run_id
            or result.idempotency_key)


def record_key(record: object) -> str:
    """The key of any record kmsbridge writes or reads; a record of no known type is a ``TypeError``."""
    if isinstance(record, SubscriptionEvent):
        return record.subscription_id
    if isinstance(record, CommunicationEvent):
        return record.communication_id
    if isinstance(record, ServiceRequest):
        return request_key(record)
    if isinstance(record, KmsCommand):
        return record.secure_client_id
    if isinstance(record, KmsResult):
        return result_key(record)
    if isinstance(record, ReconcileRequest | ReconcileReport):
        return record.run_id
    raise TypeError(f"no Kafka key rule for {type(record).__name__}")
