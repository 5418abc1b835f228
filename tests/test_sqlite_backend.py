"""The SQLite backend's own machinery: the writer's two paths agree, and the subscriber ring is exact.

- The writer batches a group's statements (the fast path) and falls back to one SAVEPOINT per job
  (the careful path) when a statement fails; the fast path must decide and store exactly what the
  careful path would. Checked on random groups against two fresh databases.
- Live subscribers of realms and domains read a ring of recent events; under concurrent appenders,
  forced ring trims and a second writer on the same file, each still sees every event of its scope
  once, in commit order.
- A store belongs to the event loop that opened it; the writer thread outlives that loop, and an
  append never waits on a writer that stopped.
- One process owns a file: a second process is refused at open, and the lock dies with the owner.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perhap.backends import open_store
from perhap.backends.sqlite import SQLiteStore, open_sqlite
from perhap.backends.sqlite import ring as ring_module
from perhap.backends.sqlite import schema as schema_module
from perhap.backends.sqlite.schema import open_database
from perhap.backends.sqlite.statements import insert_chunks
from perhap.backends.sqlite.writer import JobOutcome, apply_each, apply_together
from perhap.backends.sqlite.writes import WriterState
from perhap.errors import EventIdConflict, PerhapError, StorageUnavailable, VersionConflict
from perhap.model import AppendResult, Event, NewEvent, Scope, new_event
from perhap.store.job import WriteJob
from tests.helpers import in_another_loop, wait_until
from tests.servers import ProcessServer

TS = "2026-01-01T00:00:00.000000Z"
CLIENT_IDS = [f"00000000-0000-4000-8000-{i:012x}" for i in range(6)]
TABLES = ("realms", "domains", "entities", "types", "entity_types", "events")

# ------------------------------------------------------------------ the writer's two paths


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop for the jobs' futures only: the paths under test never settle them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _events(specs: list[tuple[int, int, int | None, bool]]) -> list[NewEvent]:
    """A batch from (type, data, client id or None, keep an original timestamp) specs."""
    batch: list[NewEvent] = []
    used: set[int] = set()
    for type_, data, client, stamped in specs:
        if client in used:  # a batch never holds the same id twice
            client = None
        if client is not None:
            used.add(client)
        batch.append(new_event(f"t{type_}", {"n": data}, None if client is None else CLIENT_IDS[client],
                               timestamp="2020-05-05T05:05:05Z" if stamped else None))
    return batch


#: (type, data, client id or None, keep an original timestamp); server-made ids are the usual case.
_event = st.tuples(st.integers(0, 2), st.integers(0, 1),
                   st.sampled_from([None, None, None, None, *range(len(CLIENT_IDS))]), st.booleans())
_place = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 2))
_expected = st.sampled_from([None, None, None, -1, 0, 1, 2, 3])
#: ("new", place, expected, events) or ("again", place or None (the same place), expected, (which
#: earlier batch, keep its server-made ids)): "again" sends an earlier batch's events again, there
#: or elsewhere; a server-made id sent twice (a clock gone backwards) makes a statement fail.
_job = (st.tuples(st.just("new"), _place, _expected, st.lists(_event, min_size=1, max_size=4))
        | st.tuples(st.just("again"), st.none() | _place, _expected,
                    st.tuples(st.integers(0, 50), st.sampled_from([False, False, False, True]))))
_groups = st.lists(st.lists(_job, min_size=1, max_size=6), min_size=1, max_size=5)


def _build(groups: list[list[Any]], loop: asyncio.AbstractEventLoop) -> list[list[WriteJob]]:
    built: list[WriteJob] = []
    out: list[list[WriteJob]] = []
    for group in groups:
        jobs: list[WriteJob] = []
        key: tuple[str, str, str]
        for kind, place, expected, what in group:
            if kind == "again" and built:
                earlier = built[what[0] % len(built)]
                batch = [e for e in earlier.batch if e.client_id or what[1]] or _events([(0, 0, None, False)])
                key = earlier.key if place is None else (f"r{place[0]}", f"d{place[1]}", f"e{place[2]}")
            else:
                batch = _events(what) if kind == "new" else _events([(0, 0, None, False)])
                place = place or (0, 0, 0)
                key = (f"r{place[0]}", f"d{place[1]}", f"e{place[2]}")
            realm, domain, entity = key
            job = WriteJob(realm, domain, entity, batch, expected, loop)
            jobs.append(job)
            built.append(job)
        out.append(jobs)
    return out


def _fresh(directory: str, name: str) -> WriterState:
    return WriterState(open_database(f"{directory}/{name}.db", synchronous="OFF"))


def _careful(state: WriterState, jobs: list[WriteJob]) -> list[JobOutcome]:
    """The careful path as the writer takes it (keeping its record of the last seq)."""
    conn = state.conn
    conn.execute("BEGIN IMMEDIATE")
    state.check_external_writes()
    outcomes = apply_each(state, jobs, TS)
    conn.execute("COMMIT")
    state.last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return outcomes


def _fast(state: WriterState, jobs: list[WriteJob]) -> list[JobOutcome] | None:
    """The fast path as the writer takes it; None (rolled back) when it hands over to the careful one."""
    conn = state.conn
    conn.execute("BEGIN IMMEDIATE")
    state.check_external_writes()
    outcomes = apply_together(state, jobs, TS)
    if outcomes is None:
        conn.execute("ROLLBACK")
        state.forget()
        return None
    conn.execute("COMMIT")
    # What the ring relies on: the last seq the fast path took is the last seq stored.
    assert state.seq == conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    state.last_seq = state.seq
    return outcomes


def _decided(outcomes: list[JobOutcome]) -> list[Any]:
    decided: list[Any] = []
    for _, outcome in outcomes:
        if isinstance(outcome, AppendResult):
            decided.append(outcome)
        else:
            assert isinstance(outcome, PerhapError), outcome
            decided.append((type(outcome).__name__, outcome.detail, outcome.extra))
    return decided


def _rows(state: WriterState) -> dict[str, list[Any]]:
    return {t: state.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def _run_both(directory: str, groups: list[list[WriteJob]]) -> int:
    """Every group through both paths on two fresh databases; how many groups the fast path took."""
    fast, careful = _fresh(directory, "fast"), _fresh(directory, "careful")
    taken = 0
    try:
        for jobs in groups:
            expected = _decided(_careful(careful, jobs))
            outcomes = _fast(fast, jobs)
            if outcomes is None:
                outcomes = _careful(fast, jobs)  # the writer's fallback, for the next groups' sake
            else:
                taken += 1
            assert _decided(outcomes) == expected
            assert [o.job for o in outcomes] == jobs
            assert _rows(fast) == _rows(careful)
    finally:
        fast.conn.close()
        careful.conn.close()
    return taken


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=_groups)
def test_fast_path_decides_and_stores_what_the_careful_path_does(
        groups: list[list[Any]], loop: asyncio.AbstractEventLoop) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _run_both(directory, _build(groups, loop))


def test_fast_path_is_taken_for_conflicts_new_names_and_retries_that_fail_a_check(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """Conflicts and new names do not need the careful path: the fast path decides them itself. So
    does a retry that fails a check its first attempt passed: its ids are looked up before the
    check's error is given, and it gets its original answer, as on the careful path."""
    seed = [WriteJob("r", "d", "e", _events([(0, 0, 0, False), (1, 1, 1, False)]), -1, loop)]
    group = [
        WriteJob("r", "d", "e", seed[0].batch, -1, loop),  # a retry, its expected version gone by
        WriteJob("r", "d", "e", _events([(0, 1, 0, False)]), 0, loop),  # an id reused, other content
        WriteJob("r", "d", "e", _events([(0, 0, None, False)]), 0, loop),  # a version conflict
        WriteJob("r", "d", "e", _events([(2, 0, None, True)]), 1, loop),  # the right version, a new type
        WriteJob("r", "d", "f", _events([(0, 0, 2, False)]), -1, loop),  # a new entity
        WriteJob("s", "x", "y", _events([(0, 0, None, False)] * 3), None, loop),  # all new names
        WriteJob("r", "d", "f", _events([(0, 0, None, False)]), -1, loop),  # no longer new
    ]
    assert _run_both(str(tmp_path), [seed, group]) == 2
    state = _fresh(str(tmp_path), "again")
    decided = _decided(_careful(state, seed + group))
    state.conn.close()
    assert [type(d).__name__ if isinstance(d, AppendResult) else d[0] for d in decided] == [
        "AppendResult", "AppendResult", EventIdConflict.__name__, VersionConflict.__name__,
        "AppendResult", "AppendResult", "AppendResult", VersionConflict.__name__]
    assert decided[1].created is False


