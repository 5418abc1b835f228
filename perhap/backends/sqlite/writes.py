"""What the writer does with one job: checks, then rows, in the writer thread's own connection.

:class:`WriterState` holds the writer's connection and its caches of ids (names never change once
made), and applies one job either straight away (the careful path, inside a SAVEPOINT) or into a
:class:`Deferred` that :meth:`WriterState.flush` then writes for a whole group in a few multi-row
INSERTs (the fast path): its events, and the entities it made (their ids given here, the next after
the largest, as SQLite would) and the types new to an entity, after one look-up of the group's
uncached entities per domain (:meth:`WriterState.look_up_entities`).

Seqs and positions: the writer numbers a job's events on from the last seq it wrote and from each
realm's head (its last position), in the order they will be inserted, so both follow commit
order one after another, with no gap. A job only takes numbers once its checks pass; whenever a
job or a group is rolled back the seq goes back to where the job or group began, and the heads
are dropped with the other caches and read again (one probe of the ``(realm_id, position)``
index), so a rolled-back write burns no number. The unique indexes would refuse a seq or a
position given twice.

Each event's row carries its key (see :mod:`.schema`): an entity's version is the largest key in
its range, read with one probe when the entity is not cached (on the fast path, for all of a
group's at once), and nothing else keeps it.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...errors import InvalidInput, PerhapError, StorageUnavailable, VersionConflict
from ...model import Appended, AppendResult, NewEvent, replay_or_conflict, replay_or_conflict_multi
from ...slotted import fast_constructor
from ...store.job import WriteJob
from .queries import stored_events
from .schema import KEY_SPAN, MAX_ENTITY_ID, last_seq
from .statements import SELECT_ENTITY, EventRow, Statements

_K = TypeVar("_K")

#: Appended's constructor on the write path: every field, positionally (see perhap.slotted).
make_appended = fast_constructor(Appended)


@dataclass(slots=True)
class EntityRow:
    """An entity's id and its version as this writer knows it."""

    id: int
    version: int


@dataclass(slots=True)
class Deferred:
    """What a group's jobs write, gathered so the fast path sends it in a few statements."""

    rows: list[EventRow] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # event ids in rows
    entities: list[tuple[int, int, str]] = field(default_factory=list)  # new: id, domain id, name
    pairs: dict[tuple[int, int], None] = field(default_factory=dict)  # (entity, type) not yet stored
    absent: set[tuple[int, str]] = field(default_factory=set)  # (domain id, name): looked up, not found

    def mark(self) -> tuple[int, int]:
        return len(self.entities), len(self.pairs)

    def take_back(self, mark: tuple[int, int]) -> None:
        """Drop the entities and pairs gathered since ``mark`` (a job that failed a check)."""
        del self.entities[mark[0]:]
        for pair in list(self.pairs)[mark[1]:]:
            del self.pairs[pair]


def _version(entity: EntityRow | None) -> int:
    """An entity's version; -1 for one that does not exist (yet)."""
    return -1 if entity is None else entity.version


class Undeferrable(Exception):
    """A job reuses an event id an earlier job of the group wrote: only the careful path sees it."""


