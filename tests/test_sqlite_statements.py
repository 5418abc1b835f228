"""The SQLite writer's statements: few a group, since each call into SQLite lets go of the GIL.

A group its caches decide whole is one INSERT, its own transaction: no ``BEGIN``, ``PRAGMA
data_version`` or ``COMMIT``, so nothing checks for another connection's commits before it, and
the unique indexes on seq, on each realm's positions and on the entity-keyed events table must
refuse whatever stale caches would number twice; the group is then decided as the careful path
decides it. A group that makes entities looks them up in one statement a domain and writes the new
ones, and the types new to an entity, in multi-row INSERTs, not a few statements each. These tests
hold both to that: which statements a group sends (from SQLite's own trace of the writer's
connection), the same decisions and rows as the careful path on random groups, a second store
writing the file between two appends, a retry of client-chosen ids, and a job that fails after
its first entity was given an id.
"""

from __future__ import annotations

import queue
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings

from perhap.backends.sqlite import SQLiteStore, open_sqlite
from perhap.backends.sqlite import writer as writer_module
from perhap.backends.sqlite.ring import Ring
from perhap.backends.sqlite.schema import MAX_ENTITY_ID, open_database
from perhap.backends.sqlite.writer import JobOutcome, Writer
from perhap.errors import StorageUnavailable, VersionConflict
from perhap.model import AppendResult, Event, Scope, new_event
from perhap.store.job import WriteJob
from tests.test_sqlite_backend import TS, _build, _careful, _decided, _fresh, _groups, _rows


class _Traced:
    """The statements one SQLite connection runs, from SQLite's own trace (any thread)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        conn.set_trace_callback(self._add)

    def _add(self, sql: str) -> None:
        with self._lock:
            self.lines.append(" ".join(sql.split())[:40])

    def take(self) -> list[str]:
        with self._lock:
            lines, self.lines = self.lines, []
        return lines


def _kinds(lines: list[str]) -> list[str]:
    return [line.split(" (")[0].split(" VALUES")[0] for line in lines]


def _writer(store: SQLiteStore) -> Writer:
    writer = store._writer
    assert writer is not None
    return writer


async def _store(path: Path) -> SQLiteStore:
    return await open_sqlite(str(path))


async def test_a_group_the_caches_decide_is_one_insert_and_the_rest_a_transaction(tmp_path: Path) -> None:
    store = await _store(tmp_path / "one.db")
    try:
        traced = _Traced(_writer(store).state.conn)
        await store.append("r", "d", "e", "t", {"n": 0})  # every name new
        first = traced.take()
        assert first[0] == "BEGIN IMMEDIATE" and first[-1] == "COMMIT"
        await store.append("r", "d", "e", "t", {"n": 1})  # every name and number cached
        assert _kinds(traced.take()) == ["INSERT INTO events"]
        await store.append("r", "d", "e", "u", {"n": 2})  # a type new to the entity
        assert traced.take()[0] == "BEGIN IMMEDIATE"
        await store.append("r", "d", "f", "t", {"n": 3})  # a new entity
        assert traced.take()[0] == "BEGIN IMMEDIATE"
        await store.append("r", "d", "f", "u", {"n": 3})  # a known type, new to this entity
        assert traced.take()[0] == "BEGIN IMMEDIATE"
        # A client-chosen id on a cached entity: not looked up, the unique index stands guard.
        await store.append("r", "d", "e", "t", {"n": 4}, event_id="0190a5b4-0000-7000-8000-000000000001")
        assert _kinds(traced.take()) == ["INSERT INTO events"]
        # A batch to a cached entity and a conflicting expectation: one INSERT, and no statement.
        await store.append_batch("r", "d", "e", [new_event("t", {"n": n}) for n in range(5, 8)])
        assert _kinds(traced.take()) == ["INSERT INTO events"]
        with pytest.raises(VersionConflict):
            await store.append("r", "d", "e", "t", {"n": 8}, expected_version=0)
        assert traced.take() == []
        # What the one-statement groups wrote is committed: another connection reads it.
        other = sqlite3.connect(tmp_path / "one.db")
        assert other.execute("SELECT count(*), max(version) FROM events WHERE entity_id = 1").fetchone() == (7, 6)
        other.close()
    finally:
        await store.close()


async def test_a_retry_on_the_one_statement_path_gets_its_original_answer(tmp_path: Path) -> None:
    store = await _store(tmp_path / "retry.db")
    try:
        await store.append("r", "d", "e", "t", {"n": 0})
        event_id = "0190a5b4-0000-7000-8000-0000000000aa"
        original = await store.append("r", "d", "e", "t", {"n": 1}, event_id=event_id)
        traced = _Traced(_writer(store).state.conn)
        again = await store.append("r", "d", "e", "t", {"n": 1}, event_id=event_id)
        lines = traced.take()
        assert _kinds(lines)[0] == "INSERT INTO events" and "BEGIN IMMEDIATE" in lines  # refused, then careful
        assert again.created is False and again.events == original.events
        # Its expected version gone by, a retry is still a retry (the ids are looked up first).
        late = await store.append("r", "d", "e", "t", {"n": 1}, event_id=event_id, expected_version=0)
        assert late.created is False and late.events == original.events
        # The refused attempt took numbers it did not write: the next append must not skip them.
        await store.append("r", "d", "e", "t", {"n": 2})
        events = (await store.read(Scope("r"))).events
        assert [(e.version, e.position) for e in events] == [(0, 1), (1, 2), (2, 3)]
    finally:
        await store.close()


async def test_a_second_store_writing_between_two_cached_appends(tmp_path: Path) -> None:
    """Store ``a`` caches the entity's version, the realm's head and the last seq; store ``b`` (a
    second connection on the file) then writes. Each stale number ``a`` would give is refused by a
    unique index, and ``a``'s group is decided again on what is stored."""
    path = tmp_path / "two.db"
    a, b = await _store(path), await _store(path)
    try:
        for n in range(2):
            await a.append("r", "d", "e", "t", {"by": "a", "n": n})
        await b.append("r", "d", "e", "t", {"by": "b"})  # the entity and the realm, behind a's back
        with pytest.raises(VersionConflict) as conflict:
            await a.append("r", "d", "e", "t", {"by": "a", "n": 2}, expected_version=1)
        assert conflict.value.extra["current_version"] == 2
        assert (await a.append("r", "d", "e", "t", {"by": "a", "n": 3})).first.version == 3
        await b.append("s", "d", "x", "t", {"by": "b"})  # another realm only: a's seq is stale
        await a.append("r", "d", "e", "t", {"by": "a", "n": 4})
        await b.append("r", "d", "e", "t", {"by": "b"}, expected_version=4)
        traced = _Traced(_writer(a).state.conn)
        await a.append("r", "d", "e", "t", {"by": "a", "n": 5})
        assert _kinds(traced.take())[0] == "INSERT INTO events"  # taken, refused, then decided again
        realm: list[Event] = list((await a.read(Scope("r"), limit=100)).events)
        assert [e.version for e in realm] == list(range(7))
        assert [e.position for e in realm] == list(range(1, 8))
        raw = sqlite3.connect(path)
        seqs = [row[0] for row in raw.execute("SELECT seq FROM events ORDER BY seq")]
        raw.close()
        assert seqs == list(range(1, 9))
    finally:
        await a.close()
        await b.close()


