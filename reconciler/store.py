"""The desired-state store: the newest state of every subscription, as the projector saw it.

Writes (:meth:`DesiredStateStore.upsert`) are batched and **version-guarded in the database**: one
``INSERT ... ON CONFLICT (subscription_id) DO UPDATE ... WHERE excluded.version > stored.version``
per chunk (SQLite and PostgreSQL dialects), so a replayed, duplicated or reordered event can never
move a subscription backwards, whichever projector replica writes it. Equal versions do not
overwrite: the first event stored for a version wins.

Each applied event also updates ``desired_cards``: every card it lists (current devices and
``removed_devices``) gets the event's version, current devices are marked ``current``, and cards of
the subscription that the event no longer names are marked not current. Events that are *not*
applied (older, or superseded by a newer one in the same batch) still add the cards they name that
the store does not know yet, as not current: the real-time path may have provisioned them, so they
must not be forgotten just because the projector saw a newer state first. The non-current cards are
the ones a reset run checks are cleared in the KMS (``drift.py``).

Reads:

- :meth:`DesiredStateStore.stream` walks a selection in batches with **keyset pagination** on
  ``(created_at, subscription_id)`` (index ``ix_desired_subscriptions_created``): each batch is one
  short query, no cursor stays open, and memory holds one batch whatever the table size.
- :meth:`DesiredStateStore.devices_of` answers the translator's
  :class:`~consumers.translation.DeviceDirectory` (messages and requests addressed to a subscription).

The creation period is half-open: ``created_from <= created_at < created_to``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, bindparam, false, func, select, true, tuple_, update
from sqlalchemy.engine import Connection, Engine

from reconciler.dialect import insert_missing, upsert_statement
from reconciler.model import KnownCard, Selection, StoredSubscription
from reconciler.tables import DESIRED_METADATA, UtcDateTime, cards_table, subscriptions_table
from schemas.errors import describe_validation_error
from schemas.records import Device, SubscriptionEvent

__all__ = [
    "DESIRED_METADATA",
    "DesiredStateStore",
    "KnownCard",
    "Selection",
    "StoredSubscription",
    "UpsertResult",
]

#: Rows per INSERT statement: 8 columns x 500 rows stays far below SQLite's 32,766 parameters.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """``applied``: events that became their subscription's stored state; ``stale``: the rest."""

    applied: int
    stale: int


