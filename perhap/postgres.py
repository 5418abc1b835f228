"""The PostgreSQL backend: group commit through one writer task, reads from a pool, LISTEN/NOTIFY.

Design, and why (docs/backends/postgresql.md has the long form and the proof):
- Gap safety: every transaction that writes events first takes a transaction-scoped advisory lock
  per realm it touches, in sorted key order, and only then takes positions from the ``pos``
  identity (CACHE 1, so values increase in the order they are handed out). A realm's positions are
  therefore handed out by one transaction at a time, and the lock is released only after the commit
  is visible; so within a realm position order is commit order, and a reader that pages by
  position never passes over an event that commits later. Realm and domain scopes never cross a
  realm, so that is all the order they need.
- Group commit: one writer task drains every append queued while it was busy into one transaction.
  Outcomes (replays, version conflicts) are decided in Python from one look-up per group, then the
  accepted appends are written with a handful of array statements, whatever the group's size. A
  statement that still fails (an event id raced in by another process) sends the group down a slow
  path where each append runs in its own savepoint, so it undoes only itself.
- Names are stored once and events carry integer ids, as in the SQLite backend; name columns use
  ``COLLATE "C"`` so key listings sort by code point on every server.
- Live streaming across processes: the writer NOTIFYs inside its transaction, a dedicated
  connection LISTENs and wakes local subscribers; subscribers also poll every ``poll_interval``, so
  nothing depends on a notification arriving (pgbouncer in transaction mode drops them).
- A lost database is StorageUnavailable (HTTP 503) for appends and reads; the pool, the writer's
  connection and the listener reconnect on their own when it is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .store import (
    CommitSignal,
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

log = logging.getLogger("perhap.postgres")

SCHEMA_VERSION = 1
CHANNEL = "perhap_events"
LOCK_CLASS = 0x70657268  # "perh": the first key of every advisory lock we take
SCHEMA_LOCK = (LOCK_CLASS + 1, 0)
MAX_GROUP_EVENTS = 20_000
COPY_THRESHOLD = 100  # events in a group from which COPY beats INSERT ... unnest
TIMEOUT = 10.0  # seconds for a connect, a pool acquire or one statement

# Each step upgrades the schema from the version before it; a database records the last step run.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE perhap_realms (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE perhap_domains (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, realm_id int NOT NULL,
    name text COLLATE "C" NOT NULL, UNIQUE (realm_id, name));
CREATE TABLE perhap_entities (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, domain_id int NOT NULL,
    name text COLLATE "C" NOT NULL, version bigint NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE perhap_types (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE perhap_entity_types (
    entity_id bigint NOT NULL, type_id int NOT NULL, PRIMARY KEY (entity_id, type_id));
-- pos: CACHE 1 (the default, spelled out), as positions must increase in the order they are
-- handed out across sessions, which per-session caches would break. No index on pos alone: the
-- planner cannot see which realm a read's sub-select names, and given a pos index it may walk all
-- events in pos order filtering by realm (O(table)); the composite indexes are the only way.
CREATE TABLE perhap_events (
    event_id uuid PRIMARY KEY,
    pos bigint NOT NULL GENERATED ALWAYS AS IDENTITY (CACHE 1),
    realm_id int NOT NULL, domain_id int NOT NULL, entity_id bigint NOT NULL, type_id int NOT NULL,
    version bigint NOT NULL, ts text NOT NULL, data json NOT NULL, meta json NOT NULL);
CREATE UNIQUE INDEX perhap_events_entity ON perhap_events (entity_id, version);
CREATE INDEX perhap_events_entity_type ON perhap_events (entity_id, type_id, version);
CREATE INDEX perhap_events_domain ON perhap_events (domain_id, pos);
CREATE INDEX perhap_events_domain_type ON perhap_events (domain_id, type_id, pos);
CREATE INDEX perhap_events_realm ON perhap_events (realm_id, pos);
CREATE INDEX perhap_events_realm_type ON perhap_events (realm_id, type_id, pos);
""",
}

