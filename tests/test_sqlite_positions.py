"""The SQLite backend's positions and consumer reads, down to the file.

- A schema-1 file (written by the release before positions) is migrated in place on first open:
  each realm numbered 1..n in seq order, every old read answered as before, appends going on at
  n + 1; a file of a newer schema is still refused.
- The writer numbers a realm's events one after another: a job or a group that is rolled back
  (a conflict, the fast path handing over to the careful one, another writer on the file) burns
  no number, and multi-entity jobs decide the same on both paths.
- The realm's head and an entity's last event are one index probe, and no read shape scans the
  events table or sorts: checked on SQLite's own query plans, and by counting the virtual
  machine's steps on a small and a large store.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perhap.backends.sqlite import SCHEMA_VERSION, SQLiteStore, open_sqlite, reads
from perhap.backends.sqlite.reads import walk_sql
from perhap.backends.sqlite.schema import open_database
from perhap.errors import StorageUnavailable, VersionConflict
from perhap.model import AppendResult, Event, Scope, new_event
from perhap.store.base import Store
from perhap.store.job import WriteJob
from perhap.store.query import ReadQuery
from tests.helpers import append_from_another_store
from tests.test_sqlite_backend import _careful, _decided, _events, _fast, _fresh, _rows

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "schema1.sqlite"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop for the jobs' futures only: the paths under test never settle them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def _read_all(store: Store, scope: Scope, **params: Any) -> list[Event]:
    """Every event of a scope, paged by ``following`` two at a time (so cursors are exercised)."""
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=2, **params)
        events += page.events
        if page.next is None:
            return events
        following = page.next


def _legacy_reads(path: Path) -> dict[Scope, list[tuple[Any, ...]]]:
    """What the release before positions answered for every scope of the file: realms and domains
    in seq order, entities in version order, each also per type."""
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT e.seq, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta FROM events e"
        " JOIN realms r ON r.id = e.realm_id JOIN domains d ON d.id = e.domain_id"
        " JOIN entities n ON n.id = e.entity_id JOIN types t ON t.id = e.type_id ORDER BY e.seq").fetchall()
    conn.close()
    reads: dict[Scope, list[tuple[Any, ...]]] = defaultdict(list)
    for _, event_id, realm, domain, entity, type_, version, ts, data, meta in rows:
        shown = (event_id, realm, domain, entity, type_, version, ts, bytes(data), bytes(meta))
        for scope in (Scope(realm), Scope(realm, domain), Scope(realm, domain, entity)):
            reads[scope].append(shown)
            reads[Scope(scope.realm, scope.domain, scope.entity, type_)].append(shown)
    for scope, listed in reads.items():
        if scope.entity is not None:
            listed.sort(key=lambda s: s[5])  # (already so: versions grow with seq)
    return reads


def _shown(event: Event) -> tuple[Any, ...]:
    return (event.event_id, event.realm, event.domain, event.entity, event.type, event.version,
            event.timestamp, event.data_json, event.meta_json)


async def test_a_schema1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "legacy.sqlite"
    shutil.copy(LEGACY, path)
    before = _legacy_reads(path)
    counts = {s.realm: len(v) for s, v in before.items() if s.domain is None and s.type is None}
    assert counts == {"shop": 15, "bank": 6}  # 21 events, interleaved (the fixture's make.py)
    store = await open_sqlite(str(path), synchronous="OFF")
    try:
        for scope, shown in before.items():
            events = await _read_all(store, scope)
            assert [_shown(e) for e in events] == shown, scope
        for realm, n in counts.items():
            events = await _read_all(store, Scope(realm))
            assert [e.position for e in events] == list(range(1, n + 1)), realm
            newest = (await store.read(Scope(realm), order="desc", limit=1)).events
            assert newest[0].position == n
            appended = await store.append(realm, "later", "x", "t", {"after": "migration"})
            assert appended.first.position == n + 1
            again = await store.append_batch(realm, "later", "x", [{"type": "t", "event": i} for i in range(3)])
            assert [a.position for a in again.events] == [n + 2, n + 3, n + 4]
        event = await store.get_event("shop", "orders", "0190a0a0-0000-7000-8000-000000000002")
        assert event.position == 15 and event.event == {"big": 2**70}
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM perhap_meta").fetchone()[0] == str(SCHEMA_VERSION) == "3"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                              " AND name LIKE 'events_%'")}
        assert indexes == {"events_event_id", "events_seq", "events_domain", "events_domain_type",
                           "events_realm_position", "events_realm_type"}
    finally:
        conn.close()
    # Open again: nothing to migrate, the numbering goes on.
    async with await open_sqlite(str(path), synchronous="OFF") as reopened:
        assert (await reopened.append("bank", "accounts", "a1", "deposited", 9)).first.position == 6 + 4 + 1


async def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite"
    shutil.copy(LEGACY, path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE perhap_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StorageUnavailable, match="newer perhap"):
        await open_sqlite(str(path), synchronous="OFF")


# ------------------------------------------------------------------ the writer numbers events


def _positions(state: Any) -> dict[int, list[int]]:
    """Each realm's positions in seq order."""
    found: dict[int, list[int]] = defaultdict(list)
    for realm_id, position in state.conn.execute("SELECT realm_id, position FROM events ORDER BY seq"):
        found[realm_id].append(position)
    return found


