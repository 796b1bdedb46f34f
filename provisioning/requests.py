"""Support-agent requests and mail-run communications → KMS commands (docs/architecture.md §1 features 5-7, 9).

Pure, like the rest of ``provisioning/``: when a request or communication targets a subscription,
the caller looks up its devices and passes them as ``devices`` (``None`` = the subscription is not
known).

**Targets.** Exactly one of ``secure_client_id``, ``subscription_id``, ``all``:

* a secure client → one command for that card;
* a subscription → one command per device, by distributor then card (``UNKNOWN_SUBSCRIPTION`` when
  ``devices`` is ``None``, ``NO_DEVICES`` when it is empty);
* ``all`` → one global command (``secure_client_id`` ``"*"``); only messages can be global
  (``UNSUPPORTED_TARGET`` otherwise); none → ``MISSING_TARGET``; several → ``AMBIGUOUS_TARGET``.

The target is checked before the parameters.

**Request types.** SET_PIN (the request's ``pin``, validated), RESET_PIN (the provider's default
PIN), REAUTHORISE_SECTOR, SEND_MESSAGE (MAIL → SEND_MAIL, MESSAGE → SEND_MESSAGE, or their
``_GLOBAL`` forms). RESET_SUBSCRIPTION and QUERY_CLIENT plan nothing here (an empty plan, no
rejection): a reset is a reconcile run (``plan_reset``, with its run-id keys) and a query is a read
the caller makes through the KMS port, not a command on ``kms.commands``.

Request commands are ``EXPRESS`` (an agent is waiting, ``process_immediately``); communications are
``REGULAR`` and carry ``scheduled_at`` as ``not_before``. Keys are ``req:<request_id>:...`` and
``comm:<communication_id>:...``; ``created_at`` is the input's ``requested_at`` / ``created_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from provisioning.commands import GLOBAL_CLIENT, CommandFactory
from provisioning.errors import (
    AMBIGUOUS_TARGET,
    MISSING_PARAMETER,
    MISSING_TARGET,
    NO_DEVICES,
    UNKNOWN_SUBSCRIPTION,
    UNSUPPORTED_TARGET,
    Rejection,
)
from provisioning.keys import KeySource
from provisioning.pin import validate_pin
from provisioning.plan import Plan, Skip
from provisioning.provider import ProviderConfig
from provisioning.text import TextLimits, validate_text
from provisioning.validation import sorted_devices
from schemas.records import (
    CommunicationEvent,
    Device,
    Message,
    MessageKind,
    Operation,
    Priority,
    RequestType,
    ServiceRequest,
    Source,
    TextMode,
)

__all__ = [
    "Plan",
    "Skip",
    "message_operation",
    "plan_communication",
    "plan_communication_send",
    "plan_request",
    "validate_pin",
]

_PER_CLIENT_OPERATION = {
    RequestType.SET_PIN: Operation.SET_PIN,
    RequestType.RESET_PIN: Operation.SET_PIN,
    RequestType.REAUTHORISE_SECTOR: Operation.REAUTHORISE_SECTOR,
}
_NOT_PLANNED = frozenset({RequestType.RESET_SUBSCRIPTION, RequestType.QUERY_CLIENT})


@dataclass(frozen=True, slots=True)
class _Targets:
    """Resolved target: ``clients`` as (secure client, distributor if known), or one global target."""

    clients: tuple[tuple[str, str | None], ...]
    is_global: bool = False


def message_operation(kind: MessageKind, is_global: bool) -> Operation:
    """MAIL → SEND_MAIL, MESSAGE → SEND_MESSAGE; the ``_GLOBAL`` form when sent to everyone."""
    if kind is MessageKind.MAIL:
        return Operation.SEND_MAIL_GLOBAL if is_global else Operation.SEND_MAIL
    return Operation.SEND_MESSAGE_GLOBAL if is_global else Operation.SEND_MESSAGE


def plan_request(
    req: ServiceRequest,
    provider: ProviderConfig,
    limits: TextLimits | None = None,
    devices: Sequence[Device] | None = None,
    *,
    topic: str | None = None,
) -> Plan:
    """The commands of one support-agent request (see the module docstring)."""
    if req.type in _NOT_PLANNED:
        return Plan()
    targets = _resolve(req.secure_client_id, req.subscription_id, req.all, devices)
    if isinstance(targets, Rejection):
        return Plan.reject(targets)
    make = CommandFactory(
        key_source=KeySource.REQUEST,
        source_id=req.request_id,
        source=Source(process_name=req.process_name, topic=topic, request_id=req.request_id),
        created_at=req.requested_at,
        subscription_id=req.subscription_id or None,
        priority=Priority.EXPRESS,
    )
    if req.type is RequestType.SEND_MESSAGE:
        return _message_plan(make, targets, req.kind, req.text_mode, req.text, limits)
    if targets.is_global:
        return Plan.reject(
            Rejection(UNSUPPORTED_TARGET, f"{req.type.value} cannot target all secure clients")
        )
    pin: SecretStr | None = None
    if req.type is RequestType.SET_PIN:
        if req.pin is None:
            return Plan.reject(Rejection(MISSING_PARAMETER, "SET_PIN needs a pin"))
        rejection = validate_pin(req.pin.get_secret_value())
        if rejection is not None:
            return Plan.reject(rejection)
        pin = req.pin
    elif req.type is RequestType.RESET_PIN:
        pin = provider.default_pin
    operation = _PER_CLIENT_OPERATION[req.type]
    return Plan(tuple(make(operation, card, distributor=dist, pin=pin) for card, dist in targets.clients))


def plan_communication(
    comm: CommunicationEvent,
    provider: ProviderConfig,
    limits: TextLimits | None = None,
    devices: Sequence[Device] | None = None,
    *,
    process_name: str = "translator",
    topic: str | None = None,
) -> Plan | Skip:
    """A mail-run communication as Mail/Message commands, or :class:`Skip` when it is for another
    external system (compared exactly with ``provider.mail_run.external_system``)."""
    expected = provider.mail_run.external_system
    if comm.external_system != expected:
        return Skip(f"external system {comm.external_system!r} is not {expected!r}")
    return plan_communication_send(comm, limits, devices, process_name=process_name, topic=topic)


def plan_communication_send(
    comm: CommunicationEvent,
    limits: TextLimits | None = None,
    devices: Sequence[Device] | None = None,
    *,
    process_name: str = "translator",
    topic: str | None = None,
) -> Plan:
    """A communication as Mail/Message commands, whatever its external system (a mail run definition
    chose it by its external system already)."""
    targets = _resolve(comm.secure_client_id, comm.subscription_id, comm.all, devices)
    if isinstance(targets, Rejection):
        return Plan.reject(targets)
    make = CommandFactory(
        key_source=KeySource.COMMUNICATION,
        source_id=comm.communication_id,
        source=Source(process_name=process_name, topic=topic, communication_id=comm.communication_id),
        created_at=comm.created_at,
        subscription_id=comm.subscription_id or None,
        not_before=comm.scheduled_at,
    )
    return _message_plan(make, targets, comm.kind, comm.text_mode, comm.text, limits)


def _message_plan(
    make: CommandFactory,
    targets: _Targets,
    kind: MessageKind | None,
    text_mode: TextMode | None,
    text: str | None,
    limits: TextLimits | None,
) -> Plan:
    if kind is None or text_mode is None or text is None:
        missing = [name for name, value in (("kind", kind), ("text_mode", text_mode), ("text", text))
                   if value is None]
        return Plan.reject(Rejection(MISSING_PARAMETER, f"SEND_MESSAGE needs {', '.join(missing)}"))
    rejection = validate_text(text_mode, text, limits)
    if rejection is not None:
        return Plan.reject(rejection)
    message = Message(kind=kind, text_mode=text_mode, text=text)
    operation = message_operation(kind, targets.is_global)
    return Plan(tuple(make(operation, card, distributor=dist, message=message)
                      for card, dist in targets.clients))


def _resolve(
    secure_client_id: str | None,
    subscription_id: str | None,
    all_: bool,
    devices: Sequence[Device] | None,
) -> _Targets | Rejection:
    chosen = [name for name, on in (("secure_client_id", secure_client_id),
                                    ("subscription_id", subscription_id), ("all", all_)) if on]
    if not chosen:
        return Rejection(MISSING_TARGET, "no target: give one of secure_client_id, subscription_id, all")
    if len(chosen) > 1:
        return Rejection(AMBIGUOUS_TARGET, f"more than one target: {', '.join(chosen)}")
    if all_:
        return _Targets(((GLOBAL_CLIENT, None),), is_global=True)
    if secure_client_id:
        return _Targets(((secure_client_id, None),))
    if devices is None:
        return Rejection(UNKNOWN_SUBSCRIPTION, f"subscription {subscription_id} is not known")
    if not devices:
        return Rejection(NO_DEVICES, f"subscription {subscription_id} has no devices")
    clients: dict[str, str | None] = {}
    for device in sorted_devices(devices):  # a card listed twice still gets one command
        clients.setdefault(device.secure_client_id, device.distributor)
    return _Targets(tuple(clients.items()))
