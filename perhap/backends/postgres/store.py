"""The PostgreSQL backend: group commit through one writer task, reads from a pool, LISTEN/NOTIFY.

Design, and why (docs/backends/postgresql.md has the long form and the proof):
- Contiguous, gap-safe positions and group commit: see :mod:`.writer` (realm advisory locks in
  sorted order, then positions numbered on from each realm's head; one transaction per group; a
  savepoint per append on the slow path); :mod:`.decide` decides each append of a group.
- Names are stored once and events carry integer ids (:mod:`.schema`); reads are one statement
  each, walking one index forwards or backwards (:mod:`.queries`).
- Live streaming across processes: the writer NOTIFYs inside its transaction, a dedicated
  connection LISTENs and wakes local subscribers (:mod:`.listener`); subscribers also poll every
  ``poll_interval``, so nothing depends on a notification arriving.
- A lost database is StorageUnavailable (HTTP 503) for appends and reads; the pool, the writer's
  connection and the listener reconnect on their own when it is back.
- Consumer groups' state documents: one conditional statement per change (:mod:`.states`).
- The page cache's version probe: the version ``perhap_entities`` keeps, one statement for the
  probes of many concurrent requests, each answered by a statement sent after it was asked
  (:class:`VersionProbe`).
- A store belongs to the event loop that opened it (asyncpg's connections do): an append from
  another loop is refused up front with RuntimeError, as a read from one is by asyncio itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from ...errors import PerhapError, StorageUnavailable, store_closed
from ...model import Event
from ...store.base import Statistic, Store
from ...store.groupcommit import STOP
from ...store.job import WriteJob
from ...store.query import ReadQuery
from ...store.states import StateTable
from .connection import DB_ERRORS, LOST, Options, Pool, warn_if_not_durable
from .listener import Listener
from .queries import EVENT_BY_ID, entity_events, names_query, read_sql, row_event
from .schema import migrate
from .states import PostgresStates
from .writer import GroupWriter

Key = tuple[str, str, str]  # realm, domain, entity
Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]

# Per key, three probes of unique indexes (realm, domain and entity by name), as nested
# sub-selects: no join for the planner to choose, and no events table involved. One key (the
# common case) has a statement of its own with plain parameters: its generic plan costs what a
# custom one does, so the prepared statement settles on it and is not planned again per call
# (an array's length is unknown to a generic plan, which then looks dearer than a custom one).
FOREIGN_LOOP = "this PostgresStore belongs to the event loop that opened it; open another store for this loop"
_VERSION_OF = """(SELECT n.version FROM perhap_entities n WHERE n.name = {2} AND n.domain_id =
    (SELECT d.id FROM perhap_domains d WHERE d.name = {1} AND d.realm_id =
        (SELECT r.id FROM perhap_realms r WHERE r.name = {0})))"""
VERSION = "SELECT 1, " + _VERSION_OF.format("$1", "$2", "$3")
VERSIONS = (f"SELECT k.i, {_VERSION_OF.format('k.realm', 'k.domain', 'k.entity')}\n"
            "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(realm, domain, entity, i)")

#: Bytes perhap's own tables (their indexes and TOAST included) take, in the schema it uses.
_SIZE = ("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
         " WHERE c.relkind = 'r' AND c.relname LIKE 'perhap\\_%' AND c.relnamespace = current_schema()::regnamespace")


class VersionProbe:
    """Answers concurrent asks for entities' versions with one statement at a time.

    The version is the one ``perhap_entities`` keeps, written in the same transaction as the
    entity's events, so a statement that finds version v sees every event up to v and none after.
    One statement answers every ask waiting when it is sent; asks made while it runs wait for the
    next one. An ask is therefore answered by a statement sent after it was made, so it sees every
    commit made before it, by any process, as a read of its own would: exact, with one round trip
    for many concurrent asks instead of one each.
    """

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._waiting: dict[Key, list[asyncio.Future[int]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def version(self, realm: str, domain: str, entity: str) -> int:
        """The entity's current version (-1: no events), as of a moment after this call."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((realm, domain, entity), []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="perhap-pg-probe")
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                # Taken out before the statement is sent: later asks wait for the next one.
                waiting, self._waiting = self._waiting, {}
                keys = list(waiting)
                try:
                    if len(keys) == 1:
                        rows = await self._fetch(VERSION, *keys[0])
                    else:
                        rows = await self._fetch(VERSIONS, *map(list, zip(*keys, strict=True)))
                except BaseException as exc:  # StorageUnavailable, or the task cancelled
                    for futures in waiting.values():
                        for f in futures:
                            if f.done():
                                continue
                            if isinstance(exc, Exception):
                                f.set_exception(exc)
                            else:
                                f.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for i, version in rows:
                    for f in waiting[keys[i - 1]]:
                        if not f.done():
                            f.set_result(-1 if version is None else version)
        finally:
            self._task = None
            for futures in self._waiting.values():  # only if cancelled (the store closing)
                for f in futures:
                    f.cancel()
            self._waiting = {}


