"""SQLite: what the reliability contract promises whatever the path, the SQLite build or the loop.

- One process owns a store file, whatever name it is opened by: a symlink or a hard link to a
  file another process holds is refused like the file's own name (perhap/backends/sqlite/lock.py).
- A SQLite library allowing fewer bound parameters a statement still takes every group: each
  multi-row statement is cut to the connection's limit (perhap/backends/sqlite/statements.py).
- A store used from an event loop that did not open it refuses every call up front, group state
  writes and health included.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from perhap.backends.sqlite import open_sqlite, schema
from perhap.errors import StorageUnavailable
from perhap.model import AppendResult, Scope, new_event
from perhap.store.job import WriteJob
from tests.helpers import in_another_loop, read_all
from tests.servers import ProcessServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/locks")


def _perhap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, text=True, timeout=60)


def _refusal(path: Path | str, pid: int) -> Callable[[str], None]:
    """A check that a one-line error refuses ``path`` as held by process ``pid``."""
    def check(line: str) -> None:
        assert line.startswith("error: ") and f"{path} is in use by process {pid}, which holds " in line, line
        assert "One process owns a SQLite store" in line and "PostgreSQL" in line, line
    return check


def _posix_locks(path: Path | str) -> list[str]:
    """This process's POSIX (fcntl) locks on the file at ``path``, as /proc/locks lists them."""
    info = os.stat(path)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return [line.split(":", 1)[1] for line in Path("/proc/locks").read_text().splitlines()
            if " POSIX " in line and f" {os.getpid()} {inode} " in line]  # (without the lock's number)


# ------------------------------------------------------------------ one process owns a file, by any name


@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_a_second_process_is_refused_through_a_link(tmp_path: Path, link: str) -> None:
    # Audit: the lock was taken from the path string. A second `perhap serve` on a symlink started
    # (its appends reached the first server's streams only at the next poll); on a hard link it
    # started too, wrote its own -wal file, and the first server never saw its events.
    path = tmp_path / "owned.db"
    other = tmp_path / "other.db"
    server = ProcessServer(f"sqlite:///{path}", cwd=tmp_path).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        if link == "symlink":
            other.symlink_to(path)
        else:
            os.link(path, other)
        refused = _refusal(other, pid)
        second = ProcessServer(f"sqlite:///{other}", cwd=tmp_path)
        try:
            with pytest.raises(RuntimeError, match="exited with 1") as started:
                second.start()
        finally:
            second.kill()  # (should it have started)
        [line] = str(started.value).removeprefix("perhap serve exited with 1: ").strip().splitlines()
        refused(line)
        r = _perhap("export", "--db", f"sqlite:///{other}")  # refused like the file's own name
        assert r.returncode == 1, (r.stdout, r.stderr)
        [line] = r.stderr.strip().splitlines()
        refused(line)
        with pytest.raises(StorageUnavailable, match=f"in use by process {pid}"):
            await open_sqlite(str(other))  # this test's own process is another process too
        assert httpx.post(f"{server.url}/r/d/e/t", json={"event": 1}).status_code == 201
    finally:
        server.kill()  # SIGKILL: the kernel drops both locks with the process
    assert not os.path.exists(f"{other}-wal")  # the refused never wrote a -wal file of their own
    # Free again. The server's commits are in its own name's -wal file (it was killed), so the file
    # is opened by that name first: its clean close moves them into the database.
    for name in (path, other):
        store = await open_sqlite(str(name))
        try:
            assert [e.event for e in await read_all(store, Scope("r"))] == [1]
        finally:
            await store.close()


