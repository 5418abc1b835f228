"""The SQLite backend's own machinery: the writer's two paths agree, and the subscriber ring is exact.

- The writer batches a group's statements (the fast path) and falls back to one SAVEPOINT per job
  (the careful path) when a statement fails; the fast path must decide and store exactly what the
  careful path would. Checked on random groups against two fresh databases.
- Live subscribers of realms and domains read a ring of recent events; under concurrent appenders,
  forced ring trims and a second writer on the same file, each still sees every event of its scope
  once, in commit order.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perhap.backends.sqlite import SQLiteStore, open_sqlite
from perhap.backends.sqlite import ring as ring_module
from perhap.backends.sqlite.schema import open_database
from perhap.backends.sqlite.writer import JobOutcome, apply_each, apply_together
from perhap.backends.sqlite.writes import WriterState, insert_chunks
from perhap.errors import EventIdConflict, PerhapError, VersionConflict
from perhap.model import AppendResult, Event, NewEvent, Scope, new_event
from perhap.store.base import WriteJob

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
    # What the ring relies on: the last rowid the fast path reports is the last seq stored.
    assert state.last_rowid == conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    state.last_seq = state.last_rowid
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


def test_fast_path_is_taken_for_conflicts_replays_and_new_names(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """Conflicts and replays do not need the careful path: the fast path decides them itself."""
    seed = [WriteJob("r", "d", "e", _events([(0, 0, 0, False), (1, 1, 1, False)]), -1, loop)]
    group = [
        WriteJob("r", "d", "e", seed[0].batch, None, loop),  # an idempotent replay
        WriteJob("r", "d", "e", _events([(0, 1, 0, False)]), None, loop),  # an id reused, other content
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


def test_insert_chunks_fit_the_variable_limit() -> None:
    assert insert_chunks(999) == (64, 32, 16, 8, 4, 2, 1)  # 576 of 999 variables
    assert insert_chunks(32766)[0] == 128
    assert insert_chunks(9) == (1,)
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert insert_chunks(limit)[0] * 9 <= limit


# ------------------------------------------------------------------ the subscriber ring


@dataclass
class Subscriber:
    scope: Scope
    events: list[Event]


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
    acknowledged: set[str] = set()  # every event appended to the realm, by either writer
    counts: dict[Scope, int] = {}  # each scope's events, once the writers are done

    def expected_count(scope: Scope) -> int:
        return counts.get(scope, 1 << 60)

    try:
        async def follow(sub: Subscriber, start_after: asyncio.Event | None) -> None:
            if start_after is not None:  # a late subscriber catches up from the database first
                await start_after.wait()
            cursor = await store.subscription(sub.scope, batch=7)
            # Until every event of the scope is in (or the deadline: the checks below then fail).
            while not (writers_done.is_set() and len(sub.events) >= expected_count(sub.scope)):
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
        assert {e.event_id for e in await _read_all(store, Scope(realm))} == acknowledged
        for sub in [*subscribers, late]:
            counts[sub.scope] = len(await _read_all(store, sub.scope))
        writers_done.set()
        await asyncio.gather(*followers)
        for sub in [*subscribers, late]:
            stored = [e.event_id for e in await _read_all(store, sub.scope)]
            got = [e.event_id for e in sub.events]
            assert len(got) == len(set(got)), f"{sub.scope}: an event arrived twice"
            assert got == stored, f"{sub.scope}: not every event, or not in commit order"
            assert all(sub.scope.contains(e) for e in sub.events)
        assert seen["trims"] > 0 and seen["resets"] > 0 and seen["from_ring"] > 0, seen
    finally:
        writers_done.set()
        await store.close()


async def _read_all(store: SQLiteStore, scope: Scope) -> list[Event]:
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=1000)
        events += page.events
        if page.next is None:
            return events
        following = page.next