def test_a_retry_that_passes_every_check_is_refused_by_the_index_then_decided_carefully(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """The fast path does not look up the ids of a job that passes its checks: the unique index
    refuses one stored already, and the careful path gives the retry its original answer (or the
    conflict of an id reused with other content) and stores the group's other jobs."""
    seed = [WriteJob("r", "d", "e", _events([(0, 0, 0, False), (1, 1, 1, False)]), -1, loop)]
    group = [
        WriteJob("r", "d", "e", seed[0].batch, None, loop),  # a retry
        WriteJob("r", "d", "e", _events([(0, 0, None, False)]), None, loop),
        WriteJob("r", "d", "g", _events([(0, 1, 0, False)]), None, loop),  # an id reused, other content
    ]
    assert _run_both(str(tmp_path), [seed, group]) == 1  # the seed only
    state = _fresh(str(tmp_path), "again")
    decided = _decided(_careful(state, seed + group))
    state.conn.close()
    assert [type(d).__name__ if isinstance(d, AppendResult) else d[0] for d in decided] == [
        "AppendResult", "AppendResult", "AppendResult", EventIdConflict.__name__]
    assert decided[1].created is False and decided[2].created is True


def test_insert_chunks_fit_the_variable_limit() -> None:
    assert insert_chunks(999) == (64, 32, 16, 8, 4, 2, 1)  # 640 of 999 variables
    assert insert_chunks(32766)[0] == 1024
    assert insert_chunks(9) == (1,)
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert insert_chunks(limit)[0] * 10 <= limit


def test_a_large_group_stays_on_the_fast_path_under_an_old_variable_limit(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """SQLite before 3.32 allows 999 variables a statement: a group of 300 events must still be
    written by the fast path (the old 128-row chunks needed 1,152 and always fell back)."""
    conn = open_database(f"{tmp_path}/old.db", synchronous="OFF")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    state = WriterState(conn)
    jobs = [WriteJob("r", "d", f"e{i}", _events([(0, 0, None, False)] * 3), -1, loop) for i in range(100)]
    outcomes = _fast(state, jobs)
    assert outcomes is not None, "the fast path fell back to the careful one"
    assert all(isinstance(o.outcome, AppendResult) and o.outcome.created for o in outcomes)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 300
    conn.close()


def test_a_statement_journal_past_its_spill_size_stays_in_memory_and_still_rolls_back(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """A group of single appends to 64 entities changes one page of the events table per entity: the
    multi-row INSERT's statement journal (those pages as they were) is far past the 64 KiB at which
    SQLite would spill it to a temporary file for every group. The writer keeps it in memory; the
    connection a migration runs on does not (an index build there may sort more than fits in RAM).
    A statement that fails on its last row is still undone, and the group's fallback stores the rest."""
    conn = open_database(f"{tmp_path}/journal.db", synchronous="OFF")
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 0  # the default: files
    state = WriterState(conn)
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    padding = "x" * 600
    filled = [WriteJob("r", "d", f"e{i}", [new_event("t", {"pad": padding, "n": n}) for n in range(20)], None, loop)
              for i in range(64)]
    assert _fast(state, filled) is not None
    pages_before = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages_before > 64 * 2  # every entity's events span pages of their own
    group = [WriteJob("r", "d", f"e{i}", [new_event("t", {"n": 20})], 19, loop) for i in range(64)]
    # A server-made id given again (a clock gone backwards): the INSERT fails on its last row.
    group.append(WriteJob("r", "d", "e-late", [filled[0].batch[0]], None, loop))
    assert _fast(state, group) is None
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 64 * 20
    decided = _careful(state, group)
    assert all(isinstance(o.outcome, AppendResult) and o.outcome.created for o in decided[:64])
    assert isinstance(decided[64].outcome, PerhapError)
    assert conn.execute("SELECT count(*), max(version) FROM events").fetchone() == (64 * 21, 20)
    assert conn.execute("SELECT count(*) FROM entities WHERE name = 'e-late'").fetchone()[0] == 0
    conn.close()


# ------------------------------------------------------------------ the subscriber ring


@dataclass
class Subscriber:
    scope: Scope
    events: list[Event]
    types: tuple[str, ...] = ()  # several types at once
    after_position: int | None = None  # where it starts (the ring then filters on positions)

    @property
    def key(self) -> tuple[Scope, tuple[str, ...], int | None]:
        return self.scope, self.types, self.after_position


async def test_ring_subscribers_see_every_event_once_in_commit_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny ring: trimmed many times per second, so subscribers keep falling off its end.
    monkeypatch.setattr(ring_module, "RING_EVENTS", 16)
    monkeypatch.setattr(ring_module, "RING_BYTES", 2048)
    path = str(tmp_path / "ring.db")
    store = await open_sqlite(path, synchronous="OFF")
    ring = store._ring
    seen = {"extended": 0, "trims": 0, "resets": 0, "from_ring": 0}
    committed, read = ring.committed, ring.read

    def counting_committed(events: list[Event] | None, last: int | None) -> None:
        before = ring.lo
        committed(events, last)
        seen["resets" if not ring.events else "trims" if ring.lo != before else "extended"] += 1

    def counting_read(*args: Any) -> list[Event] | None:
        found = read(*args)
        seen["from_ring"] += found is not None
        return found

    monkeypatch.setattr(ring, "committed", counting_committed)
    monkeypatch.setattr(ring, "read", counting_read)
    realm, other = "ring", "elsewhere"
    scopes = [Scope(realm), Scope(realm, "d0"), Scope(realm, "d1"), Scope(realm, "d2"),
              Scope(realm, type="t1"), Scope(realm, "d0", type="t0")]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 25
    writers_done = asyncio.Event()
    subscribers = [Subscriber(s, []) for s in scopes]
    subscribers += [Subscriber(Scope(realm, "d2"), [], types=("t0", "t1")),
                    Subscriber(Scope(realm), [], types=("t0", "t1"), after_position=40),
                    Subscriber(Scope(realm, "d0"), [], after_position=25)]
    acknowledged: set[str] = set()  # every event appended to the realm, by either writer
    counts: dict[Any, int] = {}  # each subscriber's events, once the writers are done

    def expected_count(sub: Subscriber) -> int:
        return counts.get(sub.key, 1 << 60)

    try:
        async def follow(sub: Subscriber, start_after: asyncio.Event | None) -> None:
            if start_after is not None:  # a late subscriber catches up from the database first
                await start_after.wait()
            cursor = await store.subscription(sub.scope, batch=7, types=sub.types,
                                              after_position=sub.after_position)
            # Until every event of the scope is in (or the deadline: the checks below then fail).
            while not (writers_done.is_set() and len(sub.events) >= expected_count(sub)):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                sub.events += await cursor.fetch(timeout=min(remaining, 1.0))

        async def append(rnd: random.Random, w: int, n: int) -> None:
            for i in range(n):
                size = rnd.choice((1, 1, 1, 2, 5))
                events = [{"type": f"t{rnd.randrange(2)}", "event": [w, i, k]} for k in range(size)]
                target = realm if rnd.random() < 0.9 else other
                result = await store.append_batch(target, f"d{rnd.randrange(3)}", f"e{w}-{rnd.randrange(3)}", events)
                if target == realm:
                    acknowledged.update(a.event_id for a in result.events)

        def second_writer() -> None:
            """Another writer on the same file (its own store, thread and loop), as a second
            process would be: the first store hears of its commits only through the database."""
            async def run() -> None:
                async with await open_sqlite(path, synchronous="OFF") as twin:
                    rnd = random.Random(99)
                    for i in range(150):
                        result = await twin.append(realm, f"d{rnd.randrange(3)}", "twin", f"t{rnd.randrange(2)}", i)
                        acknowledged.add(result.first.event_id)  # (set.add is atomic under the GIL)
            asyncio.run(run())

        halfway = asyncio.Event()
        followers = [asyncio.ensure_future(follow(s, None)) for s in subscribers]
        late = Subscriber(Scope(realm, "d1"), [])
        followers.append(asyncio.ensure_future(follow(late, halfway)))
        twin = threading.Thread(target=second_writer)
        twin.start()
        rnd = random.Random(7)
        appenders = [asyncio.ensure_future(append(random.Random(rnd.random()), w, 120)) for w in range(5)]
        await asyncio.gather(*appenders[:2])
        halfway.set()
        await asyncio.gather(*appenders)
        await loop.run_in_executor(None, twin.join)
        # One more commit of this store's own after the twin's last: it is what tells this process
        # (without waiting for a poll) that the database moved on.
        acknowledged.add((await store.append(realm, "d0", "last", "t0", "last")).first.event_id)
        everything = await _read_all(store, Scope(realm))
        assert {e.event_id for e in everything} == acknowledged
        # Two writers on one file took turns: the realm's positions still run 1..n.
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
        for sub in [*subscribers, late]:
            counts[sub.key] = len(await _read_all(store, sub.scope, sub.types, sub.after_position))
        writers_done.set()
        await asyncio.gather(*followers)
        for sub in [*subscribers, late]:
            stored = [e.event_id for e in await _read_all(store, sub.scope, sub.types, sub.after_position)]
            got = [e.event_id for e in sub.events]
            assert len(got) == len(set(got)), f"{sub.scope}: an event arrived twice"
            assert got == stored, f"{sub.scope}: not every event, or not in commit order"
            assert all(sub.scope.contains(e) and (not sub.types or e.type in sub.types)
                       and e.position > (sub.after_position or 0) for e in sub.events)
        assert seen["trims"] > 0 and seen["resets"] > 0 and seen["from_ring"] > 0, seen
    finally:
        writers_done.set()
        await store.close()


async def _read_all(store: SQLiteStore, scope: Scope, types: tuple[str, ...] = (),
                    after_position: int | None = None) -> list[Event]:
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=1000, types=types,
                                after_position=None if following else after_position)
        events += page.events
        if page.next is None:
            return events
        following = page.next


# ------------------------------------------------------------------ event loops and the writer thread


async def test_a_store_refuses_an_event_loop_that_did_not_open_it(tmp_path: Path) -> None:
    # Issue 13.8: an append from a second loop, cancelled, whose loop closed before its group
    # committed, used to take the writer thread down. Such an append is refused up front now,
    # and so is every read, the same way; the writer goes on serving its own loop.
    store = await open_sqlite(str(tmp_path / "loops.db"))
    try:
        first = await store.append("r", "d", "e", "t", 0)
        calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "append": lambda: store.append("r", "d", "e", "t", 1),
            "read": lambda: store.read(Scope("r", "d")),
            "entity read": lambda: store.read(Scope("r", "d", "e")),
            "get_event": lambda: store.get_event("r", "d", first.first.event_id),
            "keys": lambda: store.keys("r"),
            "count": store.count,
            "subscription": lambda: store.subscription(Scope("r"), following=first.first.event_id),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="belongs to the event loop that opened it"):
                in_another_loop(call)
                pytest.fail(f"{name} from another loop was not refused")
        assert await store.health()
        second = await store.append("r", "d", "e", "t", 2)
        assert second.first.version == 1  # the refused append stored nothing
        assert [e.event for e in (await store.read(Scope("r", "d", "e"))).events] == [0, 2]
    finally:
        await store.close()


async def test_the_writer_survives_the_loop_that_opened_the_store_closing_mid_group(tmp_path: Path) -> None:
    # The same scenario on the loop a store belongs to: an append waits for its group (another
    # connection holds the write lock), is cancelled, and the loop closes before the group
    # commits. The commit notice then finds a closed loop; the writer must not die of it.
    path = str(tmp_path / "closed.db")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder: list[SQLiteStore] = []

    async def append_then_leave() -> None:
        store = await open_sqlite(path)
        holder.append(store)
        blocker.execute("BEGIN IMMEDIATE")  # the group cannot commit until this ends
        task = asyncio.ensure_future(store.append("r", "d", "e", "t", "late"))
        await asyncio.sleep(0)  # the append is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    in_another_loop(append_then_leave)  # asyncio.run closed that loop on its way out
    [store] = holder
    blocker.execute("COMMIT")
    await wait_until(lambda: blocker.execute("SELECT count(*) FROM events").fetchone()[0] == 1,
                     "the cancelled append to commit")
    await store.close()  # from this loop: closing works from any loop
    blocker.close()
    writer = store._writer
    assert writer is not None and not writer.thread.is_alive()
    with pytest.raises(sqlite3.ProgrammingError):  # it lived to close its connection when told to
        writer.state.conn.execute("SELECT 1")
    assert writer.failure is None


async def test_an_append_never_waits_on_a_stopped_writer(tmp_path: Path) -> None:
    # Whatever stops the writer thread (here a foreign object in its queue, standing in for a bug),
    # queued appends and later ones fail at once with StorageUnavailable, /_health says so, and
    # reads, which do not need the writer, go on.
    store = await open_sqlite(str(tmp_path / "stopped.db"))
    try:
        await store.append("r", "d", "e", "t", 0)
        store._queue.put(object())
        queued = asyncio.ensure_future(store.append("r", "d", "e", "t", 1))
        for pending in (queued, asyncio.ensure_future(store.append("r", "d", "e", "t", 2))):
            with pytest.raises(StorageUnavailable, match="writer thread stopped"):
                await asyncio.wait_for(pending, 10)
        assert store._writer is not None
        await asyncio.get_running_loop().run_in_executor(None, store._writer.thread.join, 10)
        with pytest.raises(StorageUnavailable, match="writer thread stopped"):
            await asyncio.wait_for(store.append("r", "d", "e", "t", 3), 10)
        assert not await store.health()
        assert [e.event for e in (await store.read(Scope("r", "d", "e"))).events] == [0]
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_a_write_lock_held_by_another_connection_fails_a_group_once(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write transaction left open on the file by another program (the sqlite3 shell): each
    append failed only after the busy timeout, and a group's jobs were then retried one by one,
    each waiting the whole timeout again (a client of a group of N waited N+1 timeouts). The group
    now fails once, every job with a 503 that names the lock; nothing is written, and appends go
    on once the lock is let go."""
    monkeypatch.setattr(schema_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "held.db"
    store = await open_sqlite(str(path))
    try:
        await store.append("r", "d", "e0", "t", 0)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            appends = [store.append("r", "d", f"e{i}", "t", i) for i in range(1, 6)]
            outcomes = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 60)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert all(isinstance(o, StorageUnavailable) and "write lock is held by another connection" in o.detail
                   for o in outcomes), outcomes
        await store.append("r", "d", "e9", "t", 9)
        assert [e.entity for e in (await store.read(Scope("r"))).events] == ["e0", "e9"]
    finally:
        await asyncio.wait_for(store.close(), 10)


# ------------------------------------------------------------------ one process owns a file


def _perhap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, text=True, timeout=60)


async def test_a_second_process_is_refused_and_the_lock_dies_with_the_first(tmp_path: Path) -> None:
    # Issues 13.15 and 14.3: a second process writing the file was allowed, and its events reached
    # the server's streams only at the next 5 s poll. Now the second process is refused at open,
    # told which process holds the file and what to do; the lock ends with the holder, even SIGKILLed.
    path = tmp_path / "owned.db"
    url = f"sqlite:///{path}"
    server = ProcessServer(url, cwd=tmp_path).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        dump = tmp_path / "dump.jsonl"
        dump.write_text('{"event_id":"01a2173a-af2e-701e-bbf0-c30a3181d1d9","realm":"r","domain":"d",'
                        '"entity":"e","type":"t","event":1,"meta":{},"version":0,'
                        '"timestamp":"2026-11-26T09:40:51.630610Z"}\n')
        for args in (("export", "--db", url), ("import", "--db", url, str(dump))):
            r = _perhap(*args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            [line] = r.stderr.strip().splitlines()
            assert line.startswith("error: ") and f"in use by process {pid}" in line, line
            assert f"{path}-lock" in line and "stop that process" in line and "PostgreSQL" in line, line
        with pytest.raises(RuntimeError, match=f"in use by process {pid}"):
            ProcessServer(url, cwd=tmp_path).start()
        with pytest.raises(StorageUnavailable, match=f"in use by process {pid}"):
            await open_sqlite(str(path))  # this test's own process is another process too
        assert httpx.get(f"{server.url}/r/d/e").json()["events"] == []  # nothing got in
    finally:
        server.kill()  # SIGKILL: the kernel drops the lock with the process
    store = await open_sqlite(str(path))
    assert await store.count() == 0
    await store.close()
    # Closed, the file is free for another process again.
    r = _perhap("import", "--db", url, str(tmp_path / "dump.jsonl"))
    assert r.returncode == 0, r.stderr


async def test_stores_of_one_process_share_a_file(tmp_path: Path) -> None:
    # Within one process several stores may open one file (the ring test plays a second writer
    # so); the lock is held until the last of them closes.
    path = str(tmp_path / "shared.db")
    first = await open_sqlite(path)
    second = await open_sqlite(path)
    await first.append("r", "d", "e", "t", 0)
    await second.append("r", "d", "e", "t", 1)
    await first.close()
    assert _perhap("export", "--db", f"sqlite:///{path}").returncode == 1  # still held by `second`
    assert await second.count() == 2
    await second.close()
    r = _perhap("export", "--db", f"sqlite:///{path}")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4  # the header, two events and the end line


async def test_cached_pages_are_served_without_a_probe_until_a_store_of_the_file_commits(tmp_path: Path) -> None:
    # SQLite's commit marker is shared by every store of this process on the file, and no other
    # process writes it: while the marker stays, the page cache serves without asking the store.
    from perhap.http.app import PerhapApp

    path = str(tmp_path / "pages.db")
    store, other = await open_sqlite(path), await open_sqlite(path)
    probes = 0
    read_page = store.read_page

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal probes
        probes += 1
        return await read_page(*args, **kwargs)

    store.read_page = counted  # type: ignore[method-assign]  # counts, and reads for real
    app = PerhapApp(store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.post("/shop/orders/o1/a", json={"event": 1})).status_code == 201
            first = await client.get("/shop/orders/o1")
            before = probes
            for _ in range(3):
                assert (await client.get("/shop/orders/o1")).content == first.content
            assert probes == before, "nothing was stored: the cache must not ask the store"
            await other.append("shop", "orders", "o1", "a", 2)  # another store of this process
            moved = await client.get("/shop/orders/o1")
            assert [e["event"] for e in moved.json()["events"]] == [1, 2]
            await other.append("shop", "orders", "o2", "a", 3)  # elsewhere: o1's page still holds
            before = probes
            assert (await client.get("/shop/orders/o1")).content == moved.content
            assert probes == before + 1, "the marker moved: one probe, then the cached page"
            assert (await client.get("/shop/orders/o1")).content == moved.content
            assert probes == before + 1
    finally:
        await store.close()
        await other.close()


async def test_synchronous_off_is_warned_about_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As PostgreSQL's fsync = off is: a 201 may not survive a crash of the machine."""
    async with open_store(f"sqlite:///{tmp_path}/off.db?synchronous=off"):
        pass
    assert any("synchronous=off" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    caplog.clear()
    for mode in ("normal", "extra", "full"):
        async with open_store(f"sqlite:///{tmp_path}/{mode}.db?synchronous={mode}"):
            pass
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.records


_ONE_EVENT_TOO_BIG_FOR_THE_DISK = """
import asyncio, json, resource, signal, sys
from perhap import open_store
from perhap.errors import StorageUnavailable

# No file of this process may grow past 8 MiB (a disk that is nearly full): a 9 MB event cannot be
# written, small ones can. Ignored, SIGXFSZ makes the write fail (EFBIG) rather than kill.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

async def main(url):
    async with open_store(url) as store:
        async def append(i):
            event = {"blob": "x" * 9_000_000} if i == 1 else {"n": i}
            try:
                await store.append("r", "d", f"e{i}", "t", event)
                return "stored"
            except StorageUnavailable:
                return "unavailable"
        # Queued together: the writer takes the first alone, then the other eleven as one group.
        print(json.dumps(await asyncio.gather(*(append(i) for i in range(12)))))

asyncio.run(main(sys.argv[1]))
"""


def test_an_append_too_big_for_the_disk_fails_alone_not_the_group_it_was_committed_with(tmp_path: Path) -> None:
    """A commit that fails as a whole (disk full, an I/O error) may be one append's doing: the
    others of its group are committed on their own rather than answered 503 with it."""
    url = f"sqlite:///{tmp_path}/full.db"
    proc = subprocess.run([sys.executable, "-c", _ONE_EVENT_TOO_BIG_FOR_THE_DISK, url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout)
    assert outcomes == ["stored", "unavailable", *["stored"] * 10], outcomes

    async def stored() -> list[str]:
        async with open_store(url) as store:
            return [e.entity for e in (await store.read(Scope("r", "d"), limit=100)).events]

    assert sorted(asyncio.run(stored())) == sorted(f"e{i}" for i in range(12) if i != 1)


async def test_a_read_after_another_stores_append_on_the_file_shows_it(tmp_path: Path) -> None:
    """Two stores of one process on one file (allowed): each one's realm and domain reads, which
    its ring of recent events could answer, include every event the other acknowledged before
    the read began; so does a conditional GET of a page (it was a 304 of the stale page for up to
    5 s: the ring holds its own store's commits alone)."""
    from perhap.http.app import PerhapApp

    path = str(tmp_path / "two.db")
    a, b = await open_sqlite(path), await open_sqlite(path)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=PerhapApp(a)), base_url="http://t") as http:
            acknowledged: list[str] = []
            assert (await a.read(Scope("shop"))).events == []  # A's ring is read: its commits fill it
            for i in range(6):
                mine = (await a.append("shop", "orders", f"a{i}", "t", i)).events[0].event_id
                acknowledged.append(mine)
                first = await http.get("/shop")
                assert [e["event_id"] for e in first.json()["events"]] == acknowledged
                acknowledged.append((await b.append("shop", "orders", f"b{i}", "t", i)).events[0].event_id)
                for scope in (Scope("shop"), Scope("shop", "orders")):  # after A's own event: the ring's reads
                    after = await a.read(scope, following=mine)
                    assert [e.event_id for e in after.events] == acknowledged[-1:], (i, scope)
                again = await http.get("/shop", headers={"if-none-match": first.headers["etag"]})
                assert again.status_code == 200, i
                assert [e["event_id"] for e in again.json()["events"]] == acknowledged
                for scope in (Scope("shop"), Scope("shop", "orders")):
                    assert [e.event_id for e in (await a.read(scope)).events] == acknowledged, (i, scope)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("how", ["deleted", "renamed", "replaced"])
async def test_a_file_deleted_or_replaced_under_an_open_store_acknowledges_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The file a store writes, deleted, renamed or replaced by another while open: what is
    committed to it is lost at the next open (or its write-ahead log, named after the name, lands
    on the other file), so appends are 503s from then on and the store is not healthy (it answered
    201, and lost every one). A change of directory does not count: the name is resolved at open."""
    monkeypatch.chdir(tmp_path)
    store = await open_sqlite("s.db")
    try:
        await store.append("r", "d", "e", "t", 0)
        monkeypatch.chdir("/")
        await store.append("r", "d", "e", "t", 1)
        if how == "deleted":
            (tmp_path / "s.db").unlink()
        elif how == "renamed":
            (tmp_path / "s.db").rename(tmp_path / "moved.db")
        else:
            other = await open_sqlite(str(tmp_path / "other.db"))
            await other.close()
            os.replace(tmp_path / "other.db", tmp_path / "s.db")
        for attempt in range(2):  # the commit that met it, and every one after
            with pytest.raises(StorageUnavailable, match="is no longer the file this store opened"):
                await store.append("r", "d", "e", "t", 2 + attempt)
        assert not await store.health()
    finally:
        await store.close()


async def test_another_stores_commit_between_a_commit_and_its_notice_is_not_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store A commits, and before it takes the file's commit marker store B commits and answers:
    A's marker, taken after B's, looked like the file's, and A's ring answered a read without B's
    acknowledged event. A ring vouches only when no other marker came between its group's start
    and its own."""
    path = str(tmp_path / "two.db")
    a, b = await open_sqlite(path), await open_sqlite(path)
    try:
        await a.read(Scope("shop"))  # A's ring is read: its commits fill it
        a0 = (await a.append("shop", "o", "a0", "t", 0)).events[0].event_id
        assert [e.event_id for e in (await a.read(Scope("shop"), following=a0)).events] == []
        committed = threading.Event()
        go_on = threading.Event()
        check = a._writer.file_problem  # type: ignore[union-attr]

        def held() -> str | None:  # A's writer, after its COMMIT and before its notice
            committed.set()
            go_on.wait(10)
            return check()

        monkeypatch.setattr(a._writer, "file_problem", held)
        appending = asyncio.ensure_future(a.append("shop", "o", "a1", "t", 1))
        await asyncio.to_thread(committed.wait, 10)
        b1 = (await b.append("shop", "o", "b1", "t", 1)).events[0]
        go_on.set()
        a1 = (await appending).events[0]
        assert a1.position < b1.position
        after = await a.read(Scope("shop"), following=a1.event_id)
        assert [e.event_id for e in after.events] == [b1.event_id]
    finally:
        await a.close()
        await b.close()


async def test_a_relative_path_is_the_one_open_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made in one directory and opened in another opens the name there, as SQLite does,
    and watches that file (its real path was taken when the store was made: the open failed with
    the lock held)."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("s.db")
    monkeypatch.chdir(tmp_path / "here")
    await store.open()
    try:
        await store.append("r", "d", "e", "t", 0)
        assert (tmp_path / "here" / "s.db").exists() and not (tmp_path / "s.db").exists()
    finally:
        await store.close()