class DesiredStateStore:
    """SQLAlchemy Core over ``desired_subscriptions`` and ``desired_cards`` (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- writes ------------------------------------------------------------------------------------

    def upsert(self, events: Iterable[SubscriptionEvent], *, now: datetime | None = None) -> UpsertResult:
        """Store each event unless its subscription already has this or a newer version (one transaction)."""
        events = list(events)
        newest: dict[str, SubscriptionEvent] = {}
        for event in events:  # within a batch, only the newest of each subscription can win
            held = newest.get(event.subscription_id)
            if held is None or event.version > held.version:
                newest[event.subscription_id] = event
        stamp = now or datetime.now(UTC)
        applied: list[SubscriptionEvent] = []
        with self._engine.begin() as conn:
            winners = list(newest.values())
            for start in range(0, len(winners), _CHUNK):
                chunk = winners[start:start + _CHUNK]
                ids = self._upsert_subscriptions(conn, chunk, stamp)
                applied.extend(e for e in chunk if e.subscription_id in ids)
            self._record_cards(conn, applied)
            kept = {id(e) for e in applied}
            self._remember_cards(conn, [e for e in events if id(e) not in kept])
        return UpsertResult(applied=len(applied), stale=len(events) - len(applied))

    def _upsert_subscriptions(self, conn: Connection, events: Sequence[SubscriptionEvent],
                              stamp: datetime) -> set[str]:
        t = subscriptions_table
        rows = [{
            "subscription_id": e.subscription_id,
            "subscription_type": e.subscription_type,
            "created_at": e.created_at,
            "version": e.version,
            "state": e.state.value,
            "event_id": e.event_id,
            "event_json": e.model_dump_json(),
            "updated_at": stamp,
        } for e in events]
        stmt = upsert_statement(conn.dialect, t, rows, keys=("subscription_id",),
                                update=[c.name for c in t.columns if c.name != "subscription_id"],
                                newer_only="version")
        return set(conn.execute(stmt.returning(t.c.subscription_id)).scalars())

    def _record_cards(self, conn: Connection, applied: Sequence[SubscriptionEvent]) -> None:
        t = cards_table
        rows: list[dict[str, Any]] = []
        for event in applied:
            named: dict[str, dict[str, Any]] = {}
            for device, current in [*((d, False) for d in event.removed_devices),
                                    *((d, True) for d in event.devices)]:  # current wins: listed last
                named[device.secure_client_id] = {
                    "subscription_id": event.subscription_id, "secure_client_id": device.secure_client_id,
                    "distributor": device.distributor, "stb_serial": device.stb_serial,
                    "current": current, "version": event.version,
                }
            rows.extend(named.values())
        for start in range(0, len(rows), _CHUNK):
            stmt = upsert_statement(conn.dialect, t, rows[start:start + _CHUNK],
                                    keys=("subscription_id", "secure_client_id"),
                                    update=["distributor", "stb_serial", "current", "version"],
                                    newer_only="version", or_equal=True, keep_when_null=("stb_serial",))
            conn.execute(stmt)
        if applied:
            # Cards the newest event does not name at all are no longer the subscription's devices.
            conn.execute(
                update(t)
                .where(t.c.subscription_id == bindparam("b_subscription"), t.c.version < bindparam("b_version"),
                       t.c.current == true())
                .values(current=False),
                [{"b_subscription": e.subscription_id, "b_version": e.version} for e in applied],
            )

    def _remember_cards(self, conn: Connection, superseded: Sequence[SubscriptionEvent]) -> None:
        rows = {(e.subscription_id, d.secure_client_id): {
            "subscription_id": e.subscription_id, "secure_client_id": d.secure_client_id,
            "distributor": d.distributor, "stb_serial": d.stb_serial, "current": False, "version": e.version,
        } for e in superseded for d in [*e.removed_devices, *e.devices]}
        values = list(rows.values())
        for start in range(0, len(values), _CHUNK):
            conn.execute(insert_missing(conn.dialect, cards_table, values[start:start + _CHUNK],
                                        keys=("subscription_id", "secure_client_id")))

    # --- reads -------------------------------------------------------------------------------------

    def get(self, subscription_id: str) -> SubscriptionEvent | None:
        """The stored (newest) event of a subscription, ``None`` if the projector never saw it."""
        with self._engine.connect() as conn:
            text = conn.execute(
                select(subscriptions_table.c.event_json)
                .where(subscriptions_table.c.subscription_id == subscription_id)
            ).scalar_one_or_none()
        return SubscriptionEvent.model_validate_json(text) if text is not None else None

    def unknown(self, subscription_ids: Sequence[str]) -> list[str]:
        """Those of ``subscription_ids`` the store does not hold, in the order given."""
        known: set[str] = set()
        wanted = list(dict.fromkeys(subscription_ids))
        column = subscriptions_table.c.subscription_id
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), _CHUNK):
                known.update(conn.execute(select(column).where(column.in_(wanted[start:start + _CHUNK]))).scalars())
        return [s for s in wanted if s not in known]

    def devices_of(self, subscription_id: str) -> list[Device] | None:
        """The subscription's current devices (``None``: unknown subscription); a ``DeviceDirectory``."""
        event = self.get(subscription_id)
        return list(event.devices) if event is not None else None

    def cards_of(self, subscription_id: str) -> dict[str, bool]:
        """Every card the subscription's events named → whether it is a current device."""
        t = cards_table
        with self._engine.connect() as conn:
            rows = conn.execute(select(t.c.secure_client_id, t.c.current).where(t.c.subscription_id == subscription_id))
            return {card: bool(current) for card, current in rows}

    def count(self, selection: Selection) -> int:
        """How many subscriptions ``selection`` covers (for progress)."""
        query = select(func.count()).select_from(subscriptions_table).where(*_filters(selection))
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def stream(self, created_from: datetime | None = None, created_to: datetime | None = None,
               types: Sequence[str] = (), ids: Sequence[str] = (), batch: int = 500,
               ) -> Iterator[list[StoredSubscription]]:
        """The selected subscriptions in batches of at most ``batch``, ordered by creation then id."""
        return self.stream_selection(Selection(created_from, created_to, tuple(types), tuple(ids)), batch)

    def stream_selection(self, selection: Selection, batch: int = 500) -> Iterator[list[StoredSubscription]]:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        t = subscriptions_table
        base = (select(t.c.subscription_id, t.c.created_at, t.c.event_json)
                .where(*_filters(selection))
                .order_by(t.c.created_at, t.c.subscription_id)
                .limit(batch))
        after: tuple[datetime, str] | None = None
        while True:
            with self._engine.connect() as conn:
                rows = conn.execute(_after(base, after)).all()
                if not rows:
                    return
                parsed = [_parse_stored(row.subscription_id, row.event_json) for row in rows]
                retired = self._retired(conn, [e.subscription_id for e, invalid in parsed if invalid is None])
            yield [StoredSubscription(e, retired.get(e.subscription_id, ()), invalid) for e, invalid in parsed]
            if len(rows) < batch:
                return
            after = (rows[-1].created_at, rows[-1].subscription_id)

    def _retired(self, conn: Connection, subscription_ids: list[str]) -> dict[str, tuple[KnownCard, ...]]:
        t = cards_table
        candidates = conn.execute(
            select(t.c.subscription_id, t.c.secure_client_id, t.c.distributor, t.c.stb_serial)
            .where(t.c.subscription_id.in_(subscription_ids), t.c.current == false())
            .order_by(t.c.subscription_id, t.c.secure_client_id)
        ).all()
        if not candidates:
            return {}
        owners = conn.execute(
            select(t.c.secure_client_id, t.c.subscription_id)
            .where(t.c.secure_client_id.in_({row.secure_client_id for row in candidates}), t.c.current == true())
        ).all()
        owned_by: dict[str, set[str]] = {}
        for card, sub in owners:
            owned_by.setdefault(card, set()).add(sub)
        out: dict[str, list[KnownCard]] = {}
        for row in candidates:
            if owned_by.get(row.secure_client_id, set()) - {row.subscription_id}:
                continue  # the card is now another subscription's device: that one reconciles it
            out.setdefault(row.subscription_id, []).append(
                KnownCard(row.secure_client_id, row.distributor, row.stb_serial))
        return {sub: tuple(cards) for sub, cards in out.items()}


