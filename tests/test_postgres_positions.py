"""PostgreSQL positions and multi-entity appends: the in-place migration of a store the previous
release wrote, contiguous positions across processes, and multi-entity appends that race, fail
beside other appends of their group, or die with their process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from perhap import AppendResult, PerhapError, Scope, open_store
from perhap.backends.postgres import PostgresStore
from perhap.backends.postgres import schema as pgschema
from perhap.errors import VersionConflict
from perhap.testing.postgres import find_bin_dir
from tests.conftest import get_provider
from tests.helpers import read_all

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
LEGACY_DUMP = REPO / "tests" / "fixtures" / "legacy" / "schema1-postgres.sql"


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database on the session's PostgreSQL (private, or PERHAP_TEST_POSTGRES_URL)."""
    return get_provider("postgres", tmp_path_factory).new_url()


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def positions_of(url: str, realm: str) -> list[int]:
    rows = await sql(url, "SELECT e.position FROM perhap_events e JOIN perhap_realms r ON r.id = e.realm_id "
                          "WHERE r.name = $1 ORDER BY e.position", realm)
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- migration


async def test_a_store_of_the_previous_release_is_migrated_in_place(pg_url: str) -> None:
    """The dump the previous release wrote (schema 1, global ``pos``) gets positions 1..n per
    realm in its old order on first open, once although three stores open at the same time;
    every read answers as before, and appends continue at n+1."""
    psql = find_bin_dir() / "psql"
    subprocess.run([psql, "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_url, "-f", LEGACY_DUMP],
                   check=True, capture_output=True, timeout=60)
    old = await sql(pg_url, "SELECT e.event_id, r.name AS realm, e.version, e.ts, e.data::text AS data "
                            "FROM perhap_events e JOIN perhap_realms r ON r.id = e.realm_id ORDER BY e.pos")
    assert len(old) == 21
    stores = await asyncio.gather(*[open_store(pg_url) for _ in range(3)])
    try:
        assert [r["value"] for r in await sql(pg_url, "SELECT value FROM perhap_meta")] == [
            str(pgschema.SCHEMA_VERSION)]
        columns = {r[0] for r in await sql(pg_url, "SELECT column_name FROM information_schema.columns "
                                                   "WHERE table_name = 'perhap_events'")}
        assert "position" in columns and "pos" not in columns
        indexes = {r[0] for r in await sql(pg_url, "SELECT indexname FROM pg_indexes "
                                                   "WHERE tablename = 'perhap_events'")}
        assert indexes == {"perhap_events_pkey", "perhap_events_realm", "perhap_events_realm_type",
                           "perhap_events_domain", "perhap_events_domain_type", "perhap_events_entity"}
        for realm in ("shop", "bank"):
            was = [r for r in old if r["realm"] == realm]
            events = await read_all(stores[1], Scope(realm))
            assert [e.event_id for e in events] == [str(r["event_id"]) for r in was]
            assert [e.position for e in events] == list(range(1, len(was) + 1))
            assert [(e.version, e.timestamp, e.data_json.decode()) for e in events] == [
                (r["version"], r["ts"], r["data"]) for r in was]
        shipped = await stores[0].get_event("shop", "orders", "0190a0a0-0000-7000-8000-000000000002")
        assert (shipped.position, shipped.version, shipped.event) == (15, 2, {"big": 2**70})
        # A retry of an append the old release acknowledged answers as it did, now with a position.
        retry = await stores[2].append("shop", "orders", "o0", "shipped", {"big": 2**70},
                                       event_id="0190a0a0-0000-7000-8000-000000000002")
        assert not retry.created and (retry.first.version, retry.first.position) == (2, 15)
        added = await stores[0].append("shop", "orders", "o0", "shipped", {"again": True}, expected_version=2)
        assert (added.first.version, added.first.position) == (3, 16)
        added = await stores[1].append("bank", "accounts", "a1", "deposited", {"amount": 6})
        assert (added.first.version, added.first.position) == (6, 7)
        head = (await stores[2].read(Scope("shop"), order="desc", limit=1)).events
        assert [e.position for e in head] == [16]
        assert (await stores[2].read(Scope("shop"), after_position=16)).events == []  # beyond the head
        assert [e.position for e in (await stores[2].read(Scope("shop", "stock"), after_position=9)).events] == [10, 12]
        assert await positions_of(pg_url, "shop") == list(range(1, 17))
    finally:
        for store in stores:
            await store.close()


# --------------------------------------------------------------------------- contiguous positions

WRITER = """
import asyncio, sys, time, orjson
from perhap import open_store, PerhapError

async def main(url, realm, tag, rounds, start):
    acknowledged = []
    async with open_store(url) as store:
        await asyncio.sleep(max(0.0, start - time.time()))  # both processes write at once
        async def worker(w):
            for i in range(rounds):
                entity = f"{tag}-{w}-{i % 3}"
                kind = i % 4
                try:
                    if kind == 0:
                        r = await store.append(realm, f"d{w % 2}", entity, "one", [tag, w, i])
                    elif kind == 1:
                        r = await store.append_batch(realm, "d0", entity,
                                                     [{"type": "batch", "event": [tag, w, i, k]} for k in range(3)])
                    elif kind == 2:  # a version conflict: refused, and burns no position
                        r = await store.append(realm, "d1", entity, "never", 0, expected_version=10**6)
                    else:
                        r = await store.append_many(realm, "d1", [
                            {"entity": entity, "type": "multi", "event": [tag, w, i, 0]},
                            {"entity": "shared", "type": "multi", "event": [tag, w, i, 1]},
                            {"entity": entity, "type": "multi", "event": [tag, w, i, 2]}])
                except PerhapError as exc:
                    assert exc.status == 409, exc
                    continue
                acknowledged.extend([a.event_id, a.position, a.version] for a in r.events)
        await asyncio.gather(*[worker(w) for w in range(4)])
    sys.stdout.write(orjson.dumps(acknowledged).decode())

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
"""


async def test_positions_stay_contiguous_across_processes(pg_url: str) -> None:
    """Two processes append singles, batches and multi-entity batches to one realm at once (each
    one's memory of the realm, and of the entity both write, goes stale at nearly every group),
    with refused appends in between: the realm's positions are 1..N, each acknowledged position
    and version is the stored one, each entity's versions are 0..n-1, and the realm reads in
    position order."""
    async with open_store(pg_url) as store:  # the schema first, so the two processes only append
        await store.append("elsewhere", "d", "e", "t", 0)
    start = str(time.time() + 2)  # once both have started and opened the store
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "busy", f"p{k}", "40", start], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(2)]
    acknowledged: dict[str, tuple[int, int]] = {}
    for proc in procs:
        out, err = await asyncio.to_thread(proc.communicate, timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        acknowledged.update((event_id, (position, version)) for event_id, position, version in orjson.loads(out))
    async with open_store(pg_url) as store:
        events = await read_all(store, Scope("busy"))
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        assert {e.event_id: (e.position, e.version) for e in events} == acknowledged
        versions: dict[tuple[str, str], list[int]] = {}
        for e in events:
            versions.setdefault((e.domain, e.entity), []).append(e.version)
        assert all(v == list(range(len(v))) for v in versions.values()), versions
        assert len(versions[("d1", "shared")]) == 2 * 4 * 10  # one event of every multi-entity append
        assert len(events) == 2 * 4 * 10 * (1 + 3 + 3)  # per worker, every round of four: 1 + 3 + 0 + 3
        backwards: list[Any] = []
        following = None
        while True:  # newest first, in pages that end in the middle of batches
            page = await store.read(Scope("busy"), order="desc", limit=37, following=following)
            backwards.extend(page.events)
            if (following := page.next) is None:
                break
        assert backwards == events[::-1]
        assert (await store.read(Scope("elsewhere"))).events[0].position == 1


# --------------------------------------------------------------------------- multi-entity appends


async def test_multi_entity_appends_in_one_group(pg_url: str) -> None:
    """Appends queued together commit in one transaction: a refused multi-entity append there
    stores nothing and leaves the others of its group alone; positions follow send order."""
    async with open_store(pg_url) as store:
        await store.append("r", "d", "a", "t", 0)
        outcomes = await asyncio.gather(  # one event-loop tick: one group
            store.append("r", "d", "b", "t", 1),
            store.append_many("r", "d", [{"entity": "a", "type": "t", "event": "no"},
                                         {"entity": "c", "type": "t", "event": "no"}],
                              expected_versions={"a": 5, "c": -1, "ghost": 2, "b": -1}),
            store.append_many("r", "d", [{"entity": "c", "type": "t", "event": 2},
                                         {"entity": "a", "type": "t", "event": 3},
                                         {"entity": "c", "type": "t", "event": 4}],
                              expected_versions={"a": 0, "ghost": -1}),
            store.append("r", "d", "a", "t", 5, expected_version=1),
            return_exceptions=True)
        assert isinstance(store, PostgresStore) and store.groups_committed == 2
        single, refused, multi, after = outcomes
        assert isinstance(refused, VersionConflict), refused
        # Every failing expectation, in the order given, including one on an entity with no
        # event (b, now at 0 in this group) and one that does not exist (ghost).
        assert refused.conflicts == [("a", 5, 0), ("ghost", 2, -1), ("b", -1, 0)]
        assert isinstance(single, AppendResult) and isinstance(multi, AppendResult)
        assert isinstance(after, AppendResult)
        assert [(a.entity, a.version, a.position) for a in multi.events] == [("c", 0, 3), ("a", 1, 4), ("c", 1, 5)]
        assert (after.first.version, after.first.position) == (2, 6)
        events = await read_all(store, Scope("r"))
        assert [e.event for e in events] == [0, 1, 2, 3, 4, 5]
        assert [e.position for e in events] == [1, 2, 3, 4, 5, 6]
        assert (await store.keys("r", "d")).keys == ["a", "b", "c"]  # a guard creates no entity


async def test_multi_entity_replay_and_id_conflicts(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        batch = [{"entity": "x", "type": "t", "event": 1, "event_id": "0190a0a0-0000-7000-8000-0000000000a1"},
                 {"entity": "y", "type": "t", "event": 2, "event_id": "0190a0a0-0000-7000-8000-0000000000a2"}]
        first = await store.append_many("r", "d", batch, expected_versions={"x": -1, "y": -1})
        await store.append("r", "d", "x", "t", 3)
        # Retried (its expectations no longer hold): the original results, nothing stored again.
        again = await store.append_many("r", "d", batch, expected_versions={"x": -1, "y": -1})
        assert not again.created and again.events == first.events
        assert [(a.entity, a.position) for a in again.events] == [("x", 1), ("y", 2)]
        with pytest.raises(PerhapError) as refused:  # one id reused with other content
            await store.append_many("r", "d", [{**batch[0], "event": 9}, {"entity": "z", "type": "t", "event": 4}])
        assert refused.value.status == 409
        assert await positions_of(store.url, "r") == [1, 2, 3]


RACER = """
import asyncio, sys, orjson
from perhap import open_store, Scope, PerhapError

async def main(url, tag, attempts):
    wins = []
    async with open_store(url) as store:
        for i in range(attempts):
            versions = {}
            for entity in ("x", "y", "z"):
                last = (await store.read(Scope("race", "d", entity), order="desc", limit=1)).events
                versions[entity] = last[0].version if last else -1
            entities = ("x", "y") if i % 2 else ("y", "z")
            try:
                await store.append_many("race", "d", [{"entity": e, "type": "t", "event": [tag, i]} for e in entities],
                                        expected_versions={e: versions[e] for e in entities})
            except PerhapError as exc:
                assert exc.status == 409, exc
                continue
            wins.append([[e, versions[e]] for e in entities])
    sys.stdout.write(orjson.dumps(wins).decode())

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_overlapping_multi_entity_appends_from_two_processes(pg_url: str) -> None:
    """Two processes race multi-entity appends over overlapping entities, each expecting the
    versions it just read: no two winners ever held the same expectation of an entity, so each
    entity's versions grew by exactly one winner at a time, and nothing deadlocked."""
    async with open_store(pg_url) as store:
        await store.append("race", "d", "warm", "t", 0)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, pg_url, f"p{k}", "60"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(2)]
    wins: list[list[list[Any]]] = []
    for proc in procs:
        out, err = await asyncio.to_thread(proc.communicate, timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        wins.extend(orjson.loads(out))
    expected_of: dict[str, list[int]] = {}
    for win in wins:
        for entity, expected in win:
            expected_of.setdefault(entity, []).append(expected)
    async with open_store(pg_url) as store:
        for entity, expectations in expected_of.items():
            # Each winner moved the entity from the version it expected to the next one.
            assert sorted(expectations) == list(range(-1, len(expectations) - 1)), (entity, expectations)
            events = await read_all(store, Scope("race", "d", entity))
            assert [e.version for e in events] == list(range(len(expectations)))
        assert await positions_of(pg_url, "race") == list(range(1, 2 + 2 * len(wins)))


KILLED = """
import asyncio, sys
from perhap import open_store

async def main(url):
    store = await open_store(url)
    async def worker(w):
        for i in range(10**6):
            await store.append_many("crash", "d", [
                {"entity": f"e{(w + k) % 5}", "type": "t", "event": {"batch": f"{w}-{i}"}} for k in range(4)])
            print(f"{w}-{i}", flush=True)
    await asyncio.gather(*[worker(w) for w in range(6)])

asyncio.run(main(sys.argv[1]))
"""


async def test_a_killed_writer_leaves_no_partial_multi_entity_batch(pg_url: str) -> None:
    """SIGKILL while multi-entity appends are in flight: each batch is wholly stored or absent,
    every acknowledged one is there, and the realm's positions have no gap."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED, pg_url], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    acknowledged: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 150:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
            assert line, proc.stderr.read().decode()[-2000:] if proc.stderr else "writer ended"
            acknowledged.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait)
    async with open_store(pg_url) as store:
        events = await read_all(store, Scope("crash"))
    sizes: dict[str, int] = {}
    for e in events:
        sizes[e.event["batch"]] = sizes.get(e.event["batch"], 0) + 1
    assert all(n == 4 for n in sizes.values()), sizes
    assert set(acknowledged) <= set(sizes)
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    versions: dict[str, list[int]] = {}
    for e in events:
        versions.setdefault(e.entity, []).append(e.version)
    assert all(v == list(range(len(v))) for v in versions.values()), versions
