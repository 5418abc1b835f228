"""The contract of perhap.store.states (``store.group_states()``, where consumer groups keep their
state) on every backend: compare-and-set by token, no ABA after a delete, sorted names per realm,
exact bytes, durability across a reopen, and no lost update when tasks of two separately opened
stores race to change one document. Then what only some backends have: a SQLite file or a
Cassandra keyspace made before the table existed gains it at open, Cassandra namespaces keep
their documents apart, and a Cassandra compare-and-set sent twice is recognised as applied."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from perhap import Scope
from perhap.backends import open_store
from perhap.backends.cassandra import CassandraStore
from perhap.backends.cassandra import schema as cschema
from perhap.errors import StateTooLarge, StorageUnavailable, StoreClosed
from perhap.store.base import Store
from perhap.store.states import MAX_STATE_BYTES, StateRecord, StateTable, new_token
from tests.conftest import get_provider


@pytest.fixture
def states(store: Store) -> StateTable:
    return store.group_states()


def doc(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# ----------------------------------------------------------------------------- compare-and-set


async def test_create_replace_delete_by_token(states: StateTable, realm: str) -> None:
    assert await states.get(realm, "g") is None
    first = new_token()
    assert await states.put(realm, "g", doc(v=1), first, None)
    assert await states.get(realm, "g") == StateRecord(first, doc(v=1))
    # A second create loses, whatever its token, and changes nothing.
    assert not await states.put(realm, "g", doc(v=99), new_token(), None)
    assert await states.get(realm, "g") == StateRecord(first, doc(v=1))

    second = new_token()
    assert await states.put(realm, "g", doc(v=2), second, first)
    assert not await states.put(realm, "g", doc(v=98), new_token(), first)  # the token it replaced
    assert not await states.put(realm, "g", doc(v=97), new_token(), new_token())  # one never stored
    assert await states.get(realm, "g") == StateRecord(second, doc(v=2))

    assert not await states.delete(realm, "g", first)
    assert not await states.delete(realm, "g", new_token())
    assert await states.get(realm, "g") == StateRecord(second, doc(v=2))
    assert await states.delete(realm, "g", second)
    assert await states.get(realm, "g") is None
    assert not await states.delete(realm, "g", second)  # gone already
    assert not await states.put(realm, "g", doc(v=96), new_token(), second)  # nothing to replace

    # Created again: no token read before the delete ever matches it (no ABA).
    third = new_token()
    assert await states.put(realm, "g", doc(v=3), third, None)
    for old in (first, second):
        assert not await states.put(realm, "g", doc(v=95), new_token(), old)
        assert not await states.delete(realm, "g", old)
    assert await states.get(realm, "g") == StateRecord(third, doc(v=3))
    assert await states.get(realm, "other") is None and await states.get(f"{realm}x", "g") is None


async def test_names_are_sorted_and_per_realm(states: StateTable, realm: str) -> None:
    names = ["b", "B", "a", "é", "z", "Z", "10", "9", "ä", "😀", "ａ", "a-b", "a.b"]
    one, two, empty = f"{realm}-1", f"{realm}-2", f"{realm}-3"
    for name in names:
        assert await states.put(one, name, doc(n=name), new_token(), None)
    for name in ("y", "x"):
        assert await states.put(two, name, doc(n=name), new_token(), None)
    assert await states.names(one) == [(one, n) for n in sorted(names)]
    assert await states.names(two) == [(two, "x"), (two, "y")]
    assert await states.names(empty) == []
    everything = sorted([(one, n) for n in names] + [(two, "x"), (two, "y")])
    assert await states.names(None) == everything  # the store holds nothing else

    record = await states.get(one, "a")
    assert record is not None and await states.delete(one, "a", record.token)
    assert ("a" not in [n for _, n in await states.names(one)]) and (one, "a") not in await states.names(None)
    assert await states.put(one, "a", doc(again=True), new_token(), None)
    assert await states.names(one) == [(one, n) for n in sorted(names)]


async def test_bytes_round_trip_exactly(states: StateTable, realm: str) -> None:
    big = orjson.dumps({"items": [{"id": i, "text": "ünïcödé " * 4} for i in range(20_000)]})
    assert len(big) > 1 << 20
    samples = {
        "json": '{"a": "é", "n": 1.50, "s": "\\u0000"}'.encode(),  # kept as sent, not re-encoded
        "binary": bytes(range(256)) * 3,
        "big": big,
        "empty": b"",
    }
    tokens = {}
    for name, data in samples.items():
        tokens[name] = new_token()
        assert await states.put(realm, name, data, tokens[name], None)
    for name, data in samples.items():
        assert await states.get(realm, name) == StateRecord(tokens[name], data)
    bigger = big + b" " * 1000
    assert await states.put(realm, "json", bigger, new_token(), tokens["json"])
    record = await states.get(realm, "json")
    assert record is not None and record.data == bigger


async def test_a_document_past_the_limit_is_refused(states: StateTable, realm: str) -> None:
    with pytest.raises(StateTooLarge):
        await states.put(realm, "g", b"x" * (MAX_STATE_BYTES + 1), new_token(), None)
    assert await states.get(realm, "g") is None and await states.names(realm) == []


async def test_a_document_survives_close_and_reopen(store_url: str, realm: str) -> None:
    token = new_token()
    async with open_store(store_url) as store:
        assert await store.group_states().put(realm, "g", doc(kept=True), token, None)
        gone = new_token()
        assert await store.group_states().put(realm, "gone", doc(), gone, None)
        assert await store.group_states().delete(realm, "gone", gone)
    async with open_store(store_url) as store:
        states = store.group_states()
        assert await states.get(realm, "g") == StateRecord(token, doc(kept=True))
        assert await states.get(realm, "gone") is None
        assert await states.names(realm) == [(realm, "g")]
    # A closed store's table refuses as the store does, with the error that says "for good" (a
    # stream or a retry stops on it): some calls raised the "for now" StorageUnavailable.
    for call in (states.put(realm, "g", doc(), new_token(), token), states.get(realm, "g"), states.names(realm),
                 states.delete(realm, "g", token), store.read(Scope(realm)), store.keys()):
        with pytest.raises(StoreClosed):
            await call


# ----------------------------------------------------------------------------- concurrency


@pytest.fixture
async def two_stores(store_url: str) -> AsyncIterator[list[StateTable]]:
    """The tables of two stores opened separately on one database (for SQLite: one file, one
    process; for PostgreSQL and Cassandra: as two processes would share it)."""
    async with open_store(store_url) as a, open_store(store_url) as b:
        yield [a.group_states(), b.group_states()]


def check_unknown(exc: StorageUnavailable) -> None:
    """Only an outcome the store reports as unknown may be settled by reading back; any other 503
    fails the test."""
    assert "may or may not have been applied" in str(exc.detail), exc


async def increment(states: StateTable, realm: str, me: str, times: int) -> int:
    """Add one to the document's counter ``times`` times, each by get and a put that expects the
    token read (again on a conflict); log each in the document. Returns the conflicts met.

    A put may answer that its outcome is unknown (Cassandra: a Paxos round that timed out under
    contention on a loaded machine, StorageUnavailable; the contract allows it). As a careful client
    would, the increment then reads the document: its log entry there means the put was applied
    (if another put has replaced it since, that one carried the entry on); absent, it was not."""
    won = conflicts = 0
    while won < times:
        record = await states.get(realm, "counter")
        assert record is not None
        state = orjson.loads(record.data)
        state["n"] += 1
        entry = f"{me}:{won}"
        state["log"].append(entry)
        try:
            applied = await states.put(realm, "counter", orjson.dumps(state), new_token(), record.token)
        except StorageUnavailable as exc:
            check_unknown(exc)
            now = await states.get(realm, "counter")
            assert now is not None
            applied = entry in orjson.loads(now.data)["log"]
        if applied:
            won += 1
        else:
            conflicts += 1
    return conflicts


async def create(states: StateTable, realm: str, token: str) -> bool:
    """Try to create the document; an unknown outcome is settled by reading it back (during the
    creates nothing else writes it, so its token there means this create was applied)."""
    try:
        return await states.put(realm, "counter", doc(n=0, log=[]), token, None)
    except StorageUnavailable as exc:
        check_unknown(exc)
        record = await states.get(realm, "counter")
        return record is not None and record.token == token


async def delete(states: StateTable, realm: str, token: str) -> bool | None:
    """Try to delete the document at ``token``; None when the outcome is unknown (a delete's mark
    is its own, so the test cannot read it back: it counts as maybe)."""
    try:
        return await states.delete(realm, "counter", token)
    except StorageUnavailable as exc:
        check_unknown(exc)
        return None


async def test_no_update_is_lost_when_tasks_of_two_stores_race(two_stores: list[StateTable], realm: str) -> None:
    tasks, times = 4, 6  # per store, per task
    # Every task tries to create the document: exactly one wins.
    tokens = [new_token() for _ in range(2 * tasks)]
    created = await asyncio.gather(*[create(two_stores[i % 2], realm, t) for i, t in enumerate(tokens)])
    assert created.count(True) == 1
    record = await two_stores[1].get(realm, "counter")
    assert record is not None and record.token == tokens[created.index(True)]

    await asyncio.gather(*[increment(two_stores[i % 2], realm, f"t{i}", times) for i in range(2 * tasks)])
    for states in two_stores:  # each store sees the last write, with every update in it
        record = await states.get(realm, "counter")
        assert record is not None
        state = orjson.loads(record.data)
        assert state["n"] == 2 * tasks * times
        assert sorted(state["log"]) == sorted(f"t{i}:{k}" for i in range(2 * tasks) for k in range(times))

    # Every task deletes the version they all read: exactly one succeeds (an unknown outcome may
    # be that one; never two).
    deleted = await asyncio.gather(*[delete(two_stores[i % 2], realm, record.token) for i in range(2 * tasks)])
    assert deleted.count(True) == 1 or (deleted.count(True) == 0 and None in deleted), deleted
    assert await two_stores[0].get(realm, "counter") is None and await two_stores[1].names(realm) == []


async def test_a_write_through_one_store_is_seen_through_the_other(two_stores: list[StateTable], realm: str) -> None:
    a, b = two_stores
    token = new_token()
    assert await a.put(realm, "g", doc(v=1), token, None)
    assert await b.get(realm, "g") == StateRecord(token, doc(v=1))
    assert await b.names(realm) == [(realm, "g")]
    assert await b.delete(realm, "g", token)
    assert await a.get(realm, "g") is None and await a.names(None) == []


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_postgres_a_write_is_heard_by_the_other_process_not_by_its_own(
        tmp_path_factory: pytest.TempPathFactory, realm: str) -> None:
    """Every applied create, replace and delete is heard by another process's watchers, naming the
    document; a write that was not applied, and any write heard by its own process, is not."""
    url = get_provider("postgres", tmp_path_factory).new_url()
    async with open_store(url) as one, open_store(url) as two:
        a, b = one.group_states(), two.group_states()
        heard: dict[str, list[tuple[str, str] | None]] = {"a": [], "b": []}
        arrived = asyncio.Event()

        def watcher(name: str) -> Any:
            def changed(key: tuple[str, str] | None) -> None:
                heard[name].append(key)
                arrived.set()
            return changed

        a.watch(watcher("a"))
        b.watch(watcher("b"))
        while not (one.listening and two.listening):  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

        async def next_heard() -> tuple[str, str] | None:
            """The next document b hears of, past the None each process hears when its listener
            connects (it may have missed something)."""
            while True:
                while not heard["b"]:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), 30)
                key = heard["b"].pop(0)
                if key is not None:
                    return key

        first, second = new_token(), new_token()
        assert await a.put(realm, "g", doc(v=1), first, None)
        assert await next_heard() == (realm, "g")
        assert not await a.put(realm, "g", doc(v=9), new_token(), None)  # not applied: not told
        assert not await a.put(realm, "g", doc(v=9), new_token(), new_token())
        assert not await a.delete(realm, "g", new_token())
        assert await a.put(realm, "g", doc(v=2), second, first)
        # Notifications of one process arrive in commit order: a refused write would be heard here.
        assert await next_heard() == (realm, "g")
        assert await a.put(realm, "h", doc(v=1), new_token(), None)
        assert await next_heard() == (realm, "h")
        assert await a.delete(realm, "g", second)
        assert await next_heard() == (realm, "g")
        assert await b.put(realm, "i", doc(v=1), new_token(), None)
        while (realm, "i") not in heard["a"]:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)
        assert [k for k in heard["a"] if k is not None] == [(realm, "i")]
        assert [k for k in heard["b"] if k is not None] == []  # b never hears its own writes
        # A notification on the channel that is not perhap's wakes every waiter (never fails).
        for foreign in ("42", "not json", '["only", "two"]'):
            heard["b"].clear()
            b.heard(foreign)  # type: ignore[attr-defined]
            assert heard["b"] == [None], foreign


# ----------------------------------------------------------------------------- SQLite


async def test_sqlite_a_file_without_the_table_gains_it(sqlite_url: str, tmp_path: Path, realm: str) -> None:
    """A file written before group state existed (no table) gets it at open, with no version change."""
    async with open_store(sqlite_url) as store:
        await store.append(realm, "d", "e", "t", 1)
    conn = sqlite3.connect(tmp_path / "perhap.db")
    conn.execute("DROP TABLE perhap_groups")
    version = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
    conn.commit()
    conn.close()
    async with open_store(sqlite_url) as store:
        token = new_token()
        assert await store.group_states().put(realm, "g", doc(), token, None)
        assert await store.group_states().get(realm, "g") == StateRecord(token, doc())
        assert await store.count() == 1  # type: ignore[attr-defined]
    conn = sqlite3.connect(tmp_path / "perhap.db")
    assert conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone() == version
    conn.close()


# ----------------------------------------------------------------------------- Cassandra


@pytest.mark.cassandra
async def test_cassandra_namespaces_keep_their_documents_apart(tmp_path_factory: pytest.TempPathFactory,
                                                               realm: str) -> None:
    cassandra = get_provider("cassandra", tmp_path_factory)
    async with open_store(cassandra.new_url()) as one, open_store(cassandra.new_url()) as two:
        a, b = one.group_states(), two.group_states()
        token = new_token()
        assert await a.put(realm, "g", doc(ns="one"), token, None)
        assert await b.get(realm, "g") is None and await b.names(realm) == [] and await b.names(None) == []
        other = new_token()
        assert await b.put(realm, "g", doc(ns="two"), other, None)  # the same name, a document of its own
        assert await a.names(None) == [(realm, "g")] and await b.names(None) == [(realm, "g")]
        assert not await b.delete(realm, "g", token)
        assert await b.delete(realm, "g", other)
        assert await a.get(realm, "g") == StateRecord(token, doc(ns="one"))
        assert await b.names(realm) == []


@pytest.mark.cassandra
async def test_cassandra_a_compare_and_set_sent_twice_is_recognised(tmp_path_factory: pytest.TempPathFactory,
                                                                    realm: str) -> None:
    """The driver re-sends a request whose connection broke: a second try of an applied write must
    answer True (its own token or delete marker is there), not a conflict."""
    cassandra = get_provider("cassandra", tmp_path_factory)
    async with open_store(cassandra.new_url()) as store:
        assert isinstance(store, CassandraStore)
        states, q = store.states, store.states.q
        key = (store.ns.stored(realm), "g")
        token = new_token()
        for _ in range(2):
            assert await states._cas(key, q.create, (token, doc(v=1), *key), token=token)
        later = new_token()
        for _ in range(2):
            assert await states._cas(key, q.replace, (later, doc(v=2), *key, token), token=later)
        gone = new_token()
        for _ in range(2):
            assert await states._cas(key, q.delete, (gone, *key, later), gone=gone)
        assert await states.get(realm, "g") is None
        # Another's delete of the same document is still a plain conflict.
        assert not await states._cas(key, q.delete, (new_token(), *key, later), gone=new_token())


@pytest.mark.cassandra
async def test_cassandra_a_keyspace_made_before_the_tables_gains_them(tmp_path_factory: pytest.TempPathFactory,
                                                                      realm: str) -> None:
    """A keyspace of schema 3 from before group state (every other table, no group tables) gets
    them at open, with its schema version unchanged."""
    from cassandra.cluster import Cluster

    cassandra = get_provider("cassandra", tmp_path_factory)
    keyspace = f"perhap_states_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)  # type: ignore[attr-defined]  # dropped with the others
    host, _, port = cassandra.hosts.rpartition(":")  # type: ignore[attr-defined]
    cluster = Cluster(host.split(","), port=int(port))
    try:
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        cschema.create_tables(session, keyspace, [n for n in cschema.TABLES if n not in cschema.ADDED_TABLES])
        for key, value in (("schema_version", str(cschema.SCHEMA_VERSION)), ("bucket_us", "60000000")):
            session.execute(f"INSERT INTO {keyspace}.meta (key, value) VALUES (%s, %s)", (key, value))
        async with open_store(f"cassandra://{cassandra.hosts}/{keyspace}") as store:  # type: ignore[attr-defined]
            token = new_token()
            assert await store.group_states().put(realm, "g", doc(), token, None)
            assert await store.group_states().names(None) == [(realm, "g")]
        version = session.execute(f"SELECT value FROM {keyspace}.meta WHERE key = 'schema_version'").one()[0]
        assert version == str(cschema.SCHEMA_VERSION)
    finally:
        cluster.shutdown()
