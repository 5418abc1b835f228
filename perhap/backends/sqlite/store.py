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
- Each commit moves the commit marker (which the page cache trusts) on the committing thread, before
  any caller hears of it. Its notice for the loop (the ring, the subscribers' wake-up) goes
  through one list, in commit order (``_pending``). A commit that nobody on the loop is waiting
  for (its callers are on plain threads, no subscriber waits, nobody read the ring lately) does
  not wake the loop: its notice waits in the list until the loop next reads or starts to wait,
  and each of those first takes in every notice waiting (``_take_notices``).
- One process owns the file (:mod:`.lock`): another process that opens it is refused.
- A store belongs to the event loop that opened it: reads and appends from another loop are
  refused up front (RuntimeError), so the writer only ever answers one loop, and an append never
  waits on a writer thread that has stopped (StorageUnavailable).
- Consumer groups' state documents are written by a thread of their own, with group commit
  too (:mod:`.states`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

from ...errors import StorageUnavailable
from ...model import Event
from ...store.base import Statistic, Store
from ...store.groupcommit import STOP
from ...store.job import WriteJob
from ...store.query import ReadQuery
from ...store.states import StateTable
from . import queries, reads
from .lock import FileLock, acquire
from .ring import Ring
from .schema import SYNCHRONOUS, check_directory, connect, last_seq, open_database
from .states import SQLiteStates
from .writer import Writer

#: Reads of at most this many rows run on the event loop itself rather than in the thread pool.
INLINE_ROWS = 1001

_T = TypeVar("_T")


def _walks_the_entity(query: ReadQuery) -> bool:
    """Whether a read filters an entity's walk (types, positions: no index holds them, so its cost
    is the entity's size, not the page's): it goes to the pool, however small its page, so that a
    large entity cannot hold the event loop (and every other request) while it is walked."""
    return query.scope.entity is not None and bool(
        query.types or query.after_position is not None or query.before_position is not None)


class SQLiteStore(Store):
    """Events in one SQLite file, owned by one process (another process is refused at open)."""

    shared_across_processes = False
    dense_positions = True
    # One writer thread takes appends from a FIFO queue: appends started in order commit in order.
    preserves_submission_order = True
    # The writer is a thread fed by a thread-safe queue: a caller on another thread may hand it a job
    # directly (append_blocking) and be settled from the writer, skipping the event loop both ways.
    accepts_blocking_appends = True
    # Wake-ups come from the writer thread; polling only covers another store on the same file in
    # this process, or a tool other than perhap writing the file.
    poll_interval = 5.0

    def __init__(self, path: str, *, synchronous: str = "FULL", url: str | None = None) -> None:
        super().__init__()
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError("synchronous must be FULL, NORMAL, EXTRA or OFF")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.synchronous = synchronous.upper()
        if self.synchronous == "OFF":  # as PostgreSQL's fsync = off is warned about at open
            logging.getLogger("perhap.sqlite").warning(
                "the SQLite store runs with synchronous=off: an acknowledged append (201) is lost if the "
                "machine crashes or loses power before the OS writes it out (a crash of this process alone "
                "loses nothing); drop ?synchronous=off for data that matters")
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: Writer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: FileLock | None = None
        #: The file's real path (what SQLite names its WAL after; a later chdir aside) and its
        #: (device, inode), both taken at open.
        self._real_path, self._file_key = path, (0, 0)
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="perhap-sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._ring = Ring()
        self._states: SQLiteStates | None = None
        # Commit notices on their way from the committing thread to the loop, in commit order;
        # a run of notices without events is kept as its last (each one only resets the ring).
        self._notice_lock = threading.Lock()
        self._pending: list[tuple[list[Event] | None, int | None, int]] = []
        self._wake_scheduled = False  # a _take_notices is queued on the loop
        #: The file's commit marker as of this store's last commit the ring took in: another store
        #: of the process on the file moved it since when they differ, and the ring, which holds
        #: this store's commits alone, cannot answer (its reads go to the file).
        self._ring_marker = 0

    async def open(self) -> SQLiteStore:
        """Take the file's lock, create or check the schema and start the writer thread."""
        check_directory(self.path)
        self._lock = acquire(self.path)
        self._ring_marker = self._lock.commit_marker  # (before the last seq: see _ring_marker)
        conn = None
        try:
            conn = open_database(self.path, synchronous=self.synchronous)
            # The file SQLite opened (not the lock's: a store of this process still closing on a
            # file deleted since shares the lock, and a new file is made under the name).
            self._real_path, self._file_key = _identity(self.path)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._lock.release()
            self._lock = None
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot open {self.path}: {exc.strerror}") from None
            raise
        self._loop = asyncio.get_running_loop()
        self._ring.start(last_seq(conn))
        self._writer = Writer(conn, self._queue, self._ring, self._commit_notice, self._file_problem,
                              lambda: 0 if self._lock is None else self._lock.commit_marker)
        self._writer.thread.start()
        self._states = SQLiteStates(self.path, self.synchronous, self._read_states, self._check_loop)
        return self

    # ----------------------------------------------------------------- writing

    def _submit(self, job: WriteJob) -> None:
        writer = self._writer
        if writer is None or (job.loop is not self._loop and job.loop is not None):
            raise self._foreign()
        # A caller on a plain thread commits its job itself when the writer is idle.
        if job.loop is None and writer.commit_inline(job):
            return
        # The writer never looks at the future before writing: it commits the job all the same
        # when its caller stops waiting.
        self._queue.put(job)
        # Checked after the put: a writer that stopped before it settles every job queued by then.
        if writer.failure is not None:
            job.settle(StorageUnavailable(writer.failure))

    def _check_loop(self) -> None:
        """Refuse a caller on an event loop other than the store's (or on none)."""
        if asyncio.get_running_loop() is not self._loop:
            raise self._foreign()

    def _foreign(self) -> Exception:
        """The error for a store used before open() or from an event loop that did not open it."""
        if self._loop is None:
            return StorageUnavailable("the store is not open: await its open() first")
        return RuntimeError("this SQLiteStore belongs to the event loop that opened it; "
                            "open another store for this loop (several may share a file in one process)")

    def _commit_notice(self, events: list[Event] | None, last: int | None, loop_jobs: bool, before: int) -> None:
        """On the committing thread, after each commit that stored events, in commit order: move
        the commit marker, and pass the notice to the loop, waking it unless nobody there waits
        for this commit. The ring may vouch for the file only if no other store of the process
        took a marker since ``before`` (read before the group's first statement): one that
        committed around this commit would otherwise hide behind this store's marker."""
        lock = self._lock
        # Every store of this process on the file sees it at once.
        marker = 0 if lock is None else lock.committed()
        if marker != before + 1 and lock is not None:
            marker = -1  # never the file's: the ring answers nothing until a commit of its own alone
        with self._notice_lock:
            pending = self._pending
            if events is None and pending and pending[-1][0] is None:
                pending[-1] = (None, last, marker)  # the later reset says all the earlier one did
            else:
                pending.append((events, last, marker))
            # Defer only when nothing on the loop waits: no caller of this group (a loop's
            # callers are answered after their notice), no subscriber (waiters are added under
            # this lock, see _add_waiter), no ring reader (events is None).
            if self._wake_scheduled or (events is None and not loop_jobs and not self._waiters):
                return
            self._wake_scheduled = True
        try:
            cast(asyncio.AbstractEventLoop, self._loop).call_soon_threadsafe(self._take_notices)
        except RuntimeError:  # the store's loop is closed: nobody is left to tell
            with self._notice_lock:
                self._pending.clear()
                self._wake_scheduled = False

    def _take_notices(self) -> None:
        """On the loop: extend the ring with every commit notice waiting, in commit order, then wake
        the waiters once. A read started after this sees those commits, through the ring or the
        file. Callers on a loop are answered after it runs (settle_group); a caller on a plain
        thread (append_blocking) may be answered first, so every read and wait on the loop calls
        this first when notices wait: it never acts on a ring or a change token older than a
        commit whose caller it has heard from."""
        with self._notice_lock:
            pending, self._pending = self._pending, []
            self._wake_scheduled = False
        if not pending:
            return
        for events, last, _ in pending:
            self._ring.committed(events, last)
        self._ring_marker = pending[-1][2]
        self._notify_commit()

    def _add_waiter(self, waiter: asyncio.Future[None]) -> None:
        # Under the notice lock, so a commit either sees the waiter and wakes the loop, or came
        # before it and is taken in here (which wakes the waiter at once).
        with self._notice_lock:
            self._waiters.add(waiter)
            unannounced = bool(self._pending) and not self._wake_scheduled
        if unannounced:
            self._take_notices()

    def _change_token(self) -> int:
        if self._pending:
            self._take_notices()
        return super()._change_token()

    def _file_problem(self) -> str | None:
        """Why the file this store writes is no longer the one its name opens, or None: deleted,
        renamed or replaced while open, what is committed to it would be lost (or its write-ahead
        log, named after the name, applied to another file) at the next open."""
        try:
            now = os.stat(self._real_path)
        except OSError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == self._file_key:
            return None
        return (f"{self.path} is no longer the file this store opened (deleted, renamed or replaced while open): "
                "nothing more is written; restart perhap")

    def commit_marker(self) -> int | None:
        # This process alone writes the file (the lock), and every store of this process on it
        # moves the lock's marker after each commit that stored events, before answering any of
        # its callers (see _commit_notice).
        return None if self._lock is None else self._lock.commit_marker

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

    async def _read(self, query: ReadQuery) -> list[Event]:
        self._check_loop()
        if self._pending:
            self._take_notices()
        ring, lock = self._ring, self._lock
        from_ring = ring.read(query, self.poll_interval) if lock is None or lock.commit_marker == self._ring_marker \
            else None
        if from_ring is not None:
            return from_ring
        # Every commit notified so far is visible to the read that starts now.
        known = ring.known()
        events, last = await self._run(self._read_sync, query, inline=query.limit <= INLINE_ROWS
                                       and not _walks_the_entity(query))
        if events:
            ring.saw(last)
        elif known is not None and ring.may_serve(query):
            ring.nothing_after(query, known)  # nothing up to at least that commit
        return events

    def _read_sync(self, query: ReadQuery) -> tuple[list[Event], int]:
        return reads.read_events(self._reader(), query)

    async def _find_event(self, event_id: str) -> Event | None:
        event = await self._run(self._find_sync, event_id, inline=True)
        if event is not None:
            self._ring.saw(cast(int, event.cursor))
        return event

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

    async def _read_states(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """A read of group state (:mod:`.states`) on a reader connection."""
        return await self._run(lambda: fn(self._reader()), inline=True)

    def group_states(self) -> StateTable:
        if self._states is None:
            raise self._foreign()
        return self._states

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
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise self._foreign()
        try:
            if inline:
                self._local.inline = True
                try:
                    return fn(*args)
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                finally:
                    self._local.inline = False
            return await loop.run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"read failed: {exc}") from None

    # ----------------------------------------------------------------- life cycle

    async def health(self) -> bool:
        # An open store answers its own loop only: another loop is refused, not told False (the
        # template's health() turns every error of _ping into False).
        if not self._closed and self._loop is not None:
            self._check_loop()
        return await super().health()

    async def _ping(self) -> bool:
        await self._run(lambda: self._reader().execute("SELECT 1").fetchone(), inline=True)
        return self._writer is not None and self._writer.failure is None and self._writer.thread.is_alive()

    async def _close(self) -> None:
        # From any loop: closing must work even after the loop that opened the store has ended.
        if self._writer is not None:
            self._queue.put(STOP)  # queued after every accepted append: those finish first
            await asyncio.get_running_loop().run_in_executor(None, self._writer.thread.join)
        if self._states is not None:
            await self._states.close()
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _identity(path: str) -> tuple[str, tuple[int, int]]:
    """A file's real path and its (device, inode)."""
    real = os.path.realpath(path)
    info = os.stat(real)
    return real, (info.st_dev, info.st_ino)


async def open_sqlite(path: str, *, synchronous: str = "FULL", url: str | None = None) -> SQLiteStore:
    """Open (creating if needed) the store in the SQLite file ``path``."""
    return await SQLiteStore(path, synchronous=synchronous, url=url).open()
