"""Group state on SQLite: the ``perhap_groups`` table (:mod:`perhap.store.states`).

A write is one statement that names what it expects: an UPDATE or DELETE ``WHERE token = ?``, or
an INSERT OR IGNORE for a create; the number of rows it changed says whether it was applied.

Writes go to a thread of their own with a connection of its own, never to the event loop: a
commit waits for its fsync (``synchronous`` as for appends, FULL by default), and for the file's
write lock while the event writer holds it (the connection's busy timeout). Like the event writer,
and with its machinery (:mod:`perhap.store.groupcommit`), the thread commits every write queued
while it was busy in one transaction (group commit), each
statement deciding its own write: writes to different documents share one fsync, and two writes
to one document are decided in the order they were queued. A failed transaction fails each of its
writes, none of which was then stored.

Reads go through the store's readers (a small read on the event loop itself): in WAL mode a read
that starts after a commit sees it, whichever connection made it. Like the store, the table
belongs to the event loop that opened the store: reads and writes from another loop are refused
up front (RuntimeError), as the store's own calls are.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ...errors import StorageUnavailable, store_closed
from ...store.groupcommit import STOP, settle_group, take_group
from ...store.job import settle_future
from ...store.states import StateRecord, StateTable, check_size
from .schema import connect

_T = TypeVar("_T")

MAX_GROUP = 1000  # writes in one transaction


class Reads(Protocol):
    """How the store runs a read: ``fn`` gets a reader connection (see SQLiteStore._read_states)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], _T]) -> Awaitable[_T]: ...


class _Write:
    """One statement on its way to the thread, and its outcome (applied or not) on the way back."""

    __slots__ = ("sql", "args", "future")

    def __init__(self, sql: str, args: tuple[Any, ...], future: asyncio.Future[bool]) -> None:
        self.sql, self.args, self.future = sql, args, future

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.future.get_loop()

    def settle(self, outcome: bool | BaseException) -> None:
        """On the caller's loop: a caller that stopped waiting is skipped."""
        settle_future(self.future, outcome)


class SQLiteStates(StateTable):
    """The state documents of one SQLite store; its thread runs from open to close."""

    def __init__(self, path: str, synchronous: str, reads: Reads, check_loop: Callable[[], None]) -> None:
        """``reads`` runs a read for the store, ``check_loop`` refuses a loop that did not open it."""
        self.path, self.synchronous, self.reads, self.check_loop = path, synchronous, reads, check_loop
        self._writes: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        # Held to queue a write and to close the queue: no write is queued after the last look.
        self._guard = threading.Lock()
        self.groups_committed = 0
        self._thread = threading.Thread(target=self._run, name="perhap-sqlite-states", daemon=True)
        self._thread.start()

    async def get(self, realm: str, name: str) -> StateRecord | None:
        def run(conn: sqlite3.Connection) -> StateRecord | None:
            row = conn.execute("SELECT token, data FROM perhap_groups WHERE realm = ? AND name = ?",
                               (realm, name)).fetchone()
            return None if row is None else StateRecord(row[0], bytes(row[1]))

        self._check_open()
        return await self.reads(run)

    async def names(self, realm: str | None) -> list[tuple[str, str]]:
        # BINARY collation compares UTF-8 bytes: code point order, as Python sorts strings.
        def run(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            if realm is None:
                rows = conn.execute("SELECT realm, name FROM perhap_groups ORDER BY realm, name")
            else:
                rows = conn.execute("SELECT realm, name FROM perhap_groups WHERE realm = ? ORDER BY name",
                                    (realm,))
            return [(r[0], r[1]) for r in rows]

        self._check_open()
        return await self.reads(run)

    async def put(self, realm: str, name: str, data: bytes, token: str, expected: str | None,
                  limit: int | None = None) -> bool:
        check_size(data, limit)
        if expected is None:
            return await self._write("INSERT OR IGNORE INTO perhap_groups (realm, name, token, data) "
                                     "VALUES (?, ?, ?, ?)", (realm, name, token, data))
        return await self._write("UPDATE perhap_groups SET token = ?, data = ? "
                                 "WHERE realm = ? AND name = ? AND token = ?",
                                 (token, data, realm, name, expected))

    async def delete(self, realm: str, name: str, expected: str) -> bool:
        return await self._write("DELETE FROM perhap_groups WHERE realm = ? AND name = ? AND token = ?",
                                 (realm, name, expected))

    async def _write(self, sql: str, args: tuple[Any, ...]) -> bool:
        self._check_open()
        self.check_loop()  # (the thread would answer on the caller's loop: refused like a read)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._guard:
            self._check_open()
            # Once queued, the write is made even if its caller stops waiting.
            self._writes.put(_Write(sql, args, future))
        return await future

    def _check_open(self) -> None:
        if self._closed:
            raise store_closed()

    async def close(self) -> None:
        """Finish the writes already queued, then stop the thread (from any event loop)."""
        with self._guard:
            self._closed = True
            self._writes.put(STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        error: BaseException = store_closed()
        try:
            conn = connect(self.path, synchronous=self.synchronous)
            stop = False
            while not stop:
                first = self._writes.get()
                if first is STOP:
                    break
                assert isinstance(first, _Write)
                group, stop = take_group(first, self._writes.get_nowait, MAX_GROUP, size=_one)
                self._commit(conn, group)
        except BaseException as exc:  # a bug, or the file cannot be opened: fail what waits
            error = StorageUnavailable(f"the group state thread stopped: {exc!r}")
            raise
        finally:
            if conn is not None:
                conn.close()
            with self._guard:  # after a failure: fail the writes still queued, and refuse more
                self._closed = True
                while True:
                    try:
                        item = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Write):
                        settle_group([(item, error)], from_thread=True)

    def _commit(self, conn: sqlite3.Connection, group: list[_Write]) -> None:
        """Decide every write of the group in one transaction, commit it with one fsync, answer."""
        outcomes: list[bool | BaseException]
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = [conn.execute(w.sql, w.args).rowcount == 1 for w in group]
            conn.execute("COMMIT")
            self.groups_committed += 1
        except Exception as exc:  # the transaction failed (disk full, I/O error): nothing is stored
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            outcomes = [StorageUnavailable(f"write failed: {exc}")] * len(group)
        settle_group(list(zip(group, outcomes, strict=True)), from_thread=True)


def _one(write: _Write) -> int:
    return 1
