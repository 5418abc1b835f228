"""The SQLite writer's quickest path: a group its caches decide whole is one INSERT, its own transaction.

No ``BEGIN``, ``PRAGMA data_version`` or ``COMMIT`` for such a group, so nothing checks for another
connection's commits before the INSERT: the unique indexes on seq, on each realm's positions and
on the entity-keyed events table must refuse whatever stale caches would number twice, and the
group must then be decided as the careful path decides it. These tests hold the path to that:
which groups take it (read from SQLite's own trace of the writer's statements), the same decisions
and rows as the careful path on random groups, a second store writing the file between two
appends, and a retry of client-chosen ids.
"""

from __future__ import annotations

import queue
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings

from perhap.backends.sqlite import SQLiteStore, open_sqlite
from perhap.backends.sqlite import writer as writer_module
from perhap.backends.sqlite.ring import Ring
from perhap.backends.sqlite.schema import open_database
from perhap.backends.sqlite.writer import JobOutcome, Writer
from perhap.errors import VersionConflict
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
    return Writer(conn, queue.SimpleQueue(), Ring(), lambda events, last, loop_jobs: None)


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


def test_random_groups_do_take_the_one_statement_path(tmp_path: Path) -> None:
    """The comparison above means little unless the path is taken: groups of single appends to
    names already written take it, a group with a new name does not."""
    writer = _writer_on(str(tmp_path))
    traced = _Traced(writer.state.conn)
    try:
        def job(entity: str, expected: int | None = None) -> WriteJob:
            return WriteJob("r", "d", entity, [new_event("t", {"e": entity})], expected, None)

        _commit(writer, [job(f"e{i}") for i in range(10)])
        assert traced.take()[0] == "BEGIN IMMEDIATE"
        outcomes = _commit(writer, [job(f"e{i}") for i in range(10)] + [job("e0", 0)])
        assert _kinds(traced.take()) == ["INSERT INTO events"]
        assert [type(o.outcome) for o in outcomes] == [AppendResult] * 10 + [VersionConflict]
        _commit(writer, [job("e0"), job("new")])
        assert traced.take()[0] == "BEGIN IMMEDIATE"
    finally:
        writer.state.conn.close()


def test_a_group_larger_than_one_statement_takes_a_transaction(tmp_path: Path) -> None:
    writer = _writer_on(str(tmp_path))
    traced = _Traced(writer.state.conn)
    try:
        seed = [WriteJob("r", "d", f"e{i}", [new_event("t", {})], None, None) for i in range(65)]
        _commit(writer, seed)
        traced.take()
        _commit(writer, [WriteJob("r", "d", f"e{i}", [new_event("t", {})], None, None) for i in range(65)])
        lines = traced.take()
        assert lines[0] == "BEGIN IMMEDIATE" and lines[-1] == "COMMIT"
    finally:
        writer.state.conn.close()