def _commit(writer: Writer, jobs: list[WriteJob]) -> list[JobOutcome]:
    """One group through the writer's own commit_group (its thread not started); jobs without a
    loop are settled where the group commits."""
    writer.commit_group(jobs)
    outcomes: list[JobOutcome] = []
    for job in jobs:
        error = job.future.exception()
        outcomes.append(JobOutcome(job, job.future.result() if error is None else error))
    return outcomes


def _writer_on(directory: str) -> Writer:
    conn = open_database(f"{directory}/writer.db", synchronous="OFF")
    return Writer(conn, queue.SimpleQueue(), Ring(), lambda events, last, loop_jobs, before: None)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    """A writer on a fresh file, its thread not started: tests call commit_group themselves."""
    made = _writer_on(str(tmp_path))
    yield made
    made.state.conn.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=_groups)
def test_the_writer_decides_and_stores_what_the_careful_path_does(groups: list[list[Any]]) -> None:
    """Random groups (repeated names, expectations, retries, ids given twice) through the writer's
    commit_group, whichever path it takes for each, against the careful path on a fresh file."""
    # The writer stamps events with the commit's time; the careful path here with a fixed one.
    with tempfile.TemporaryDirectory() as directory, mock.patch.object(writer_module, "utc_timestamp", lambda: TS):
        careful = _fresh(directory, "careful")
        writer = _writer_on(directory)
        try:
            for jobs in _build(groups, None):  # type: ignore[arg-type]
                expected = _decided(_careful(careful, jobs))
                assert _decided(_commit(writer, jobs)) == expected
                assert _rows(writer.state) == _rows(careful)
        finally:
            careful.conn.close()
            writer.state.conn.close()


def test_random_groups_do_take_the_one_statement_path(writer: Writer) -> None:
    """The comparison above means little unless the path is taken: groups of single appends to
    names already written take it, a group with a new name does not."""
    traced = _Traced(writer.state.conn)

    def job(entity: str, expected: int | None = None) -> WriteJob:
        return WriteJob("r", "d", entity, [new_event("t", {"e": entity})], expected, None)

    _commit(writer, [job(f"e{i}") for i in range(10)])
    assert traced.take()[0] == "BEGIN IMMEDIATE"
    outcomes = _commit(writer, [job(f"e{i}") for i in range(10)] + [job("e0", 0)])
    assert _kinds(traced.take()) == ["INSERT INTO events"]
    assert [type(o.outcome) for o in outcomes] == [AppendResult] * 10 + [VersionConflict]
    _commit(writer, [job("e0"), job("new")])
    assert traced.take()[0] == "BEGIN IMMEDIATE"


