"""The KMS simulator's state: secure clients, global mail/messages, the audit log and dedup by key.

Pure logic, no I/O: the HTTP app (:mod:`.app`) and the in-memory fake (:mod:`kms_adapter.fake`) both
drive this one model, so a unit test against the fake and an integration test against the simulator
see the same KMS behaviour.

Rules (the simulated KMS's contract, see docs/architecture.md §4 and §8):

- Every mutating call carries an idempotency key. The first *applied* answer for a key is remembered;
  a repeated key returns that answer with ``duplicate=True``, applies nothing and is audited with
  ``duplicate: true``. A business error is not an applied effect: it is neither remembered nor
  audited, so the same key may succeed later (e.g. after an operator fixed the card).
- A secure client the KMS has never seen is created on its first provisioning, unless
  ``strict_clients`` is set, in which case every call naming it answers ``UNKNOWN_CLIENT``.
- Commands are absolute where the KMS vocabulary is: ``overwriteEntitlements`` sets the exact list,
  ``unpairChipSet`` with a chipset the card is not paired to is a no-op ``OK`` (the requested state
  "not paired to that box" already holds).
- Times are stored as ISO 8601 UTC strings ending in ``Z``.
- The audit keeps the last ``audit_limit`` entries in memory (an optional sink receives every entry,
  e.g. to append to a file); the dedup table keeps the last ``dedup_limit`` keys. Both bounds exist so
  a long benchmark cannot exhaust memory; they are far above what a test or the demo produces.

The PIN is state like any other (this *is* the KMS), but it never leaves through queries: the
``security`` section says only whether a PIN is set.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kms_adapter.port import QUERY_SECTIONS

__all__ = [
    "BUSINESS_ERRORS",
    "GLOBAL_CARD",
    "QUERY_SECTIONS",
    "TEXT_MODES",
    "Answer",
    "ClientSummary",
    "SecureClient",
    "SimulatorState",
    "StateError",
    "normalize_time",
    "utc_now_iso",
]

#: The card a global operation is audited under.
GLOBAL_CARD = "*"

TEXT_MODES: frozenset[str] = frozenset({"ANSI", "UNICODE", "RAW"})

#: Business error codes the simulator answers, with their default texts.
BUSINESS_ERRORS: dict[str, str] = {
    "UNKNOWN_CLIENT": "Unknown secure client",
    "INVALID_PIN": "Parental PIN must be exactly 4 digits",
    "INVALID_TEXT_MODE": "Text mode must be ANSI, UNICODE or RAW",
    "INVALID_SECTION": "Unknown information section",
    "INVALID_DATE": "Product dates must be ISO 8601 date-times",
    "MISSING_FIELD": "A required field is missing",
    "UNSUPPORTED_OPERATION": "Operation not supported",
}


class StateError(ValueError):
    """A request to overwrite the state (``POST /admin/state``) has the wrong shape."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The KMS's answer to one call: ``OK`` or a business error code, with its text."""

    code: str
    text: str = ""
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @classmethod
    def error(cls, code: str, text: str | None = None) -> Answer:
        return cls(code, text if text is not None else BUSINESS_ERRORS.get(code, code))


OK = Answer("OK", "Success")


