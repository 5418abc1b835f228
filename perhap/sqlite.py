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
- The group's statements are batched (fast path): every job's checks run first, then all events
  go in a few multi-row INSERTs. A failing check raises before its job writes anything; any SQLite
  error rolls the group back and redoes it job by job, each in a SAVEPOINT (the careful path), so
  outcomes are exactly those of the careful path. Fewer statements mean fewer GIL hand-offs
  between the writer thread and the event loop, which is where a group's time went.
- Small reads run on the event loop itself: handing a read of a few rows to a thread costs more
  than the read, and a pool thread waits for the GIL at every row.
- Live subscribers of realms and domains read a ring of recently committed events kept on the
  event loop instead of querying the database once per commit each (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import queue
import sqlite3
import threading
import time
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
#: Reads of at most this many rows run on the event loop itself rather than in the thread pool.
INLINE_ROWS = 1001
#: The ring of recently committed events that live subscribers read instead of the database.
RING_EVENTS = 4096
RING_BYTES = 8 * 1024 * 1024
RING_IDLE = 30.0  # seconds without a ring read after which the writer stops filling it

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


def _row_event(row: tuple[Any, ...], position_is_version: bool) -> Event:
    seq, event_id, realm, domain, entity, type_, version, ts, data, meta = row
    return Event(event_id, realm, domain, entity, type_, version, ts, data, meta,
                 version if position_is_version else seq)


# The read path's queries select only the names the scope does not fix (an entity's events need
# no join for their realm, domain and entity), and are built once per shape of scope.
_SHAPES: dict[tuple[int, bool], str] = {}


def _scope_sql(level: int, typed: bool) -> str:
    """SQL for a scope of ``level`` (1 realm, 2 domain, 3 entity), with or without a type."""
    sql = _SHAPES.get((level, typed))
    if sql is None:
        names = ("d.name, n.name", "n.name", "")[level - 1]
        joins = ("JOIN domains d ON d.id = e.domain_id JOIN entities n ON n.id = e.entity_id",
                 "JOIN entities n ON n.id = e.entity_id", "")[level - 1]
        column, owner, pos = (("realm_id", _REALM_ID, "seq"), ("domain_id", _DOMAIN_ID, "seq"),
                              ("entity_id", _ENTITY_ID, "version"))[level - 1]
        index = ("events_realm", "events_domain", "events_entity")[level - 1]
        where = f"e.{column} = {owner}"
        if typed:
            index = ("events_realm_type", "events_domain_type", "events_entity_type")[level - 1]
            where += f" AND e.type_id = {_TYPE_ID}"
        sql = (f"SELECT e.seq, e.event_id, {names + ', ' if names else ''}t.name, e.version, e.ts, "
               f"e.data, e.meta FROM events e INDEXED BY {index} {joins} "
               f"JOIN types t ON t.id = e.type_id WHERE {where} AND e.{pos} > ? "
               f"ORDER BY e.{pos} LIMIT ?")
        _SHAPES[(level, typed)] = sql
    return sql


_EVENT_FIELDS = ("event_id", "realm", "domain", "entity", "type", "version", "timestamp",
                 "data_json", "meta_json", "position")


def _event_maker() -> Any:
    """A constructor of Events that skips the frozen dataclass's __init__ (half the cost per row).

    Event has no __post_init__, so setting its slots directly builds the same object; should
    its fields ever change, this falls back to the dataclass constructor.
    """
    import dataclasses

    if tuple(f.name for f in dataclasses.fields(Event)) != _EVENT_FIELDS or hasattr(Event, "__post_init__"):
        return lambda *values: Event(*values)
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = (Event.__dict__[f].__set__ for f in _EVENT_FIELDS)

    def make(event_id: str, realm: str, domain: str, entity: str, type_: str, version: int,
             ts: str, data: bytes, meta: bytes, position: Any) -> Event:
        e = new(Event)
        s0(e, event_id), s1(e, realm), s2(e, domain), s3(e, entity), s4(e, type_)
        s5(e, version), s6(e, ts), s7(e, data), s8(e, meta), s9(e, position)
        return e

    return make


_make_event = _event_maker()


def _scope_events(scope: Scope, rows: list[tuple[Any, ...]]) -> list[Event]:
    """Events from the rows of :func:`_scope_sql`, the scope's own names filled in."""
    make, realm, domain = _make_event, scope.realm, scope.domain
    if scope.entity is not None:
        entity = scope.entity
        return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, version)
                for seq, event_id, type_, version, ts, data, meta in rows]
    if domain is not None:
        return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, seq)
                for seq, event_id, entity, type_, version, ts, data, meta in rows]
    return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, seq)
            for seq, event_id, domain, entity, type_, version, ts, data, meta in rows]


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
    # One writer thread takes appends from a FIFO queue: appends started in order commit in order.
    preserves_submission_order = True
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
        self._waiters: set[asyncio.Future[None]] = set()
        # The ring: every event committed with seq in (_ring_lo, last seq in the ring], in seq
        # order, kept on the event loop (see _notify_commit and _ring_read).
        self._ring: list[Event] = []
        self._ring_lo: int | None = None  # None: no ring (until the first commit)
        self._ring_bytes = 0
        self._ring_wanted = 0.0  # time.monotonic() until which the writer builds ring events
        self._ring_scanned: dict[tuple[Scope, int], int] = {}
        self._last_commit = 0.0  # time.monotonic() of the last commit notification
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
        self._ring_lo = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
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
        # A client that disconnects cancels only its wait: the writer never looks at the future
        # before writing, commits the job all the same, and skips settling a cancelled future.
        # (No asyncio.shield: it costs an extra future and an extra loop pass per append.)
        return await job.future

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
        outcomes: list[tuple[_Job, Any, bool]] | None
        try:
            conn.execute("BEGIN IMMEDIATE")
            state.check_external_writes()  # inside the write lock: no commit can slip in after it
            ts = utc_timestamp()
            outcomes = self._apply_together(state, jobs, ts)
            if outcomes is None:  # a statement failed: redo the group one job at a time
                conn.execute("ROLLBACK")
                state.forget()
                conn.execute("BEGIN IMMEDIATE")
                outcomes = self._apply_each(state, jobs, ts)
                state.last_rowid = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
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
                self._loop.call_soon_threadsafe(self._notify_commit, *self._ring_events(state, outcomes))
        # One wake-up per event loop for the whole group, queued after the commit notification.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, bool]]] = {}
        for job, value, ok in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, value, ok))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    def _ring_events(self, state: _WriterState, outcomes: list[tuple[_Job, Any, bool]]
                     ) -> tuple[list[Event] | None, int | None]:
        """The events a commit stored, with their seqs, for the ring (None: reset the ring).

        One writer appends rows one after another, and SQLite gives each new row the largest
        rowid plus one, so a group's committed rows are the seqs following the last one before
        it, in the order they were written; the last rowid the INSERTs reported confirms it.
        """
        last, first = state.last_rowid, state.last_seq
        state.last_seq = last
        if last is None or first is None or time.monotonic() > self._ring_wanted:
            return None, last
        events: list[Event] = []
        seq = first
        make = _make_event
        for job, result, ok in outcomes:
            if ok and result.created:
                realm, domain, entity = job.realm, job.domain, job.entity
                for e, a in zip(job.batch, result.events):
                    seq += 1
                    events.append(make(e.event_id, realm, domain, entity, e.type, a.version,
                                       a.timestamp, e.data_json, e.meta_json, seq))
        if seq != last:
            return None, last
        return events, last

    @staticmethod
    def _apply_together(state: _WriterState, jobs: list[_Job], ts: str) -> list[tuple[_Job, Any, bool]] | None:
        """The fast path: every job's events in one INSERT and its versions in one UPDATE.

        A job that fails a check (version or event-id conflict) raises before it writes
        anything, so no savepoint is needed to undo it. Any SQLite error, or a failing job that
        did write, returns None: the caller rolls back and takes :meth:`_apply_each` instead.
        """
        conn = state.conn
        deferred = _Deferred()
        outcomes: list[tuple[_Job, Any, bool]] = []
        try:
            for job in jobs:
                changes = conn.total_changes
                try:
                    outcomes.append((job, state.apply(job, ts, deferred), True))
                except PerhapError as exc:
                    if conn.total_changes != changes:
                        return None
                    outcomes.append((job, exc, False))
            state.flush(deferred)
        except (sqlite3.Error, _Undeferrable):
            return None
        state.last_rowid = state.last_seq if not deferred.rows else state.last_rowid
        return outcomes

    @staticmethod
    def _apply_each(state: _WriterState, jobs: list[_Job], ts: str) -> list[tuple[_Job, Any, bool]]:
        """The careful path: each job in its own savepoint, so a failure undoes that job alone."""
        conn = state.conn
        outcomes: list[tuple[_Job, Any, bool]] = []
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
        return outcomes

    def _notify_commit(self, events: list[Event] | None, last: int | None) -> None:
        """On the loop, after each commit (in commit order): extend the ring, wake the waiters."""
        self._commits += 1
        self._last_commit = time.monotonic()
        ring = self._ring
        if (events and self._ring_lo is not None and last is not None
                and events[0].position == (ring[-1].position if ring else self._ring_lo) + 1):
            ring += events
            self._ring_bytes += sum(_size(e) for e in events)
            if len(ring) > RING_EVENTS or self._ring_bytes > RING_BYTES:
                # Drop the oldest down to three quarters (deleting from a list's front is O(n)).
                cut = 0
                while cut < len(ring) and (len(ring) - cut > RING_EVENTS * 3 // 4
                                           or self._ring_bytes > RING_BYTES * 3 // 4):
                    self._ring_bytes -= _size(ring[cut])
                    cut += 1
                self._ring_lo = ring[cut - 1].position
                del ring[:cut]
        else:  # the writer built no events (nobody reads the ring) or could not vouch for seqs
            ring.clear()
            self._ring_bytes = 0
            self._ring_lo = last
            self._ring_scanned.clear()
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _change_token(self) -> Any:
        return self._commits

    async def _wait_for_change(self, token: Any, timeout: float) -> None:
        if self._commits != token:
            return
        # A bare future and a timer: far cheaper than asyncio.wait_for (a task per wait), which
        # matters when each commit wakes a hundred streams.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def _ring_read(self, scope: Scope, after: Any, limit: int) -> list[Event] | None:
        """A realm or domain scope's events after ``after`` from the ring; None if it cannot say.

        The ring holds every event committed after ``_ring_lo``, so for a cursor at or past it
        the answer is complete and in order, exactly what the database would return at the
        ring's last commit; earlier cursors (and entity scopes, positioned by version) go to the
        database. ``_ring_scanned`` remembers stretches a scope has no events in, so a
        subscriber of a quiet domain does not rescan the ring on every commit.
        """
        now = time.monotonic()
        self._ring_wanted = now + RING_IDLE
        lo = self._ring_lo
        if lo is None or scope.entity is not None or now - self._last_commit > self.poll_interval:
            # (After a quiet poll interval, read the database: another process may have written.)
            return None
        start = 0 if after is None else after
        key = (scope, start)
        start = max(start, self._ring_scanned.get(key, start))
        if start < lo:
            return None
        ring = self._ring
        i = bisect.bisect_right(ring, start, key=_position)
        found: list[Event] = []
        contains = scope.contains
        for e in itertools.islice(ring, i, None):
            if contains(e):
                found.append(e)
                if len(found) >= limit:
                    break
        if not found:
            if len(self._ring_scanned) > 10_000:
                self._ring_scanned.clear()
            self._ring_scanned[key] = ring[-1].position if ring else lo
        return found

    # ----------------------------------------------------------------- reading

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, synchronous=self.synchronous)
            conn.execute("PRAGMA query_only=1")
            if getattr(self._local, "inline", False):
                conn.execute("PRAGMA busy_timeout=0")  # never block the event loop: use the pool
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _run(self, fn: Any, *args: Any, inline: bool = False) -> Any:
        """Run a read in the pool, or with ``inline`` (a small read) right here on the loop.

        A small read costs less than the hand-off to a thread and back, and on the loop it
        never waits for the GIL between rows; one that would block (busy) retries in the pool.
        """
        if self._closed:
            raise StorageUnavailable("the store is closed")
        try:
            if inline and asyncio.get_running_loop() is self._loop:
                self._local.inline = True
                try:
                    return fn(*args)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                finally:
                    self._local.inline = False
            return await self._loop.run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"read failed: {exc}") from None

    async def _position_of(self, scope: Scope, event_id: str) -> Any:
        return await self._run(self._position_sync, scope, event_id, inline=True)

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
        if asyncio.get_running_loop() is self._loop and not self._closed:
            from_ring = self._ring_read(scope, after, limit)
            if from_ring is not None:
                return from_ring
            # Every commit notified so far is visible to the read that starts now.
            known = self._ring[-1].position if self._ring else self._ring_lo
            events: list[Event] = await self._run(self._read_sync, scope, after, limit,
                                                  inline=limit <= INLINE_ROWS)
            if not events and scope.entity is None and known is not None:
                # Nothing after ``after`` up to at least that commit: remember it.
                self._ring_scanned[(scope, 0 if after is None else after)] = known
            return events
        return await self._run(self._read_sync, scope, after, limit,  # type: ignore[no-any-return]
                               inline=limit <= INLINE_ROWS)

    def _read_sync(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        level = 3 if scope.entity is not None else 2 if scope.domain is not None else 1
        params = (scope.realm, scope.domain, scope.entity)[:level]
        if scope.type is not None:
            params += (scope.type,)
        sql = _scope_sql(level, scope.type is not None)
        rows = self._reader().execute(sql, (*params, -1 if after is None else after, limit)).fetchall()
        return _scope_events(scope, rows)

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        event_id = check_event_id(event_id)
        return await self._run(self._get_sync, realm, domain, event_id,  # type: ignore[no-any-return]
                               inline=True)

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

        names = await self._run(run, inline=limit <= INLINE_ROWS)
        if len(names) > limit:
            return KeysPage(names[:limit], names[limit - 1])
        return KeysPage(names, None)

    async def health(self) -> bool:
        try:
            await self._run(lambda: self._reader().execute("SELECT 1").fetchone(), inline=True)
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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _position(event: Event) -> Any:
    return event.position


def _size(event: Event) -> int:
    return len(event.data_json) + len(event.meta_json)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
    for future, value, ok in settled:
        _settle(future, value, ok)


_INSERT_EVENTS = ("INSERT INTO events (event_id, realm_id, domain_id, entity_id, type_id, version, ts,"
                  " data, meta) VALUES ")
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows per multi-row INSERT: powers of two, so a handful of statement texts cover every group
# (and stay in the connection's statement cache); 9 parameters a row keeps 128 rows under the
# 999-parameter limit of old SQLite builds.
_CHUNKS = (128, 64, 32, 16, 8, 4, 2, 1)
_INSERT_SQL = {n: _INSERT_EVENTS + ", ".join([_ROW_MARKS] * n) for n in _CHUNKS}


class _Deferred:
    """What a group's jobs write, gathered so the fast path sends it in a few statements."""

    __slots__ = ("rows", "versions", "ids")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.versions: dict[int, int] = {}  # entity id -> its version after the group
        self.ids: set[str] = set()  # event ids in rows


class _Undeferrable(Exception):
    """A job reuses an event id an earlier job of the group wrote: only the careful path sees it."""


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
        # The last seq this writer knows of (None: ask), and the last rowid of this group.
        self.last_seq: int | None = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        self.last_rowid: int | None = None

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
            self.last_seq = None
        if self.last_seq is None:
            self.last_seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        self.last_rowid = None
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

    def apply(self, job: _Job, ts: str, deferred: _Deferred | None = None) -> AppendResult:
        """Write one job; with ``deferred``, leave its events and version for :meth:`flush`."""
        conn = self.conn
        batch = job.batch
        client_ids = [e.event_id for e in batch if e.client_id]
        if client_ids:
            if deferred is not None and not deferred.ids.isdisjoint(client_ids):
                raise _Undeferrable
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
        elif deferred is not None:
            deferred.versions[entity[0]] = current + len(batch)
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
            stamp = e.timestamp or ts  # an import keeps the event's original time
            rows.append((e.event_id, realm_id, domain_id, entity_id, type_id, version, stamp,
                         e.data_json, e.meta_json))
            results.append(Appended(e.event_id, version, stamp))
        if deferred is not None:
            deferred.rows += rows
            deferred.ids.update(e.event_id for e in batch)
            entity[1] = current + len(batch)
            self.entities[key] = entity
            return AppendResult(results, created=True)
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

    def flush(self, deferred: _Deferred) -> None:
        """Write what the fast path gathered: events in multi-row INSERTs, then the versions."""
        conn = self.conn
        rows = deferred.rows
        start = 0
        while start < len(rows):
            n = next(c for c in _CHUNKS if c <= len(rows) - start)
            cursor = conn.execute(_INSERT_SQL[n], [value for row in rows[start:start + n] for value in row])
            self.last_rowid = cursor.lastrowid
            start += n
        if deferred.versions:
            conn.executemany("UPDATE entities SET version = ? WHERE id = ?",
                             [(v, i) for i, v in deferred.versions.items()])

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