class WriterState:
    """The writer thread's connection and its caches of ids (names never change once made)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # A multi-row INSERT inside the group's transaction keeps a statement journal (the pages it
        # changes, as they were, should it fail midway). Past 64 KiB (16 pages: one group of 16
        # appends to distinct entities) SQLite spills it to a temporary file, created, written and
        # unlinked for every such statement: half the writer's system time under row 3's load
        # (docs/performance.md, section 12). In memory it holds at most the pages one statement of
        # up to 1,024 rows changes. Set here, after open_database: a migration's index builds
        # still sort on disk.
        conn.execute("PRAGMA temp_store=MEMORY")
        self.realms: dict[str, int] = {}
        self.domains: dict[tuple[int, str], int] = {}
        self.entities: dict[tuple[int, str], EntityRow] = {}
        self.types: dict[str, int] = {}
        self.entity_types: set[tuple[int, int]] = set()
        self.heads: dict[int, int] = {}  # realm id -> its last position, as this writer knows it
        self.next_entity_id: int | None = None  # the id the fast path gives the next new entity
        #: What the fast path is gathering for its group (None: the careful path writes at once).
        self.deferred: Deferred | None = None
        self.data_version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        # The last seq committed, as this writer knows it (None: ask), and the last seq taken in
        # the open transaction (``last_seq`` when it has written nothing).
        self.last_seq: int | None = last_seq(conn)
        self.seq: int = self.last_seq
        self.sql = Statements(conn)

    def forget(self) -> None:
        self.realms.clear()
        self.domains.clear()
        self.entities.clear()
        self.types.clear()
        self.entity_types.clear()
        self.heads.clear()
        self.next_entity_id = None

    def check_external_writes(self) -> None:
        """At the start of a group, inside the write lock: notice other connections' commits."""
        # data_version changes when another connection (another process) commits: the caches of
        # versions and positions may then be stale, so drop them.
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version:
            self.data_version = version
            self.forget()
            self.last_seq = None
        if self.last_seq is None:
            self.last_seq = last_seq(self.conn)
        self.seq = self.last_seq
        if len(self.entities) > 200_000 or len(self.entity_types) > 500_000:
            self.forget()

    def cached(self, job: WriteJob) -> bool:
        """Whether :meth:`apply` decides ``job`` from the caches alone: every name's id, the
        entity's version, the realm's head and the last seq known, so it sends no statement."""
        if self.last_seq is None:
            return False
        realm_id = self.realms.get(job.realm)
        if realm_id is None or realm_id not in self.heads:
            return False
        domain_id = self.domains.get((realm_id, job.domain))
        if domain_id is None:
            return False
        entities, types, entity_types = self.entities, self.types, self.entity_types
        if job.entities is None:
            names: Iterable[str] = itertools.repeat(job.entity, len(job.batch))
        else:
            names = job.entities
            if any((domain_id, name) not in entities for name in job.expectations or ()):
                return False
        for e, name in zip(job.batch, names):
            entity = entities.get((domain_id, name))
            type_id = types.get(e.type)
            if entity is None or type_id is None or (entity.id, type_id) not in entity_types:
                return False
        return True

    def look_up_entities(self, jobs: list[WriteJob], deferred: Deferred) -> None:
        """Read, for the fast path, the entities a group names that the caches lack: one statement
        a domain (64 names at most), not one each as the jobs reach them. Names not found are new
        (``deferred.absent``): the jobs then give them ids without asking again."""
        wanted: dict[int, dict[str, None]] = {}
        for job in jobs:
            domain_id = self._place(job.realm, job.domain)[1]
            if domain_id is None:
                continue  # (a new domain has only new entities: nothing to look up)
            names = (job.entity,) if job.entities is None else (*job.entities, *(job.expectations or ()))
            for name in names:
                if (domain_id, name) not in self.entities:
                    wanted.setdefault(domain_id, {})[name] = None
        for domain_id, named in wanted.items():
            absent = set(named)
            for entity_id, name, version in self.sql.select_entities(domain_id, list(named)):
                self.entities[(domain_id, name)] = EntityRow(entity_id, version)
                absent.discard(name)
            deferred.absent.update((domain_id, name) for name in absent)

    def _lookup(self, cache: dict[_K, int], key: _K, select: str, args: tuple[Any, ...]) -> int | None:
        found = cache.get(key)
        if found is None:
            row = self.conn.execute(select, args).fetchone()
            if row is not None:
                found = cache[key] = row[0]
        return found

    def _create(self, cache: dict[_K, int], key: _K, insert: str, args: tuple[Any, ...]) -> int:
        new_id = self._insert(insert, args)
        cache[key] = new_id
        return new_id

    def _insert(self, insert: str, args: tuple[Any, ...]) -> int:
        new_id = self.conn.execute(insert, args).lastrowid
        assert new_id is not None  # an INSERT into a rowid table always sets it
        return new_id

    def _type_id(self, name: str) -> int:
        found = self._lookup(self.types, name, "SELECT id FROM types WHERE name = ?", (name,))
        if found is None:
            found = self._create(self.types, name, "INSERT INTO types (name) VALUES (?)", (name,))
        return found

    def _head(self, realm_id: int) -> int:
        """The realm's last position: from the cache, else one probe of its position index."""
        head = self.heads.get(realm_id)
        if head is None:
            row = self.conn.execute("SELECT max(position) FROM events WHERE realm_id = ?", (realm_id,)).fetchone()
            head = self.heads[realm_id] = row[0] or 0
        return head

    def _place(self, realm: str, domain: str) -> tuple[int | None, int | None]:
        """The ids of a realm and a domain, None for those not made yet."""
        realm_id = self._lookup(self.realms, realm, "SELECT id FROM realms WHERE name = ?", (realm,))
        domain_id = None
        if realm_id is not None:
            domain_id = self._lookup(self.domains, (realm_id, domain),
                                     "SELECT id FROM domains WHERE realm_id = ? AND name = ?", (realm_id, domain))
        return realm_id, domain_id

    def _make_place(self, realm: str, domain: str, realm_id: int | None, domain_id: int | None) -> tuple[int, int]:
        if realm_id is None:
            realm_id = self._create(self.realms, realm, "INSERT INTO realms (name) VALUES (?)", (realm,))
        if domain_id is None:
            domain_id = self._create(self.domains, (realm_id, domain),
                                     "INSERT INTO domains (realm_id, name) VALUES (?, ?)", (realm_id, domain))
        return realm_id, domain_id

    def _entity(self, domain_id: int | None, name: str) -> EntityRow | None:
        if domain_id is None:
            return None
        entity = self.entities.get((domain_id, name))
        if entity is None:
            if self.deferred is not None and (domain_id, name) in self.deferred.absent:
                return None
            row = self.conn.execute(SELECT_ENTITY, (domain_id, name)).fetchone()
            entity = EntityRow(row[0], row[1]) if row else None
        return entity

    def _grow(self, domain_id: int, name: str, entity: EntityRow | None, added: int) -> EntityRow:
        """The entity's row, made if it is new, once ``added`` more events are known to fit in its
        keys (its version in the row: before them)."""
        current = _version(entity)
        if current + added >= KEY_SPAN:
            raise InvalidInput(f"an entity holds at most {KEY_SPAN:,} events in a SQLite store")
        if entity is not None:
            return entity
        deferred = self.deferred
        if deferred is not None:  # its row written by flush, with the id given here
            if self.next_entity_id is None:
                self.next_entity_id = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM entities").fetchone()[0]
            entity_id, self.next_entity_id = self.next_entity_id, self.next_entity_id + 1
            if entity_id > MAX_ENTITY_ID:
                raise StorageUnavailable(f"a SQLite store holds at most {MAX_ENTITY_ID:,} entities")
            deferred.entities.append((entity_id, domain_id, name))
            return EntityRow(entity_id, current)
        self.next_entity_id = None  # (SQLite gives this one)
        entity_id = self._insert("INSERT INTO entities (domain_id, name) VALUES (?, ?)", (domain_id, name))
        if entity_id > MAX_ENTITY_ID:  # (raised after the INSERT: the job's rollback undoes it)
            raise StorageUnavailable(f"a SQLite store holds at most {MAX_ENTITY_ID:,} entities")
        return EntityRow(entity_id, current)

    def _entity_type(self, entity_id: int, name: str) -> int:
        """The id of the type ``name``, made if need be, and recorded as one of the entity's types."""
        type_id = self._type_id(name)
        if (entity_id, type_id) not in self.entity_types:
            if self.deferred is not None:
                self.deferred.pairs[(entity_id, type_id)] = None
            else:
                self.conn.execute("INSERT OR IGNORE INTO entity_types VALUES (?, ?)", (entity_id, type_id))
                self.entity_types.add((entity_id, type_id))
        return type_id

    def _row(self, e: NewEvent, realm_id: int, domain_id: int, entity_id: int, version: int,
             seq: int, position: int, ts: str) -> EventRow:
        type_id = self._entity_type(entity_id, e.type)
        stamp = e.timestamp or ts  # an import keeps the event's original time
        return (entity_id * KEY_SPAN + version, seq, e.event_id, realm_id, domain_id, entity_id, type_id, version,
                stamp, e.data_json, e.meta_json, position)

    def _replayed(self, job: WriteJob, client_ids: list[str]) -> AppendResult | None:
        """The original result when the job's client-chosen ids are stored already (a retry)."""
        stored = stored_events(self.conn, client_ids, self.sql.variables)
        if job.entities is not None:
            return replay_or_conflict_multi(job.batch, job.entities, stored, job.realm, job.domain)
        return replay_or_conflict(job.batch, stored, job.realm, job.domain, job.entity)

    def apply(self, job: WriteJob, ts: str, deferred: Deferred | None = None) -> AppendResult:
        """Write one job; with ``deferred``, leave its events for :meth:`flush`.

        Client-chosen ids are looked up first (a retry gets its original answer, whatever the
        entity's version now), except on the fast path (``deferred``): there only a job that fails
        a check looks them up, and for the rest the unique index refuses an id stored already,
        the group then taking the careful path. A retry costs that; a new id costs nothing.
        """
        self.deferred = deferred
        if deferred is not None:
            return self._apply_deferred(job, ts, deferred)
        client_ids = [e.event_id for e in job.batch if e.client_id]
        if client_ids:
            replay = self._replayed(job, client_ids)
            if replay is not None:
                return replay
        return self._apply(job, ts)

    def _apply_deferred(self, job: WriteJob, ts: str, deferred: Deferred) -> AppendResult:
        client_ids = [e.event_id for e in job.batch if e.client_id]
        if client_ids and not deferred.ids.isdisjoint(client_ids):
            raise Undeferrable
        changes, made = self.conn.total_changes, deferred.mark()
        try:
            return self._apply(job, ts)
        except PerhapError:
            deferred.take_back(made)  # the job writes nothing: nor the entities and types it was given
            if client_ids and self.conn.total_changes == changes:  # (else the careful path decides it)
                replay = self._replayed(job, client_ids)
                if replay is not None:
                    return replay
            raise

    def _apply(self, job: WriteJob, ts: str) -> AppendResult:
        # Look everything up before creating anything, so a conflict leaves no trace to undo.
        realm_id, domain_id = self._place(job.realm, job.domain)
        if job.entities is None:
            return self._apply_one(job, ts, realm_id, domain_id)
        names = job.entities
        found = {name: self._entity(domain_id, name)
                 for name in dict.fromkeys([*names, *(job.expectations or ())])}
        if job.expectations:  # every entity checked, so the conflict names all that fail
            failing = [(name, expected, _version(found[name])) for name, expected in job.expectations.items()
                       if expected != _version(found[name])]
            if failing:
                raise VersionConflict.several(failing)
        realm_id, domain_id = self._make_place(job.realm, job.domain, realm_id, domain_id)
        # Each entity's events take the versions after its own, in the order sent.
        rows_of: dict[str, EntityRow] = {}
        next_version: dict[str, int] = {}
        for name, added in Counter(names).items():
            entity = found[name]
            next_version[name] = _version(entity) + 1
            rows_of[name] = self._grow(domain_id, name, entity, added)
        position, seq = self._head(realm_id), self.seq
        rows: list[EventRow] = []
        results = []
        for e, name in zip(job.batch, names, strict=True):
            version = next_version[name]
            next_version[name] = version + 1
            position += 1
            seq += 1
            row = self._row(e, realm_id, domain_id, rows_of[name].id, version, seq, position, ts)
            rows.append(row)
            results.append(make_appended(e.event_id, version, position, row[8], name))
        self._write(job, rows)
        # Written (or deferred, and dropped with the caches should the group roll back).
        self.heads[realm_id] = position
        self.seq = seq
        for name, entity in rows_of.items():
            entity.version = next_version[name] - 1
            self.entities[(domain_id, name)] = entity
        return AppendResult(results, created=True)

    def _apply_one(self, job: WriteJob, ts: str,
                   realm_id: int | None, domain_id: int | None) -> AppendResult:
        """:meth:`apply` for the common job, one entity: the same steps without the bookkeeping
        several entities need (it is most of a single append's cost in the writer), and each
        event's row and result made in one expression (most of a large batch's Python work)."""
        entity = self._entity(domain_id, job.entity)
        current = _version(entity)
        if job.expected is not None and job.expected != current:
            raise VersionConflict(current, job.expected)
        realm_id, domain_id = self._make_place(job.realm, job.domain, realm_id, domain_id)
        batch = job.batch
        grown = self._grow(domain_id, job.entity, entity, len(batch))
        entity_id, position, seq = grown.id, self._head(realm_id), self.seq
        key = entity_id * KEY_SPAN
        if len(batch) == 1:
            e = batch[0]
            rows = [(key + current + 1, seq + 1, e.event_id, realm_id, domain_id, entity_id,
                     self._entity_type(entity_id, e.type), current + 1, e.timestamp or ts, e.data_json, e.meta_json,
                     position + 1)]
        else:
            type_ids = {name: self._entity_type(entity_id, name) for name in dict.fromkeys([e.type for e in batch])}
            # An import keeps each event's original time (timestamp); others take the commit's.
            rows = [(key + version, n, e.event_id, realm_id, domain_id, entity_id, type_ids[e.type], version,
                     e.timestamp or ts, e.data_json, e.meta_json, at)
                    for e, version, n, at in zip(batch, itertools.count(current + 1), itertools.count(seq + 1),
                                                 itertools.count(position + 1))]
        self._write(job, rows)
        self.heads[realm_id] = position + len(batch)
        self.seq = seq + len(batch)
        grown.version = current + len(batch)
        self.entities[(domain_id, job.entity)] = grown
        make = make_appended
        return AppendResult([make(r[2], r[7], r[11], r[8], None) for r in rows], created=True)

    def _write(self, job: WriteJob, rows: list[EventRow]) -> None:
        """Insert a job's rows now, or leave them to :meth:`flush` (the fast path)."""
        deferred = self.deferred
        if deferred is not None:
            deferred.rows += rows
            # Only a client's ids can come again in a later job of the group (see apply); a
            # server-made id the client copied would fail the unique index: the careful path then.
            deferred.ids.update([e.event_id for e in job.batch if e.client_id])
            return
        try:
            self.sql.insert_events(rows)
        except sqlite3.IntegrityError:
            self.forget()  # ids cached by this job are being rolled back
            # A server-made id can only collide with itself if the clock went backwards and the
            # random bits matched; a client id collides when it raced a twin in this group.
            self._replayed(job, [e.event_id for e in job.batch])
            raise

    def flush(self, deferred: Deferred) -> None:
        """Write what the fast path gathered, in multi-row INSERTs: new entities, the types new
        to an entity, then the events."""
        if deferred.entities:
            self.sql.insert_small("INSERT INTO entities (id, domain_id, name) VALUES ", 3, deferred.entities)
        if deferred.pairs:
            pairs = list(deferred.pairs)
            self.sql.insert_small("INSERT OR IGNORE INTO entity_types VALUES ", 2, pairs)
            self.entity_types.update(pairs)
        self.sql.insert_events(deferred.rows)