_REALM_ID = "(SELECT id FROM perhap_realms WHERE name = $1)"
_DOMAIN_ID = f"(SELECT id FROM perhap_domains WHERE realm_id = {_REALM_ID} AND name = $2)"
_ENTITY_ID = f"(SELECT id FROM perhap_entities WHERE domain_id = {_DOMAIN_ID} AND name = $3)"

_SELECT = """SELECT e.pos, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta
FROM perhap_events e JOIN perhap_entities n ON n.id = e.entity_id
JOIN perhap_domains d ON d.id = e.domain_id JOIN perhap_realms r ON r.id = e.realm_id
JOIN perhap_types t ON t.id = e.type_id"""

# Look up every entity of a group at once: ids where they exist, and the current version.
_LOOKUP = """SELECT k.i, r.id, d.id, n.id, n.version
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(realm, domain, entity, i)
LEFT JOIN perhap_realms r ON r.name = k.realm
LEFT JOIN perhap_domains d ON d.realm_id = r.id AND d.name = k.domain
LEFT JOIN perhap_entities n ON n.domain_id = d.id AND n.name = k.entity"""

_UPSERT_ENTITIES = """INSERT INTO perhap_entities (domain_id, name, version)
SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[])
ON CONFLICT (domain_id, name) DO UPDATE SET version = EXCLUDED.version
RETURNING id, domain_id, name"""

_EVENT_COLUMNS = ["event_id", "realm_id", "domain_id", "entity_id", "type_id", "version", "ts", "data", "meta"]
_INSERT_EVENTS = f"""INSERT INTO perhap_events ({', '.join(_EVENT_COLUMNS)})
SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::bigint[], $5::int[], $6::bigint[],
                     $7::text[], $8::json[], $9::json[])"""

# Errors that mean "the database is not there", as opposed to an answer from it.
_LOST = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
         asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)
_DB_ERRORS = (*_LOST, asyncpg.PostgresError)

# Options of ours in the URL query; everything else goes to asyncpg (sslmode, ...).
_OPTIONS = {"pool_size": int, "poll_interval": float, "timeout": float}


def _realm_key(realm: str) -> int:
    """The second advisory lock key of a realm (a collision only makes two realms share a lock)."""
    return int.from_bytes(hashlib.blake2b(realm.encode(), digest_size=4).digest(), "big", signed=True)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON goes through as the bytes orjson made and the server stored: no decode, no re-encode.
    await conn.set_type_codec("json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")


async def _init_reader(conn: asyncpg.Connection) -> None:
    await _init_connection(conn)
    # A page must be a walk along the scope's index, never "fetch the whole scope, sort, keep
    # 1000": the planner picks the latter whenever it underestimates a scope (a big realm among
    # many small ones, or tables not analysed yet), making a page cost O(scope). With sorting
    # priced out, the index walk is the only plan left for scope reads; key listings walk their
    # unique indexes the same way. (A SET, not a startup parameter, which pgbouncer would refuse.)
    await conn.execute("SET enable_sort = off")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections keep no session state of ours, so skip asyncpg's reset round trip."""


def _row_event(row: Any, by_version: bool) -> Event:
    pos, event_id, realm, domain, entity, type_, version, ts, data, meta = row
    return Event(str(event_id), realm, domain, entity, type_, version, ts, data, meta,
                 version if by_version else pos)


def _scope_query(scope: Scope) -> tuple[str, list[Any], bool]:
    """SQL selecting a scope's events after a position ($n) with a limit ($n+1)."""
    if scope.entity is not None:
        where, params, pos = f"e.entity_id = {_ENTITY_ID}", [scope.realm, scope.domain, scope.entity], "version"
    elif scope.domain is not None:
        where, params, pos = f"e.domain_id = {_DOMAIN_ID}", [scope.realm, scope.domain], "pos"
    else:
        where, params, pos = f"e.realm_id = {_REALM_ID}", [scope.realm], "pos"
    if scope.type is not None:
        params.append(scope.type)
        where += f" AND e.type_id = (SELECT id FROM perhap_types WHERE name = ${len(params)})"
    n = len(params)
    sql = f"{_SELECT} WHERE {where} AND e.{pos} > ${n + 1} ORDER BY e.{pos} LIMIT ${n + 2}"
    return sql, params, pos == "version"


