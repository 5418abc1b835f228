"""Cassandra-specific proofs, on a real node (never a mock): several writer processes and a paging
reader, the fencing of abandoned attempts, Paxos between processes, a node going away and coming
back, and the versioned schema. The conformance suite covers the rest of the contract.

Writer processes run this module: ``python -m tests.test_cassandra_backend MODE ARGS``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster

from perhap import EventIdConflict, InvalidInput, Scope, StorageUnavailable, VersionConflict, open_store
from perhap.app import PerhapApp
from perhap.backends.cassandra import CassandraStore, clock, parse_cassandra_url, scan
from perhap.backends.cassandra.checks import ANY_DC, Replication, check_levels, commitlog_verdict, skew_warnings
from perhap.backends.cassandra.records import SLOT_BITS, Attempt, EntityKey
from perhap.backends.cassandra.writer import Commit, Outcome
from perhap.model import NewEvent, new_event
from perhap.testing.cassandra import CassandraNode
from tests.helpers import read_all, wait_until

pytestmark = pytest.mark.cassandra
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(cassandra: Any) -> str:
    return cassandra.new_url()  # type: ignore[no-any-return]


def spawn(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.test_cassandra_backend", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.splitlines() + [line for line in err.splitlines() if line.startswith("stats ")]


# ----------------------------------------------------------------------------- URL


def test_url_defaults_and_options() -> None:
    c = parse_cassandra_url("cassandra://127.0.0.1/ks")
    assert (c.hosts, c.port, c.keyspace, c.replication_factor) == (["127.0.0.1"], 9042, "ks", 1)
    assert (c.settle_us, c.skew_us, c.namespace, c.user) == (300_000, 50_000, "", None)
    c = parse_cassandra_url("cassandra://u:p%40ss@h1,h2:9043/perhap?replication_factor=3&namespace=t-1"
                            "&consistency=local_quorum&settle_ms=1000&clock_skew_ms=200&timeout=5")
    assert (c.hosts, c.port, c.user, c.password) == (["h1", "h2"], 9043, "u", "p@ss")
    assert c.namespace == "t-1"
    assert (c.replication_factor, c.settle_us, c.skew_us, c.timeout) == (3, 1_000_000, 200_000, 5.0)
    assert c.given == {"replication_factor", "namespace", "consistency", "settle_ms", "clock_skew_ms", "timeout"}
    assert not c.accept_periodic_commitlog
    assert parse_cassandra_url("cassandra://h/ks?accept_periodic_commitlog=true").accept_periodic_commitlog
    for bad in ("cassandra://h/ks?accept_periodic_commitlog=maybe", "cassandra://h/", "cassandra:///ks",
                "cassandra://h/ks?nope=1", "cassandra://h/k-s",
                "cassandra://h/ks?consistency=MOST", "cassandra://h/ks?settle_ms=100&clock_skew_ms=100",
                "cassandra://h/ks?namespace=a/b",
                # Numbers out of range are refused before anything is created (bucket_seconds=0
                # made a keyspace no process could open; a negative one hid every event from
                # domain and realm reads).
                *(f"cassandra://h/ks?{bad}" for bad in (
                    "bucket_seconds=0", "bucket_seconds=-5", "bucket_seconds=1.5", "replication_factor=0",
                    "replication_factor=-1", "timeout=0", "timeout=-1", "timeout=nan", "poll_ms=0",
                    "poll_ms=-5", "settle_ms=inf", "settle_ms=1e30", "settle_ms=0.0001&clock_skew_ms=0",
                    "clock_skew_ms=-1", "consistency=ANY", "consistency=SERIAL", "serial_consistency=QUORUM",
                    # Numbers as written, once: int() and float() took these, and the last of two won.
                    "bucket_seconds=6_0", "replication_factor=%D9%A3", "timeout=%201", "timeout=+5", "poll_ms=1_0_0",
                    "settle_ms=4e2", "settle_ms=300&settle_ms=400"))):
        with pytest.raises(ValueError):
            parse_cassandra_url(bad)
    # A port the driver would wrap modulo 65536 (105963 is 40427), or no number at all.
    for port in ("105963", "65536", "0", "-5", "notaport", "１２"):
        with pytest.raises(ValueError, match="port .* 1 to 65535"):
            parse_cassandra_url(f"cassandra://h:{port}/ks")
    assert parse_cassandra_url("cassandra://h:65535/ks").port == 65535
    assert parse_cassandra_url("cassandra://h/ks?timeout=.5&poll_ms=2.5").poll == 0.0025
    # An option without a value is refused by name, not taken as its default.
    with pytest.raises(ValueError, match="without a value: settle_ms"):
        parse_cassandra_url("cassandra://h/ks?settle_ms=")
    # EACH_QUORUM is not offered: the one level also serves reads, which Cassandra refuses it for.
    with pytest.raises(ValueError, match="consistency must be one of") as refused:
        parse_cassandra_url("cassandra://h/ks?consistency=EACH_QUORUM")
    assert "EACH_QUORUM" not in str(refused.value).split(", not")[0]


# ----------------------------------------------------------------------------- schema


async def test_schema_is_versioned_and_reopens(cassandra: Any) -> None:
    keyspace = f"perhap_schema_{uuid.uuid4().hex[:8]}"
    url = f"cassandra://{cassandra.hosts}/{keyspace}?bucket_seconds=30"
    cassandra.keyspaces.append(keyspace)  # dropped with the others when the cluster is shared
    async with open_store(url) as s:
        await s.append("r", "d", "e", "t", 1)
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        session = cluster.connect(keyspace)
        meta = dict(session.execute("SELECT key, value FROM meta"))
        assert orjson.loads(meta.pop("settings")) == {"settle_us": 300_000, "clock_skew_us": 50_000}
        slots = [orjson.loads(meta.pop(key)) for key in list(meta) if key.startswith("slot/")]
        assert len(slots) == 1 and slots[0]["free"]  # the writer slot, given back at close
        assert meta == {"schema_version": "3", "bucket_us": "30000000"}
        async with open_store(f"cassandra://{cassandra.hosts}/{keyspace}?bucket_seconds=99") as s:
            assert isinstance(s, CassandraStore) and s.bucket_us == 30_000_000  # fixed at creation
            assert [e.event for e in (await s.read(Scope("r", "d", "e"))).events] == [1]
        session.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(StorageUnavailable, match="newer perhap"):
            await open_store(url)
    finally:
        cluster.shutdown()


_OPEN_AT_ONCE = """
import asyncio, sys, time
from perhap import open_store