def _contiguous(state: Any) -> None:
    for realm_id, positions in _positions(state).items():
        assert positions == list(range(1, len(positions) + 1)), realm_id


_multi_event = st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from([None, None, 0, 1, 2, 3]))
#: (entity, type, client id or None) events and {entity: expected version} of one multi-entity job,
#: or a single-entity job (entity, expected, events); all in realm r0 or r1, domain d.
_multi_job = st.tuples(st.just("multi"), st.integers(0, 1), st.lists(_multi_event, min_size=1, max_size=4),
                       st.dictionaries(st.integers(0, 3), st.sampled_from([-1, 0, 1, 2]), max_size=3))
_single_job = st.tuples(st.just("single"), st.integers(0, 1), st.lists(_multi_event, min_size=1, max_size=3),
                        st.sampled_from([None, None, -1, 0, 1, 2]))
_groups = st.lists(st.lists(_multi_job | _single_job, min_size=1, max_size=5), min_size=1, max_size=4)

_IDS = [f"00000000-0000-4000-8000-{i:012x}" for i in range(4)]


def _build(groups: list[list[Any]], loop: asyncio.AbstractEventLoop) -> list[list[WriteJob]]:
    out = []
    for group in groups:
        jobs = []
        for kind, realm, specs, expect in group:
            batch, entities, used = [], [], set()
            for entity, type_, client in specs:
                client = None if client in used else client
                used.add(client)
                batch.append(new_event(f"t{type_}", {"n": type_}, None if client is None else _IDS[client]))
                entities.append(f"e{entity}")
            if kind == "multi":
                job = WriteJob(f"r{realm}", "d", entities[0], batch, None, loop, entities,
                               {f"e{k}": v for k, v in expect.items()})
            else:
                job = WriteJob(f"r{realm}", "d", entities[0], batch, expect, loop)
            jobs.append(job)
        out.append(jobs)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=_groups)
def test_both_paths_number_and_decide_multi_entity_jobs_alike(
        groups: list[list[Any]], loop: asyncio.AbstractEventLoop) -> None:
    """Random groups of single- and multi-entity jobs (conflicts, guards, replays, reused ids):
    the fast path decides and stores what the careful path does, positions included, and each
    realm's positions stay 1..n whatever was rolled back."""
    with tempfile.TemporaryDirectory() as directory:
        fast, careful = _fresh(directory, "fast"), _fresh(directory, "careful")
        try:
            for jobs in _build(groups, loop):
                expected = _decided(_careful(careful, jobs))
                outcomes = _fast(fast, jobs) or _careful(fast, jobs)
                assert _decided(outcomes) == expected
                assert _rows(fast) == _rows(careful)
                _contiguous(fast)
                for job, outcome in outcomes:
                    if isinstance(outcome, AppendResult) and job.multi:
                        versions: dict[str, list[int]] = defaultdict(list)
                        for a in outcome.events:
                            versions[str(a.entity)].append(a.version)
                        assert all(v == list(range(v[0], v[0] + len(v))) for v in versions.values())
                        positions = [a.position for a in outcome.events]
                        assert positions == sorted(positions) and [a.entity for a in outcome.events] == (
                            job.entities if outcome.created else [a.entity for a in outcome.events])
        finally:
            fast.conn.close()
            careful.conn.close()


