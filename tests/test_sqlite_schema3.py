"""SQLite schema 3: events clustered by entity, and the in-place migration from schema 2.

- A schema-2 file, made with schema 2's own DDL and filled through plain SQL, is migrated in place
  when perhap opens it: every row keeps its seq, position, version, id, time, data and meta, every
  scope reads the same events in the same order (realm by position, domain by seq, entity by
  version, types, newest first, paging, position and version bounds, key listings), and appends
  go on with the next version, position and seq.
- A migration that fails (a row that cannot be stored, or the work interrupted at any point)
  leaves the file exactly as it was, schema 2, and migrates at the next open once it can.
- The writer assigns seqs itself: contiguous through rolled-back jobs and another writer on the
  file; an entity's walk never strays into its neighbours' keys; the key's limits are refused.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perhap.backends.sqlite import SCHEMA_VERSION, SQLiteStore, open_sqlite
from perhap.backends.sqlite.schema import KEY_SPAN, MAX_ENTITY_ID, connect, migrate
from perhap.errors import InvalidInput, StorageUnavailable
from perhap.model import AppendResult, Event, Scope
from perhap.store.base import Store
from tests.helpers import append_from_another_store

#: Schema 2 as perhap created it (tables, then indexes), to make files of that schema.
SCHEMA2 = """
CREATE TABLE perhap_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE realms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE domains (
    id INTEGER PRIMARY KEY, realm_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE (realm_id, name));
CREATE TABLE entities (
    id INTEGER PRIMARY KEY, domain_id INTEGER NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE types (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE entity_types (
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    PRIMARY KEY (entity_id, type_id)) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    realm_id INTEGER NOT NULL, domain_id INTEGER NOT NULL,
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    version INTEGER NOT NULL, ts TEXT NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL,
    position INTEGER NOT NULL);
CREATE TABLE perhap_groups (
    realm TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (realm, name));
CREATE UNIQUE INDEX events_entity ON events (entity_id, version);
CREATE INDEX events_entity_type ON events (entity_id, type_id, version);
CREATE INDEX events_domain ON events (domain_id);
CREATE INDEX events_domain_type ON events (domain_id, type_id);
CREATE UNIQUE INDEX events_realm_position ON events (realm_id, position);
CREATE INDEX events_realm_type ON events (realm_id, type_id, position);
"""

PLACES = {"shop": {"orders": ["o0", "o1", "o2", "o3"], "stock": ["s0", "s1"]},
          "bank": {"accounts": ["a0", "a1", "a2"]}}
TYPES = ["placed", "paid", "moved"]
EVENTS = 90
EVENT_COLUMNS = "seq, event_id, realm_id, domain_id, entity_id, type_id, version, ts, data, meta, position"


def _event_id(seq: int) -> str:
    return f"0190a0a0-{seq:04x}-7000-8000-{seq:012x}"


def make_schema2(path: Path, events: int = EVENTS, seed: int = 2) -> None:
    """A schema-2 file as perhap wrote it: names made on first use, entities interleaved, each
    realm numbered 1..n in seq order, an entity's versions 0..n-1, the entities' versions kept."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA2)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', '2')")
    rnd = random.Random(seed)
    ids: dict[Any, int] = {}
    versions: dict[int, int] = {}
    heads: dict[int, int] = {}

    def name_id(table: str, key: Any, insert: str, args: tuple[Any, ...]) -> int:
        if (table, key) not in ids:
            ids[(table, key)] = conn.execute(insert, args).lastrowid or 0
        return ids[(table, key)]

    places = [(r, d, e) for r, domains in PLACES.items() for d, entities in domains.items() for e in entities]
    for seq in range(1, events + 1):
        realm, domain, entity = rnd.choice(places)
        type_ = rnd.choice(TYPES)
        realm_id = name_id("realm", realm, "INSERT INTO realms (name) VALUES (?)", (realm,))
        domain_id = name_id("domain", (realm_id, domain), "INSERT INTO domains (realm_id, name) VALUES (?, ?)",
                            (realm_id, domain))
        entity_id = name_id("entity", (domain_id, entity),
                            "INSERT INTO entities (domain_id, name, version) VALUES (?, ?, 0)", (domain_id, entity))
        type_id = name_id("type", type_, "INSERT INTO types (name) VALUES (?)", (type_,))
        conn.execute("INSERT OR IGNORE INTO entity_types VALUES (?, ?)", (entity_id, type_id))
        version = versions[entity_id] = versions.get(entity_id, -1) + 1
        position = heads[realm_id] = heads.get(realm_id, 0) + 1
        data = b'{"big":%d}' % (2**70 + seq) if seq % 7 == 0 else b'{"n":%d,"s":"x\\u00e9"}' % seq
        meta = b'{"i":%d}' % seq if seq % 3 == 0 else b"{}"
        conn.execute(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (seq, _event_id(seq), realm_id, domain_id, entity_id, type_id, version,
                      f"2026-01-01T00:00:{seq % 60:02d}.{seq:06d}Z", data, meta, position))
        conn.execute("UPDATE entities SET version = ? WHERE id = ?", (version, entity_id))
    conn.execute("COMMIT")
    conn.close()