async def main(url, at, n):
    time.sleep(max(0.0, at - time.time()))  # every process opens at the same instant
    async with open_store(url) as store:
        await store.append("r", "d", f"e{n}", "t", n)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""


async def _count(url: str, scope: Scope) -> int:
    async with open_store(url) as store:
        return len(await read_all(store, scope))


def test_processes_creating_one_keyspace_at_once_all_open_it(cassandra: Any) -> None:
    """Four processes opening a keyspace that is not there yet, at the same instant, three times:
    each opens it and appends (one died with "Unknown CF", a table the node was still creating
    for another process, about one start in 32)."""
    for _ in range(3):
        keyspace = f"perhap_once_{uuid.uuid4().hex[:8]}"
        cassandra.keyspaces.append(keyspace)
        url = f"cassandra://{cassandra.hosts}/{keyspace}"
        at = time.time() + 6
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, str(at), str(n)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in range(4)]
        outputs = [(p.wait(timeout=120), p.stdout.read().decode() if p.stdout else "") for p in procs]
        assert all(code == 0 for code, _ in outputs), outputs

        assert asyncio.run(_count(url, Scope("r"))) == 4


async def test_a_schema_1_keyspace_is_brought_up_to_date(cassandra: Any, realm: str) -> None:
    """Schema 2 added events_by_id.claims, schema 3 positions: a keyspace of schema 1 gets both, and serves."""
    keyspace = f"perhap_v1_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE {keyspace}.meta (key text PRIMARY KEY, value text)")
        session.execute(f"CREATE TABLE {keyspace}.events_by_id (shard text, id uuid, realm text, domain text, "
                        "entity text, type text, version bigint, ts bigint, stamp text, data blob, meta blob, "
                        "txn uuid, ok boolean, PRIMARY KEY (shard, id))")  # as schema 1 made it
        for key, value in (("schema_version", "1"), ("bucket_us", "60000000")):
            session.execute(f"INSERT INTO {keyspace}.meta (key, value) VALUES (%s, %s)", (key, value))
        async with open_store(f"cassandra://{cassandra.hosts}/{keyspace}") as store:
            event_id = str(uuid.uuid4())
            await store.append(realm, "d", "e", "t", 1, event_id=event_id)
            assert (await store.get_event(realm, "d", event_id)).event == 1
        version = session.execute(f"SELECT value FROM {keyspace}.meta WHERE key = 'schema_version'").one()[0]
        assert version == "3"
    finally:
        cluster.shutdown()


# ----------------------------------------------------------------------------- settling


async def test_abandoned_attempt_is_fenced_and_never_delivered(url: str, realm: str) -> None:
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        key = (store.ns.stored(realm), "d", "stalled")  # the realm as stored (namespaced)
        # A writer that wrote its pending rows, then stalled (or died) before its Paxos commit.
        pending = await pending_rows(store, key, [new_event("t", "lost")])
        ok = await store.append(realm, "d", "e", "t", "kept")
        events = await read_all(store, Scope(realm, "d"))  # waits out the settle window
        assert [e.event for e in events] == ["kept"] and events[0].event_id == ok.first.event_id
        assert store.stats["fenced"] == 1
        # The stalled writer wakes up: its commit is refused, so it can never land behind a reader.
        assert await store.writer.commit(key, pending, -1) is Outcome.FENCED
        assert (await store.read(Scope(realm, "d", "stalled"))).events == []
        assert [e.event for e in await read_all(store, Scope(realm))] == ["kept"]


async def pending_rows(store: CassandraStore, key: EntityKey, batch: list[NewEvent]) -> Attempt:
    """Step 1 of an append to a new entity, as its writer does it (again when it was too late
    for the settle window, as happens on a loaded machine)."""
    for _ in range(10):
        pending, _took = await store.writer.pending(key, batch, -1, 0, 0, set(), math.inf, clock.now_us(), 0)
        if pending is not None:
            assert isinstance(pending, Attempt)
            return pending
    raise AssertionError("ten attempts in a row were late")


class Died(Exception):
    pass


async def test_commit_whose_writer_died_is_completed_by_readers(url: str, realm: str) -> None:
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)

        async def die(key: EntityKey, p: Attempt) -> None:  # the writer dies right after its Paxos commit
            raise Died

        store.writer.after_commit = die  # type: ignore[method-assign]
        with pytest.raises(Died):
            await store.append(realm, "d", "e", "t", "committed")
    async with open_store(url) as reader:  # another process: no memory of that attempt
        assert isinstance(reader, CassandraStore)
        events = await read_all(reader, Scope(realm, "d"))
        assert [e.event for e in events] == ["committed"]
        assert reader.stats["fenced"] == 0
    async with open_store(url) as again:  # the reader repaired the id and the keys on its way
        assert (await again.get_event(realm, "d", events[0].event_id)).event == "committed"
        assert (await again.keys(realm, "d")).keys == ["e"]


