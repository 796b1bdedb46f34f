"""The executor's ledger: each idempotency key's outcome, and each secure client's newest version.

A key already COMPLETED or REJECTED is never sent to the KMS again (a real KMS may not deduplicate);
its stored result is re-published with ``duplicate`` true. SQLAlchemy Core, so SQLite (default) and
PostgreSQL (production, shared by executor replicas) both work.

Speed (docs/benchmarks.md, executor): every statement is built once, with bind parameters, so
SQLAlchemy's compiled cache is hit instead of generating a cache key from a fresh construct per call;
:meth:`Ledger.lookup` reads the key and the client's version on one connection, and
:class:`ReadAhead` reads those of the buffered commands in chunks, one query each for keys, versions
and origins (:meth:`Ledger.lookup_many`, :meth:`Ledger.origins_of`, written as the driver's SQL with
one placeholder a value, which SQLAlchemy's expanding ``IN`` parameter costs several times over);
:meth:`Ledger.record` is two single-statement upserts (``INSERT ... ON CONFLICT DO UPDATE``) in one
transaction instead of select-then-insert-or-update twice; :class:`GroupCommit` writes the outcomes
of one event-loop turn in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text, bindparam, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from consumers.coalesce import Origin, is_newer
from kafka_edge.dlq import is_content_error
from schemas.records import KmsResult

__all__ = ["LEDGER_METADATA", "Entry", "GroupCommit", "Ledger", "ReadAhead"]

LEDGER_METADATA = MetaData()

ledger_table = Table(
    "kms_ledger",
    LEDGER_METADATA,
    Column("idempotency_key", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("result_json", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

versions_table = Table(
    "kms_client_versions",
    LEDGER_METADATA,
    Column("secure_client_id", String(128), primary_key=True),
    Column("subscription_id", String(128), nullable=True),
    Column("version", BigInteger, nullable=False),  # an Avro long
)

#: per secure client and attribute (:func:`consumers.coalesce.attribute_of`), the origin of the last
#: absolute command applied: an older one for the same attribute is superseded, never sent
origins_table = Table(
    "kms_client_attributes",
    LEDGER_METADATA,
    Column("secure_client_id", String(128), primary_key=True),
    Column("attribute", String(160), primary_key=True),
    Column("origin_at", DateTime(timezone=True), nullable=False),
    Column("subscription_id", String(128), nullable=True),
    Column("version", BigInteger, nullable=True),
    Column("idempotency_key", String(255), nullable=False),
)
_ORIGIN = select(origins_table.c.origin_at, origins_table.c.subscription_id, origins_table.c.version,
                 origins_table.c.idempotency_key).where(
    origins_table.c.secure_client_id == bindparam("card"), origins_table.c.attribute == bindparam("attribute"))

_ORIGINS_MANY = select(origins_table.c.secure_client_id, origins_table.c.attribute, origins_table.c.origin_at,
                       origins_table.c.subscription_id, origins_table.c.version,
                       origins_table.c.idempotency_key).where(
    origins_table.c.secure_client_id.in_(bindparam("cards", expanding=True)))
# built once with bind parameters, like every other statement here (SQLAlchemy's compiled cache)
_INSERT_ORIGIN = origins_table.insert()
_UPDATE_ORIGIN = origins_table.update().where(
    origins_table.c.secure_client_id == bindparam("card"), origins_table.c.attribute == bindparam("attr"))

_GET = select(ledger_table.c.result_json).where(ledger_table.c.idempotency_key == bindparam("key"))
_VERSION = select(versions_table.c.subscription_id, versions_table.c.version).where(
    versions_table.c.secure_client_id == bindparam("card"))
_GET_MANY = select(ledger_table.c.idempotency_key, ledger_table.c.result_json).where(
    ledger_table.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_VERSION_MANY = select(versions_table.c.secure_client_id, versions_table.c.subscription_id,
                       versions_table.c.version).where(
    versions_table.c.secure_client_id.in_(bindparam("cards", expanding=True)))
#: keys or cards in one ``IN`` list (SQLite before 3.32 allows 999 bound parameters a statement)
_IN_CHUNK = 900
#: the batch reads as the driver's SQL, one placeholder a value: SQLAlchemy renders an expanding ``IN``
#: parameter anew on every execution (a few microseconds a value); the statements above are used
#: instead with a driver whose placeholders are not positional ``?`` or ``%s``
_IN_SQL = {
    "keys": (f"SELECT idempotency_key, result_json FROM {ledger_table.name} "
             "WHERE idempotency_key IN ({})", _GET_MANY, "keys"),
    "cards": (f"SELECT secure_client_id, subscription_id, version FROM {versions_table.name} "
              "WHERE secure_client_id IN ({})", _VERSION_MANY, "cards"),
    "origins": ("SELECT secure_client_id, attribute, origin_at, subscription_id, version, idempotency_key "
                f"FROM {origins_table.name} WHERE secure_client_id IN ({{}})", _ORIGINS_MANY, "cards"),
}
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _upserts(dialect_name: str) -> tuple[object, object]:
    module = postgresql if dialect_name == "postgresql" else sqlite
    outcome = module.insert(ledger_table)
    outcome = outcome.on_conflict_do_update(
        index_elements=[ledger_table.c.idempotency_key],
        set_={"state": outcome.excluded.state, "result_json": outcome.excluded.result_json,
              "updated_at": outcome.excluded.updated_at})
    version = module.insert(versions_table)
    # a card moved to another subscription starts that subscription's version sequence
    version = version.on_conflict_do_update(
        index_elements=[versions_table.c.secure_client_id],
        set_={"version": version.excluded.version, "subscription_id": version.excluded.subscription_id},
        where=or_(versions_table.c.subscription_id.is_distinct_from(version.excluded.subscription_id),
                  version.excluded.version > versions_table.c.version))
    return outcome, version


@dataclass(frozen=True)
class Entry:
    """One command's outcome to record, with the version it applied (None: nothing applied)."""

    result: KmsResult
    version: int | None = None
    subscription_id: str | None = None
    #: an applied absolute command: its attribute and origin (the attribute's last applied, when newer)
    attribute: str | None = None
    origin: Origin | None = None