class PostgresStore(Store):
    """Events in a PostgreSQL database, shared by any number of perhap processes.

    Open with :func:`open_postgres` (or ``perhap.open_store("postgresql://...")``). URL query
    options of ours: ``pool_size`` (read connections, default 10), ``poll_interval`` (seconds a
    subscriber waits for a notification before reading anyway, default 1), ``timeout`` (seconds for
    a connect or a statement, default 10); any other option is passed to asyncpg.
    """

    shared_across_processes = True
    dense_positions = True
    # One writer task takes appends from a FIFO queue and hands out positions in queue order.
    preserves_submission_order = True
    # A plain thread's append crosses to the store's loop once (_submit_from_thread).
    accepts_blocking_appends = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.options = Options.from_url(url)
        self.pool_size = self.options.pool_size
        self.poll_interval = self.options.poll_interval
        self.timeout = self.options.timeout
        self._pool: Pool | None = None
        self._writer = GroupWriter(self.options, self._notify_commit)
        self._put = self._writer.queue.put_nowait
        self._listener = Listener(self.options, self._notify_commit, self._states_heard)
        self._writer_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._states: PostgresStates | None = None
        self._probe = VersionProbe(self._fetch)
        self._size_bytes: int | None = None  # as of the last scrape (refresh_statistics)

    async def open(self) -> PostgresStore:
        """Connect, create or upgrade the schema, and start the writer and the listener."""
        try:
            self._pool = await self.options.create_pool()
            async with self._pool.acquire(timeout=self.timeout) as conn:
                await migrate(conn)
                await warn_if_not_durable(conn)
        except DB_ERRORS as exc:
            await self._close_pool()
            raise StorageUnavailable(f"cannot open the PostgreSQL store: {str(exc) or type(exc).__name__}") from None
        except BaseException:
            await self._close_pool()
            raise
        self._loop = asyncio.get_running_loop()
        self._states = PostgresStates(self._pool_here, self._fetch, self.timeout)
        self._writer_task = asyncio.create_task(self._writer.run(), name="perhap-pg-writer")
        self._listener_task = asyncio.create_task(self._listener.run(), name="perhap-pg-listener")
        return self

    # ----------------------------------------------------------------- writing

    def _submit(self, job: WriteJob) -> None:
        task = self._writer_task
        if task is None or task.done():  # never opened, or the writer stopped
            job.settle(store_closed())
            return
        if job.loop is None:  # a caller on a plain thread (append_blocking)
            self._submit_from_thread(job)
            return
        if job.loop is not self._loop:  # its queue and its futures would wake the wrong loop
            raise RuntimeError(FOREIGN_LOOP)
        self._put(job)

    def _check_loop(self) -> None:
        """Refuse a caller on another loop than the open store's: asyncpg's connections belong to
        it, and such a call failed in asyncio's words, or as a lost connection (a 503), or made
        health() False; refused in one message instead, as on SQLite."""
        if self._pool is not None and asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(FOREIGN_LOOP)

    def _pool_here(self) -> Pool | None:
        """The pool, for a caller on the store's own loop (None: closed or never opened)."""
        self._check_loop()
        return self._pool

    def _submit_from_thread(self, job: WriteJob) -> None:
        """Hand a plain thread's job to the writer by one call on the store's loop: no task and no
        coroutine there for it, and the writer settles its thread-safe future where it runs, so
        the caller is woken once (docs/performance.md, section 19)."""
        loop = self._loop
        assert loop is not None  # (the writer task exists)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("append_blocking on the store's own event loop would wait for that "
                               "loop forever; await append_batch or append_many there")
        try:
            loop.call_soon_threadsafe(self._put_from_thread, job)
        except RuntimeError:  # the loop is closed
            job.settle(store_closed())

    def _put_from_thread(self, job: WriteJob) -> None:
        task = self._writer_task
        if self._closed or task is None or task.done():  # after close() queued STOP, nothing is taken
            job.settle(store_closed())
            return
        self._put(job)

    def _states_heard(self, payload: str | None) -> None:
        if self._states is not None:
            self._states.heard(payload)

    def group_states(self) -> StateTable:
        if self._states is None:
            raise StorageUnavailable("the store is not open: await its open() first")
        return self._states

    @property
    def groups_committed(self) -> int:
        """Write groups committed (one transaction each); read by the benchmarks."""
        return self._writer.groups_committed

    @property
    def events_committed(self) -> int:
        """Events in committed groups; read by the benchmarks."""
        return self._writer.events_committed

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (else subscribers rely on polling alone)."""
        return self._listener.listening

    def statistics(self) -> list[Statistic]:
        figures = [
            Statistic("group_commits", self._writer.groups_committed,
                      "Write groups committed (one fsync each)"),
            Statistic("group_commit_events", self._writer.events_committed,
                      "Events in committed groups (divide by perhap_group_commits_total for the mean group size)"),
        ]
        if self._size_bytes is not None:
            figures.append(Statistic("store_size_bytes", self._size_bytes,
                                     "Bytes perhap's tables take in the database, indexes included", counter=False))
        return figures

    async def refresh_statistics(self) -> None:
        try:  # perhap's own tables only: the database may hold others'
            self._size_bytes = (await self._fetch(_SIZE))[0][0]
        except PerhapError:  # the database is away: the scrape shows no size
            self._size_bytes = None

    # ----------------------------------------------------------------- reading

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        pool = self._pool_here()
        if pool is None:  # closed (a subscription outliving its store) or never opened
            raise store_closed()
        for attempt in range(2):
            try:
                conn = await pool.acquire(timeout=self.timeout)
                held = True
                try:
                    return await conn.fetch(sql, *args)
                except TimeoutError:
                    # asyncpg cancels the statement by a connection of its own, and gives this one
                    # back once that is done: from a hung server, another ``timeout`` later. The
                    # answer does not wait for that clean-up (the first timeout told it enough).
                    _RELEASING.add(task := asyncio.ensure_future(pool.release(conn)))
                    task.add_done_callback(_released)
                    held = False
                    raise
                finally:
                    if held:
                        await pool.release(conn)
            except LOST as exc:
                # A pooled connection may have died with a restarted server: one retry takes a
                # fresh one, and fails fast if the server is really away. Not after a timeout: it
                # waited its whole time already (a retry made a read wait twice ``timeout``).
                if attempt or isinstance(exc, TimeoutError):
                    raise StorageUnavailable(f"the database is unavailable: {exc!r}") from None
            except asyncpg.PostgresError as exc:
                raise StorageUnavailable(f"read failed: {exc}") from None
        raise AssertionError("unreachable")

    async def _read(self, query: ReadQuery) -> list[Event]:
        # Gap-safe in both orders without a horizon: positions are contiguous per realm and a
        # snapshot sees a prefix of them (see .writer), so any one statement is a consistent page.
        sql, params, by_version = read_sql(query)
        rows = await self._fetch(sql, *params)
        if by_version:  # an entity's rows carry only what its scope does not name
            scope = query.scope
            assert scope.domain is not None and scope.entity is not None
            return entity_events(rows, scope.realm, scope.domain, scope.entity)
        return [row_event(r) for r in rows]

    async def entity_version(self, realm: str, domain: str, entity: str) -> int:
        """The entity's current version (-1: no events), read after this call by one statement
        shared with concurrent calls; the page cache's probe (:mod:`perhap.http.pagecache`)."""
        self._check_open()
        self._check_loop()  # (the probe's statement would run on the store's loop for any caller)
        return await self._probe.version(realm, domain, entity)

    async def _find_event(self, event_id: str) -> Event | None:
        rows = await self._fetch(EVENT_BY_ID, event_id)
        return row_event(rows[0]) if rows else None

    async def _names(self, realm: str | None, domain: str | None, entity: str | None,
                     after: str, limit: int) -> list[str]:
        sql, params = names_query(realm, domain, entity)
        return [r[0] for r in await self._fetch(sql, *params, after, limit)]

    async def count(self) -> int:
        """How many events the store holds."""
        count: int = (await self._fetch("SELECT count(*) FROM perhap_events"))[0][0]
        return count

    # ----------------------------------------------------------------- life cycle

    async def health(self) -> bool:
        # Another loop is refused, not told False (the template's health() turns every error of
        # _ping into False).
        if not self._closed:
            self._check_loop()
        return await super().health()

    async def _ping(self) -> bool:
        try:
            await self._fetch("SELECT 1")
        except (PerhapError, *DB_ERRORS):
            return False
        return self._writer_task is not None and not self._writer_task.done()

    async def _close(self) -> None:
        if self._writer_task is not None:
            self._put(STOP)  # queued after every accepted append: those finish first
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


async def open_postgres(url: str) -> PostgresStore:
    """Open (and on first use create) a perhap store in the database the URL names."""
    return await PostgresStore(url).open()


#: Connections given back after a statement's timeout, still waiting for its cancellation.
_RELEASING: set[asyncio.Future[None]] = set()


def _released(task: asyncio.Future[None]) -> None:
    _RELEASING.discard(task)
    if not task.cancelled():
        task.exception()  # (retrieved: a connection that could not be given back is the pool's to drop)