def test_a_failing_multi_entity_job_leaves_its_group_alone(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    state = _fresh(str(tmp_path), "group")
    seed = [WriteJob("r", "d", "a", _events([(0, 0, None, False)] * 2), -1, loop)]
    assert _fast(state, seed) is not None
    group = [
        WriteJob("r", "d", "b", _events([(0, 0, None, False)]), None, loop),
        # "a" is at 1, not 0, and the guard "g" (no event for it) does not exist: both named.
        WriteJob("r", "d", "a", _events([(0, 0, None, False)] * 2), None, loop, ["a", "c"], {"a": 0, "c": -1, "g": 4}),
        WriteJob("r", "d", "c", _events([(1, 0, None, False)] * 2), None, loop, ["c", "a"], {"a": 1, "g": -1}),
        WriteJob("r", "d", "a", _events([(0, 0, None, False)]), 2, loop),
    ]
    outcomes = _fast(state, group)
    assert outcomes is not None, "a failing check must not send the group to the careful path"
    first, failed, multi, last = (o.outcome for o in outcomes)
    assert isinstance(failed, VersionConflict)
    assert failed.conflicts == [("a", 0, 1), ("g", 4, -1)]
    assert isinstance(first, AppendResult) and isinstance(multi, AppendResult) and isinstance(last, AppendResult)
    assert [(a.entity, a.version, a.position) for a in multi.events] == [("c", 0, 4), ("a", 2, 5)]
    assert [(a.version, a.position) for a in last.events] == [(3, 6)]
    assert not state.conn.execute("SELECT 1 FROM entities WHERE name = 'g'").fetchall()  # a guard makes nothing
    _contiguous(state)
    state.conn.close()


async def test_another_writer_on_the_file_does_not_break_the_numbering(tmp_path: Path) -> None:
    path = str(tmp_path / "twin.db")
    async with await open_sqlite(path, synchronous="OFF") as store:
        await store.append("r", "d", "e", "t", 0)  # the writer now caches r's head
        await append_from_another_store(path, "r", "d", "twin", 3)
        assert (await store.append("r", "d", "e", "t", 1)).first.position == 5
        events = (await store.read(Scope("r"))).events
        assert [e.position for e in events] == [1, 2, 3, 4, 5]


async def test_a_rolled_back_group_burns_no_position(tmp_path: Path) -> None:
    """A group whose statement fails is redone job by job; a job that fails there is undone alone."""
    async with await open_sqlite(str(tmp_path / "burn.db"), synchronous="OFF") as store:
        await store.append("r", "d", "e", "t", 0)
        twin_id = "00000000-0000-4000-8000-000000000009"
        results = await asyncio.gather(
            store.append("r", "d", "e", "t", 1),
            # The same id twice in one group, other content: the second fails on the careful path.
            store.append("r", "d", "x", "t", 2, event_id=twin_id),
            store.append("r", "d", "y", "t", 3, event_id=twin_id),
            store.append("r", "d", "e", "t", 4),
            return_exceptions=True)
        assert isinstance(results[2], Exception)
        assert [r.first.position for r in results if isinstance(r, AppendResult)] == [2, 3, 4]
        assert (await store.append("r", "d", "e", "t", 5)).first.position == 5
        assert [e.position for e in (await store.read(Scope("r"))).events] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ reads are index walks


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def _walks() -> list[tuple[int, bool, bool, bool]]:
    return [(level, typed, desc, positions) for level in (1, 2, 3) for typed in (False, True)
            for desc in (False, True) for positions in ((False, True) if level == 3 else (False,))]


def test_every_read_shape_is_an_index_walk(tmp_path: Path) -> None:
    conn = open_database(str(tmp_path / "plans.db"), synchronous="OFF")
    for level, typed, desc, positions in _walks():
        sql = walk_sql(level, typed, desc, positions)
        params = ("r", "d", "e")[:level] + (("t",) if typed else ()) + (0, 10) + ((0, 10) if positions else ()) + (5,)
        plan = _plan(conn, sql, params)
        shape = (level, typed, desc, positions)
        assert not any(step.startswith("SCAN") for step in plan), (shape, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (shape, plan)
        assert any(step.startswith("SEARCH e USING") for step in plan), (shape, plan)
        if level == 3:  # the entity's id is looked up once, however many bounds it makes
            assert sum(step.startswith("SEARCH entities") for step in plan) == 1, (shape, plan)
    head = _plan(conn, walk_sql(1, False, True, False), ("r", -1, 2**63 - 1, 1))
    assert any("events_realm_position (realm_id=?" in step for step in head), head
    last = _plan(conn, walk_sql(3, False, True, False), ("r", "d", "e", -1, 2**63 - 1, 1))
    assert any("INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in step for step in last), last
    conn.close()


async def test_the_head_and_an_entitys_last_event_cost_the_same_on_any_size(tmp_path: Path) -> None:
    """SQLite's virtual machine steps for the realm's head and an entity's last event do not grow
    with the store: one probe each (a scan would take 40 times as many steps on the large one)."""
    steps: dict[int, tuple[int, int]] = {}
    for size in (250, 10_000):
        path = str(tmp_path / f"size{size}.db")
        async with await open_sqlite(path, synchronous="OFF") as store:
            for start in range(0, size, 500):
                await asyncio.gather(*(store.append_batch("r", f"d{k % 3}", f"e{k % 50}",
                                                          [{"type": "t", "event": k}] * 1)
                                       for k in range(start, min(size, start + 500))))
            steps[size] = (await _vm_steps(store, Scope("r")), await _vm_steps(store, Scope("r", "d1", "e1")))
            head = (await store.read(Scope("r"), order="desc", limit=1)).events[0]
            assert head.position == size
    small, large = steps[250], steps[10_000]
    assert large[0] <= small[0] + 20 and large[1] <= small[1] + 20, steps



async def test_a_filtered_walk_of_an_entity_runs_off_the_event_loop(tmp_path: Path) -> None:
    """An entity's type or position filter walks the whole entity (no index holds them): however
    small its page, such a read runs in the reader pool, so that a large entity cannot hold the
    event loop, and every other request with it. An unfiltered page of the entity stays inline."""
    path = str(tmp_path / "walks.db")
    async with await open_sqlite(path) as store:
        await store.append_batch("r", "d", "e", [{"type": "common", "event": i} for i in range(50)])
        await store.append("r", "d", "e", "rare", 50)
    async with await open_sqlite(path) as store:  # reopened: nothing comes from the ring of recent events
        assert isinstance(store, SQLiteStore)
        threads: list[int] = []
        read_sync = store._read_sync

        def recorded(query: ReadQuery) -> Any:
            threads.append(threading.get_ident())
            return read_sync(query)

        store._read_sync = recorded  # type: ignore[method-assign]
        here = threading.get_ident()
        assert len((await store.read(Scope("r", "d", "e"), limit=10)).events) == 10
        assert threads == [here]  # a page of the entity's own walk: inline
        assert [e.event for e in (await store.read(Scope("r", "d", "e", "rare"), limit=10)).events] == [50]
        assert [e.event for e in (await store.read(Scope("r", "d", "e"), types=["rare"], limit=10)).events] == [50]
        assert len((await store.read(Scope("r", "d", "e"), after_position=40, limit=10)).events) == 10
        assert len((await store.read(Scope("r", "d", "e"), order="desc", before_position=5, limit=10)).events) == 4
        assert len(threads) == 5 and here not in threads[1:], threads


async def _vm_steps(store: Store, scope: Scope) -> int:
    """How many virtual machine steps the newest event of ``scope`` takes to read."""
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0  # go on

    assert isinstance(store, SQLiteStore)
    conn = store._reader()  # the loop's own reader connection: a one-event read runs inline
    conn.set_progress_handler(count, 1)
    try:
        page = await store.read(scope, order="desc", limit=1)
    finally:
        conn.set_progress_handler(None, 1)
    assert len(page.events) == 1
    return counted[0]


def test_bound_conversions_and_the_writers_head_are_index_probes(tmp_path: Path) -> None:
    conn = open_database(str(tmp_path / "probes.db"), synchronous="OFF")
    probes = [(reads._REALM_POSITION_OF_SEQ, (1, "r")), (reads._SEQ_OF_POSITION, ("r", 1)),
              (reads._REALM_POSITION_BELOW_SEQ, ("r", 1)),
              ("SELECT max(position) FROM events WHERE realm_id = ?", (1,))]  # the writer's head
    for sql, params in probes:
        plan = _plan(conn, sql, params)
        assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), (sql, plan)
    conn.close()


async def test_a_cursor_from_another_realm_bounds_a_realm_read_exactly(tmp_path: Path) -> None:
    """perhap's own cursors are always events of the scope; a cursor that is not still bounds exactly."""
    async with await open_sqlite(str(tmp_path / "foreign.db"), synchronous="OFF") as store:
        for i in range(12):
            await store.append("a" if i % 3 else "b", "d", "e", f"t{i % 2}", i)
        assert isinstance(store, SQLiteStore)
        everything = await store._read(ReadQuery(Scope("a"), limit=100))
        foreign = await store._read(ReadQuery(Scope("b"), limit=100))
        for cut in foreign:
            seq = int(cast(int, cut.cursor))
            after = await store._read(ReadQuery(Scope("a"), after=seq, limit=100))
            assert after == [e for e in everything if cast(int, e.cursor) > seq]
            before = await store._read(ReadQuery(Scope("a"), before=seq, descending=True, limit=100))
            assert before == [e for e in reversed(everything) if cast(int, e.cursor) < seq]
