"""The embedded SQLite backend: one writer thread with group commit, readers on a thread pool.

Design, and why:
- WAL mode with ``synchronous=FULL``: every commit is fsync'd before any append is acknowledged,
  and readers never wait for the writer.
- One writer thread drains every append queued while it was busy into a single transaction, so
  concurrent clients share one fsync (group commit). Each append runs in its own SAVEPOINT so a
  conflict in one never undoes another.
- Names are stored once (realms, domains, entities, types tables) and events carry integer ids, so
  the indexes that make every read O(log n + page) stay small. In SQLite an index on ``(x)`` is
  ordered by ``(x, rowid)``, and ``seq`` is the rowid: ``INDEX(domain_id)`` already serves "domain
  events after seq N in seq order".
- One writer means commit order is ``seq`` order: a reader paging by ``seq`` can never skip an
  event that commits later with a smaller ``seq``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .store import (
    DEFAULT_LIMIT,
    Appended,
    AppendResult,
    Event,
    KeysPage,
    NewEvent,
    NotFound,
    PerhapError,
    Scope,
    StorageUnavailable,
    Store,
    VersionConflict,
    check_event_id,
    check_limit,
    replay_or_conflict,
    utc_timestamp,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS perhap_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS realms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY, realm_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE (realm_id, name));
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY, domain_id INTEGER NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE IF NOT EXISTS types (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS entity_types (
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    PRIMARY KEY (entity_id, type_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    realm_id INTEGER NOT NULL, domain_id INTEGER NOT NULL,
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    version INTEGER NOT NULL, ts TEXT NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_entity ON events (entity_id, version);
CREATE INDEX IF NOT EXISTS events_entity_type ON events (entity_id, type_id);
CREATE INDEX IF NOT EXISTS events_domain ON events (domain_id);
CREATE INDEX IF NOT EXISTS events_domain_type ON events (domain_id, type_id);
CREATE INDEX IF NOT EXISTS events_realm ON events (realm_id);
CREATE INDEX IF NOT EXISTS events_realm_type ON events (realm_id, type_id);
"""

_SELECT = """SELECT e.seq, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta
FROM events e {hint}
JOIN entities n ON n.id = e.entity_id JOIN domains d ON d.id = e.domain_id
JOIN realms r ON r.id = e.realm_id JOIN types t ON t.id = e.type_id"""

_REALM_ID = "(SELECT id FROM realms WHERE name = ?)"
_DOMAIN_ID = f"(SELECT id FROM domains WHERE realm_id = {_REALM_ID} AND name = ?)"
_ENTITY_ID = f"(SELECT id FROM entities WHERE domain_id = {_DOMAIN_ID} AND name = ?)"
_TYPE_ID = "(SELECT id FROM types WHERE name = ?)"


def _scope_query(scope: Scope) -> tuple[str, list[Any], str]:
    """SQL and parameters selecting a scope's events after a position, and the position column."""
    if scope.entity is not None:
        where, params, pos = f"e.entity_id = {_ENTITY_ID}", [scope.realm, scope.domain, scope.entity], "version"
        hint = "INDEXED BY events_entity_type" if scope.type else "INDEXED BY events_entity"
    elif scope.domain is not None:
        where, params, pos = f"e.domain_id = {_DOMAIN_ID}", [scope.realm, scope.domain], "seq"
        hint = "INDEXED BY events_domain_type" if scope.type else "INDEXED BY events_domain"
    else:
        where, params, pos = f"e.realm_id = {_REALM_ID}", [scope.realm], "seq"
        hint = "INDEXED BY events_realm_type" if scope.type else "INDEXED BY events_realm"
    if scope.type is not None:
        where += f" AND e.type_id = {_TYPE_ID}"
        params.append(scope.type)
    sql = f"{_SELECT.format(hint=hint)} WHERE {where} AND e.{pos} > ? ORDER BY e.{pos} LIMIT ?"
    return sql, params, pos


def _row_event(row: tuple[Any, ...], position_is_version: bool) -> Event:
    seq, event_id, realm, domain, entity, type_, version, ts, data, meta = row
    return Event(event_id, realm, domain, entity, type_, version, ts, data, meta,
                 version if position_is_version else seq)