async def test_a_commit_sent_twice_is_recognised(url: str, realm: str) -> None:
    """The driver re-sends a request whose connection broke: if the first try was applied, the
    second finds the attempt's own marker and must report success, not a conflict to retry."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        key = (store.ns.stored(realm), "d", "e")
        chosen = new_event("t", "chosen id", event_id=str(uuid.uuid4()))  # its marker too is ours
        pending = await pending_rows(store, key, [new_event("t", "once"), chosen])
        assert await store.writer.commit(key, pending, -1) is Outcome.COMMITTED
        assert await store.writer.commit(key, pending, -1) is Outcome.COMMITTED
        assert [e.version for e in (await store.read(Scope(realm, "d", "e"))).events] == [0, 1]


@pytest.mark.parametrize("applied", [True, False])
async def test_a_commit_whose_outcome_is_unknown_is_settled(url: str, realm: str, applied: bool) -> None:
    """Cassandra 5 answers a Paxos round whose proposal reached fewer replicas than a quorum with
    error 0x1700 ("CAS operation result is unknown"), which cassandra-driver 3.30 has no class for.
    Whether the round was in fact applied or not, the append is settled (its own marker read, or
    fenced and retried): one event, in the entity and in the realm, never a 500 or a lost index row."""
    from cassandra.protocol import ErrorMessage
    from cassandra.query import BatchStatement

    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        db = store.writer.ks.db
        execute = db.execute
        injected = []

        def unknown_once(stmt: Any, args: Any = None, *, lwt: bool = False) -> Any:
            if lwt and isinstance(stmt, BatchStatement) and not injected:  # the commit's Paxos batch
                injected.append(stmt)
                future = execute(stmt, args, lwt=lwt) if applied else asyncio.get_running_loop().create_future()

                async def then_unknown() -> Any:
                    if applied:
                        await future  # the round is applied; only its answer is lost
                    raise ErrorMessage(code=0x1700, message="CAS operation result is unknown - proposal "
                                                            "accepted by 1 but not a quorum.", info=None)
                return asyncio.ensure_future(then_unknown())
            return execute(stmt, args, lwt=lwt)

        db.execute = unknown_once  # type: ignore[method-assign]
        result = await store.append(realm, "d", "e", "t", "once")
        db.execute = execute  # type: ignore[method-assign]
        assert injected and result.created and result.first.version == 0
        assert store.stats["fenced"] == (0 if applied else 1)
        assert [e.event for e in (await store.read(Scope(realm, "d", "e"))).events] == ["once"]
        assert [e.event_id for e in await read_all(store, Scope(realm))] == [result.first.event_id]


async def test_an_index_row_without_content_is_skipped(cassandra: Any, realm: str, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A scope_log row of keys and ``ok`` alone (what marking ok leaves of a deleted row) among a
    realm's and a domain's events: reads skip it, in both orders, with a warning, instead of
    refusing every read of the realm."""
    keyspace = f"perhap_hollow_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    async with open_store(f"cassandra://{cassandra.hosts}/{keyspace}") as store:
        assert isinstance(store, CassandraStore)
        appended = [await store.append(realm, "d", f"e{i}", "t", i) for i in range(3)]
        ts = appended[1].first.position >> SLOT_BITS
        host, _, port = cassandra.hosts.rpartition(":")
        cluster = Cluster(host.split(","), port=int(port))
        try:
            session = cluster.connect(keyspace)
            for scope in ("", "d"):
                session.execute("UPDATE scope_log SET ok = true WHERE realm = %s AND scope = %s AND bucket = %s "
                                "AND ts = %s AND id = %s", (store.writer.ks.ns.stored(realm), scope,
                                                             ts // store.bucket_us, ts - 1, uuid.uuid4()))
        finally:
            cluster.shutdown()
        await asyncio.sleep(0.4)  # past the settle window
        monkeypatch.setattr(scan, "_hollow_seen", False)  # warned once per process: this test's
        with caplog.at_level(logging.WARNING, logger="perhap.cassandra"):
            for scope in (Scope(realm), Scope(realm, "d")):
                assert [e.event for e in (await store.read(scope)).events] == [0, 1, 2]
                assert [e.event for e in (await store.read(scope, order="desc")).events] == [2, 1, 0]
                after_first = await store.read(scope, limit=1, following=appended[0].first.event_id)
                assert [e.event for e in after_first.events] == [1]
        assert any("no content" in r.getMessage() for r in caplog.records)


async def test_an_event_without_an_imported_time_writes_no_tombstone(cassandra: Any, realm: str) -> None:
    """An event's ``stamp`` (its imported time) was bound as null when absent: a tombstone cell in
    every event's rows, which a read filtered by type or position counts, failing at 100,000 (a
    large entity or a busy bucket read by type was a 503, for good). Counted by the node's own
    warning past 1,000 (tombstone_warn_threshold) on reads that pass 1,200 rows of each table."""
    keyspace = f"perhap_cells_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    async with open_store(f"cassandra://{cassandra.hosts}/{keyspace}") as store:
        assert isinstance(store, CassandraStore)
        for _ in range(2):
            await store.append_batch(realm, "d", "big", [new_event("a", i) for i in range(600)])
        with_ids = [new_event("a", i, event_id=str(uuid.uuid4())) for i in range(2)]  # their rows follow the commit
        await store.append_batch(realm, "d", "ids", with_ids)
        await store.append_batch(realm, "d", "stamped", [new_event("a", 1, timestamp="2020-01-02T03:04:05Z")])
        assert [e.event for e in (await store.read(Scope(realm, "d", "big"), types=["b"])).events] == []
        stored = store.writer.ks.ns.stored(realm)
        host, _, port = cassandra.hosts.rpartition(":")
        cluster = Cluster(host.split(","), port=int(port))
        try:
            session = cluster.connect(keyspace)
            buckets = session.execute("SELECT DISTINCT realm, scope, bucket FROM scope_log")
            reads = [("SELECT id FROM entity_log WHERE realm = %s AND domain = 'd' AND entity = 'big' AND kind = 0 "
                      "AND type = 'b' ALLOW FILTERING", (stored,))]
            reads += [("SELECT id FROM scope_log WHERE realm = %s AND scope = %s AND bucket = %s AND type = 'b' "
                       "ALLOW FILTERING", (b.realm, b.scope, b.bucket)) for b in buckets if b.realm == stored]
            reads.append(("SELECT id, stamp FROM events_by_id WHERE type = 'b' ALLOW FILTERING", ()))
            for query, args in reads:
                result = session.execute(query, args)
                assert list(result) == []
                warnings = result.response_future.warnings or []
                assert not [w for w in warnings if "tombstone" in w], (query, warnings)
            stamps = {r.stamp for r in session.execute("SELECT stamp FROM events_by_id")}
            assert len(stamps) == 2 and None in stamps  # (read as null, stored as no cell)
        finally:
            cluster.shutdown()
        got = [e.timestamp for e in (await store.read(Scope(realm, "d", "stamped"))).events]
        assert got == ["2020-01-02T03:04:05Z"] or got[0].startswith("2020-01-02T03:04:05"), got


async def test_a_409_tells_the_version_another_process_moved_the_entity_to(url: str, realm: str) -> None:
    """A process refuses an expected version below the head it remembers without a Paxos round;
    the 409 said that remembered version, stale when another process had appended since, and a
    client retrying at it was refused again."""
    async with open_store(url) as one, open_store(url) as two:
        for i in range(3):
            await one.append(realm, "d", "e", "t", i, expected_version=i - 1)
        for i in range(3, 6):
            await two.append(realm, "d", "e", "t", i, expected_version=i - 1)
        with pytest.raises(VersionConflict) as refused:
            await one.append(realm, "d", "e", "t", "late", expected_version=1)
        assert refused.value.current_version == 5, refused.value
        told = refused.value.current_version
        assert (await one.append(realm, "d", "e", "t", 6, expected_version=told)).first.version == 6


async def test_a_busy_connection_delays_requests_instead_of_failing_them(url: str) -> None:
    """Big writes in flight fill the connection's socket buffer; cassandra-driver then refuses
    further requests at once ("Connection ... is overloaded") instead of queueing them. They were
    never sent, so they are sent again after a pause: no 503 (before: most of 96 answered 503)."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        db, keyspace = store.writer.ks.db, store.writer.ks.options.keyspace
        insert = db.session.prepare(f"INSERT INTO {keyspace}.meta (key, value) VALUES (?, ?)")
        value = "x" * (1 << 20)
        keys = [f"busy-{uuid.uuid4().hex}" for _ in range(96)]
        try:
            for first in (0, 48):
                await asyncio.gather(*[db.run(insert, (key, value)) for key in keys[first:first + 48]])
            stored = await db.run(f"SELECT key FROM {keyspace}.meta WHERE key IN ({', '.join(['%s'] * 96)})", keys)
            assert len(stored) == 96
        finally:
            await db.run(f"DELETE FROM {keyspace}.meta WHERE key IN ({', '.join(['%s'] * 96)})", keys)



async def test_a_batch_the_node_cannot_take_in_one_message_is_refused_cleanly(url: str, realm: str) -> None:
    """10,000 events of 1,230 bytes (11.8 MiB of JSON) passed the 12 MiB count of events alone,
    and the node refused the message (13.4 MB over its cap with this heap): a raw driver error in
    process, a 500 over HTTP. Counted with their rows, such a batch is perhap's own InvalidInput,
    and nothing is stored; a batch well under the limit is taken."""
    async with open_store(url) as store:
        pad = "x" * 1230
        with pytest.raises(InvalidInput, match="at most 12 MiB"):
            await store.append_batch(realm, "d", "big", [{"type": "t", "event": pad}] * 10_000)
        assert (await store.read(Scope(realm, "d", "big"))).events == []
        taken = await store.append_batch(realm, "d", "big", [{"type": "t", "event": pad}] * 5_000)
        assert taken.events[-1].version == 4_999


async def test_read_after_acknowledgement_includes_it(url: str, realm: str) -> None:
    async with open_store(url) as store:
        for i in range(5):
            r = await store.append(realm, "d", f"e{i}", "t", i)
            started = time.monotonic()
            page = await store.read(Scope(realm))
            assert page.events[-1].event_id == r.first.event_id
            assert time.monotonic() - started < 2
        big = await store.append_batch(realm, "d", "big", [{"type": "t", "event": i} for i in range(2000)])
        assert (await store.read(Scope(realm, "d"), following=r.first.event_id, limit=5000)).events[-1].event_id \
            == big.events[-1].event_id


async def test_a_read_that_wakes_early_still_includes_the_acknowledged_event(
        url: str, realm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that meets a row above its horizon sleeps until the row settles, then reads on. The
    event loop's timers may fire early by the clock horizons come from (uvloop's whole
    milliseconds, counted from the time cached when its iteration began: seen 1.1 ms early, and
    a newest-first read after an acknowledgement then skipped the event). Here every sleep of the
    reader ends 5 ms early: reads in both orders must still include the acknowledged event."""
    from perhap.backends.cassandra import reader

    real_sleep = asyncio.sleep

    async def early(delay: float) -> None:
        await real_sleep(max(0.0, delay - 0.005))

    monkeypatch.setattr(reader.asyncio, "sleep", early)
    async with open_store(url) as store:
        for i in range(4):
            r = await store.append(realm, f"d{i % 2}", "e", "t", i)
            newest = await store.read(Scope(realm), order="desc", limit=1)
            assert [e.event_id for e in newest.events] == [r.first.event_id]
            r = await store.append(realm, f"d{i % 2}", "e", "t", i)
            oldest = await store.read(Scope(realm, f"d{i % 2}"))
            assert oldest.events[-1].event_id == r.first.event_id


async def test_a_stream_takes_what_has_settled_without_waiting_for_newer_events(cassandra: Any, realm: str) -> None:
    """A stream's read (Subscription.fetch) hands out the events settled now rather than holding
    them until newer ones settle too, and with none settled waits for the oldest only: each event
    reaches a stream about W after its position. A plain read still waits for all it has seen
    (the acknowledged event is in it). W = 5 s here, so each step has 2.5 s of margin (a loaded
    machine's stall would have to outlast it to make an unsettled event settle early)."""
    async with open_store(cassandra.new_url() + "&settle_ms=5000&clock_skew_ms=100") as store:
        await store.append(realm, "d", "e", "t", "a")
        await asyncio.sleep(5.3)  # a has settled
        await store.append(realm, "d", "e", "t", "b")
        await asyncio.sleep(2.5)
        await store.append(realm, "d", "other", "t", "c")  # settles 2.5 s after b
        sub = await store.subscription(Scope(realm, "d"))
        assert [e.event for e in await sub.fetch(timeout=10)] == ["a"]  # at once: b and c unsettled
        assert [e.event for e in await sub.fetch(timeout=10)] == ["b"]  # once b settles, not c
        assert [e.event for e in await sub.fetch(timeout=10)] == ["c"]
        assert await sub.fetch(timeout=0) == []
        assert [e.event for e in (await store.read(Scope(realm, "d"))).events] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- a retry after a 503


async def test_a_retry_after_a_failed_follow_up_finds_its_event(url: str, realm: str) -> None:
    """The Paxos commit applies, the write after it fails (503): the client's retry with the same
    event id and expected version is answered 200 (not 409), every by-id path finds the event, and
    the id cannot be stored again for another entity (issue 13, point 2)."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        await store.append(realm, "d", "e", "t", "first")  # the head (version 0) is now cached
        after_commit = store.writer.after_commit

        async def fail_once(key: EntityKey, p: Attempt) -> None:  # a fault in our own path, after the commit
            store.writer.after_commit = after_commit  # type: ignore[method-assign]
            raise StorageUnavailable("injected: the write after the commit failed")

        store.writer.after_commit = fail_once  # type: ignore[method-assign]
        event_id = str(uuid.uuid4())
        with pytest.raises(StorageUnavailable, match="injected"):
            await store.append(realm, "d", "e", "t", "second", event_id=event_id, expected_version=0)
        async with open_store(url) as other:  # another process: nothing cached, nothing repaired yet
            assert (await other.get_event(realm, "d", event_id)).event == "second"
            assert (await other.read(Scope(realm, "d", "e"), following=event_id)).events == []
            sub = await other.subscription(Scope(realm, "d"), following=event_id)  # Last-Event-ID's path
            assert [e.event for e in await sub.fetch(timeout=0)] == []
            with pytest.raises(EventIdConflict):  # stored in e: not storable in another entity
                await other.append(realm, "d", "elsewhere", "t", "second", event_id=event_id)
        retry = await store.append(realm, "d", "e", "t", "second", event_id=event_id, expected_version=0)
        assert (retry.created, retry.first.event_id, retry.first.version) == (False, event_id, 1)
        assert [e.event for e in await read_all(store, Scope(realm))] == ["first", "second"]
        assert (await store.read(Scope(realm, "d", "elsewhere"))).events == []



async def test_a_retry_after_a_failed_follow_up_lists_the_entity(url: str, realm: str) -> None:
    """A new entity's first append commits and its names write fails (503); the retry, answered
    as a replay, writes the names, so another process lists the realm, domain and entity without
    any domain or realm read having repaired them first."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        names_write = store.writer.names.write

        async def fail_once(key: EntityKey) -> None:
            store.writer.names.write = names_write  # type: ignore[method-assign]
            raise StorageUnavailable("injected: the names write after the commit failed")

        store.writer.names.write = fail_once  # type: ignore[method-assign]
        event_id = str(uuid.uuid4())
        with pytest.raises(StorageUnavailable, match="injected"):
            await store.append(realm, "d", "fresh", "t", "x", event_id=event_id, expected_version=-1)
        retry = await store.append(realm, "d", "fresh", "t", "x", event_id=event_id, expected_version=-1)
        assert (retry.created, retry.first.version) == (False, 0)
    async with open_store(url) as other:
        assert "fresh" in (await other.keys(realm, "d")).keys
        assert "d" in (await other.keys(realm)).keys


# ----------------------------------------------------------------------------- settings and checks


async def test_settle_window_and_skew_are_stored_with_the_data(cassandra: Any) -> None:
    """The first process fixes them; a process whose URL is silent adopts them, one that names
    other values refuses to start (issue 13, point 6)."""
    url = cassandra.new_url()
    async with open_store(url + "&settle_ms=500&clock_skew_ms=100") as first:
        assert isinstance(first, CassandraStore) and (first.settle_us, first.skew_us) == (500_000, 100_000)
    async with open_store(url) as silent:
        assert isinstance(silent, CassandraStore)
        assert (silent.settle_us, silent.skew_us) == (500_000, 100_000)
        assert silent.keyspace.options.settle_us == 500_000  # what its readers and writers use
    async with open_store(url + "&settle_ms=500") as same:
        assert isinstance(same, CassandraStore) and same.skew_us == 100_000
    for other in ("&settle_ms=300", "&clock_skew_ms=50"):
        with pytest.raises(ValueError, match=other[1:].split("=")[0]):
            await open_store(url + other)


async def test_a_url_that_repeats_the_stored_skew_alone_is_accepted(cassandra: Any) -> None:
    """A skew of 500 ms is valid for a store whose settle window is 2 s: a URL naming only that
    skew adopts the stored window rather than being checked against the default 300 ms one. A
    skew the store's window does not cover is refused, and never stored by a first process."""
    url = cassandra.new_url()
    async with open_store(url + "&settle_ms=2000&clock_skew_ms=500"):
        pass
    async with open_store(url + "&clock_skew_ms=500") as again:
        assert isinstance(again, CassandraStore) and (again.settle_us, again.skew_us) == (2_000_000, 500_000)
    fresh = cassandra.new_url()
    with pytest.raises(ValueError, match="less than settle_ms"):
        await open_store(fresh + "&clock_skew_ms=500")  # the default window, 300 ms
    async with open_store(fresh + "&settle_ms=1000&clock_skew_ms=500") as first:  # nothing was stored
        assert isinstance(first, CassandraStore) and first.settle_us == 1_000_000
    # A keyspace that is not there yet is not made for such a URL (it was, then the URL refused).
    keyspace = f"perhap_skew_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    with pytest.raises(ValueError, match="less than settle_ms"):
        await open_store(f"cassandra://{cassandra.hosts}/{keyspace}?clock_skew_ms=300")
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        rows = cluster.connect().execute("SELECT keyspace_name FROM system_schema.keyspaces")
        assert keyspace not in {row.keyspace_name for row in rows}
    finally:
        cluster.shutdown()


async def test_what_w_must_cover_is_exported(cassandra: Any, realm: str) -> None:
    """The gauges an operator chooses W from: W and the clock bound in force, and how long pending
    rows took to be acknowledged over the last attempts (none yet: zero)."""
    async with open_store(cassandra.new_url() + "&settle_ms=400&clock_skew_ms=60") as store:
        assert isinstance(store, CassandraStore)
        gauges = {s.name: s for s in store.statistics() if not s.counter}
        assert gauges["cassandra_settle_window_seconds"].value == 0.4
        assert gauges["cassandra_clock_skew_seconds"].value == 0.06
        assert gauges["cassandra_pending_rows_p99_seconds"].value == 0
        started = time.perf_counter()
        await asyncio.gather(*[store.append(realm, "d", f"e{i}", "t", i) for i in range(20)])
        took = time.perf_counter() - started
        gauges = {s.name: s.value for s in store.statistics() if not s.counter}
        p99, longest = gauges["cassandra_pending_rows_p99_seconds"], gauges["cassandra_pending_rows_max_seconds"]
        assert 0 < p99 <= longest <= took  # measured, and within the appends' own time
        assert len(store.writer.step1_us) == 20 + store.stats["late"]


def test_levels_are_checked_against_the_replication() -> None:
    one_dc = Replication({ANY_DC: 3}, frozenset({"dc1"}))
    two_dcs = Replication({"dc1": 3, "dc2": 3}, frozenset({"dc1", "dc2"}))
    level = ConsistencyLevel
    sound = [(level.LOCAL_ONE, level.LOCAL_SERIAL, Replication({ANY_DC: 1}, frozenset({"dc1"})), ANY_DC),
             (level.LOCAL_QUORUM, level.LOCAL_SERIAL, one_dc, ANY_DC), (level.QUORUM, level.SERIAL, one_dc, ANY_DC),
             (level.TWO, level.SERIAL, one_dc, ANY_DC), (level.ALL, level.LOCAL_SERIAL, one_dc, ANY_DC),
             (level.QUORUM, level.SERIAL, two_dcs, ANY_DC), (level.LOCAL_QUORUM, level.LOCAL_SERIAL, two_dcs, "dc1"),
             (level.LOCAL_ONE, level.LOCAL_SERIAL, Replication({"dc1": 1, "dc2": 1}, two_dcs.datacentres), "dc1")]
    for consistency, serial, replication, scope in sound:
        assert check_levels(consistency, serial, replication, "dc1") == scope
    unsound = [(level.LOCAL_ONE, level.LOCAL_SERIAL, one_dc, "LOCAL_QUORUM"),  # one replica of three
               (level.ONE, level.SERIAL, Replication({ANY_DC: 2}, frozenset({"dc1"})), "QUORUM"),
               (level.QUORUM, level.LOCAL_SERIAL, two_dcs, "several datacentres"),  # fences miss commits
               (level.LOCAL_QUORUM, level.SERIAL, two_dcs, "several datacentres"),
               (level.LOCAL_QUORUM, level.LOCAL_SERIAL, Replication({ANY_DC: 3}, two_dcs.datacentres), "Simple"),
               (level.LOCAL_ONE, level.LOCAL_SERIAL, two_dcs, "LOCAL_QUORUM"),  # one of dc1's three
               (level.EACH_QUORUM, level.SERIAL, one_dc, "reads and writes"),
               (level.QUORUM, level.QUORUM, one_dc, "SERIAL or LOCAL_SERIAL"),
               # More replicas asked for than the keyspace has: said so, not "cannot reach Cassandra".
               (level.TWO, level.SERIAL, Replication({ANY_DC: 1}, frozenset({"dc1"})), "needs 2 replicas"),
               (level.THREE, level.SERIAL, Replication({ANY_DC: 2}, frozenset({"dc1"})), "needs 3 replicas")]
    for consistency, serial, replication, message in unsound:
        with pytest.raises(ValueError, match=message):
            check_levels(consistency, serial, replication, "dc1")


async def test_a_store_whose_reads_can_miss_writes_is_refused(cassandra: Any) -> None:
    """replication_factor=3 with the default LOCAL_ONE: refused before anything is created."""
    keyspace = f"perhap_rf3_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)  # dropped with the others if it were created
    with pytest.raises(ValueError, match="LOCAL_QUORUM"):
        await open_store(f"cassandra://{cassandra.hosts}/{keyspace}?replication_factor=3&timeout=3")
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        session = cluster.connect()
        rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                               (keyspace,))
        assert rows.one() is None
        # An existing keyspace of three replicas, named in capitals (CQL folds unquoted names to
        # lower case): its replication is found, and LOCAL_ONE refused, whatever the spelling.
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 3}")
        for name in (keyspace, keyspace.upper()):
            with pytest.raises(ValueError, match="LOCAL_QUORUM"):
                await open_store(f"cassandra://{cassandra.hosts}/{name}?timeout=3")
    finally:
        cluster.shutdown()