def snapshot(path: Path) -> dict[str, Any]:
    """Everything in the file: its schema objects and every row of every table."""
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        tables = [name for kind, name, _, _ in objects if kind == "table"]
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
        return {"objects": objects, "rows": rows}
    finally:
        conn.close()


def stored_events(path: Path) -> list[tuple[Any, ...]]:
    """Every event's columns (those both schemas have), by seq."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def expected_reads(path: Path) -> dict[Scope, list[tuple[Any, ...]]]:
    """What every scope of the file reads, from its rows: a realm in position order, a domain in
    seq order, an entity in version order, each also per type; (shown event, cursor) pairs."""
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT e.seq, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta, e.position"
        " FROM events e JOIN realms r ON r.id = e.realm_id JOIN domains d ON d.id = e.domain_id"
        " JOIN entities n ON n.id = e.entity_id JOIN types t ON t.id = e.type_id ORDER BY e.seq").fetchall()
    conn.close()
    reads: dict[Scope, list[tuple[Any, ...]]] = {}
    for seq, event_id, realm, domain, entity, type_, version, ts, data, meta, position in rows:
        shown = (event_id, realm, domain, entity, type_, version, ts, bytes(data), bytes(meta), position)
        for scope in (Scope(realm), Scope(realm, domain), Scope(realm, domain, entity)):
            cursor = version if scope.entity is not None else seq
            for typed in (scope, Scope(scope.realm, scope.domain, scope.entity, type_)):
                reads.setdefault(typed, []).append((shown, cursor))
    for scope, listed in reads.items():
        listed.sort(key=lambda s: s[0][5] if scope.entity is not None else s[0][9])
    return reads


def _shown(event: Event) -> tuple[tuple[Any, ...], Any]:
    return ((event.event_id, event.realm, event.domain, event.entity, event.type, event.version,
             event.timestamp, event.data_json, event.meta_json, event.position), event.cursor)


async def _read_all(store: Store, scope: Scope, **params: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """Every event of a read, paged by ``following`` three at a time (in one page when the read
    starts from a position: those page with the position, not ``following``)."""
    if params.get("after_position") is not None or params.get("before_position") is not None:
        return [_shown(e) for e in (await store.read(scope, limit=1000, **params)).events]
    shown: list[tuple[tuple[Any, ...], Any]] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=3, **params)
        shown += [_shown(e) for e in page.events]
        if page.next is None:
            return shown
        following = page.next


async def check_reads(store: Store, expected: dict[Scope, list[tuple[Any, ...]]]) -> None:
    """Every scope of ``expected`` read every way perhap reads, against the expected answer."""
    for scope, listed in expected.items():
        base = Scope(scope.realm, scope.domain, scope.entity)
        types = [scope.type] if scope.type else None
        assert await _read_all(store, base, types=types) == listed, scope
        assert await _read_all(store, base, types=types, order="desc") == listed[::-1], scope
        positions = [shown[9] for shown, _ in listed]
        cut = positions[len(positions) // 2]
        assert await _read_all(store, base, types=types, after_position=cut) == [
            s for s in listed if s[0][9] > cut], scope
        assert await _read_all(store, base, types=types, order="desc", before_position=cut) == [
            s for s in listed[::-1] if s[0][9] < cut], scope
        if scope.entity is not None:
            versions = [shown[5] for shown, _ in listed]
            low, high = versions[0], max(versions[0], versions[-1] - 1)
            assert await _read_all(store, base, types=types, after_version=low, until_version=high) == [
                s for s in listed if low < s[0][5] <= high], scope
    # Two types at once: merged in the scope's order.
    for scope in [s for s in expected if s.type is None]:
        both = {"placed", "moved"}
        assert await _read_all(store, scope, types=sorted(both)) == [
            s for s in expected[scope] if s[0][4] in both], scope


def expected_keys(path: Path) -> dict[tuple[str | None, ...], list[str]]:
    conn = sqlite3.connect(path)
    try:
        keys: dict[tuple[str | None, ...], list[str]] = {
            (): sorted(r[0] for r in conn.execute("SELECT name FROM realms"))}
        for realm, domain in conn.execute("SELECT r.name, d.name FROM domains d JOIN realms r ON r.id = d.realm_id"):
            keys.setdefault((realm,), []).append(domain)
        for realm, domain, entity in conn.execute(
                "SELECT r.name, d.name, n.name FROM entities n JOIN domains d ON d.id = n.domain_id"
                " JOIN realms r ON r.id = d.realm_id"):
            keys.setdefault((realm, domain), []).append(entity)
            keys[(realm, domain, entity)] = sorted(r[0] for r in conn.execute(
                "SELECT t.name FROM entity_types x JOIN types t ON t.id = x.type_id JOIN entities n"
                " ON n.id = x.entity_id JOIN domains d ON d.id = n.domain_id WHERE n.name = ? AND d.name = ?",
                (entity, domain)))
        return {k: sorted(v) for k, v in keys.items()}
    finally:
        conn.close()


@pytest.fixture
def schema2_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "schema2.sqlite"
    make_schema2(path)
    yield path


# ------------------------------------------------------------------ migration from schema 2


async def test_a_schema2_file_is_migrated_in_place_and_reads_the_same(schema2_file: Path) -> None:
    rows, expected, keys = stored_events(schema2_file), expected_reads(schema2_file), expected_keys(schema2_file)
    async with await open_sqlite(str(schema2_file), synchronous="OFF") as store:
        await check_reads(store, expected)
        for names, listed in keys.items():
            page = await store.keys(*names, limit=100)
            assert page.keys == listed, names
        event = await store.get_event("shop", "orders", _event_id(next(r[0] for r in rows if r[2] == 1
                                                                       and r[3] == 1 and r[0] % 7 == 0)))
        assert event.event["big"] > 2**70
    assert stored_events(schema2_file) == rows  # every seq, position, version, id, time, data and meta
    conn = sqlite3.connect(schema2_file)
    try:
        assert conn.execute("SELECT value FROM perhap_meta").fetchone()[0] == str(SCHEMA_VERSION) == "3"
        assert conn.execute("SELECT count(*) FROM events WHERE entity_key != entity_id * ? + version",
                            (KEY_SPAN,)).fetchone()[0] == 0
        assert "version" not in [r[1] for r in conn.execute("PRAGMA table_info(entities)")]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                              " AND tbl_name = 'events'")}
        assert indexes == {"events_event_id", "events_seq", "events_domain", "events_domain_type",
                           "events_realm_position", "events_realm_type"}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # Opened again: nothing to migrate, the same answers.
    async with await open_sqlite(str(schema2_file), synchronous="OFF") as store:
        await check_reads(store, expected)


async def test_appends_go_on_after_the_migration(schema2_file: Path) -> None:
    rows = stored_events(schema2_file)
    last_seq = rows[-1][0]
    heads = {realm_id: max(r[10] for r in rows if r[2] == realm_id) for realm_id in {r[2] for r in rows}}
    o1 = [r for r in rows if r[4] == _entity_id(schema2_file, "orders", "o1")]
    async with await open_sqlite(str(schema2_file), synchronous="OFF") as store:
        one = await store.append("shop", "orders", "o1", "paid", {"after": 1}, expected_version=len(o1) - 1)
        assert (one.first.version, one.first.position) == (len(o1), heads[1] + 1)
        batch = await store.append_batch("shop", "orders", "new", [{"type": "placed", "event": i} for i in range(3)],
                                         expected_version=-1)
        assert [(a.version, a.position) for a in batch.events] == [(0, heads[1] + 2), (1, heads[1] + 3),
                                                                    (2, heads[1] + 4)]
        many = await store.append_many("bank", "accounts", [
            {"entity": "a0", "type": "moved", "event": 1}, {"entity": "a9", "type": "moved", "event": 2},
            {"entity": "a0", "type": "moved", "event": 3}])
        a0 = len([r for r in rows if r[4] == _entity_id(schema2_file, "accounts", "a0")])
        assert [(a.entity, a.version, a.position) for a in many.events] == [
            ("a0", a0, heads[2] + 1), ("a9", 0, heads[2] + 2), ("a0", a0 + 1, heads[2] + 3)]
        page = await store.read(Scope("shop", "orders"), order="desc", limit=4)
        assert [e.cursor for e in page.events] == [last_seq + 4, last_seq + 3, last_seq + 2, last_seq + 1]
        newest = (await store.read(Scope("shop", "orders", "o1"), order="desc", limit=1)).events[0]
        assert (newest.version, newest.event) == (len(o1), {"after": 1})
    after = stored_events(schema2_file)
    assert after[:len(rows)] == rows
    assert [r[0] for r in after] == list(range(1, last_seq + 8))


def _entity_id(path: Path, domain: str, entity: str) -> int:
    conn = sqlite3.connect(path)
    try:
        found: int = conn.execute("SELECT n.id FROM entities n JOIN domains d ON d.id = n.domain_id"
                                  " WHERE d.name = ? AND n.name = ?", (domain, entity)).fetchone()[0]
        return found
    finally:
        conn.close()


async def test_a_migration_that_fails_leaves_schema2_intact(schema2_file: Path) -> None:
    # A row schema 3 cannot hold: a version beyond an entity's range of keys.
    conn = sqlite3.connect(schema2_file, isolation_level=None)
    conn.execute(f"INSERT INTO events ({EVENT_COLUMNS}) SELECT seq + 1000, 'planted', realm_id, domain_id,"
                 " entity_id, type_id, ?, ts, data, meta, position + 1000 FROM events WHERE seq = 1", (KEY_SPAN,))
    conn.close()
    before = snapshot(schema2_file)
    with pytest.raises(StorageUnavailable, match="CHECK constraint failed"):
        await open_sqlite(str(schema2_file), synchronous="OFF")
    assert snapshot(schema2_file) == before
    # Once the row is gone, the next open migrates.
    conn = sqlite3.connect(schema2_file, isolation_level=None)
    conn.execute("DELETE FROM events WHERE event_id = 'planted'")
    conn.close()
    expected = expected_reads(schema2_file)
    async with await open_sqlite(str(schema2_file), synchronous="OFF") as store:
        await check_reads(store, expected)


def test_a_migration_interrupted_anywhere_leaves_schema2_intact(tmp_path: Path) -> None:
    """SQLite's work stopped at points spread over the whole migration (as a crash would stop it):
    each time the file is exactly as it was, and the migration then completes."""
    original = tmp_path / "original.sqlite"
    make_schema2(original, events=400)
    before = snapshot(original)
    steps = _steps_to_migrate(original, tmp_path / "counted.sqlite")
    for stop_at in sorted({max(1, steps * k // 12) for k in range(12)}):
        path = tmp_path / f"stopped-{stop_at}.sqlite"
        shutil.copy(original, path)
        conn = connect(str(path), synchronous="OFF")
        conn.set_progress_handler(_stopping_at(stop_at), 100)
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            migrate(conn)
        conn.set_progress_handler(None, 100)
        assert not conn.in_transaction
        conn.close()
        assert snapshot(path) == before, stop_at
        conn = connect(str(path), synchronous="OFF")
        migrate(conn)
        conn.close()
        assert stored_events(path) == stored_events(original), stop_at


def _stopping_at(calls: int) -> Callable[[], int]:
    """A progress handler that lets SQLite go on until its ``calls``-th call, then stops it."""
    counted = [0]

    def stop() -> int:
        counted[0] += 1
        return 1 if counted[0] >= calls else 0

    return stop


def _steps_to_migrate(original: Path, path: Path) -> int:
    """How many progress-handler calls (every 100 virtual machine steps) a whole migration takes."""
    shutil.copy(original, path)
    conn = connect(str(path), synchronous="OFF")
    counted = [0]

    def count() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(count, 100)
    migrate(conn)
    conn.close()
    assert counted[0] > 12
    return counted[0]


# ------------------------------------------------------------------ the writer's seqs and keys


async def test_seqs_stay_contiguous_through_rolled_back_jobs_and_another_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "seqs.db")
    async with await open_sqlite(path, synchronous="OFF") as store:
        await store.append("r", "d", "e", "t", 0)
        twin_id = "00000000-0000-4000-8000-000000000009"
        results = await asyncio.gather(
            store.append("r", "d", "e", "t", 1),
            # The same id twice in one group, other content: the careful path undoes the second.
            store.append("r", "d", "x", "t", 2, event_id=twin_id),
            store.append("r", "d", "y", "t", 3, event_id=twin_id),
            store.append("r", "d", "e", "t", 4, expected_version=0),  # a conflict
            store.append_batch("r", "d", "e", [{"type": "t", "event": 5}] * 3),
            return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["AppendResult", "AppendResult", "EventIdConflict",
                                                       "VersionConflict", "AppendResult"]
        await append_from_another_store(path, "r", "d2", "twin", 3)
        appended = await store.append("r", "d", "e", "t", 6)
        assert appended.first.version == 5
        domain = (await store.read(Scope("r", "d"), limit=100)).events
        realm = (await store.read(Scope("r"), limit=100)).events
    assert [e.cursor for e in realm] == list(range(1, 11))
    assert [e.position for e in realm] == list(range(1, 11))
    assert [e.cursor for e in domain] == [e.cursor for e in realm if e.domain == "d"]
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == list(range(1, 11))
    conn.close()


async def test_an_entitys_walk_keeps_to_its_own_keys(tmp_path: Path) -> None:
    """Neighbouring entities have neighbouring keys: no bound, however far out, reaches them."""
    async with await open_sqlite(str(tmp_path / "neighbours.db"), synchronous="OFF") as store:
        for name in ("a", "b", "c"):
            await store.append_batch("r", "d", name, [{"type": f"t{i % 2}", "event": i} for i in range(5)])
        b = Scope("r", "d", "b")
        everything = (await store.read(b, limit=100)).events
        assert [(e.entity, e.version) for e in everything] == [("b", v) for v in range(5)]
        assert (await store.read(b, order="desc", limit=100)).events == everything[::-1]
        assert (await store.read(b, after_version=2**40, limit=100)).events == []
        assert (await store.read(b, until_version=2**62, limit=100)).events == everything
        assert (await store.read(b, until_version=0, limit=100)).events == everything[:1]
        assert (await store.read(b, after_version=3, until_version=2**62, limit=100)).events == everything[4:]
        assert (await store.read(b, types=["t1"], order="desc", limit=100)).events == [
            e for e in everything[::-1] if e.type == "t1"]
        assert (await store.read(Scope("r", "d", "nobody"), limit=100)).events == []


async def test_the_keys_limits_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = str(tmp_path / "limits.db")
    async with await open_sqlite(path, synchronous="OFF") as store:
        await store.append("r", "d", "full", "t", 0)
    conn = sqlite3.connect(path, isolation_level=None)
    # An entity at its last version, and the entity ids used up to the last one a key can hold.
    conn.execute("UPDATE events SET version = ?, entity_key = entity_id * ? + ? WHERE seq = 1",
                 (KEY_SPAN - 1, KEY_SPAN, KEY_SPAN - 1))
    conn.execute("INSERT INTO entities (id, domain_id, name) VALUES (?, 1, 'last')", (MAX_ENTITY_ID,))
    conn.close()
    before = snapshot(Path(path))
    async with await open_sqlite(path, synchronous="OFF") as store:
        with pytest.raises(InvalidInput, match="at most"):
            await store.append("r", "d", "full", "t", 1)
        with pytest.raises(StorageUnavailable, match="at most"):
            await store.append("r", "d", "one-too-many", "t", 1)
        results = await asyncio.gather(store.append("r", "d", "full", "t", 1),
                                       store.append("r", "d", "one-too-many", "t", 1), return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["InvalidInput", "StorageUnavailable"]
        assert snapshot(Path(path)) == before
        fine = await store.append("r", "d", "last", "t", 2)  # an entity that exists still takes events
        assert isinstance(fine, AppendResult) and (fine.first.version, fine.first.position) == (0, 2)


async def test_a_new_store_is_schema3(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with await open_sqlite(str(path), synchronous="OFF") as store:
        assert isinstance(store, SQLiteStore)
        await store.append("r", "d", "e", "t", 0)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM perhap_meta").fetchone()[0] == "3"
        assert conn.execute("SELECT entity_key, seq, version FROM events").fetchall() == [(KEY_SPAN, 1, 0)]
    finally:
        conn.close()