class GroupCommit:
    """Ledger writes of one event-loop turn in one transaction (group commit).

    :meth:`record` returns once its entry is committed, so a caller still publishes a result only
    after its ledger row is durable; commands that finish together (a burst of KMS answers) share
    one commit instead of paying one each. A failed commit fails every entry of its batch, except
    when the database refused an entry's content (:func:`~kafka_edge.dlq.is_content_error`): then each
    entry is written alone, so only the entries at fault fail and the others are recorded.
    """

    def __init__(self, ledger: Ledger, reads: ReadAhead | None = None) -> None:
        self._ledger = ledger
        self._reads = reads
        self._pending: list[tuple[Entry, asyncio.Future[None]]] = []

    async def record(self, result: KmsResult, *, version: int | None = None,
                     subscription_id: str | None = None, attribute: str | None = None,
                     origin: Origin | None = None) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after every callback ready in this turn has had its say
        self._pending.append((Entry(result, version, subscription_id, attribute, origin), done))
        await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            self._ledger.record_many([entry for entry, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and is_content_error(exc):
                self._one_by_one(batch)
                return
            for _, done in batch:
                _settle(done, exc)
            return
        if self._reads is not None:
            self._reads.recorded(entry for entry, _ in batch)
        for _, done in batch:
            _settle(done, None)

    def _one_by_one(self, batch: list[tuple[Entry, asyncio.Future[None]]]) -> None:
        for entry, done in batch:
            try:
                self._ledger.record_many([entry])
            except Exception as exc:
                _settle(done, exc)
            else:
                if self._reads is not None:
                    self._reads.recorded([entry])
                _settle(done, None)


#: one expected command: its key, its card (version-guarded commands) and its (card, attribute)
_Expected = tuple[str, str | None, tuple[str, str] | None]


class ReadAhead:
    """The ledger reads of the executor's buffered commands in three queries per chunk, instead of
    :meth:`Ledger.lookup` and :meth:`Ledger.origin` per command.

    The executor calls :meth:`expect` for each command as it dispatches it, and :meth:`read` once a
    polled batch is dispatched. Nothing is read then: the executor buffers up to ``max_buffered``
    commands ahead, and a command may wait long behind its card's earlier ones. A read is made when a
    command asks (:meth:`lookup`, :meth:`origin`) and what it needs is not held (or no longer fresh):
    one ``IN`` query for the keys, one for the cards' versions, one for the attributes' origins, of
    that command and of up to :data:`READ_CHUNK` - 1 more expected commands whose reads are not
    fresh, oldest first (the ones to run next). Its commands are then answered from what was read;
    a read that failed leaves its commands to the :class:`Ledger` (and to later chunks without them).
    What was read stays right because:

    1. every outcome this process records goes through :class:`GroupCommit`, which hands it to
       :meth:`recorded` after its commit: a card's version rises and an attribute's origin moves here
       as in the tables (the same rules as the writes), so the second command of a card in one batch
       sees the first's outcome; a read takes the tables' rows, which hold every committed outcome;
    2. a key is answered from a read once: a second command with the same key, and a command tried
       again after a failure, read again;
    3. an entry is used for at most :data:`MAX_AGE_SECONDS` after its read (then it is read again):
       a card's commands run in one process only (its partition's owner), and the bound keeps the
       window in which a previous owner's late write goes unseen close to a single lookup's.
    """

    #: how long a read answers for its commands (seconds)
    MAX_AGE_SECONDS = 2.0
    #: a command expected this long ago that never asked is forgotten (it was abandoned)
    MAX_UNREAD_SECONDS = 120.0
    #: commands read together: twice the default KMS slots (``max_inflight``), so the commands of one
    #: read start within about two KMS calls of each other
    READ_CHUNK = 128

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._seq = 0
        #: expected commands that have not asked yet, oldest first: seq -> (command, expected at)
        self._pending: dict[int, tuple[_Expected, float]] = {}
        self._pending_of: dict[str, list[int]] = {}  # key -> its pending seqs, oldest first
        self._known: dict[str, tuple[float, KmsResult | None]] = {}  # key -> (read at, its result)
        self._versions: dict[str, tuple[float, tuple[str | None, int] | None]] = {}  # card -> (read at, version)
        self._origins: dict[tuple[str, str], tuple[float, Origin | None]] = {}  # (card, attribute) -> (read at, it)

    def expect(self, key: str, card: str | None, attribute: tuple[str, str] | None = None) -> None:
        """``key`` (and ``card``, when the command is version-guarded, and ``attribute``, the card and
        attribute an absolute command sets) will be looked up."""
        self._seq += 1
        self._pending[self._seq] = ((key, card, attribute), time.monotonic())
        self._pending_of.setdefault(key, []).append(self._seq)

    def read(self) -> None:
        """A polled batch is dispatched: reads that are no longer fresh and commands expected too long
        ago are forgotten. The batch is read in chunks as its commands ask (class docstring)."""
        self._purge(time.monotonic())

    def lookup(self, key: str, card: str | None) -> tuple[KmsResult | None, tuple[str | None, int] | None]:
        """:meth:`Ledger.lookup`, answered from a chunk read (made now when ``key`` or ``card`` is not
        held fresh)."""
        expected = self._started(key)
        attribute = expected[2] if expected is not None else None
        read = self._known.pop(key, None)
        if not self._fresh(read) or (read is not None and read[1] is None and card is not None
                                     and not self._fresh(self._versions.get(card))):
            if not self._read_chunk((key, card, attribute)):
                return self._ledger.lookup(key, card)
            read = self._known.pop(key, None)
            if not self._fresh(read):
                return self._ledger.lookup(key, card)
        assert read is not None
        if read[1] is not None or card is None:
            return read[1], None
        held = self._versions.get(card)
        if held is None or not self._fresh(held):
            return self._ledger.lookup(key, card)
        return None, held[1]

    def origin(self, secure_client_id: str, attribute: str) -> Origin | None:
        """:meth:`Ledger.origin`, answered from a chunk read (made now when the attribute is not held
        fresh)."""
        pair = (secure_client_id, attribute)
        held = self._origins.get(pair)
        if not self._fresh(held):
            if not self._read_chunk(None, pair):
                return self._ledger.origin(secure_client_id, attribute)
            held = self._origins.get(pair)
            if held is None or not self._fresh(held):
                return self._ledger.origin(secure_client_id, attribute)
        assert held is not None
        return held[1]

    def recorded(self, entries: Iterable[Entry]) -> None:
        """Outcomes just committed by this process: a held key's result, a held card's version and a
        held attribute's origin follow the tables."""
        for entry in entries:
            key = entry.result.idempotency_key
            read = self._known.get(key)
            if read is not None:
                self._known[key] = (read[0], entry.result)
            card = entry.result.secure_client_id
            if card and entry.attribute is not None and entry.origin is not None:
                pair = (card, entry.attribute)
                was = self._origins.get(pair)
                if was is not None and (was[1] is None or not is_newer(was[1], entry.origin)):
                    self._origins[pair] = (was[0], entry.origin)  # the rule of Ledger._raise_origins
            if entry.version is None or not card:
                continue
            held = self._versions.get(card)
            if held is None:
                continue
            read_at, current = held
            if current is None or current[0] != entry.subscription_id or entry.version > current[1]:
                self._versions[card] = (read_at, (entry.subscription_id, entry.version))

    def _fresh(self, held: tuple[float, object] | None) -> bool:
        return held is not None and time.monotonic() - held[0] <= self.MAX_AGE_SECONDS

    def _started(self, key: str) -> _Expected | None:
        """The oldest expected command of ``key`` asks: it is no longer pending."""
        seqs = self._pending_of.get(key)
        if not seqs:
            return None
        seq = seqs.pop(0)
        if not seqs:
            del self._pending_of[key]
        expected = self._pending.pop(seq, None)
        return None if expected is None else expected[0]

    def _read_chunk(self, asking: _Expected | None, pair: tuple[str, str] | None = None) -> bool:
        """Read what ``asking`` (or ``pair``) needs together with up to :data:`READ_CHUNK` - 1 pending
        commands whose key is not held fresh, oldest first (three queries). False when it failed: the
        chunk's pending commands then leave it (each asks again, without the others)."""
        keys: list[str] = []
        cards: dict[str, None] = {}
        attributes: dict[tuple[str, str], None] = {}

        def add(expected: _Expected) -> None:
            keys.append(expected[0])
            if expected[1] is not None:
                cards[expected[1]] = None
            if expected[2] is not None:
                attributes[expected[2]] = None

        if asking is not None:
            add(asking)
        if pair is not None:
            attributes[pair] = None
        taken: list[int] = []
        limit = time.monotonic() - self.MAX_AGE_SECONDS
        for seq, (expected, _at) in self._pending.items():
            if len(keys) >= self.READ_CHUNK:
                break
            read = self._known.get(expected[0])
            if read is not None and read[0] >= limit:
                continue  # read lately, still fresh
            add(expected)
            taken.append(seq)
        try:
            known, versions = self._ledger.lookup_many(keys, list(cards))
            origins = self._ledger.origins_of(list(attributes)) if attributes else {}
        except Exception:
            for seq in taken:
                self._drop(seq)
            return False
        now = time.monotonic()
        for key in keys:
            self._known[key] = (now, known.get(key))
        for card in cards:
            self._versions[card] = (now, versions.get(card))
        for attribute in attributes:
            self._origins[attribute] = (now, origins.get(attribute))
        return True

    def _drop(self, seq: int) -> None:
        expected = self._pending.pop(seq, None)
        if expected is None:
            return
        key = expected[0][0]
        seqs = self._pending_of.get(key)
        if seqs is not None and seq in seqs:
            seqs.remove(seq)
            if not seqs:
                del self._pending_of[key]

    def _purge(self, now: float) -> None:
        """Forget reads older than :data:`MAX_AGE_SECONDS` and commands expected more than
        :data:`MAX_UNREAD_SECONDS` ago that never asked (abandoned before their lookup)."""
        limit = now - self.MAX_AGE_SECONDS
        if self._known:
            self._known = {k: v for k, v in self._known.items() if v[0] >= limit}
        if self._versions:
            self._versions = {c: v for c, v in self._versions.items() if v[0] >= limit}
        if self._origins:
            self._origins = {a: v for a, v in self._origins.items() if v[0] >= limit}
        unread = now - self.MAX_UNREAD_SECONDS
        while self._pending:
            seq, (_expected, at) = next(iter(self._pending.items()))
            if at >= unread:
                break
            self._drop(seq)


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._record_outcome, self._raise_version = _upserts(engine.dialect.name)
        # SQLite's executemany runs the rows one by one, in order, as separate executes would; other
        # drivers may fold an executemany INSERT into one multi-row statement, which PostgreSQL
        # refuses when one card's version is raised twice in it
        self._sequential_many = engine.dialect.name == "sqlite"
        self._placeholder = _PLACEHOLDER.get(engine.dialect.paramstyle)
        # what the driver hands back for a stored time, as SQLAlchemy reads it (SQLite: text)
        origin_at = engine.dialect.type_descriptor(origins_table.c.origin_at.type)
        self._read_time = origin_at.result_processor(engine.dialect, None)

    def get(self, key: str) -> KmsResult | None:
        with self._engine.connect() as conn:
            return self._get(conn, key)

    def version(self, secure_client_id: str) -> tuple[str | None, int] | None:
        with self._engine.connect() as conn:
            return self._version(conn, secure_client_id)

    def lookup(self, key: str, secure_client_id: str | None) -> tuple[KmsResult | None, tuple[str | None, int] | None]:
        """``(get(key), version(secure_client_id))`` on one connection (the runner's two reads)."""
        with self._engine.connect() as conn:
            known = self._get(conn, key)
            if known is not None or secure_client_id is None:
                return known, None
            return None, self._version(conn, secure_client_id)

    def lookup_many(self, keys: Sequence[str], cards: Sequence[str]
                    ) -> tuple[dict[str, KmsResult], dict[str, tuple[str | None, int]]]:
        """:meth:`lookup` of many keys and cards on one connection: the stored results of the keys
        that have one, and the subscription and version of the cards that have one."""
        known: dict[str, KmsResult] = {}
        versions: dict[str, tuple[str | None, int]] = {}
        with self._engine.connect() as conn:
            for key, result_json in self._rows_in(conn, "keys", keys):
                known[key] = KmsResult.model_validate_json(result_json)
            for card, subscription_id, version in self._rows_in(conn, "cards", cards):
                versions[card] = (subscription_id, int(version))
        return known, versions

    def _rows_in(self, conn: Connection, kind: str, values: Sequence[str]) -> Iterator[Sequence[Any]]:
        """The rows of ``_IN_SQL[kind]`` for ``values``, :data:`_IN_CHUNK` values a statement."""
        sql, statement, name = _IN_SQL[kind]
        for i in range(0, len(values), _IN_CHUNK):
            chunk = list(values[i:i + _IN_CHUNK])
            if self._placeholder is None:
                yield from conn.execute(statement, {name: chunk})
            else:
                yield from conn.exec_driver_sql(sql.format(",".join([self._placeholder] * len(chunk))),
                                                tuple(chunk))

    def record(self, result: KmsResult, *, version: int | None = None,
               subscription_id: str | None = None) -> None:
        """Store the outcome and, for an applied command, raise the client's version (one transaction)."""
        self.record_many([Entry(result, version, subscription_id)])

    def record_many(self, entries: Sequence[Entry]) -> None:
        """:meth:`record` for several commands in one transaction, in order."""
        now = datetime.now(UTC)
        outcomes = [{"idempotency_key": e.result.idempotency_key, "state": e.result.state.value,
                     "result_json": e.result.model_dump_json(), "updated_at": now} for e in entries]
        # row by row, in order: two commands of one card in one batch raise its version in turn
        versions = [{"secure_client_id": e.result.secure_client_id, "subscription_id": e.subscription_id,
                     "version": e.version} for e in entries if e.version is not None and e.result.secure_client_id]
        unique = list({row["idempotency_key"]: row for row in outcomes}.values())  # one row per key, last wins
        origins = [(e.result.secure_client_id, e.attribute, e.origin) for e in entries
                   if e.attribute is not None and e.origin is not None and e.result.secure_client_id]
        with self._engine.begin() as conn:
            conn.execute(self._record_outcome, unique)  # type: ignore[call-overload]
            if self._sequential_many and versions:
                conn.execute(self._raise_version, versions)  # type: ignore[call-overload]
            else:
                for row in versions:
                    conn.execute(self._raise_version, row)  # type: ignore[call-overload]
            if origins:
                self._raise_origins(conn, origins)

    def origins_of(self, attributes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Origin]:
        """:meth:`origin` of many (secure client, attribute) pairs on one connection: those that have one."""
        with self._engine.connect() as conn:
            return self._origins_on(conn, attributes)

    def _origins_on(self, conn: Connection, attributes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Origin]:
        wanted = set(attributes)
        cards = list(dict.fromkeys(card for card, _ in attributes))
        read_time = self._read_time if self._placeholder is not None else None  # driver SQL: raw values
        found: dict[tuple[str, str], Origin] = {}
        for card, attribute, at, subscription_id, version, key in self._rows_in(conn, "origins", cards):
            if (card, attribute) in wanted:
                if read_time is not None:
                    at = read_time(at)
                found[(card, attribute)] = Origin(_aware(at), subscription_id,
                                                  None if version is None else int(version), key)
        return found

    def origin(self, secure_client_id: str, attribute: str) -> Origin | None:
        """The origin of the last absolute command applied to ``attribute`` of the secure client."""
        with self._engine.connect() as conn:
            row = conn.execute(_ORIGIN, {"card": secure_client_id, "attribute": attribute}).first()
        if row is None:
            return None
        return Origin(_aware(row[0]), row[1], None if row[2] is None else int(row[2]), row[3])

    def _raise_origins(self, conn: Connection, origins: Sequence[tuple[str, str, Origin]]) -> None:
        """Each applied command's origin becomes its attribute's, unless the attribute holds a newer
        one (:func:`~consumers.coalesce.is_newer`), in order: one read of the attributes, the rule
        followed here entry by entry (a card's commands run in one process at a time), then one write
        of each kind."""
        pairs = list(dict.fromkeys((card, attribute) for card, attribute, _ in origins))
        held = self._origins_on(conn, pairs)
        stored = set(held)
        final: dict[tuple[str, str], Origin] = {}
        for card, attribute, origin in origins:
            pair = (card, attribute)
            current = held.get(pair)
            if current is not None and is_newer(current, origin):
                continue  # the newer one stays the attribute's last applied
            held[pair] = final[pair] = origin
        inserts, updates = [], []
        for (card, attribute), origin in final.items():
            values = {"origin_at": origin.created_at.astimezone(UTC), "subscription_id": origin.subscription_id,
                      "version": origin.version, "idempotency_key": origin.idempotency_key}
            if (card, attribute) in stored:
                updates.append({"card": card, "attr": attribute, **values})
            else:
                inserts.append({"secure_client_id": card, "attribute": attribute, **values})
        if inserts:
            conn.execute(_INSERT_ORIGIN, inserts)
        if updates:
            conn.execute(_UPDATE_ORIGIN, updates)

    @staticmethod
    def _get(conn: Connection, key: str) -> KmsResult | None:
        row = conn.execute(_GET, {"key": key}).first()
        return KmsResult.model_validate_json(row[0]) if row else None

    @staticmethod
    def _version(conn: Connection, card: str) -> tuple[str | None, int] | None:
        row = conn.execute(_VERSION, {"card": card}).first()
        return (row[0], int(row[1])) if row else None


def _aware(at: datetime) -> datetime:
    """SQLite hands a stored time back without its zone (it was stored in UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