@dataclass(slots=True)
class SecureClient:
    """One card as the KMS holds it (the JSON shape of docs/architecture.md §8)."""

    entitlements: list[dict[str, str | None]] = field(default_factory=list)
    paired_chipset: str | None = None
    pin: str | None = None
    mailbox: list[dict[str, str]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    sector_syncs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "entitlements": [dict(e) for e in self.entitlements],
            "paired_chipset": self.paired_chipset,
            "pin": self.pin,
            "mailbox": [dict(m) for m in self.mailbox],
            "messages": [dict(m) for m in self.messages],
            "sector_syncs": self.sector_syncs,
        }


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """One card in a batch query: what the reconciler compares (never the PIN value)."""

    card: str
    known: bool
    entitlements: tuple[dict[str, str | None], ...] = ()
    paired_chipset: str | None = None
    pin_set: bool = False


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def normalize_time(value: str | datetime | None) -> str | None:
    """An ISO 8601 date-time (naive means UTC) as a UTC string ending in ``Z``; ``None`` stays."""
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SimulatorState:
    """The simulated KMS. Not thread-safe: one event loop (or one test) drives it."""

    def __init__(
        self,
        *,
        strict_clients: bool = False,
        audit_limit: int = 50_000,
        dedup_limit: int = 500_000,
        audit_sink: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        self.strict_clients = strict_clients
        self._audit_limit = audit_limit
        self._dedup_limit = dedup_limit
        self.audit_sink = audit_sink
        self._clock = clock
        self.clients: dict[str, SecureClient] = {}
        self.global_mailbox: list[dict[str, str]] = []
        self.global_messages: list[dict[str, str]] = []
        self.audit: deque[dict[str, Any]] = deque(maxlen=audit_limit)
        self._seq = 0
        self._answers: OrderedDict[str, Answer] = OrderedDict()

    # --- lifecycle --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything: clients, global mail, audit, dedup keys."""
        self.clients.clear()
        self.global_mailbox.clear()
        self.global_messages.clear()
        self.audit.clear()
        self._answers.clear()
        self._seq = 0

    # --- mutating operations -----------------------------------------------------------------------

    def apply(
        self,
        operation: str,
        idempotency_key: str,
        card: str | None = None,
        *,
        products: Iterable[Mapping[str, Any]] = (),
        chipset: str | None = None,
        pin: str | None = None,
        text: str | None = None,
        text_mode: str | None = None,
    ) -> Answer:
        """Apply one mutating operation (an ``Operation`` name) unless its key was seen before."""
        first = self._answers.get(idempotency_key)
        if first is not None:
            self._record(operation, card or GLOBAL_CARD, idempotency_key, duplicate=True)
            return Answer(first.code, first.text, duplicate=True)

        answer = self._apply_new(operation, card, products, chipset, pin, text, text_mode)
        if answer.ok:
            self._answers[idempotency_key] = answer
            if len(self._answers) > self._dedup_limit:
                self._answers.popitem(last=False)
            self._record(operation, card or GLOBAL_CARD, idempotency_key, duplicate=False)
        return answer

    def _apply_new(
        self,
        operation: str,
        card: str | None,
        products: Iterable[Mapping[str, Any]],
        chipset: str | None,
        pin: str | None,
        text: str | None,
        text_mode: str | None,
    ) -> Answer:
        if operation in ("SEND_MAIL_GLOBAL", "SEND_MESSAGE_GLOBAL"):
            if text is None:
                return Answer.error("MISSING_FIELD", "text is required")
            if text_mode not in TEXT_MODES:
                return Answer.error("INVALID_TEXT_MODE")
            target = self.global_mailbox if operation == "SEND_MAIL_GLOBAL" else self.global_messages
            target.append({"text": text, "text_mode": text_mode})
            return OK

        if not card:
            return Answer.error("MISSING_FIELD", "card is required")
        # Validate before creating the card, so a bad request leaves no trace.
        entitlements: list[dict[str, str | None]] = []
        if operation == "SYNC_ENTITLEMENTS":
            try:
                entitlements = [_entitlement(p) for p in products]
            except (KeyError, TypeError, ValueError):
                return Answer.error("INVALID_DATE")
        elif operation in ("PAIR", "UNPAIR") and not chipset:
            return Answer.error("MISSING_FIELD", "chipset is required")
        elif operation == "SET_PIN" and not _valid_pin(pin):
            return Answer.error("INVALID_PIN")
        elif operation in ("SEND_MAIL", "SEND_MESSAGE"):
            if text is None:
                return Answer.error("MISSING_FIELD", "text is required")
            if text_mode not in TEXT_MODES:
                return Answer.error("INVALID_TEXT_MODE")
        elif operation not in (
            "SYNC_ENTITLEMENTS", "CLEAR_ENTITLEMENTS", "PAIR", "UNPAIR", "SET_PIN", "REAUTHORISE_SECTOR",
        ):
            return Answer.error("UNSUPPORTED_OPERATION", f"Operation not supported: {operation}")

        client = self._client_for_provisioning(card)
        if client is None:
            return Answer.error("UNKNOWN_CLIENT")

        if operation == "SYNC_ENTITLEMENTS":
            client.entitlements = entitlements
        elif operation == "CLEAR_ENTITLEMENTS":
            client.entitlements = []
        elif operation == "PAIR":
            client.paired_chipset = chipset
        elif operation == "UNPAIR":
            if client.paired_chipset == chipset:
                client.paired_chipset = None
        elif operation == "SET_PIN":
            client.pin = pin
        elif operation == "SEND_MAIL":
            client.mailbox.append({"text": text or "", "text_mode": text_mode or ""})
        elif operation == "SEND_MESSAGE":
            client.messages.append({"text": text or "", "text_mode": text_mode or ""})
        elif operation == "REAUTHORISE_SECTOR":
            client.sector_syncs += 1
        return OK

    def _client_for_provisioning(self, card: str) -> SecureClient | None:
        client = self.clients.get(card)
        if client is None and not self.strict_clients:
            client = self.clients[card] = SecureClient()
        return client

    def _record(self, operation: str, card: str, key: str, *, duplicate: bool) -> None:
        self._seq += 1
        entry = {
            "seq": self._seq,
            "operation": operation,
            "secure_client_id": card,
            "idempotency_key": key,
            "duplicate": duplicate,
            "at": self._clock(),
        }
        self.audit.append(entry)
        if self.audit_sink is not None:
            self.audit_sink(entry)

    # --- queries -----------------------------------------------------------------------------------

    def query(self, card: str, sections: Sequence[str] = ()) -> tuple[Answer, dict[str, dict[str, str]]]:
        """The requested information sections of one card (all nine when ``sections`` is empty).

        An unseen card answers ``UNKNOWN_CLIENT`` with strict clients; otherwise the KMS is taken to
        know every card, and an unseen one reports ``status: NOT_PROVISIONED`` and empty sections.
        """
        wanted = [s.lower() for s in sections] or list(QUERY_SECTIONS)
        unknown = [s for s in wanted if s not in QUERY_SECTIONS]
        if unknown:
            return Answer.error("INVALID_SECTION", f"Unknown information section: {unknown[0]}"), {}
        client = self.clients.get(card)
        if client is None and self.strict_clients:
            return Answer.error("UNKNOWN_CLIENT"), {}
        return OK, {name: _section(name, card, client) for name in wanted}

    def summaries(self, cards: Iterable[str]) -> list[ClientSummary]:
        """Entitlements, pairing and PIN state of many cards; an unseen card is ``known=False``."""
        out: list[ClientSummary] = []
        for card in cards:
            client = self.clients.get(card)
            if client is None:
                out.append(ClientSummary(card=card, known=False))
            else:
                out.append(
                    ClientSummary(
                        card=card,
                        known=True,
                        entitlements=tuple(dict(e) for e in client.entitlements),
                        paired_chipset=client.paired_chipset,
                        pin_set=client.pin is not None,
                    )
                )
        return out

    # --- the JSON view (docs/architecture.md §8) ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as ``GET /admin/state`` returns it (a deep copy)."""
        return {
            "secure_clients": {card: c.to_json() for card, c in self.clients.items()},
            "global_mailbox": copy.deepcopy(self.global_mailbox),
            "global_messages": copy.deepcopy(self.global_messages),
            "audit": [dict(a) for a in self.audit],
        }

    def overwrite(self, partial: Mapping[str, Any]) -> None:
        """Overwrite part of the state with the JSON shape of :meth:`snapshot` (``POST /admin/state``).

        - ``secure_clients``: for each card, the fields given replace the card's fields (the card is
          created if missing, other fields keep their values); ``null`` in place of a card removes it.
        - ``global_mailbox`` / ``global_messages``: replace the list.
        - ``audit`` is the KMS's own record and is ignored here (``POST /admin/reset`` clears it).

        The whole request is validated first; on error nothing changes and :class:`StateError`
        names the offending field.
        """
        if not isinstance(partial, Mapping):
            raise StateError("state must be a JSON object")
        extra = set(partial) - {"secure_clients", "global_mailbox", "global_messages", "audit"}
        if extra:
            raise StateError(f"unknown state field: {sorted(extra)[0]}")
        updates: dict[str, dict[str, Any] | None] = {}
        clients = partial.get("secure_clients", {}) or {}
        if not isinstance(clients, Mapping):
            raise StateError("secure_clients must be an object keyed by secure client id")
        for card, fields in clients.items():
            updates[str(card)] = None if fields is None else _client_fields(str(card), fields)
        globals_: dict[str, list[dict[str, str]]] = {}
        for name in ("global_mailbox", "global_messages"):
            if name in partial:
                globals_[name] = _texts(name, partial[name])

        for card, fields in updates.items():
            if fields is None:
                self.clients.pop(card, None)
                continue
            client = self.clients.setdefault(card, SecureClient())
            for key, value in fields.items():
                setattr(client, key, value)
        if "global_mailbox" in globals_:
            self.global_mailbox = globals_["global_mailbox"]
        if "global_messages" in globals_:
            self.global_messages = globals_["global_messages"]


# --- helpers ------------------------------------------------------------------------------------------


def _valid_pin(pin: str | None) -> bool:
    return pin is not None and len(pin) == 4 and pin.isascii() and pin.isdigit()


def _entitlement(product: Mapping[str, Any]) -> dict[str, str | None]:
    product_id = product["product_id"]
    if not isinstance(product_id, str) or not product_id:
        raise ValueError("product_id")
    return {
        "product_id": product_id,
        "valid_from": normalize_time(product.get("valid_from")),
        "valid_until": normalize_time(product.get("valid_until")),
    }


def _texts(name: str, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise StateError(f"{name} must be a list")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("text"), str):
            raise StateError(f"{name}[{i}] must be an object with text and text_mode")
        mode = item.get("text_mode", "ANSI")
        if mode not in TEXT_MODES:
            raise StateError(f"{name}[{i}].text_mode must be one of {sorted(TEXT_MODES)}")
        out.append({"text": item["text"], "text_mode": mode})
    return out


def _client_fields(card: str, fields: Any) -> dict[str, Any]:
    where = f"secure_clients.{card}"
    if not isinstance(fields, Mapping):
        raise StateError(f"{where} must be an object or null")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "entitlements":
            if not isinstance(value, list):
                raise StateError(f"{where}.entitlements must be a list")
            try:
                out[key] = [_entitlement(p) for p in value]
            except (KeyError, TypeError, ValueError) as exc:
                raise StateError(
                    f"{where}.entitlements: each needs product_id and ISO 8601 valid_from/valid_until"
                ) from exc
        elif key in ("paired_chipset", "pin"):
            if value is not None and not isinstance(value, str):
                raise StateError(f"{where}.{key} must be a string or null")
            out[key] = value
        elif key in ("mailbox", "messages"):
            out[key] = _texts(f"{where}.{key}", value)
        elif key == "sector_syncs":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StateError(f"{where}.sector_syncs must be a non-negative integer")
            out[key] = value
        else:
            raise StateError(f"unknown field {where}.{key}")
    return out


def _section(name: str, card: str, client: SecureClient | None) -> dict[str, str]:
    """One information section as flat string pairs (what the SOAP query returns)."""
    c = client or SecureClient()
    known = client is not None
    if name == "pairing":
        return {"paired": _bool(c.paired_chipset is not None), "chipset": c.paired_chipset or ""}
    if name == "entitlements":
        # product id -> "valid_from/valid_until" (ISO 8601 interval; an open end is empty)
        return {e["product_id"] or "": f"{e['valid_from'] or ''}/{e['valid_until'] or ''}"
                for e in c.entitlements}
    if name == "basic":
        return {
            "secure_client_id": card,
            "status": "ACTIVE" if known else "NOT_PROVISIONED",
            "entitlement_count": str(len(c.entitlements)),
        }
    if name == "security":
        return {"pin_set": _bool(c.pin is not None)}
    if name == "anchoring":
        return {"anchored": _bool(c.paired_chipset is not None), "anchor": c.paired_chipset or ""}
    if name == "tms_attributes":
        return {"mailbox_count": str(len(c.mailbox)), "message_count": str(len(c.messages))}
    if name == "sector":
        return {"sector_id": "1", "sector_syncs": str(c.sector_syncs)}
    if name == "pvr":
        return {"pvr_enabled": "false"}
    # device_domain
    return {"domain_id": "", "member_count": "0"}


def _bool(value: bool) -> str:
    return "true" if value else "false"