class _Job:
    __slots__ = ("realm", "domain", "entity", "batch", "expected", "future", "loop")

    def __init__(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                 expected: int | None, loop: asyncio.AbstractEventLoop) -> None:
        self.realm, self.domain, self.entity = realm, domain, entity
        self.batch, self.expected = batch, expected
        self.loop = loop
        self.future: asyncio.Future[AppendResult] = loop.create_future()


_STOP = object()


def _connect(path: str, *, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteStore(Store):
    """Events in one SQLite file. Only one server process should own a file at a time."""

    shared_across_processes = False
    poll_interval = 5.0  # wake-ups come from the writer thread; polling only covers other processes

    def __init__(self, path: str, *, synchronous: str = "FULL", url: str | None = None) -> None:
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA", "OFF"}:
            raise ValueError("synchronous must be FULL, NORMAL, EXTRA or OFF")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.synchronous = synchronous.upper()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perhap-sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._commits = 0
        self._commit_event = asyncio.Event()
        self._closed = False
        # Group-commit statistics, read by benchmarks and metrics.
        self.groups_committed = 0
        self.events_committed = 0

    async def open(self) -> SQLiteStore:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StorageUnavailable(f"the directory {directory} does not exist")
        try:
            conn = _connect(self.path, synchronous=self.synchronous)
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StorageUnavailable(
                    f"{self.path} was written by a newer perhap (schema {row[0]}); upgrade perhap")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open {self.path}: {exc}") from None
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="perhap-sqlite-writer", daemon=True)
        self._writer.start()
        return self

    # ----------------------------------------------------------------- writing

    async def _write(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                     expected_version: int | None) -> AppendResult:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        job = _Job(realm, domain, entity, batch, expected_version, asyncio.get_running_loop())
        self._queue.put(job)
        # Shielded: a client that disconnects must not cancel a write that may already be
        # committed; the writer resolves the future either way.
        return await asyncio.shield(job.future)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        state = _WriterState(conn)
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs = [first]
            stop = False
            count = len(first.batch)
            # Drain what queued up meanwhile, bounded so one transaction stays short.
            while count < 20_000:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                jobs.append(item)
                count += len(item.batch)
            self._commit_group(state, jobs)
            if stop:
                break
        conn.close()

    def _commit_group(self, state: _WriterState, jobs: list[_Job]) -> None:
        conn = state.conn
        outcomes: list[tuple[_Job, Any, bool]] = []
        try:
            state.check_external_writes()
            conn.execute("BEGIN IMMEDIATE")
            ts = utc_timestamp()
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    result = state.apply(job, ts)
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, True))
                except PerhapError as exc:  # a conflict: undo whatever this job wrote
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, exc, False))
                except sqlite3.Error as exc:  # a failure of this job only: undo it alone
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    state.forget()
                    exc = StorageUnavailable(f"write failed: {exc}")
                    outcomes.append((job, exc, False))
            conn.execute("COMMIT")
        except Exception as exc:
            # The transaction itself failed (disk full, I/O error): nothing in it is durable.
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            state.forget()
            error = StorageUnavailable(f"commit failed: {exc}")
            outcomes = [(job, error, False) for job in jobs]
        else:
            written = sum(len(j.batch) for j, r, ok in outcomes if ok and r.created)
            self.groups_committed += 1
            self.events_committed += written
            if written:
                self._loop.call_soon_threadsafe(self._notify_commit)
        for job, value, ok in outcomes:
            job.loop.call_soon_threadsafe(_settle, job.future, value, ok)

    def _notify_commit(self) -> None:
        self._commits += 1
        event, self._commit_event = self._commit_event, asyncio.Event()
        event.set()

    def _change_token(self) -> Any:
        return self._commits

    async def _wait_for_change(self, token: Any, timeout: float) -> None:
        if self._commits != token:
            return
        try:
            await asyncio.wait_for(self._commit_event.wait(), timeout)
        except TimeoutError:
            pass

    # ----------------------------------------------------------------- reading

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, synchronous=self.synchronous)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        try:
            return await self._loop.run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"read failed: {exc}") from None

    async def _position_of(self, scope: Scope, event_id: str) -> Any:
        return await self._run(self._position_sync, scope, event_id)

    def _position_sync(self, scope: Scope, event_id: str) -> int:
        row = self._reader().execute(
            "SELECT e.seq, e.version, r.name, d.name, n.name FROM events e "
            "JOIN realms r ON r.id = e.realm_id JOIN domains d ON d.id = e.domain_id "
            "JOIN entities n ON n.id = e.entity_id WHERE e.event_id = ?", (event_id,)).fetchone()
        if row is None or row[2] != scope.realm or (
                scope.domain is not None and row[3] != scope.domain) or (
                scope.entity is not None and row[4] != scope.entity):
            raise NotFound(f"no event {event_id} in {scope}")
        return row[1] if scope.entity is not None else row[0]

    async def _read_after(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        return await self._run(self._read_sync, scope, after, limit)  # type: ignore[no-any-return]

    def _read_sync(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        sql, params, pos = _scope_query(scope)
        start = -1 if after is None else after
        rows = self._reader().execute(sql, (*params, start, limit)).fetchall()
        by_version = pos == "version"
        return [_row_event(r, by_version) for r in rows]

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        event_id = check_event_id(event_id)
        return await self._run(self._get_sync, realm, domain, event_id)  # type: ignore[no-any-return]

    def _get_sync(self, realm: str, domain: str, event_id: str) -> Event:
        row = self._reader().execute(
            f"{_SELECT.format(hint='')} WHERE e.event_id = ?", (event_id,)).fetchone()
        if row is None or row[2] != realm or row[3] != domain:
            raise NotFound(f"no event {event_id} in {realm}/{domain}")
        return _row_event(row, False)

    async def keys(self, realm: str | None = None, domain: str | None = None,
                   entity: str | None = None, *, after: str | None = None,
                   limit: int = DEFAULT_LIMIT) -> KeysPage:
        limit = check_limit(limit)
        if realm is None:
            sql, params = "SELECT name FROM realms WHERE name > ?", []
        elif domain is None:
            sql, params = f"SELECT name FROM domains WHERE realm_id = {_REALM_ID} AND name > ?", [realm]
        elif entity is None:
            sql = f"SELECT name FROM entities WHERE domain_id = {_DOMAIN_ID} AND name > ?"
            params = [realm, domain]
        else:
            sql = (f"SELECT t.name FROM entity_types x JOIN types t ON t.id = x.type_id "
                   f"WHERE x.entity_id = {_ENTITY_ID} AND t.name > ?")
            params = [realm, domain, entity]
        sql += " ORDER BY name LIMIT ?"
        args = (*params, after or "", limit + 1)

        def run() -> list[str]:
            return [r[0] for r in self._reader().execute(sql, args)]

        names = await self._run(run)
        if len(names) > limit:
            return KeysPage(names[:limit], names[limit - 1])
        return KeysPage(names, None)

    async def health(self) -> bool:
        try:
            await self._run(lambda: self._reader().execute("SELECT 1").fetchone())
            return self._writer is not None and self._writer.is_alive()
        except Exception:
            return False

    async def count(self) -> int:
        """How many events the store holds (cheap: the last seq)."""
        return await self._run(  # type: ignore[no-any-return]
            lambda: self._reader().execute("SELECT count(*) FROM events").fetchone()[0])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)  # queued after every accepted append: those finish first
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()


def _settle(future: asyncio.Future[Any], value: Any, ok: bool) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _WriterState:
    """The writer thread's connection and its caches of ids (names never change once made)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.realms: dict[str, int] = {}
        self.domains: dict[tuple[int, str], int] = {}
        self.entities: dict[tuple[int, str], list[int]] = {}  # -> [entity_id, version]
        self.types: dict[str, int] = {}
        self.entity_types: set[tuple[int, int]] = set()
        self.data_version = conn.execute("PRAGMA data_version").fetchone()[0]

    def forget(self) -> None:
        self.realms.clear()
        self.domains.clear()
        self.entities.clear()
        self.types.clear()
        self.entity_types.clear()

    def check_external_writes(self) -> None:
        # data_version changes when another connection (another process) commits: the caches of
        # versions may then be stale, so drop them.
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version:
            self.data_version = version
            self.forget()
        if len(self.entities) > 200_000 or len(self.entity_types) > 500_000:
            self.forget()

    def _lookup(self, cache: dict[Any, int], key: Any, select: str, args: tuple[Any, ...]) -> int | None:
        found = cache.get(key)
        if found is None:
            row = self.conn.execute(select, args).fetchone()
            if row is not None:
                found = cache[key] = row[0]
        return found

    def _create(self, cache: dict[Any, int], key: Any, insert: str, args: tuple[Any, ...]) -> int:
        new_id: int = self.conn.execute(insert, args).lastrowid  # type: ignore[assignment]
        cache[key] = new_id
        return new_id

    def _type_id(self, name: str) -> int:
        found = self._lookup(self.types, name, "SELECT id FROM types WHERE name = ?", (name,))
        if found is None:
            found = self._create(self.types, name, "INSERT INTO types (name) VALUES (?)", (name,))
        return found

    def apply(self, job: _Job, ts: str) -> AppendResult:
        conn = self.conn
        batch = job.batch
        client_ids = [e.event_id for e in batch if e.client_id]
        if client_ids:
            stored = self._stored_events(client_ids)
            replay = replay_or_conflict(batch, stored, job.realm, job.domain, job.entity)
            if replay is not None:
                return replay
        # Look everything up before creating anything, so a conflict leaves no trace to undo.
        realm_id = self._lookup(self.realms, job.realm, "SELECT id FROM realms WHERE name = ?", (job.realm,))
        domain_id = entity = None
        if realm_id is not None:
            domain_id = self._lookup(self.domains, (realm_id, job.domain),
                                     "SELECT id FROM domains WHERE realm_id = ? AND name = ?",
                                     (realm_id, job.domain))
        if domain_id is not None:
            entity = self.entities.get((domain_id, job.entity))
            if entity is None:
                row = conn.execute("SELECT id, version FROM entities WHERE domain_id = ? AND name = ?",
                                   (domain_id, job.entity)).fetchone()
                entity = list(row) if row else None
        current = -1 if entity is None else entity[1]
        if job.expected is not None and job.expected != current:
            raise VersionConflict(current, job.expected)
        if realm_id is None:
            realm_id = self._create(self.realms, job.realm, "INSERT INTO realms (name) VALUES (?)", (job.realm,))
        if domain_id is None:
            domain_id = self._create(self.domains, (realm_id, job.domain),
                                     "INSERT INTO domains (realm_id, name) VALUES (?, ?)", (realm_id, job.domain))
        key = (domain_id, job.entity)
        if entity is None:
            entity = [conn.execute("INSERT INTO entities (domain_id, name, version) VALUES (?, ?, ?)",
                                   (domain_id, job.entity, current + len(batch))).lastrowid, current]
        else:
            conn.execute("UPDATE entities SET version = ? WHERE id = ?", (current + len(batch), entity[0]))
        entity_id = entity[0]
        rows = []
        results = []
        for version, e in enumerate(batch, current + 1):
            type_id = self._type_id(e.type)
            if (entity_id, type_id) not in self.entity_types:
                conn.execute("INSERT OR IGNORE INTO entity_types VALUES (?, ?)", (entity_id, type_id))
                self.entity_types.add((entity_id, type_id))
            rows.append((e.event_id, realm_id, domain_id, entity_id, type_id, version, ts,
                         e.data_json, e.meta_json))
            results.append(Appended(e.event_id, version, ts))
        try:
            conn.executemany(
                "INSERT INTO events (event_id, realm_id, domain_id, entity_id, type_id, version, ts,"
                " data, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            self.forget()  # ids cached by this job are being rolled back
            # A server-made id can only collide with itself if the clock went backwards and the
            # random bits matched; a client id collides when it raced a twin in this group.
            stored = self._stored_events([e.event_id for e in batch])
            replay_or_conflict(batch, stored, job.realm, job.domain, job.entity)
            raise
        entity[1] = current + len(batch)
        self.entities[key] = entity
        return AppendResult(results, created=True)

    def _stored_events(self, ids: list[str]) -> dict[str, Event]:
        found: dict[str, Event] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"{_SELECT.format(hint='')} WHERE e.event_id IN ({marks})", chunk):
                event = _row_event(row, False)
                found[event.event_id] = event
        return found


def _chunks(items: list[str], size: int) -> Any:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


async def open_sqlite(path: str, *, synchronous: str = "FULL", url: str | None = None) -> SQLiteStore:
    return await SQLiteStore(path, synchronous=synchronous, url=url).open()
