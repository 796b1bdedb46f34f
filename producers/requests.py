"""Building and publishing support-agent requests (``ServiceRequest`` on ``kms.requests``, docs/architecture.md §3).

The CLI verbs and the Web API use the same two pieces:

* :func:`new_request` builds a :class:`~schemas.records.ServiceRequest` with a fresh ``request_id``
  (uuid4) and ``requested_at`` now (UTC);
* :class:`KafkaRequestPublisher` encodes it and produces it, keyed by its target
  (:func:`schemas.keys.request_key`: the secure client, else the subscription, else ``"*"``), and waits
  for the broker's acknowledgement. Reset runs (``ReconcileRequest``) go to ``reconcile.requests`` keyed
  by ``run_id``.

librdkafka errors are wrapped into :class:`~producers.errors.ProducerError` here, at the edge. Logs name
the request id, type and target, never the PIN or the message text.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import SecretStr

from kafka_edge.kafka_clients import close_producer
from kafka_edge.tracing import propagation_headers
from producers.errors import ProducerError
from schemas.codec import Codec
from schemas.keys import record_key, request_key
from schemas.records import MessageKind, ReconcileRequest, RequestType, ServiceRequest, TextMode

__all__ = ["KafkaRequestPublisher", "RequestPublisher", "describe_target", "new_request"]

log = logging.getLogger(__name__)


def new_request(
    type_: RequestType,
    *,
    secure_client_id: str | None = None,
    subscription_id: str | None = None,
    all_: bool = False,
    pin: SecretStr | None = None,
    kind: MessageKind | None = None,
    text_mode: TextMode | None = None,
    text: str | None = None,
    sections: Sequence[str] = (),
    requested_by: str = "unknown",
    process_name: str = "kmsbridge",
) -> ServiceRequest:
    """A new request with a fresh uuid4 ``request_id`` and ``requested_at`` now."""
    return ServiceRequest(
        request_id=str(uuid.uuid4()), type=type_, secure_client_id=secure_client_id,
        subscription_id=subscription_id, all=all_, pin=pin, kind=kind, text_mode=text_mode, text=text,
        sections=list(sections), process_name=process_name, requested_by=requested_by,
        requested_at=datetime.now(UTC),
    )


def describe_target(req: ServiceRequest) -> str:
    """The target for logs and messages (ids only)."""
    if req.secure_client_id:
        return f"secure_client={req.secure_client_id}"
    if req.subscription_id:
        return f"subscription={req.subscription_id}"
    return "all"


class RequestPublisher(Protocol):
    """What the Web API and the CLI need to hand work to the pipeline."""

    def publish_request(self, req: ServiceRequest) -> None:
        """Produce ``req`` to ``kms.requests``; return once the broker acknowledged it."""
        ...

    def publish_reconcile(self, run: ReconcileRequest) -> None:
        """Produce ``run`` to ``reconcile.requests``; return once the broker acknowledged it."""
        ...


class KafkaRequestPublisher:
    """:class:`RequestPublisher` on a confluent-kafka ``Producer`` (idempotent, ``acks=all``).

    Thread-safe: the Web API calls it from its worker threads. Each call waits for the delivery
    report of its own message (bounded by ``timeout``) so a caller that got no error knows the
    request is on the topic.
    """

    def __init__(self, kafka_config: dict[str, str], codec: Codec, *, requests_topic: str,
                 reconcile_topic: str, timeout: float = 10.0) -> None:
        self._producer = Producer({**kafka_config, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
        self._codec = codec
        self._requests_topic = requests_topic
        self._reconcile_topic = reconcile_topic
        self._timeout = timeout

    def publish_request(self, req: ServiceRequest) -> None:
        self._produce(self._requests_topic, request_key(req), self._codec.encode(req, self._requests_topic))
        log.info("request published request_id=%s type=%s %s", req.request_id, req.type.value,
                 describe_target(req))

    def publish_reconcile(self, run: ReconcileRequest) -> None:
        self._produce(self._reconcile_topic, record_key(run), self._codec.encode(run, self._reconcile_topic))
        log.info("reconcile run published run_id=%s preview=%s subscriptions=%d", run.run_id, run.preview,
                 len(run.subscription_ids))

    def close(self) -> None:
        """Deliver what is queued (up to the timeout), then destroy the client: none may outlive the
        process (:func:`~kafka_edge.kafka_clients.close_producer`)."""
        close_producer(self._producer, self._timeout)

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        done = threading.Event()
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                errors.append(err)
            done.set()

        try:
            # the Web API request's trace goes on with the record (nothing when tracing is off)
            self._producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered,
                                   headers=propagation_headers())
        except (KafkaException, BufferError) as exc:
            raise ProducerError(f"producing to {topic}: {exc}") from exc
        # flush() serves delivery callbacks of every thread's messages; ours sets ``done``.
        self._producer.flush(self._timeout)
        if not done.is_set():
            raise ProducerError(f"producing to {topic}: no acknowledgement within {self._timeout:.0f}s")
        if errors:
            error = ProducerError(f"producing to {topic}: {errors[0]}")
            error.retryable = errors[0].retriable()
            raise error