async def test_more_replicas_asked_than_the_keyspace_has_is_refused_in_words(cassandra: Any) -> None:
    """consistency=TWO on a keyspace of one replica: the check's own refusal, not the driver's
    "cannot reach Cassandra" from reading the schema at that level."""
    keyspace = f"perhap_two_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    for level in ("TWO", "THREE"):
        with pytest.raises(ValueError, match=f"consistency={level} needs"):
            await open_store(f"cassandra://{cassandra.hosts}/{keyspace}?consistency={level}&timeout=3")


async def test_a_factor_the_existing_keyspace_lacks_is_warned_about(cassandra: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    url = cassandra.new_url()
    async with open_store(url):
        pass  # the keyspace exists now, with one replica
    with caplog.at_level(logging.WARNING, logger="perhap.cassandra"):
        async with open_store(url + "&replication_factor=1"):
            pass
        assert not any("replication_factor" in r.getMessage() for r in caplog.records)
        async with open_store(url + "&replication_factor=2&consistency=ONE"):
            pass
    assert any("exists with replication_factor 1" in r.getMessage() for r in caplog.records)


async def test_commit_log_mode_is_read_and_periodic_refused(cassandra: Any, url: str) -> None:
    """The node's commitlog_sync is read at start-up (the harness sets group); periodic is refused
    unless the URL accepts it, and an unreadable one is a warning (issue 13, point 4)."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        modes = set(store.commitlog.values())
        assert modes == {"group"} if cassandra.node is not None else modes <= {"group", "batch", None}
    with pytest.raises(ValueError, match="accept_periodic_commitlog=true"):
        commitlog_verdict({"10.0.0.1": "group", "10.0.0.2": "periodic"}, accept_periodic=False)
    assert "periodic (accepted" in commitlog_verdict({"10.0.0.2": "periodic"}, accept_periodic=True)[0]
    assert "could not read" in commitlog_verdict({"10.0.0.3": None}, accept_periodic=False)[0]
    assert "10.0.0.3: down or not readable" in commitlog_verdict({"10.0.0.3": None}, accept_periodic=False)[0]
    assert commitlog_verdict({"a": "group", "b": "batch"}, accept_periodic=False) == []


async def test_clock_skew_is_measured_against_the_cluster(url: str, cassandra: Any, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async with open_store(url) as store:  # the node runs on this machine: one clock
        assert isinstance(store, CassandraStore) and store.clock_offsets
        assert skew_warnings(store.clock_offsets, store.skew_us) == []
    assert skew_warnings({"h": (-100_000, 1_000)}, 50_000) and not skew_warnings({"h": (20_000, 1_000)}, 50_000)
    # Which side is at risk depends on the direction: behind, this process's events; ahead, its reads.
    assert "readers may skip this process's events" in skew_warnings({"h": (100_000, 1_000)}, 50_000)[0]
    assert "this process's reads may skip" in skew_warnings({"h": (-100_000, 1_000)}, 50_000)[0]
    now = clock.now_us
    monkeypatch.setattr(clock, "now_us", lambda: now() + 2_000_000)  # this process runs 2 s ahead
    with caplog.at_level(logging.WARNING, logger="perhap.cassandra"):
        async with open_store(cassandra.new_url()) as ahead:
            assert isinstance(ahead, CassandraStore)
            assert all(offset < -1_000_000 for offset, _ in ahead.clock_offsets.values())
    assert any("ahead of Cassandra node" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- a big batch


async def test_a_big_batch_does_not_push_later_appends_ahead(cassandra: Any, realm: str) -> None:
    """A big batch is placed seconds ahead of the clock (its pending rows take a while); the appends
    that start after its acknowledgement must not inherit that lead (issue 13, point 7)."""
    async with open_store(cassandra.new_url() + "&settle_ms=100&clock_skew_ms=20") as store:
        assert isinstance(store, CassandraStore)
        big = await store.append_batch(realm, "d", "big", [{"type": "t", "event": i} for i in range(5000)])
        before = store.writer.fixed_us  # learnt; the small append may raise it (a slow, late attempt)
        small = await store.append(realm, "d", "small", "t", "after")
        finished = clock.now_us()
        # An ordinary append's lead, which an acknowledged position never exceeds (W - δ here).
        ordinary = max(store.settle_us - store.skew_us, 2 * before, 2 * store.writer.fixed_us)
        position = (await store.get_event(realm, "d", small.first.event_id)).position
        assert big.events[-1].position < position == small.first.position  # still after the batch it followed
        assert position >> 10 <= finished + ordinary + 1  # its ts: the position without the writer slot


# ----------------------------------------------------------------------------- several processes


async def test_writer_processes_and_a_paging_reader_no_gap_no_duplicate(url: str, realm: str) -> None:
    """Four writer processes (two with clocks 20 ms off, one that stalls past the settle window
    now and then, so that readers fence it) and two readers paging the realm and a domain."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        await store.append(realm, "d0", "first", "t", "start")  # the schema exists before they start
        writers = [spawn("write", url, realm, w, 120, offset, stall)
                   for w, offset, stall in ((0, 0, 0), (1, 20, 0), (2, -20, 0), (3, 0, 0.15))]

        async def reader(scope: Scope) -> list[str]:
            seen: list[str] = []
            following = None
            deadline = time.monotonic() + 240
            while True:  # pages as the writers go, until they have finished and nothing is left
                finished = all(w.poll() is not None for w in writers)
                page = await store.read(scope, following=following, limit=7)
                seen.extend(e.event_id for e in page.events)
                if page.events:
                    following = page.events[-1].event_id
                elif finished:
                    return seen
                else:
                    assert time.monotonic() < deadline, "the writer processes did not finish"
                    await asyncio.sleep(0.01)  # a live reader's poll, not a synchronisation

        realm_seen, d0_seen = await asyncio.gather(reader(Scope(realm)), reader(Scope(realm, "d0")))
        lines = [line for w in writers for line in finish(w)]
        acknowledged = [line.split()[1] for line in lines if line.startswith("ack ")]
        stats = [orjson.loads(line.split(None, 1)[1]) for line in lines if line.startswith("stats ")]
        assert len(acknowledged) == 4 * 120 * 11 // 10  # every tenth append is a batch of two
        assert len(realm_seen) == len(set(realm_seen))
        assert set(acknowledged) <= set(realm_seen)
        final = await read_all(store, Scope(realm))
        assert realm_seen == [e.event_id for e in final]
        positions = [e.position for e in final]  # four processes, four writer slots: none shared
        assert positions == sorted(set(positions)) and len({p & 1023 for p in positions}) >= 4
        newest_first: list[str] = []
        following = None
        while True:  # paged backwards: the same events, reversed
            page = await store.read(Scope(realm), order="desc", following=following, limit=50)
            newest_first += [e.event_id for e in page.events]
            if page.next is None:
                break
            following = page.next
        assert newest_first == realm_seen[::-1]
        assert d0_seen == [e.event_id for e in await read_all(store, Scope(realm, "d0"))]
        # The stalling writer was fenced off by the readers and retried (a fence is what keeps a
        # commit from landing behind a reader's horizon).
        assert store.stats["fenced"] >= 1 and stats[3]["retries"] >= 1
        for w in range(4):  # each entity's events come in version order in the domain stream
            events = await read_all(store, Scope(realm, f"d{w % 2}"))
            mine = [e.version for e in events if e.entity == f"e{w}"]
            assert mine == list(range(len(mine)))


async def test_processes_contending_for_one_entity(url: str, realm: str, tmp_path: Path) -> None:
    async with open_store(url) as store:
        await store.append(realm, "d", "warm", "t", 0)
        # The processes start together (they meet in tmp_path first), to contend from the first round.
        procs = [spawn("contend", url, realm, p, 25, tmp_path) for p in range(4)]
        outcomes = [line.split() for p in procs for line in finish(p)]
        wins = [o for o in outcomes if o[0] == "win"]
        losses = [o for o in outcomes if o[0] == "lose"]
        events = (await store.read(Scope(realm, "d", "e"))).events
        assert [e.version for e in events] == list(range(25))
        # Each version was won by exactly one attempt, and every loser was told a newer version.
        assert sorted(int(w[1]) for w in wins) == list(range(-1, 24))
        assert all(int(current) > int(expected) for _, expected, current in losses)
        contested = {w[1] for w in wins} & {loss[1] for loss in losses}
        assert len(contested) >= 5, "the processes hardly contended; the test proves little"
        # All four append one client-chosen event id at once: one stores it, three replay it.
        created = [o for o in outcomes if o[0] == "same-id"]
        assert sorted(o[1] for o in created) == ["created", "replayed", "replayed", "replayed"]
        assert len({o[2] for o in created}) == 1
        assert len((await store.read(Scope(realm, "d", "same"))).events) == 1


async def _write_main(url: str, realm: str, w: int, count: int, offset_ms: float, stall: float) -> None:
    if offset_ms:  # this process's clock is off by offset_ms (within the store's clock_skew_ms)
        now = clock.now_us
        clock.now_us = lambda: now() + int(offset_ms * 1000)

    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        if stall:  # sometimes stall between the pending rows and the commit, past the settle window
            commit = store.writer.commit

            async def slow_commit(key: EntityKey, p: Attempt, version: int) -> Commit:
                if random.random() < stall:
                    await asyncio.sleep(store.settle_us / 1e6 + 0.3)
                return await commit(key, p, version)

            store.writer.commit = slow_commit  # type: ignore[method-assign]
        for i in range(count):
            if i % 10 == 0:
                r = await store.append_batch(realm, f"d{w % 2}", f"e{w}",
                                             [{"type": "t", "event": [w, i, k]} for k in range(2)])
            else:
                r = await store.append(realm, f"d{w % 2}", f"e{w}", "t", [w, i])
            for a in r.events:
                print("ack", a.event_id, flush=True)
        print("stats", orjson.dumps(store.stats).decode(), file=sys.stderr)


async def _meet(directory: Path, name: str, p: int, count: int = 4) -> None:
    """A barrier between processes: wait until all ``count`` of them have arrived."""
    barrier = directory / name
    barrier.mkdir(exist_ok=True)
    (barrier / str(p)).touch()
    await wait_until(lambda: len(list(barrier.iterdir())) >= count, f"the processes to meet at {name}", 120)


async def _contend_main(url: str, realm: str, p: int, rounds: int, meeting: Path) -> None:
    async with open_store(url) as store:
        await _meet(meeting, "start", p)
        while True:
            events = (await store.read(Scope(realm, "d", "e"))).events
            expected = events[-1].version if events else -1
            if expected >= rounds - 1:
                break
            try:
                await store.append(realm, "d", "e", "t", [p, expected], expected_version=expected)
                print("win", expected, flush=True)
            except VersionConflict as exc:
                print("lose", expected, exc.current_version, flush=True)
        await _meet(meeting, "same-id", p)  # meet again, for the shared id
        r = await store.append(realm, "d", "same", "t", "once", event_id="2f6b4a3e-9d1c-4e0a-8b7f-5c3d2e1f0a9b")
        print("same-id", "created" if r.created else "replayed", r.first.version, flush=True)


# ----------------------------------------------------------------------------- the node goes away


async def test_node_down_gives_503_and_recovers(tmp_path: Path, realm: str) -> None:
    node = CassandraNode(tmp_path / "node")
    node.start()
    try:
        url = node.url("perhap") + "?timeout=3"
        async with open_store(url) as store:
            app = PerhapApp(store)
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            acknowledged: list[str] = []
            failures: list[float] = []
            stop = asyncio.Event()

            async def load(n: int) -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        r = await store.append(realm, "d", f"e{n}", "t", len(acknowledged))
                        acknowledged.append(r.first.event_id)
                    except StorageUnavailable:
                        failures.append(time.monotonic() - started)
                        await asyncio.sleep(0.05)

            writers = [asyncio.ensure_future(load(n)) for n in range(4)]
            await wait_until(lambda: len(acknowledged) >= 20, "appends before the crash")
            await asyncio.to_thread(node.kill)  # a crash, under load
            await wait_until(lambda: len(failures) >= 8, "appends to fail")
            assert max(failures) < 10  # fast failures, no hanging
            down = len(acknowledged)
            r = await http.post(f"/{realm}/d/e/t", json={"event": 1})
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
            assert r.json()["status"] == 503 and "Traceback" not in r.text
            assert (await http.get("/_health")).status_code == 503
            assert (await http.get(f"/{realm}/d")).status_code == 503

            await asyncio.to_thread(node.start)
            # The driver reconnects by itself.
            await wait_until(lambda: len(acknowledged) >= down + 20, "appends to resume after the node came back", 60)
            stop.set()
            await asyncio.gather(*writers)
            assert (await http.get("/_health")).status_code == 200
            assert (await http.post(f"/{realm}/d/e/t", json={"event": 1})).status_code == 201
            await http.aclose()
            stored = {e.event_id for e in await read_all(store, Scope(realm))}
            assert set(acknowledged) <= stored  # nothing acknowledged was lost
            for n in range(4):
                versions = [e.version for e in (await store.read(Scope(realm, "d", f"e{n}"))).events]
                assert versions == list(range(len(versions)))
    finally:
        node.stop()


if __name__ == "__main__":
    mode, *argv = sys.argv[1:]
    if mode == "write":
        asyncio.run(_write_main(argv[0], argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5])))
    elif mode == "contend":
        asyncio.run(_contend_main(argv[0], argv[1], int(argv[2]), int(argv[3]), Path(argv[4])))
    else:
        raise SystemExit(f"unknown mode {mode}")
    os._exit(0)  # skip the driver's slow interpreter-exit hooks


def test_event_timestamps_are_exact_rfc3339_from_the_position_clock() -> None:
    """clock.stamp keeps each second's text: what it answers must equal a fresh strftime of the
    exact microsecond, around second and epoch boundaries and far from them, cached or not."""
    from datetime import timedelta

    rng = random.Random(5)
    samples = [0, -1, 1, 999_999, 1_000_000, -1_000_000, -1_000_001, 1_764_000_000_123_456]
    samples += [rng.randrange(-10**15, 10**17) for _ in range(20_000)]
    samples += [1_764_000_000_000_000 + rng.randrange(3_000_000) for _ in range(5_000)]  # one cached second
    for ts in samples:
        want = (clock.EPOCH + timedelta(microseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert clock.stamp(ts) == want, ts
    assert clock.stamp(7, "2020-01-01T00:00:00.000001Z") == "2020-01-01T00:00:00.000001Z"  # imported
