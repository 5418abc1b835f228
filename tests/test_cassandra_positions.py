"""Cassandra positions, on a real node: writer slots under leases, the allocator, the migration of
a keyspace written by the release before positions, head reads, and multi-entity appends refused.
The conformance suite covers the reading contract itself."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cassandra.cluster import Cluster

from perhap import NotSupported, Scope, StorageUnavailable, open_store
from perhap.backends.cassandra import CassandraStore, clock
from perhap.backends.cassandra.positions import LEASE_US, SLOTS, Allocator, Lease
from perhap.backends.cassandra.records import Attempt, EntityKey
from perhap.model import new_event
from tests.helpers import read_all
from tests.test_cassandra_backend import Died, pending_rows

pytestmark = pytest.mark.cassandra


@pytest.fixture
def url(cassandra: Any) -> str:
    return cassandra.new_url()  # type: ignore[no-any-return]


@contextmanager
def session_of(cassandra: Any, keyspace: str | None = None) -> Iterator[Any]:
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        yield cluster.connect(keyspace)
    finally:
        cluster.shutdown()


def namespace_of(url: str) -> str:
    return url.rsplit("namespace=", 1)[1]


# ----------------------------------------------------------------------------- multi-entity appends


async def test_multi_entity_appends_are_refused_and_store_nothing(url: str, realm: str) -> None:
    async with open_store(url) as store:
        await store.append(realm, "d", "a", "t", "before")
        with pytest.raises(NotSupported) as err:
            await store.append_many(realm, "d", [{"entity": "a", "type": "t", "event": 1},
                                                 {"entity": "b", "type": "t", "event": 2}])
        assert err.value.status == 501 and "cassandra" in err.value.detail
        assert [e.event for e in await read_all(store, Scope(realm))] == ["before"]
        assert (await store.read(Scope(realm, "d", "b"))).events == []


# ----------------------------------------------------------------------------- the allocator


def test_allocator_ranges_never_overlap_and_a_big_one_pushes_no_other() -> None:
    now = clock.now_us()
    allocator = Allocator(0)
    big = allocator.take(now + 4_000_000, 10_000)  # a big batch, seconds ahead
    small = allocator.take(now + 1_000, 1)
    assert small == now + 1_000  # placed at its own start, not behind the big batch
    assert allocator.take(now + 1_000, 3) == now + 1_001  # the same start: the next free place
    inside = allocator.take(big + 5, 2)  # starts inside the big range: moved past it
    assert inside == big + 10_000
    ranges = sorted(allocator.ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert Allocator(now + 10**9).take(now, 1) == now + 10**9  # never below its floor


# ----------------------------------------------------------------------------- writer slots


async def test_two_instances_at_one_ts_get_distinct_positions(url: str, realm: str) -> None:
    """The same microsecond in two processes (forced here): the slots keep the positions apart."""
    async with open_store(url) as a, open_store(url) as b:
        assert isinstance(a, CassandraStore) and isinstance(b, CassandraStore)
        for store in (a, b):
            await store.append(realm, "warm", "w", "t", "takes a slot")
        ts = clock.now_us() + 200_000
        for store in (a, b):
            store.positions.allocator.take = lambda start, count: max(start, ts)  # type: ignore[method-assign]
        first = await a.append(realm, "d", "x", "t", "a")
        second = await b.append(realm, "d", "y", "t", "b")
        assert first.first.position >> 10 == second.first.position >> 10 == ts
        assert first.first.position != second.first.position
        assert a.positions.lease is not None and b.positions.lease is not None
        assert {first.first.position & 1023, second.first.position & 1023} == \
            {a.positions.lease.slot, b.positions.lease.slot}
        events = (await a.read(Scope(realm, "d"))).events
        assert [e.position for e in events] == sorted([first.first.position, second.first.position])


async def test_an_expired_lease_is_taken_over_above_its_expiry(cassandra: Any, url: str, realm: str) -> None:
    """Every slot is held by live processes but one, whose lease ran out: a new process takes that
    one and places its events at or above the old expiry; with none free, appends are 503."""
    namespace = namespace_of(url)
    now = clock.now_us()
    expired = now - 10 * LEASE_US
    live = json.dumps({"holder": "other", "expires": now + 10 * LEASE_US, "free": False})
    with session_of(cassandra, cassandra.keyspace) as session:
        insert = session.prepare("INSERT INTO meta (key, value) VALUES (?, ?)")
        for slot in range(SLOTS):
            session.execute_async(insert, (f"slot/{slot}/{namespace}", live)).result()
        async with open_store(url) as store:
            with pytest.raises(StorageUnavailable, match="writer slots"):
                await store.append(realm, "d", "e", "t", "refused")
            assert (await store.read(Scope(realm, "d", "e"))).events == []
        dead = json.dumps({"holder": "dead", "expires": expired, "free": False})
        session.execute(insert, ("slot/7/" + namespace, dead))
        async with open_store(url) as store:
            assert isinstance(store, CassandraStore)
            result = await store.append(realm, "d", "e", "t", "placed")
            assert result.first.position & 1023 == 7 and result.first.position >> 10 >= expired
            held = json.loads(session.execute("SELECT value FROM meta WHERE key = %s",
                                              ("slot/7/" + namespace,)).one()[0])
            assert held["holder"] == store.positions.holder and held["expires"] > now


async def test_a_lost_lease_is_replaced_and_never_reused(cassandra: Any, url: str, realm: str) -> None:
    """Another process took this one's slot (it stalled past its lease): the next append that
    needs the lease renewed finds out, takes another slot, and goes on."""
    namespace = namespace_of(url)
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        await store.append(realm, "d", "e", "t", 0)
        lease = store.positions.lease
        assert lease is not None
        taken = json.dumps({"holder": "thief", "expires": clock.now_us() + LEASE_US, "free": False})
        with session_of(cassandra, cassandra.keyspace) as session:
            session.execute("UPDATE meta SET value = %s WHERE key = %s", (taken, f"slot/{lease.slot}/{namespace}"))
        # As if the lease ran out while this process stalled: the next append must renew it first.
        store.positions.lease = Lease(lease.slot, clock.now_us(), lease.value)
        result = await store.append(realm, "d", "e", "t", 1)
        renewed = store.positions.lease
        assert renewed is not None and renewed.slot != lease.slot
        assert result.first.position & 1023 == renewed.slot
        assert [e.event for e in await read_all(store, Scope(realm))] == [0, 1]


# ----------------------------------------------------------------------------- head reads


async def test_head_and_last_event_cost_a_few_queries_whatever_the_size(url: str, realm: str) -> None:
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        for i in range(3):
            await store.append_batch(realm, "d", f"e{i}", [{"type": "t", "event": [i, k]} for k in range(400)])
        await read_all(store, Scope(realm))  # settled and marked ok: what a head read usually meets
        run = store.db.run
        calls: list[Any] = []

        async def counted(stmt: Any, args: Any = None, **options: Any) -> list[Any]:
            calls.append(stmt)
            return await run(stmt, args, **options)

        store.db.run = counted  # type: ignore[method-assign]
        head = await store.read(Scope(realm), order="desc", limit=1)
        assert head.events[0].event == [2, 399] and len(calls) <= 4  # the directory (an era or two), one slice
        calls.clear()
        last = await store.read(Scope(realm, "d", "e1"), order="desc", limit=1)
        assert last.events[0].event == [1, 399] and len(calls) == 1


# ----------------------------------------------------------------------------- migration


async def test_a_schema_2_keyspace_gets_positions_in_its_realm_order(cassandra: Any, realm: str) -> None:
    """Events written as the previous release wrote them (no position columns; two at one
    microsecond; a writer that died before its commit and one that died after it): reopening
    gives each its position, ts * 1024 + its rank at that ts in (ts, id) order, in all its rows."""
    keyspace = f"perhap_v2_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    url = f"cassandra://{cassandra.hosts}/{keyspace}"
    async with open_store(url) as a, open_store(url) as b:
        assert isinstance(a, CassandraStore) and isinstance(b, CassandraStore)
        await a.append(realm, "d", "e", "t", "first")
        await a.append("other", "d", "e", "t", "other realm")
        await b.append("other", "d", "f", "t", "other realm")
        ts = clock.now_us() + 200_000
        for store in (a, b):
            store.positions.allocator.take = lambda start, count: max(start, ts)  # type: ignore[method-assign]
        await a.append(realm, "d", "x", "t", "same ts")
        await b.append(realm, "d2", "y", "t", "same ts")
        del a.positions.allocator.take, b.positions.allocator.take
        key: EntityKey = (realm, "d", "stalled")
        await pending_rows(a, key, [new_event("t", "never committed")])
        orphan = await pending_rows(a, (realm, "d", "orphan"), [new_event("t", "never committed either")])

        async def die(key: EntityKey, p: Attempt) -> None:  # the writer dies right after its Paxos commit
            raise Died

        a.writer.after_commit = die  # type: ignore[method-assign]
        with pytest.raises(Died):
            await a.append(realm, "d", "e", "t", "committed, then the writer died")
        del a.writer.after_commit
        await a.append(realm, "d", "e", "t", "last")
    with session_of(cassandra, keyspace) as session:
        # A writer that died between its two pending rows: the domain row has no realm row.
        placed = orphan.events[0]
        session.execute("DELETE FROM scope_log WHERE realm = %s AND scope = '' AND bucket = %s AND ts = %s AND id = %s",
                        (realm, placed.ts // a.bucket_us, placed.ts, placed.id))
        rows = list(session.execute("SELECT ts, id FROM scope_log WHERE realm = %s AND scope = '' ALLOW FILTERING",
                                    (realm,)))
        for table in ("scope_log", "entity_log", "events_by_id"):  # as the previous release made them
            session.execute(f"ALTER TABLE {table} DROP position")
        session.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        session.execute("DELETE FROM meta WHERE key = 'position_floor'")
        # A migrator that died long ago left its lock: the next process takes it over.
        dead = json.dumps({"holder": "dead", "expires": clock.now_us() - 10 * LEASE_US})
        session.execute("INSERT INTO meta (key, value) VALUES ('migration', %s)", (dead,))
    # Today's realm order, (ts, id), with the rank of each row among those of its ts.
    order = sorted((ts, u) for ts, u in rows)
    expected = {str(u): ts * 1024 + sum(1 for t, v in order if t == ts and v < u) for ts, u in order}
    # Two processes start at once: one migrates, the other waits for the new schema version.
    upgraded, twin = await asyncio.gather(open_store(url), open_store(url))
    await twin.close()
    async with upgraded:
        events = await read_all(upgraded, Scope(realm))
        assert [e.event for e in events] == ["first", "same ts", "same ts", "committed, then the writer died", "last"]
        assert [(int(e.position >> 10), uuid.UUID(e.event_id)) for e in events] == \
            [r for r in order if str(r[1]) in {e.event_id for e in events}]
        assert all(e.position == expected[e.event_id] for e in events)
        for e in events:  # the same position in every row of the event
            assert (await upgraded.get_event(realm, e.domain, e.event_id)).position == e.position
            in_entity = (await upgraded.read(Scope(realm, e.domain, e.entity))).events
            assert e.position in [x.position for x in in_entity]
            in_domain = await read_all(upgraded, Scope(realm, e.domain))
            assert e.position in [x.position for x in in_domain]
        assert [e.event for e in await read_all(upgraded, Scope("other"))] == ["other realm"] * 2
        after = await upgraded.append(realm, "d", "e", "t", "after the upgrade")
        assert after.first.position > events[-1].position
        with session_of(cassandra, keyspace) as session:  # a process of the older release still writing
            session.execute("INSERT INTO scope_log (realm, scope, bucket, ts, id, domain, entity, type, version, "
                            "stamp, data, meta, ok) VALUES (%s, 'd3', 1, 1, %s, 'd3', 'e', 't', 0, null, "
                            "textAsBlob('1'), textAsBlob('{}'), true)", (realm, uuid.uuid4()))
            session.execute("INSERT INTO scope_dir (realm, scope, era, bucket) VALUES (%s, 'd3', -1, 0)", (realm,))
            session.execute("INSERT INTO scope_dir (realm, scope, era, bucket) VALUES (%s, 'd3', 0, 1)", (realm,))
        with pytest.raises(StorageUnavailable, match="older than schema 3"):
            await upgraded.read(Scope(realm, "d3"))
    with session_of(cassandra, keyspace) as session:
        assert session.execute("SELECT value FROM meta WHERE key = 'schema_version'").one()[0] == "3"
        assert session.execute("SELECT value FROM meta WHERE key = 'migration'").one() is None  # lock given back