async def test_names_of_one_file_in_one_process(tmp_path: Path) -> None:
    # In one process a symlink shares the lock with the file's own name (SQLite resolves symlinks
    # too: one -wal file); a hard link, which SQLite would give a -wal file of its own, is refused
    # while a store holds the file, naming this process, and opens once the last store closed.
    path = tmp_path / "one.db"
    symlink, hard = tmp_path / "sym.db", tmp_path / "hard.db"
    first = await open_sqlite(str(path))
    symlink.symlink_to(path)
    os.link(path, hard)
    second = await open_sqlite(str(symlink))
    try:
        await second.append("r", "d", "e", "t", 0)
        assert [e.event for e in await read_all(first, Scope("r"))] == [0]
        with pytest.raises(StorageUnavailable, match=f"{hard} is in use by process {os.getpid()}"):
            await open_sqlite(str(hard))
        await first.close()
        assert _perhap("export", "--db", f"sqlite:///{hard}").returncode == 1  # `second` holds it still
    finally:
        await first.close()
        await second.close()
    r = _perhap("export", "--db", f"sqlite:///{hard}")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3  # the header, the event and the end line
    third = await open_sqlite(str(hard))
    await third.close()


async def test_a_symlink_to_a_file_not_made_yet_locks_the_file_it_makes(tmp_path: Path) -> None:
    path, link = tmp_path / "later.db", tmp_path / "link.db"
    link.symlink_to(path)
    store = await open_sqlite(str(link))
    try:
        assert path.is_file()
        await store.append("r", "d", "e", "t", 0)
        r = _perhap("export", "--db", f"sqlite:///{path}")
        assert r.returncode == 1 and f"in use by process {os.getpid()}" in r.stderr, r.stderr
    finally:
        await store.close()


async def test_closing_a_store_leaves_other_connections_of_the_process_their_locks(tmp_path: Path) -> None:
    # The store holds a descriptor of the database file (its lock follows the inode). Closing any
    # descriptor of a file drops every POSIX lock the process holds on it, SQLite's included: a
    # connection that is not the store's, still open in this process, must keep its lock.
    path = tmp_path / "kept.db"
    store = await open_sqlite(str(path))
    await store.append("r", "d", "e", "t", 0)
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    held = _posix_locks(path)
    assert held, "a WAL connection keeps a shared lock on the database file"
    await store.close()
    assert _posix_locks(path) == held
    conn.close()
    again = await open_sqlite(str(path))  # the descriptor kept meanwhile is let go here
    await again.close()
    assert _posix_locks(path) == []