def _parse_stored(subscription_id: str, event_json: str) -> tuple[SubscriptionEvent, str | None]:
    """A stored event, or (for a row that fails the record limits) a stand-in holding only the
    subscription id and why, so one such row never stops a reset run."""
    try:
        return SubscriptionEvent.model_validate_json(event_json), None
    except ValidationError as exc:
        return SubscriptionEvent.model_construct(subscription_id=subscription_id), describe_validation_error(exc)


def _filters(selection: Selection) -> list[ColumnElement[bool]]:
    t = subscriptions_table
    out: list[ColumnElement[bool]] = []
    if selection.created_from is not None:
        out.append(t.c.created_at >= selection.created_from)
    if selection.created_to is not None:
        out.append(t.c.created_at < selection.created_to)
    if selection.types:
        out.append(t.c.subscription_type.in_(selection.types))
    if selection.ids:
        out.append(t.c.subscription_id.in_(selection.ids))
    return out


def _after(query: Select[Any], after: tuple[datetime, str] | None) -> Select[Any]:
    """Keyset condition ``(created_at, subscription_id) > after`` (a row-value comparison: both SQLite
    and PostgreSQL answer it from the ``(created_at, subscription_id)`` index)."""
    if after is None:
        return query
    t = subscriptions_table
    created, sid = after
    return query.where(tuple_(t.c.created_at, t.c.subscription_id)
                       > tuple_(bindparam(None, created, type_=UtcDateTime()), bindparam(None, sid)))
