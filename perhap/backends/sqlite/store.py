"""The embedded SQLite backend: one writer thread with group commit, readers on a thread pool.

Design, and why:
- WAL mode with ``synchronous=FULL``: every commit is fsync'd before any append is acknowledged,
  and readers never wait for the writer.
- Appends go to one writer thread (:mod:`.writer`), which commits whatever queued up meanwhile
  as one transaction: concurrent clients share one fsync.
- Small reads run on the event loop itself: handing a read of a few rows to a thread costs more
  than the read, and a pool thread waits for the GIL at every row.
- Live subscribers of realms and domains read a ring of recently committed events kept on the
  event loop (:mod:`.ring`) instead of querying the database once per commit each.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ...errors import StorageUnavailable
from ...model import Cursor, Event, Scope
from ...store.base import Statistic, Store, WriteJob
from ...store.groupcommit import STOP
from . import queries
from .ring import Ring
from .schema import SYNCHRONOUS, connect, last_seq, open_database
from .writer import Writer

#: Reads of at most this many rows run on the event loop itself rather than in the thread pool.
INLINE_ROWS = 1001

_T = TypeVar("_T")


class SQLiteStore(Store):
    """Events in one SQLite file. Only one server process should own a file at a time."""

    shared_across_processes = False
    # One writer thread takes appends from a FIFO queue: appends started in order commit in order.
    preserves_submission_order = True
    poll_interval = 5.0  # wake-ups come from the writer thread; polling only covers other processes

    def __init__(self, path: str, *, synchronous: str = "FULL", url: str | None = None) -> None:
        super().__init__()
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError("synchronous must be FULL, NORMAL, EXTRA or OFF")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.synchronous = synchronous.upper()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: Writer | None = None
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perhap-sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._ring = Ring()

    async def open(self) -> SQLiteStore:
        """Create or check the schema and start the writer thread."""
        conn = open_database(self.path, synchronous=self.synchronous)
        self._loop = asyncio.get_running_loop()
        self._ring.start(last_seq(conn))
        self._writer = Writer(conn, self._queue, self._ring, self._loop, self._committed)
        self._writer.thread.start()
        return self

    # ----------------------------------------------------------------- writing

    def _submit(self, job: WriteJob) -> None:
        # The writer never looks at the future before writing: it commits the job all the same
        # when its caller stops waiting.
        self._queue.put(job)

    def _committed(self, events: list[Event] | None, last: int | None) -> None:
        """On the loop, after each commit (in commit order): extend the ring, wake the waiters."""
        self._ring.committed(events, last)
        self._notify_commit()

    @property
    def groups_committed(self) -> int:
        """Write groups committed, one fsync each."""
        return 0 if self._writer is None else self._writer.groups_committed

    @property
    def events_committed(self) -> int:
        """Events written by committed groups."""
        return 0 if self._writer is None else self._writer.events_committed

    def statistics(self) -> list[Statistic]:
        return [
            Statistic("group_commits", self.groups_committed, "Write groups committed (one fsync each)"),
            Statistic("group_commit_events", self.events_committed,
                      "Events in committed groups (divide by perhap_group_commits_total for the mean group size)"),
            Statistic("store_size_bytes", self._size(), "Bytes the store takes on disk", counter=False),
        ]

    def _size(self) -> int:
        """The database file and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    # ----------------------------------------------------------------- reading

    async def _read_after(self, scope: Scope, after: Cursor | None, limit: int) -> list[Event]:
        # Subscriptions call this directly, not through a method that checks the store is open.
        self._check_open()
        if isinstance(after, tuple):
            raise TypeError("a SQLite cursor is an integer")
        if asyncio.get_running_loop() is self._loop:
            ring = self._ring
            from_ring = ring.read(scope, after, limit, self.poll_interval)
            if from_ring is not None:
                return from_ring
            # Every commit notified so far is visible to the read that starts now.
            known = ring.known()
            events = await self._run(self._read_sync, scope, after, limit, inline=limit <= INLINE_ROWS)
            if not events and scope.entity is None and known is not None:
                ring.nothing_after(scope, after, known)  # nothing up to at least that commit
            return events
        return await self._run(self._read_sync, scope, after, limit, inline=limit <= INLINE_ROWS)

    def _read_sync(self, scope: Scope, after: int | None, limit: int) -> list[Event]:
        return queries.read_scope(self._reader(), scope, after, limit)

    async def _find_event(self, event_id: str) -> Event | None:
        return await self._run(self._find_sync, event_id, inline=True)

    def _find_sync(self, event_id: str) -> Event | None:
        return queries.find_event(self._reader(), event_id)

    async def _names(self, realm: str | None, domain: str | None, entity: str | None,
                     after: str, limit: int) -> list[str]:
        sql, params = queries.names_query(realm, domain, entity)
        args = (*params, after, limit)

        def run() -> list[str]:
            return [r[0] for r in self._reader().execute(sql, args)]

        return await self._run(run, inline=limit <= INLINE_ROWS)

    async def count(self) -> int:
        """How many events the store holds."""
        self._check_open()

        def run() -> int:
            n: int = self._reader().execute("SELECT count(*) FROM events").fetchone()[0]
            return n

        return await self._run(run)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous=self.synchronous)
            conn.execute("PRAGMA query_only=1")
            if getattr(self._local, "inline", False):
                conn.execute("PRAGMA busy_timeout=0")  # never block the event loop: use the pool
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _run(self, fn: Callable[..., _T], *args: object, inline: bool = False) -> _T:
        """Run a read in the pool, or with ``inline`` (a small read) right here on the loop.

        A small read costs less than the hand-off to a thread and back, and on the loop it
        never waits for the GIL between rows; one that would block (busy) retries in the pool.
        """
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

    # ----------------------------------------------------------------- life cycle

    async def _ping(self) -> bool:
        await self._run(lambda: self._reader().execute("SELECT 1").fetchone(), inline=True)
        return self._writer is not None and self._writer.thread.is_alive()

    async def _close(self) -> None:
        if self._writer is not None:
            self._queue.put(STOP)  # queued after every accepted append: those finish first
            await asyncio.get_running_loop().run_in_executor(None, self._writer.thread.join)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()


async def open_sqlite(path: str, *, synchronous: str = "FULL", url: str | None = None) -> SQLiteStore:
    """Open (creating if needed) the store in the SQLite file ``path``."""
    return await SQLiteStore(path, synchronous=synchronous, url=url).open()