# ------------------------------------------------------------------ a lower limit on bound parameters


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The writer's connection allows 250 bound parameters a statement (a SQLite built with a lower
    SQLITE_MAX_VARIABLE_NUMBER): 20 event rows of 12."""
    connect = schema.connect

    def limited_connect(path: str, *, synchronous: str) -> sqlite3.Connection:
        conn = connect(path, synchronous=synchronous)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 250)
        return conn

    monkeypatch.setattr(schema, "connect", limited_connect)  # open_database's, the writer's
    yield 250


async def test_every_group_fits_a_lower_variable_limit(tmp_path: Path, limited: int) -> None:
    # Audit: a group of 21-64 rows went as one statement of 252-768 parameters whatever the
    # connection allowed: "too many SQL variables" (503) for every batch of that size.
    store = await open_sqlite(str(tmp_path / "limited.db"))
    try:
        assert store._writer is not None
        assert store._writer.state.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == limited
        sizes = [*range(1, 81), 100, 127, 128, 129, 200]
        for n in sizes:
            result = await store.append_batch("r", "batches", f"e{n}", [new_event("t", [n, i]) for i in range(n)])
            assert result.created and len(result.events) == n
        # Many entities new to the store in one multi-entity append (their rows, types and look-ups).
        many = [{"entity": f"m{i}", "type": f"t{i % 70}", "event": i} for i in range(200)]
        assert len((await store.append_many("r", "many", many)).events) == 200
        # Concurrent singles: groups of every size, to entities the writer's caches know.
        await asyncio.gather(*(store.append("r", "singles", f"s{i % 5}", "t", i) for i in range(5)))
        results = await asyncio.gather(*(store.append("r", "singles", f"s{i % 5}", "t", i) for i in range(5, 400)))
        assert all(isinstance(r, AppendResult) and r.created for r in results)
        for n in sizes:
            events = await read_all(store, Scope("r", "batches", f"e{n}"))
            assert [e.event for e in events] == [[n, i] for i in range(n)]
        assert [(e.entity, e.type, e.event) for e in await read_all(store, Scope("r", "many"))] == \
            [(f"m{i}", f"t{i % 70}", i) for i in range(200)]
        for k in range(5):
            assert [e.event for e in await read_all(store, Scope("r", "singles", f"s{k}"))] == list(range(k, 400, 5))
        positions = [e.position for e in await read_all(store, Scope("r"))]
        assert positions == list(range(1, sum(sizes) + 200 + 400 + 1))
    finally:
        await store.close()


def test_a_lower_variable_limit_keeps_groups_on_the_fast_path(tmp_path: Path) -> None:
    # Every multi-row statement (events, new entities, their types, the look-up of many entities,
    # client ids looked up) fits the connection's limit: none fails and sends the group down the
    # careful path.
    from perhap.backends.sqlite.writer import apply_together
    from perhap.backends.sqlite.writes import WriterState

    conn = schema.open_database(f"{tmp_path}/small.db", synchronous="OFF")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)
    state = WriterState(conn)
    loop = asyncio.new_event_loop()
    try:
        jobs = [WriteJob("r", "d", f"e{i}", [new_event(f"t{i}-{k}", k) for k in range(3)], -1, loop)
                for i in range(100)]
        conn.execute("BEGIN IMMEDIATE")
        state.check_external_writes()
        outcomes = apply_together(state, jobs, "2026-01-01T00:00:00.000000Z")
        assert outcomes is not None, "the fast path fell back to the careful one"
        conn.execute("COMMIT")
        assert all(isinstance(o.outcome, AppendResult) and o.outcome.created for o in outcomes)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 300
        ids = [f"00000000-0000-4000-8000-{i:012x}" for i in range(60)]
        retried = WriteJob("r", "d", "c", [new_event("t", i, ids[i]) for i in range(60)], None, loop)
        state.apply(retried, "2026-01-01T00:00:00.000000Z")
        again = state.apply(retried, "2026-01-01T00:00:00.000000Z")  # the ids looked up, 40 at most a statement
        assert not again.created and [e.event_id for e in again.events] == ids
    finally:
        loop.close()
        conn.close()


# ------------------------------------------------------------------ one event loop


async def test_group_state_and_health_refuse_another_event_loop(tmp_path: Path) -> None:
    # Audit: from a loop that did not open the store, group state reads were refused, but writes
    # (put, delete) were stored, and health() said False instead of refusing.
    store = await open_sqlite(str(tmp_path / "loops.db"))
    try:
        states = store.group_states()
        assert await states.put("r", "g", b"{}", "t1", None)
        calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "append": lambda: store.append("r", "d", "e", "t", 1),
            "read": lambda: store.read(Scope("r", "d")),
            "keys": lambda: store.keys("r"),
            "state get": lambda: states.get("r", "g"),
            "state names": lambda: states.names(None),
            "state put (create)": lambda: states.put("r", "new", b"{}", "t1", None),
            "state put (update)": lambda: states.put("r", "g", b"[]", "t2", "t1"),
            "state delete": lambda: states.delete("r", "g", "t1"),
            "health": store.health,
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="belongs to the event loop that opened it"):
                in_another_loop(call)
                pytest.fail(f"{name} from another loop was not refused")
        record = await states.get("r", "g")
        assert record is not None and (record.token, record.data) == ("t1", b"{}")  # nothing was written
        assert await states.names(None) == [("r", "g")]
        assert await store.health()
    finally:
        await store.close()
    assert not await store.health()  # closed: False, from any loop
    assert in_another_loop(store.health) is False