def test_a_group_larger_than_one_statement_takes_a_transaction(writer: Writer) -> None:
    traced = _Traced(writer.state.conn)
    for _ in range(2):  # the entities new, then known
        traced.take()
        _commit(writer, [WriteJob("r", "d", f"e{i}", [new_event("t", {})], None, None) for i in range(65)])
    lines = traced.take()
    assert lines[0] == "BEGIN IMMEDIATE" and lines[-1] == "COMMIT"


def test_a_group_of_new_entities_sends_a_few_statements_not_a_few_each(tmp_path: Path) -> None:
    writer = _writer_on(str(tmp_path))
    traced = _Traced(writer.state.conn)
    try:
        def job(domain: str, entity: str, type_: str = "t") -> WriteJob:
            return WriteJob("r", domain, entity, [new_event(type_, {"e": entity})], None, None)

        _commit(writer, [job("d", "seed"), job("x", "seed")])  # the realm, domains and type exist
        # A second writer state on the file (a restart): its caches know nothing, the file a lot.
        _commit(writer, [job("d", f"old{i}") for i in range(5)])
        writer.state.conn.close()
        writer = _writer_on(str(tmp_path))
        traced = _Traced(writer.state.conn)
        group = ([job("d", f"new{i}") for i in range(20)] + [job("d", f"old{i}", "u") for i in range(5)]
                 + [job("x", f"new{i}") for i in range(3)])
        outcomes = _commit(writer, group)
        lines = traced.take()

        def sent(start: str) -> int:
            return sum(line.startswith(start) for line in lines)

        # Per domain one look-up of every name (none one by one); 23 new entities in statements
        # of 16, 4, 2 and 1 rows, their 28 new type pairs in 16, 8 and 4.
        assert sent("SELECT n.id, n.name, coalesce") == 2, lines
        assert sent("SELECT n.id, coalesce") == 0, lines
        assert sent("INSERT INTO entities") == 4 and sent("INSERT OR IGNORE INTO entity_types") == 3, lines
        assert len(lines) == 21, lines  # with 8 look-ups that fill a fresh writer's caches once
        _commit(writer, [job("d", f"more{i}") for i in range(20)])  # the caches warm now
        assert _kinds(traced.take()) == [
            "BEGIN IMMEDIATE", "PRAGMA data_version", "SELECT n.id, n.name, coalesce((SELECT e.",
            "INSERT INTO entities", "INSERT INTO entities", "INSERT OR IGNORE INTO entity_types VALUE",
            "INSERT OR IGNORE INTO entity_types VALUE", "INSERT INTO events", "COMMIT"]
        versions = [o.outcome.first.version for o in outcomes if isinstance(o.outcome, AppendResult)]
        assert versions == [0] * 20 + [1] * 5 + [0] * 3
        conn = writer.state.conn
        assert conn.execute("SELECT count(*) FROM entities").fetchone()[0] == 2 + 5 + 23 + 20
        assert conn.execute("SELECT count(*) FROM entity_types").fetchone()[0] == 2 + 5 + 5 + 23 + 20
        orphans = "SELECT count(*) FROM entities n WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.entity_id = n.id)"
        assert conn.execute(orphans).fetchone()[0] == 0
    finally:
        writer.state.conn.close()


def test_a_job_that_fails_after_an_entity_was_given_an_id_leaves_no_entity(writer: Writer) -> None:
    """The fast path gives a new entity its id at once and writes its row with the group's; a job
    refused after that (here the store's last entity id reached midway through a multi-entity job)
    must take the row back, while the group's other jobs are stored."""
    _commit(writer, [WriteJob("r", "d", "a", [new_event("t", {})], None, None)])
    state = writer.state
    state.next_entity_id = MAX_ENTITY_ID  # the next new entity is the last one a store may hold
    two_new = WriteJob("r", "d", "b", [new_event("t", {}), new_event("t", {})], None, None,
                       entities=["b", "c"], expectations={})
    outcomes = _commit(writer, [two_new, WriteJob("r", "d", "a", [new_event("t", {})], None, None)])
    assert isinstance(outcomes[0].outcome, StorageUnavailable)
    assert isinstance(outcomes[1].outcome, AppendResult) and outcomes[1].outcome.first.version == 1
    names = [row[0] for row in state.conn.execute("SELECT name FROM entities ORDER BY id")]
    assert names == ["a"]