class _Job:
    __slots__ = ("realm", "domain", "entity", "batch", "expected", "future")

    def __init__(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                 expected: int | None, future: asyncio.Future[AppendResult]) -> None:
        self.realm, self.domain, self.entity = realm, domain, entity
        self.batch, self.expected, self.future = batch, expected, future


class _Isolate(Exception):
    """A statement of the shared group write failed: redo the group, one savepoint per append."""


class _Lost(Exception):
    """The connection failed before COMMIT was sent: nothing committed, the group may be retried."""


class PostgresStore(CommitSignal, Store):
    """Events in a PostgreSQL database, shared by any number of perhap processes.

    Open with :func:`open_postgres` (or ``perhap.open_store("postgresql://...")``). URL query
    options of ours: ``pool_size`` (read connections, default 10), ``poll_interval`` (seconds a
    subscriber waits for a notification before reading anyway, default 1), ``timeout`` (seconds for
    a connect or a statement, default 10); any other option is passed to asyncpg.
    """

    shared_across_processes = True
    # One writer task takes appends from a FIFO queue and hands out positions in queue order.
    preserves_submission_order = True
    poll_interval = 1.0

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        ours, theirs = {}, []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OPTIONS:
                try:
                    ours[key] = _OPTIONS[key](value)
                except ValueError:
                    raise ValueError(f"bad {key}={value!r} in the PostgreSQL URL") from None
            else:
                theirs.append((key, value))
        scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
        self._dsn = urlunsplit(parts._replace(scheme=scheme, query=urlencode(theirs)))
        self.pool_size = int(ours.get("pool_size", 10))
        self.poll_interval = float(ours.get("poll_interval", self.poll_interval))
        self.timeout = float(ours.get("timeout", TIMEOUT))
        self._connect_args = dict(dsn=self._dsn, timeout=self.timeout, command_timeout=self.timeout,
                                  server_settings={"application_name": "perhap"})
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None  # the writer's
        self._types: dict[str, int] = {}
        self._entity_types: set[tuple[int, int]] = set()  # pairs known to be committed
        self._closed = False
        self.listening = False
        # Group-commit statistics, read by benchmarks and metrics.
        self.groups_committed = 0
        self.events_committed = 0

    async def open(self) -> PostgresStore:
        try:
            self._pool = await asyncpg.create_pool(
                **self._connect_args, min_size=1, max_size=self.pool_size, init=_init_reader,
                reset=_no_reset)
            async with self._pool.acquire(timeout=self.timeout) as conn:
                await self._migrate(conn)
        except _DB_ERRORS as exc:
            await self._close_pool()
            raise StorageUnavailable(f"cannot open the PostgreSQL store: {exc}") from None
        except BaseException:
            await self._close_pool()
            raise
        self._writer_task = asyncio.create_task(self._write_loop(), name="perhap-pg-writer")
        self._listener_task = asyncio.create_task(self._listen_loop(), name="perhap-pg-listener")
        return self

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """Create or upgrade the schema, once, even when several processes start together."""
        encoding = await conn.fetchval("SHOW server_encoding")
        if encoding != "UTF8":
            raise StorageUnavailable(f"the database encoding is {encoding}; perhap needs UTF8")
        version = await self._schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        # A session lock taken before the transaction (not inside it): the transaction's start
        # then sees the catalog as another process's migration left it.
        await conn.execute("SELECT pg_advisory_lock($1, $2)", *SCHEMA_LOCK)
        try:
            async with conn.transaction():
                version = await self._schema_version(conn)  # another process may have just done it
                if version > SCHEMA_VERSION:
                    raise StorageUnavailable(
                        f"the database has perhap schema {version}, newer than this perhap's "
                        f"{SCHEMA_VERSION}; upgrade perhap")
                if version == 0:
                    await conn.execute("CREATE TABLE perhap_meta (key text PRIMARY KEY, value text NOT NULL)")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[step])
                await conn.execute(
                    "INSERT INTO perhap_meta VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", str(SCHEMA_VERSION))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *SCHEMA_LOCK)
        if version:
            log.info("upgraded the perhap schema from version %d to %d", version, SCHEMA_VERSION)

    @staticmethod
    async def _schema_version(conn: asyncpg.Connection) -> int:
        if await conn.fetchval("SELECT to_regclass('perhap_meta')") is None:
            return 0
        value = await conn.fetchval("SELECT value FROM perhap_meta WHERE key = 'schema_version'")
        return int(value or 0)

    # ----------------------------------------------------------------- writing

    async def _write(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                     expected_version: int | None) -> AppendResult:
        if self._closed or self._writer_task is None or self._writer_task.done():
            raise StorageUnavailable("the store is closed")
        job = _Job(realm, domain, entity, batch, expected_version, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        # Shielded: a client that disconnects must not cancel a write that may already be
        # committed; the writer settles the future either way.
        return await asyncio.shield(job.future)

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            jobs, count = [first], len(first.batch)
            # Take what queued up meanwhile, bounded so one transaction stays short.
            while count < MAX_GROUP_EVENTS and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                count += len(job.batch)
            try:
                outcomes = await self._commit_group(jobs)
            except BaseException as exc:  # never let the writer die with futures unsettled
                error = StorageUnavailable(f"write failed: {exc!r}")
                for job in jobs:
                    _settle(job.future, error)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.exception("the PostgreSQL writer failed on a group")
                continue
            for job, outcome in zip(jobs, outcomes):
                _settle(job.future, outcome)
        await self._drop_writer_connection()

    async def _commit_group(self, jobs: list[_Job]) -> list[Any]:
        """Commit a group; the outcome of each job is an AppendResult or a PerhapError."""
        for attempt in range(2):
            try:
                conn = await self._writer_connection()
                try:
                    return await self._transaction(conn, jobs, isolate=False)
                except _Isolate:
                    return await self._transaction(conn, jobs, isolate=True)
            except _Lost as exc:
                # Nothing was committed, so one retry on a fresh connection is safe; it answers
                # 503 at once if the database is really gone.
                await self._drop_writer_connection()
                if attempt:
                    return [StorageUnavailable(f"the database is unavailable: {exc}") for _ in jobs]
            except StorageUnavailable as exc:
                await self._drop_writer_connection()
                return [StorageUnavailable(exc.detail) for _ in jobs]
            except BaseException:
                # A bug or a cancellation mid-transaction: the connection may still hold the
                # transaction and its realm locks, so it must go.
                await self._drop_writer_connection()
                raise
        raise AssertionError("unreachable")

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = await asyncpg.connect(**self._connect_args)
                await _init_connection(self._conn)
            except _DB_ERRORS as exc:
                self._conn = None
                raise StorageUnavailable(f"the database is unavailable: {exc}") from None
        return self._conn

    async def _drop_writer_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _transaction(self, conn: asyncpg.Connection, jobs: list[_Job], isolate: bool) -> list[Any]:
        ts = utc_timestamp()
        committing = False
        try:
            types = await self._type_ids(conn, {e.type for job in jobs for e in job.batch})
            keys = sorted({_realm_key(job.realm) for job in jobs})
            # The locks are their own statements: under READ COMMITTED each later statement then
            # reads with a snapshot that includes the previous lock holder's commit.
            await conn.execute("BEGIN;" + "".join(
                f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, {k});" for k in keys))
            new_pairs: set[tuple[int, int]] = set()
            if isolate:
                outcomes = [await self._apply_alone(conn, job, ts, types, new_pairs) for job in jobs]
            else:
                try:
                    outcomes = await self._apply(conn, jobs, ts, types, new_pairs)
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, _LOST):
                        raise
                    # Most likely an event id another process stored meanwhile; whatever it is,
                    # it belongs to one append, which the slow path finds and refuses alone.
                    await conn.execute("ROLLBACK")
                    raise _Isolate() from None
            written = sum(len(job.batch) for job, o in zip(jobs, outcomes)
                          if isinstance(o, AppendResult) and o.created)
            committing = True
            # NOTIFY inside the transaction: it is delivered when, and only if, the commit is.
            await conn.execute(f"NOTIFY {CHANNEL}; COMMIT" if written else "COMMIT")
        except _Isolate:
            raise
        except asyncpg.PostgresError as exc:
            if not isinstance(exc, _LOST):
                await _rollback(conn)
            if committing or not isinstance(exc, _LOST):
                raise StorageUnavailable(f"commit failed: {exc}") from None
            raise _Lost(str(exc)) from None
        except _LOST as exc:
            if committing:  # the commit may or may not have happened: never acknowledge it
                raise StorageUnavailable(f"the outcome of the commit is unknown: {exc!r}") from None
            raise _Lost(repr(exc)) from None
        self._entity_types |= new_pairs
        if len(self._entity_types) > 500_000:
            self._entity_types.clear()
        self.groups_committed += 1
        if written:
            self.events_committed += written
            self._notify_commit()
        return outcomes

    async def _type_ids(self, conn: asyncpg.Connection, names: set[str]) -> dict[str, int]:
        missing = sorted(names - self._types.keys())
        if missing:
            # Outside the group's transaction, in name order: types are shared by every realm, so
            # creating them under realm locks could deadlock two processes. An unused type is
            # invisible (keys list the types of an entity, not this table).
            await conn.execute("INSERT INTO perhap_types (name) SELECT unnest($1::text[]) "
                               "ON CONFLICT DO NOTHING", missing)
            rows = await conn.fetch("SELECT name, id FROM perhap_types WHERE name = ANY($1::text[])", missing)
            self._types.update(dict(rows))
        return self._types

    async def _apply_alone(self, conn: asyncpg.Connection, job: _Job, ts: str,
                           types: dict[str, int], new_pairs: set[tuple[int, int]]) -> Any:
        """Apply one job in its own savepoint (the slow path after a failed shared write)."""
        await conn.execute("SAVEPOINT job")
        pairs: set[tuple[int, int]] = set()
        try:
            [outcome] = await self._apply(conn, [job], ts, types, pairs)
        except asyncpg.UniqueViolationError as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
            # The id is taken by an event committed meanwhile (or raced in from this group).
            stored = await self._stored(conn, [e.event_id for e in job.batch])
            try:
                replay = replay_or_conflict(job.batch, stored, job.realm, job.domain, job.entity)
            except PerhapError as conflict:
                return conflict
            return replay or StorageUnavailable(f"write failed: {exc}")
        except asyncpg.PostgresError as exc:
            if isinstance(exc, _LOST):
                raise
            await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
            return StorageUnavailable(f"write failed: {exc}")
        await conn.execute("RELEASE SAVEPOINT job")
        new_pairs |= pairs
        return outcome

    async def _apply(self, conn: asyncpg.Connection, jobs: list[_Job], ts: str,
                     types: dict[str, int], new_pairs: set[tuple[int, int]]) -> list[Any]:
        """Decide every job from one look-up, then write the accepted ones with array statements."""
        triples = list(dict.fromkeys((j.realm, j.domain, j.entity) for j in jobs))
        rows = await conn.fetch(_LOOKUP, *map(list, zip(*triples)))
        ids: dict[tuple[str, str, str], list[Any]] = {}  # -> [realm id, domain id, entity id]
        versions: dict[tuple[str, str, str], int] = {}
        for r in rows:
            t = triples[r[0] - 1]
            ids[t], versions[t] = [r[1], r[2], r[3]], -1 if r[4] is None else r[4]
        client_ids = [e.event_id for j in jobs for e in j.batch if e.client_id]
        stored = await self._stored(conn, client_ids) if client_ids else {}
        outcomes: list[Any] = []
        accepted: list[tuple[_Job, int]] = []
        for job in jobs:
            key = (job.realm, job.domain, job.entity)
            try:
                mine = {e.event_id: stored[e.event_id] for e in job.batch if e.event_id in stored}
                replay = replay_or_conflict(job.batch, mine, *key)
                if replay is not None:
                    outcomes.append(replay)
                    continue
                current = versions[key]
                if job.expected is not None and job.expected != current:
                    raise VersionConflict(current, job.expected)
            except PerhapError as exc:
                outcomes.append(exc)
                continue
            # An import may bring an event's original time; otherwise the group's commit time.
            results = [Appended(e.event_id, v, e.timestamp or ts) for v, e in enumerate(job.batch, current + 1)]
            versions[key] = current + len(job.batch)
            for e, r in zip(job.batch, results):
                if e.client_id:  # a later job of this group may be its retry
                    stored[e.event_id] = Event(e.event_id, *key, e.type, r.version, r.timestamp,
                                               e.data_json, e.meta_json)
            outcomes.append(AppendResult(results, created=True))
            accepted.append((job, current + 1))
        if accepted:
            await self._store_accepted(conn, accepted, ids, versions, ts, types, new_pairs)
        return outcomes

    async def _store_accepted(self, conn: asyncpg.Connection, accepted: list[tuple[_Job, int]],
                              ids: dict[tuple[str, str, str], list[Any]],
                              versions: dict[tuple[str, str, str], int], ts: str,
                              types: dict[str, int], new_pairs: set[tuple[int, int]]) -> None:
        keys = list(dict.fromkeys((j.realm, j.domain, j.entity) for j, _ in accepted))
        # Create missing realms and domains. Nobody else can create them meanwhile: we hold the
        # realm's lock, and every writer takes it first.
        new_realms = sorted({k[0] for k in keys if ids[k][0] is None})
        if new_realms:
            made = dict(await conn.fetch("INSERT INTO perhap_realms (name) SELECT unnest($1::text[]) "
                                         "RETURNING name, id", new_realms))
            for k in keys:
                ids[k][0] = ids[k][0] or made[k[0]]
        new_domains = sorted({(ids[k][0], k[1]) for k in keys if ids[k][1] is None})
        if new_domains:
            rows = await conn.fetch("INSERT INTO perhap_domains (realm_id, name) SELECT * FROM "
                                    "unnest($1::int[], $2::text[]) RETURNING realm_id, name, id",
                                    *map(list, zip(*new_domains)))
            made_d = {(r[0], r[1]): r[2] for r in rows}
            for k in keys:
                ids[k][1] = ids[k][1] or made_d[(ids[k][0], k[1])]
        rows = await conn.fetch(_UPSERT_ENTITIES, [ids[k][1] for k in keys], [k[2] for k in keys],
                                [versions[k] for k in keys])
        entity_ids = {(r[1], r[2]): r[0] for r in rows}
        for k in keys:
            ids[k][2] = entity_ids[(ids[k][1], k[2])]
        cols: list[list[Any]] = [[] for _ in range(9)]
        pairs = set()
        for job, first in accepted:
            realm_id, domain_id, entity_id = ids[(job.realm, job.domain, job.entity)]
            for version, e in enumerate(job.batch, first):
                type_id = types[e.type]
                pairs.add((entity_id, type_id))
                for col, value in zip(cols, (e.event_id, realm_id, domain_id, entity_id, type_id,
                                             version, e.timestamp or ts, e.data_json, e.meta_json)):
                    col.append(value)
        pairs -= self._entity_types
        if pairs:
            await conn.execute("INSERT INTO perhap_entity_types SELECT * FROM unnest($1::bigint[], "
                               "$2::int[]) ON CONFLICT DO NOTHING", *map(list, zip(*sorted(pairs))))
            new_pairs |= pairs
        if len(cols[0]) >= COPY_THRESHOLD:  # COPY costs a round trip more, but inserts faster
            await conn.copy_records_to_table("perhap_events", records=zip(*cols), columns=_EVENT_COLUMNS)
        else:
            await conn.execute(_INSERT_EVENTS, *cols)

    async def _stored(self, conn: asyncpg.Connection, event_ids: list[str]) -> dict[str, Event]:
        rows = await conn.fetch(f"{_SELECT} WHERE e.event_id = ANY($1::uuid[])", event_ids)
        return {str(r[1]): _row_event(r, False) for r in rows}

    async def _listen_loop(self) -> None:
        """Keep one connection LISTENing; reconnect with back-off while the database is away."""
        delay = 0.2
        while not self._closed:
            conn = None
            try:
                conn = await asyncpg.connect(**self._connect_args)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(CHANNEL, self._notify_commit)
                self.listening, delay = True, 0.2
                self._notify_commit()  # commits while we were not listening: make readers look
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), 15)
                    except TimeoutError:  # an idle socket can die silently: check it now and then
                        await conn.fetchval("SELECT 1", timeout=self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection: %r", exc)
            finally:
                self.listening = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ----------------------------------------------------------------- reading

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        if self._closed or self._pool is None:
            raise StorageUnavailable("the store is closed")
        for attempt in range(2):
            try:
                async with self._pool.acquire(timeout=self.timeout) as conn:
                    return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
            except _LOST as exc:
                # A pooled connection may have died with a restarted server: one retry takes a
                # fresh one, and fails fast if the server is really away.
                if attempt:
                    raise StorageUnavailable(f"the database is unavailable: {exc!r}") from None
            except asyncpg.PostgresError as exc:
                raise StorageUnavailable(f"read failed: {exc}") from None
        raise AssertionError("unreachable")

    async def _position_of(self, scope: Scope, event_id: str) -> Any:
        rows = await self._fetch(
            "SELECT e.pos, e.version, r.name, d.name, n.name FROM perhap_events e "
            "JOIN perhap_realms r ON r.id = e.realm_id JOIN perhap_domains d ON d.id = e.domain_id "
            "JOIN perhap_entities n ON n.id = e.entity_id WHERE e.event_id = $1", event_id)
        if not rows or rows[0][2] != scope.realm or (
                scope.domain is not None and rows[0][3] != scope.domain) or (
                scope.entity is not None and rows[0][4] != scope.entity):
            raise NotFound(f"no event {event_id} in {scope}")
        return rows[0][1] if scope.entity is not None else rows[0][0]

    async def _read_after(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        sql, params, by_version = _scope_query(scope)
        rows = await self._fetch(sql, *params, -1 if after is None else after, limit)
        return [_row_event(r, by_version) for r in rows]

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        event_id = check_event_id(event_id)
        rows = await self._fetch(f"{_SELECT} WHERE e.event_id = $1", event_id)
        if not rows or rows[0][2] != realm or rows[0][3] != domain:
            raise NotFound(f"no event {event_id} in {realm}/{domain}")
        return _row_event(rows[0], False)

    async def keys(self, realm: str | None = None, domain: str | None = None,
                   entity: str | None = None, *, after: str | None = None,
                   limit: int = DEFAULT_LIMIT) -> KeysPage:
        limit = check_limit(limit)
        if realm is None:
            sql, params = "SELECT name FROM perhap_realms WHERE name > $1", []
        elif domain is None:
            sql, params = f"SELECT name FROM perhap_domains WHERE realm_id = {_REALM_ID} AND name > $2", [realm]
        elif entity is None:
            sql, params = f"SELECT name FROM perhap_entities WHERE domain_id = {_DOMAIN_ID} AND name > $3", [realm, domain]
        else:
            sql = (f"SELECT t.name FROM perhap_entity_types x JOIN perhap_types t ON t.id = x.type_id "
                   f"WHERE x.entity_id = {_ENTITY_ID} AND t.name > $4")
            params = [realm, domain, entity]
        n = len(params)
        rows = await self._fetch(f"{sql} ORDER BY name LIMIT ${n + 2}", *params, after or "", limit + 1)
        names = [r[0] for r in rows]
        if len(names) > limit:
            return KeysPage(names[:limit], names[limit - 1])
        return KeysPage(names, None)

    async def count(self) -> int:
        """How many events the store holds."""
        return (await self._fetch("SELECT count(*) FROM perhap_events"))[0][0]  # type: ignore[no-any-return]

    async def health(self) -> bool:
        try:
            await self._fetch("SELECT 1")
        except (PerhapError, *_DB_ERRORS):
            return False
        return self._writer_task is not None and not self._writer_task.done()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer_task is not None:
            self._queue.put_nowait(None)  # queued after every accepted append: those finish first
            await asyncio.gather(self._writer_task, return_exceptions=True)
        if self._listener_task is not None:
            self._listener_task.cancel()
            await asyncio.gather(self._listener_task, return_exceptions=True)
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # a dead server: just drop the sockets
                pool.terminate()


async def _rollback(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction():
        try:
            await conn.execute("ROLLBACK")
        except _DB_ERRORS:
            conn.terminate()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def open_postgres(url: str) -> PostgresStore:
    """Open (and on first use create) a perhap store in the database the URL names."""
    return await PostgresStore(url).open()
