"""PostgreSQL-specific guarantees: gap-safe commit order across connections and processes, schema
versions, a database that goes away under load, and several server processes on one database."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from perhap import AppendResult, PerhapError, Scope, StorageUnavailable, Store, open_store
from perhap.app import PerhapApp
from perhap.backends.postgres import PostgresStore
from perhap.backends.postgres import queries as pgqueries
from perhap.backends.postgres import schema as pgschema
from perhap.backends.postgres import writer as pgwriter
from perhap.sse import SSEDecoder
from perhap.store.query import read_query
from perhap.testing.postgres import PostgresServer
from tests.conftest import get_provider
from tests.helpers import TcpRelay, in_another_loop, read_all, relayed_postgres
from tests.servers import ProcessServer, free_port

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database on the session's PostgreSQL (private, or PERHAP_TEST_POSTGRES_URL)."""
    return get_provider("postgres", tmp_path_factory).new_url()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A private server this test may stop and start (in its own temp directory: see the provider)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Return once ``condition()`` holds (it may be a coroutine function); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # the polling step of the wait, not a guess at a duration


async def pg_store(url: str) -> PostgresStore:
    store = await open_store(url)
    assert isinstance(store, PostgresStore)
    return store


# --------------------------------------------------------------------------- gap safety

WRITER = """
import asyncio, sys, orjson
from perhap import open_store

async def main(url, realm, tag, n):
    ids = []
    async with open_store(url) as store:
        async def worker(w):
            for i in range(n):
                r = await store.append(realm, f"d{i % 4}", f"{tag}-{w}", "t", [tag, w, i])
                ids.append(r.first.event_id)
        await asyncio.gather(*[worker(w) for w in range(6)])
    sys.stdout.write(orjson.dumps(ids).decode())

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_paging_during_concurrent_writers_never_skips(pg_url: str) -> None:
    """Writers on three connections of this process and in two other processes append to one realm
    across four domains, while readers page through the realm and one domain with small pages.
    A sequence value that commits after a larger one would make a reader step over it; here every
    acknowledged event must be seen exactly once, in the order a final read gives."""
    realm = "gaps"
    stores = [await open_store(pg_url) for _ in range(3)]
    try:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, realm, f"p{k}", "120"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(2)]
        acknowledged: list[str] = []
        writing = True

        async def writer(store: Store, tag: str) -> None:
            for i in range(150):
                entity = f"{tag}-{i % 5}"
                batch = [{"type": "t", "event": [tag, i, k]} for k in range(1 + i % 3)]
                r = await store.append_batch(realm, f"d{i % 4}", entity, batch)
                acknowledged.extend(a.event_id for a in r.events)

        async def reader(scope: Scope) -> list[Any]:
            seen: list[Any] = []
            following = None
            while True:
                still_writing = writing
                page = await stores[0].read(scope, following=following, limit=random.randint(1, 40))
                seen += page.events
                if page.events:
                    following = page.events[-1].event_id
                elif not still_writing:  # an empty page that began after every writer was done
                    return seen

        readers = [asyncio.ensure_future(reader(Scope(realm))), asyncio.ensure_future(reader(Scope(realm, "d1")))]
        await asyncio.gather(*[writer(stores[i % 3], f"s{i}") for i in range(9)])
        for proc in procs:
            out, err = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == 0, err.decode()
            acknowledged += orjson.loads(out)
        writing = False
        seen_realm, seen_domain = await asyncio.gather(*readers)

        final = await read_all(stores[1], Scope(realm))
        assert len(acknowledged) == len(set(acknowledged)) == 9 * 300 + 2 * 6 * 120
        assert {e.event_id for e in final} == set(acknowledged)
        # Paging while others committed saw exactly what a quiet read sees: nothing skipped,
        # nothing twice, the same order.
        assert [e.event_id for e in seen_realm] == [e.event_id for e in final]
        assert [e.event_id for e in seen_domain] == [e.event_id for e in final if e.domain == "d1"]
        # Positions 1..N: numbered in commit order, none burnt by the other processes' groups.
        assert [e.position for e in final] == list(range(1, len(final) + 1))
        assert [e.position for e in seen_realm] == [e.position for e in final]
        by_entity: dict[tuple[str, str], list[int]] = {}
        for e in final:
            by_entity.setdefault((e.domain, e.entity), []).append(e.version)
        assert all(v == list(range(len(v))) for v in by_entity.values())
    finally:
        for store in stores:
            await store.close()


async def test_one_winner_among_processes_with_the_same_expected_version(pg_url: str) -> None:
    stores = [await open_store(pg_url) for _ in range(4)]
    try:
        for round_ in range(20):
            results = await asyncio.gather(
                *[s.append("race", "d", "e", "t", [round_, k], expected_version=round_ - 1)
                  for k, s in enumerate(stores)], return_exceptions=True)
            assert sum(not isinstance(r, Exception) for r in results) == 1, results
        events = await read_all(stores[0], Scope("race", "d", "e"))
        assert [e.version for e in events] == list(range(20))
    finally:
        for store in stores:
            await store.close()


async def test_same_client_id_from_two_connections_is_stored_once(pg_url: str) -> None:
    stores = [await open_store(pg_url) for _ in range(3)]
    try:
        for _ in range(10):
            eid = str(uuid.uuid4())
            results = await asyncio.gather(*[s.append("idem", "d", "e", "t", {"x": 1}, event_id=eid)
                                             for s in stores])
            assert sorted(r.created for r in results) == [False, False, True]
            assert len({r.first.version for r in results}) == 1
        assert len(await read_all(stores[0], Scope("idem"))) == 10
    finally:
        for store in stores:
            await store.close()


async def test_an_id_raced_in_by_another_transaction_fails_only_its_append(pg_url: str) -> None:
    """Another transaction inserts an event id (in another realm, so under no lock of ours) and
    commits while our group waits on it: only the append with that id is refused."""
    async with open_store(pg_url) as store:
        await store.append("other", "d", "e", "t", 0)
        raced = str(uuid.uuid4())
        rival = await asyncpg.connect(pg_url)
        try:
            await rival.execute("BEGIN")
            await rival.execute(
                "INSERT INTO perhap_events (event_id, position, realm_id, domain_id, entity_id, type_id, version, "
                "ts, data, meta) SELECT $1, position + 1, realm_id, domain_id, entity_id, type_id, 1, ts, '1', '{}' "
                "FROM perhap_events", raced)
            appends = asyncio.gather(  # one group: the same event-loop tick
                store.append("r", "d", "a", "t", "first"),
                # 150 events: a group this big is written with COPY, which must fail alone too.
                store.append_batch("r", "d", "b", [{"type": "t", "event": "raced", "event_id": raced}]
                                   + [{"type": "t", "event": k} for k in range(149)]),
                store.append("r", "d", "c", "t", "third"), return_exceptions=True)


            async def our_insert_waits() -> bool:  # for the rival's transaction, on its row lock
                rows = await sql(pg_url, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = "
                                         "current_database() AND application_name = 'perhap' "
                                         "AND wait_event_type = 'Lock'")
                return bool(rows[0]["n"])

            await eventually(our_insert_waits, 30, "the group to wait for the rival")
            await rival.execute("COMMIT")
            first, second, third = await appends
        finally:
            await rival.close()
        assert isinstance(second, PerhapError) and second.status == 409, second
        assert isinstance(first, AppendResult) and first.created
        assert isinstance(third, AppendResult) and third.created
        events = await read_all(store, Scope("r"))
        assert [e.event for e in events] == ["first", "third"]


# --------------------------------------------------------------------------- schema


async def test_schema_version_row_and_reopen(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        await store.append("r", "d", "e", "t", 1)
    rows = await sql(pg_url, "SELECT value FROM perhap_meta WHERE key = 'schema_version'")
    assert [r["value"] for r in rows] == [str(pgschema.SCHEMA_VERSION)]
    async with open_store(pg_url) as store:  # a second start finds the schema and keeps the data
        await store.append("r", "d", "e", "t", 2)
        assert [e.event for e in await read_all(store, Scope("r"))] == [1, 2]


async def test_several_processes_create_the_schema_at_once(pg_url: str) -> None:
    stores = await asyncio.gather(*[open_store(pg_url) for _ in range(4)])
    try:
        await asyncio.gather(*[s.append("r", "d", f"e{i}", "t", i) for i, s in enumerate(stores)])
        assert len(await read_all(stores[0], Scope("r"))) == 4
    finally:
        for store in stores:
            await store.close()


async def test_newer_schema_is_refused(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        await store.append("r", "d", "e", "t", 1)
    await sql(pg_url, "UPDATE perhap_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageUnavailable, match="newer"):
        await open_store(pg_url)


async def test_a_server_that_never_answers_is_named_as_a_timeout() -> None:
    """A listener that takes the connection and says nothing: the error said "cannot open the
    PostgreSQL store: " and no more (a timeout's text is empty)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(StorageUnavailable) as refused:
            await open_store(f"postgresql://perhap@127.0.0.1:{port}/perhap?timeout=0.5")
    assert re.search(r"cannot open the PostgreSQL store: \w", str(refused.value)), str(refused.value)
    assert "Timeout" in str(refused.value) or "timed out" in str(refused.value), str(refused.value)


async def test_a_role_that_may_not_change_the_schema_is_told_what_to_do(pg_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime role granted rows only (as docs/backends/postgresql.md suggests) meets a store that
    needs an upgrade, or none yet: the error says so and what to do ("must be owner of function
    perhap_write_known" or "permission denied for schema public" said neither), and changes nothing."""
    role = f"perhap_rows_{uuid.uuid4().hex[:8]}"
    await sql(pg_url, f"CREATE ROLE {role} LOGIN")
    as_role = re.sub(r"postgresql://[^@]+@", f"postgresql://{role}@", pg_url)
    await sql(pg_url, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    with pytest.raises(StorageUnavailable, match="this role may not create perhap's tables in this database"):
        await open_store(as_role)
    async with open_store(pg_url) as store:
        await store.append("r", "d", "e", "t", 1)
    for grant in (f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                  f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"):
        await sql(pg_url, grant)
    async with open_store(as_role) as store:  # at the schema this perhap has: the role is enough
        await store.append("r", "d", "e", "t", 2, expected_version=0)
    now = pgschema.SCHEMA_VERSION
    monkeypatch.setattr(pgschema, "SCHEMA_VERSION", now + 1)
    monkeypatch.setitem(pgschema.MIGRATIONS, now + 1, "CREATE INDEX perhap_events_ts ON perhap_events (ts);")
    with pytest.raises(StorageUnavailable, match=f"the database has perhap schema {now} and this perhap needs "
                                                 f"{now + 1}.*run this perhap once as the role that owns"):
        await open_store(as_role)
    assert [r["value"] for r in await sql(pg_url, "SELECT value FROM perhap_meta")] == [str(now)]
    await sql(pg_url, "UPDATE perhap_meta SET value = '3.1' WHERE key = 'schema_version'")
    with pytest.raises(StorageUnavailable, match="not a whole number"):
        await open_store(pg_url)


async def test_older_schema_is_migrated_in_place(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(pg_url) as store:
        first = await store.append("r", "d", "e", "t", 1)
    # A later perhap with one more step: opening the database written by this one runs it once.
    later = pgschema.SCHEMA_VERSION + 1
    monkeypatch.setattr(pgschema, "SCHEMA_VERSION", later)
    monkeypatch.setitem(pgschema.MIGRATIONS, later, "CREATE INDEX perhap_events_ts ON perhap_events (ts);")
    stores = await asyncio.gather(*[open_store(pg_url) for _ in range(3)])
    try:
        assert [r["value"] for r in await sql(pg_url, "SELECT value FROM perhap_meta")] == [str(later)]
        assert (await sql(pg_url, "SELECT to_regclass('perhap_events_ts') AS i"))[0]["i"] is not None
        await stores[0].append("r", "d", "e", "t", 2, expected_version=0)
        events = await read_all(stores[1], Scope("r", "d", "e"))
        assert [e.event for e in events] == [1, 2] and events[0].event_id == first.first.event_id
    finally:
        for store in stores:
            await store.close()


async def test_a_process_starting_during_a_migration_waits_whatever_the_databases_statement_timeout(
        pg_url: str) -> None:
    """docs/backends/postgresql.md: processes that start while another migrates wait on its lock.
    The wait for the lock ran under the database's own statement_timeout (set by a DBA): one
    second in, the process failed to open ("canceling statement due to statement timeout")."""
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    await sql(pg_url, f'ALTER DATABASE "{database}" SET statement_timeout = \'1s\'')
    holder = await asyncpg.connect(pg_url, timeout=10)  # as a process in the middle of a migration
    try:
        await holder.execute("SET statement_timeout = 0")
        await holder.execute("SELECT pg_advisory_lock($1, $2)", *pgschema.SCHEMA_LOCK)
        opening = asyncio.ensure_future(open_store(pg_url))
        await asyncio.sleep(2.5)
        assert not opening.done(), opening  # still waiting, not failed
        await holder.execute("SELECT pg_advisory_unlock($1, $2)", *pgschema.SCHEMA_LOCK)
        store = await asyncio.wait_for(opening, 30)
    finally:
        await holder.close()
    try:
        await store.append("r", "d", "e", "t", 1)
    finally:
        await store.close()


async def test_the_urls_application_name_names_every_connection(pg_url: str) -> None:
    """docs/backends/postgresql.md lists application_name among the URL's parameters: asyncpg let
    perhap's own "perhap" win over it, so a DBA could not tell two deployments apart."""
    mine = pg_url + ("&" if "?" in pg_url else "?") + "application_name=billing-perhap&pool_size=2"
    async with open_store(mine) as store:
        await store.append("r", "d", "e", "t", 1)
        await read_all(store, Scope("r"))  # a pooled connection too
        rows = await sql(pg_url, "SELECT DISTINCT application_name AS name FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert [r["name"] for r in rows] == ["billing-perhap"]
    async with open_store(pg_url):
        rows = await sql(pg_url, "SELECT DISTINCT application_name AS name FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert [r["name"] for r in rows] == ["perhap"]  # none given: perhap's own


async def test_key_order_is_code_point_order(pg_url: str) -> None:
    names = ["b", "B", "a", "é", "z", "Z", "_x", "10", "9", "ä", "😀", "ａ"]
    async with open_store(pg_url) as store:
        for n in names:
            await store.append("r", n, "e", n, 1)
        assert (await store.keys("r")).keys == sorted(names)
        assert (await store.keys("r", limit=3, after="Z")).keys == sorted(names)[sorted(names).index("Z") + 1:][:3]


def _sort_nodes(plan: str) -> list[str]:
    """The plan's Sort nodes (a Merge Append's "Sort Key" line merges sorted walks: not one)."""
    return [line for line in plan.splitlines() if re.match(r"\s*(->\s+)?(Incremental )?Sort  \(", line)]


async def test_every_scope_read_walks_its_index(pg_url: str) -> None:
    """A page costs O(log n + page) whatever the planner believes about the data: before any
    ANALYZE (it then thinks a scope holds a few dozen rows and would sort it all) and after, in
    both orders, with one type or several, from a position."""
    store = await pg_store(pg_url)
    async with store:
        await sql(pg_url, "ALTER TABLE perhap_events SET (autovacuum_enabled = off)")
        for j in range(12):
            batch = [{"type": f"t{k % 3}", "event": k} for k in range(1000)]
            await store.append_batch("big", f"d{j % 2}", f"x{j}", batch)
        await asyncio.gather(*[store.append(f"small{i}", "d", "e", "t0", i) for i in range(100)])
        scopes = {"realm": Scope("big"), "domain": Scope("big", "d1"), "entity": Scope("big", "d1", "x1")}
        variants: list[tuple[str, dict[str, Any]]] = [
            ("", {}), ("", {"order": "desc"}), ("", {"after_position": 5000}),
            ("", {"order": "desc", "before_position": 5000}),
            ("_type", {"types": ["t1"]}), ("_type", {"types": ["t1"], "order": "desc"}),
            ("_type", {"types": ["t0", "t2"]}), ("_type", {"types": ["t0", "t1", "t2"], "order": "desc"}),
            ("_type", {"types": ["t0", "t2"], "after_position": 5000}),
        ]
        # Last, the plan a prepared statement may settle on after a few runs: the generic one.
        for analysed, mode in ((False, "auto"), (True, "auto"), (True, "force_generic_plan")):
            if analysed:
                await sql(pg_url, "ANALYZE")
            assert store._pool is not None
            async with store._pool.acquire() as conn:
                await conn.execute(f"SET plan_cache_mode = {mode}")
                for name, scope in scopes.items():
                    for suffix, options in variants:
                        query, params, _ = pgqueries.read_sql(read_query(scope, limit=1000, **options))
                        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + query, *params))
                        shown = (analysed, mode, scope, options, plan)
                        if name == "entity":  # no type index: types filter the entity's own walk
                            walks = [line for line in plan.splitlines() if "on perhap_events" in line]
                            assert len(walks) == 1 and "using perhap_events_entity on" in walks[0], shown
                        else:
                            assert f"using perhap_events_{name}{suffix} on" in plan, shown
                        # (the type names of an entity's filter may be found by a bitmap scan
                        # of perhap_types: a few rows, never the events)
                        assert not _sort_nodes(plan) and "Bitmap Heap Scan on perhap_events" not in plan, shown
                        assert "Seq Scan on perhap_events" not in plan, shown
                        if len(options.get("types", ())) > 1 and name != "entity":
                            assert "Merge Append" in plan, shown
                await conn.execute("RESET plan_cache_mode")


async def test_heads_cost_one_index_probe(pg_url: str) -> None:
    """The realm's head and an entity's last event read one index entry: the plan's walk of
    perhap_events returns one row, on a store of 20,000 events."""
    store = await pg_store(pg_url)
    async with store:
        for j in range(10):
            await store.append_batch("big", f"d{j % 2}", f"x{j % 3}",
                                     [{"type": "t", "event": k} for k in range(2000)])
        await sql(pg_url, "ANALYZE")
        last = (await store.read(Scope("big"), order="desc", limit=1)).events
        assert [e.position for e in last] == [20_000]
        assert store._pool is not None
        async with store._pool.acquire() as conn:
            for index, scope in (("realm", Scope("big")), ("entity", Scope("big", "d1", "x1"))):
                query, params, _ = pgqueries.read_sql(read_query(scope, order="desc", limit=1))
                plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, TIMING OFF) " + query, *params))
                walk = [line for line in plan.splitlines() if "on perhap_events" in line]
                assert len(walk) == 1 and f"Index Scan Backward using perhap_events_{index} on" in walk[0], plan
                assert "rows=1 loops=1" in walk[0] and not _sort_nodes(plan), plan


async def test_the_writers_lookup_probes_every_key(pg_url: str) -> None:
    """A group's look-up finds each realm, domain and entity by its whole unique key and the realm's
    head by one backward index probe, whatever the planner believes: before any ANALYZE (tables
    that looked empty when the schema was made, as in a new store's first minutes), after it, and
    with the generic plan a prepared statement may settle on. A scan of the events or of a
    domain's entities here would make every group cost O(store)."""
    store = await pg_store(pg_url)
    async with store:
        for table in ("perhap_events", "perhap_entities", "perhap_domains", "perhap_realms"):
            await sql(pg_url, f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        for j in range(4):
            await store.append_batch("big", "d", f"x{j}", [{"type": "t", "event": k} for k in range(1000)])
        await asyncio.gather(*[store.append("big", "d", f"e{i}", "t", i) for i in range(400)])
        names = [f"e{i}" for i in range(0, 400, 25)] + ["new"]
        args = (["big"] * len(names), ["d"] * len(names), names, [True] + [False] * (len(names) - 1))
        conn = await asyncpg.connect(pg_url, timeout=10)
        try:
            await conn.execute("BEGIN;" + pgwriter.KEY_PLANS)  # as the writer's transactions do
            for analysed, mode in ((False, "auto"), (True, "auto"), (True, "force_generic_plan")):
                if analysed:
                    await sql(pg_url, "ANALYZE")
                await conn.execute(f"SET plan_cache_mode = {mode}")
                statement = await conn.prepare("EXPLAIN (ANALYZE, TIMING OFF) " + pgwriter._LOOKUP)
                plan = "\n".join(r[0] for r in await statement.fetch(*args))
                shown = (analysed, mode, plan)
                assert "Seq Scan" not in plan and not _sort_nodes(plan) and "Removed by" not in plan, shown
                for key in (r"\(name = k\.realm\)", r"\(\(realm_id = \S+\) AND \(name = k\.domain\)\)",
                            r"\(\(domain_id = \S+\) AND \(name = k\.entity\)\)"):
                    assert re.search(r"Index Cond: " + key, plan), (key, shown)
                head = [line for line in plan.splitlines() if "on perhap_events" in line]
                assert len(head) == 1 and "Index Only Scan Backward using perhap_events_realm" in head[0], shown
                assert "rows=1 loops=1" in head[0], shown
            rows = await conn.fetch(pgwriter._LOOKUP, *args)
            assert [r[4] for r in sorted(rows, key=lambda r: r[0])] == [0] * (len(names) - 1) + [None]
            assert sorted(rows, key=lambda r: r[0])[0][5] == 4400
        finally:
            await conn.close()


# --------------------------------------------------------------------------- the database goes away


def test_the_url_s_own_options_are_checked() -> None:
    """pool_size, poll_interval and timeout in the URL: read, and refused with the option named
    when they are not numbers above zero (poll_interval=0 polled the database in a busy loop)."""
    from perhap.backends.postgres.connection import Options

    o = Options.from_url("postgres://u@h:5/db?pool_size=3&poll_interval=0.25&timeout=7&sslmode=disable")
    assert (o.pool_size, o.poll_interval, o.timeout) == (3, 0.25, 7.0)
    assert o.dsn == "postgresql://u@h:5/db?sslmode=disable"
    for bad in ("pool_size=abc", "pool_size=0", "pool_size=-1", "poll_interval=0", "poll_interval=-1",
                "poll_interval=nan", "timeout=0", "timeout=inf", "pool_size=1_0", "pool_size=%D9%A3",
                "timeout=%201", "poll_interval=1e0", "timeout=1&timeout=2"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            Options.from_url(f"postgresql://u@h/db?{bad}")


async def test_reads_whose_connections_are_cut_are_503s(own_server: PostgresServer) -> None:
    """Readers busy while perhap's connections are terminated server-side (pg_terminate_backend):
    each read either answers or raises StorageUnavailable (503), never asyncpg's own errors (a
    connection cut mid-statement could leave asyncpg's protocol in a state it refused to leave,
    InternalClientError, which was answered 500)."""
    url = own_server.create_database("cut")
    store = await pg_store(url)
    failures: dict[str, int] = {}
    answered = 0
    stop = asyncio.Event()

    async def reader(k: int) -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                if k % 3 == 0:
                    await store.read(Scope("r"))
                elif k % 3 == 1:
                    await store.keys("r", "d")
                else:
                    await store.read(Scope("r", "d", f"e{k % 4}"))
                answered += 1
            except StorageUnavailable:
                pass
            except Exception as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

    try:
        for i in range(20):
            await store.append("r", "d", f"e{i % 4}", "t", i)
        readers = [asyncio.ensure_future(reader(k)) for k in range(16)]
        admin = await asyncpg.connect(url)
        try:
            for _ in range(5):
                await asyncio.sleep(0.3)
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*readers)
        assert not failures, failures
        assert answered > 0
        assert len(await read_all(store, Scope("r"))) == 20  # and the store reads on afterwards
    finally:
        await store.close()


async def test_database_restart_under_load(own_server: PostgresServer) -> None:
    url = own_server.create_database("faults")
    store = await pg_store(url)
    app = PerhapApp(store, heartbeat=0.5)
    acknowledged: list[str] = []
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def flood(c: int, http: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 5 == 0:
                batch = [{"type": "t", "event": [c, n, k]} for k in range(3)]
                r = await http.post(f"/load/d/e{c}", json={"events": batch})
                ids = [e["event_id"] for e in r.json()["events"]] if r.status_code == 201 else []
            else:
                r = await http.post(f"/load/d/e{c}/t", json={"event": [c, n]})
                ids = [r.json()["event_id"]] if r.status_code == 201 else []
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            acknowledged.extend(ids)
            if r.status_code == 503:
                assert r.headers["content-type"] == "application/problem+json"
                await asyncio.sleep(0.01)  # back off while the database is away (pacing only)

    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://perhap.test", timeout=60) as http:
            clients = [asyncio.ensure_future(flood(c, http)) for c in range(16)]
            await eventually(lambda: len(acknowledged) > 300, 30, "300 acknowledged appends")
            await asyncio.to_thread(own_server.stop, "immediate")
            before = len(acknowledged)

            # While it is down: a problem+json 503, promptly, for appends, reads and health.
            for method, path, body in [("POST", "/load/d/x/t", {"event": 1}), ("GET", "/load/d", None),
                                       ("GET", "/load/d/keys", None), ("GET", "/_health", None),
                                       ("GET", "/load/d?stream", None), ("HEAD", "/load/d?stream", None)]:
                t0 = time.monotonic()
                stream = path.endswith("?stream")  # a live stream is refused before it opens
                path = path.removesuffix("?stream")
                r = await http.request(method, path, json=body,
                                       headers={"accept": "text/event-stream"} if stream else None)
                assert r.status_code == 503, (method, path, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                assert method == "HEAD" or r.json()["status"] == 503
                assert time.monotonic() - t0 < 5
            await eventually(lambda: statuses.get(503, 0) > 0, 5, "the flood to meet a 503")
            # The metrics still answer, when they matter most (and count the 503s).
            r = await http.get("/_metrics")
            assert r.status_code == 200 and "perhap_backend_errors_total" in r.text

            await asyncio.to_thread(own_server.start)
            # The same store object recovers: pool, writer connection and LISTEN connection.
            await eventually(lambda: len(acknowledged) > before + 300, 30, "300 appends after the restart")
            stop.set()
            await asyncio.gather(*clients)
            assert (await http.get("/_health")).status_code == 200
            await eventually(lambda: store.listening, 15, "the LISTEN connection to be back")
        assert set(statuses) <= {201, 503}, statuses
        stored = {e.event_id for e in await read_all(store, Scope("load"))}
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged events lost"
    finally:
        await store.close()


async def _stream_through_a_restart(
        own_server: PostgresServer, http: httpx.AsyncClient, path: str, first: str,
        taken: Callable[[str], Awaitable[None]] | None = None) -> tuple[dict[str, Any], str]:
    """Open the SSE stream at ``path``, take its first event (``first``; then ``taken(first)``),
    stop the database for a few of the stream's reads (the stream stays open, kept by comments
    alone), start it again and append one event to /o/d/e/t: what the same connection delivers
    next, and the id of the event appended."""
    async with http.stream("GET", path, headers={"accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        decoder, chunks = SSEDecoder(), r.aiter_raw()

        async def next_event() -> dict[str, Any]:
            while True:
                chunk = await asyncio.wait_for(chunks.__anext__(), 30)
                events = [orjson.loads(m.data) for m in decoder.feed(chunk) if m.data is not None]
                if events:
                    assert len(events) == 1, events
                    return events[0]

        assert (await next_event())["event_id"] == first
        if taken is not None:
            await taken(first)
        await asyncio.to_thread(own_server.stop, "fast")
        # Down for a few of the stream's reads (each waits at most its poll interval, 1 s).
        await eventually(lambda: _down(http), 10, "the server to see the database gone")
        outage_ends = time.monotonic() + 3
        while time.monotonic() < outage_ends:  # the stream stays open, kept by comments
            chunk = await asyncio.wait_for(chunks.__anext__(), 5)
            assert not [m for m in decoder.feed(chunk) if m.data is not None]
        await asyncio.to_thread(own_server.start)
        second = None
        while second is None:
            answer = await http.post("/o/d/e/t", json={"event": 2})
            assert answer.status_code in (201, 503), answer.text
            second = answer.json()["event_id"] if answer.status_code == 201 else None
        return await next_event(), second


async def test_an_open_stream_outlives_a_database_restart(own_server: PostgresServer, tmp_path: Path) -> None:
    """A live stream stays open while the database is away (comments keep it), and carries what is
    appended once it is back: ended, its client would reconnect into 503s, on which a browser's
    EventSource gives up for good."""
    url = own_server.create_database("outage")
    with ProcessServer(url, None, "--heartbeat", "0.5", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = (await http.post("/o/d/e/t", json={"event": 1})).json()["event_id"]
            delivered, second = await _stream_through_a_restart(own_server, http, "/o/d", first)
            assert delivered["event_id"] == second  # the same connection, no gap


async def test_a_lease_stream_outlives_a_database_restart(own_server: PostgresServer, tmp_path: Path) -> None:
    """A consumer group's lease stream stays open through the outage as a scope's stream does, and
    leases what is appended once the database is back. It ended at the first failed lease, with a
    clean end of body a consumer could not tell from the server's own stop."""
    url = own_server.create_database("lease_outage")
    with ProcessServer(url, None, "--heartbeat", "0.5", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.put("/_groups/o/g", json={})).status_code == 201
            first = (await http.post("/o/d/e/t", json={"event": 1})).json()["event_id"]

            async def ack(event_id: str) -> None:
                r = await http.post("/_groups/o/g/ack", json={"consumer": "c", "event_ids": [event_id]})
                assert r.status_code == 200

            delivered, second = await _stream_through_a_restart(own_server, http, "/_groups/o/g/events?consumer=c",
                                                                first, ack)
            assert (delivered["event_id"], delivered["delivery"]) == (second, 1)


async def test_a_stream_keeps_its_heartbeat_while_the_database_hangs(own_server: PostgresServer,
                                                                    tmp_path: Path) -> None:
    """A database that stops answering without going away (every process of it stopped) held the
    stream's read until the storage's 10 s timeout, with nothing sent meanwhile: a proxy that
    closes connections idle for a little more than the heartbeat dropped the stream. A comment
    now goes out at most a second after each heartbeat whatever the read waits on."""
    url = own_server.create_database("hung")
    with ProcessServer(url, None, "--heartbeat", "1", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = (await http.post("/h/d/e/t", json={"event": 1})).json()["event_id"]
            async with http.stream("GET", "/h/d", headers={"accept": "text/event-stream"}) as r:
                decoder, chunks = SSEDecoder(), r.aiter_raw()
                seen: list[str] = []
                while not seen:
                    chunk = await asyncio.wait_for(chunks.__anext__(), 30)
                    seen += [orjson.loads(m.data)["event_id"] for m in decoder.feed(chunk) if m.data is not None]
                assert seen == [first]
                postmaster = int((own_server.data_dir / "postmaster.pid").read_text().split()[0])
                children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True,
                                          text=True, check=True).stdout.split()
                stopped = [postmaster, *map(int, children)]
                gaps = []
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    last = time.monotonic()
                    hang_ends = last + 7
                    while time.monotonic() < hang_ends:
                        await asyncio.wait_for(chunks.__anext__(), 10)
                        now = time.monotonic()
                        gaps.append(now - last)
                        last = now
                finally:
                    for pid in stopped:
                        os.kill(pid, signal.SIGCONT)
                assert gaps and max(gaps) < 1 + 1 + 0.75, gaps  # the heartbeat, the grace, the machine's slack
                second = (await http.post("/h/d/e/t", json={"event": 2})).json()["event_id"]
                while second not in seen:
                    chunk = await asyncio.wait_for(chunks.__anext__(), 30)
                    seen += [orjson.loads(m.data)["event_id"] for m in decoder.feed(chunk) if m.data is not None]
                assert seen == [first, second]


async def test_an_in_process_subscription_outlives_a_database_restart(own_server: PostgresServer) -> None:
    """store.subscribe promises a live stream's guarantees without HTTP: it ended with
    StorageUnavailable a few seconds into an outage, where the stream stays open and goes on."""
    url = own_server.create_database("outage_inproc")
    store = await pg_store(url)
    try:
        first = (await store.append("o", "d", "e", "t", 1)).first.event_id
        events = store.subscribe(Scope("o", "d"))
        assert (await asyncio.wait_for(events.__anext__(), 30)).event_id == first
        following = asyncio.ensure_future(events.__anext__())
        await asyncio.to_thread(own_server.stop, "fast")
        await asyncio.sleep(3)  # several of the subscription's reads (each at most its poll interval)
        assert not following.done(), following
        await asyncio.to_thread(own_server.start)
        second = None
        while second is None:
            try:
                second = (await store.append("o", "d", "e", "t", 2)).first.event_id
            except StorageUnavailable:
                await asyncio.sleep(0.1)
        assert (await asyncio.wait_for(following, 30)).event_id == second  # no gap, nothing twice
        await events.aclose()
    finally:
        await store.close()


async def _down(http: httpx.AsyncClient) -> bool:
    return (await http.get("/_health")).status_code == 503


async def test_open_fails_cleanly_without_a_database(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/none?timeout=3")
    assert time.monotonic() - t0 < 10


# --------------------------------------------------------------------------- several processes


async def _sse_events(response: httpx.Response, n: int, timeout: float) -> list[dict[str, Any]]:
    decoder, got = SSEDecoder(), list[dict[str, Any]]()
    chunks = response.aiter_raw()
    deadline = time.monotonic() + timeout
    while len(got) < n:
        chunk = await asyncio.wait_for(chunks.__anext__(), max(0.1, deadline - time.monotonic()))
        got += [orjson.loads(m.data) for m in decoder.feed(chunk) if m.data is not None]
    return got


async def test_two_servers_share_one_database(pg_url: str, tmp_path: Path) -> None:
    """A subscriber on one server sees what is appended through the other, once and in order.

    Both poll only every 30 s here, so prompt delivery shows that NOTIFY crossed the processes."""
    db = pg_url + "?poll_interval=30"
    with ProcessServer(db, cwd=tmp_path) as a, ProcessServer(db, cwd=tmp_path) as b:
        async with httpx.AsyncClient(timeout=30) as http:
            await http.post(f"{b.url}/shared/d/e0/t", json={"event": "before"})
            async with http.stream("GET", f"{a.url}/shared", headers={"accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                reading = asyncio.ensure_future(_sse_events(stream, 401, 20))

                async def write(w: int) -> None:
                    for i in range(50):
                        r = await http.post(f"{b.url}/shared/d{w % 2}/e{w}/t", json={"event": [w, i]})
                        assert r.status_code == 201

                await asyncio.gather(*[write(w) for w in range(8)])
                got = await reading
            # The stream is the read order, on either server.
            page = (await http.get(f"{b.url}/shared", params={"limit": 1000})).json()["events"]
            assert len(page) == 401 and len({e["event_id"] for e in got}) == 401
            assert [e["event_id"] for e in got] == [e["event_id"] for e in page]

            async with http.stream("GET", f"{a.url}/shared/live", headers={"accept": "text/event-stream"}) as stream:
                reading = asyncio.ensure_future(_sse_events(stream, 1, 20))

                async def stream_waits() -> bool:
                    # A's subscriber has run its domain read (no other domain read runs in this
                    # test) and found nothing: it now waits for a wake-up, or 15 s (the heartbeat).
                    rows = await sql(pg_url, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = "
                                             "current_database() AND application_name = 'perhap' AND "
                                             "state = 'idle' AND query LIKE '%WHERE e.domain_id = %'")
                    return bool(rows[0]["n"])

                await eventually(stream_waits, 20, "the stream's first read")
                t0 = time.monotonic()
                await http.post(f"{b.url}/shared/live/x/t", json={"event": "live"})
                got = await reading
                assert got[0]["event"] == "live"
                assert time.monotonic() - t0 < 2


async def test_polling_covers_lost_notifications(pg_url: str) -> None:
    """Without its LISTEN connection (as behind pgbouncer in transaction mode) a subscriber still
    gets every event, one poll interval late at most."""
    a = await pg_store(pg_url + "?poll_interval=0.3")
    b = await open_store(pg_url)
    try:
        assert a._listener_task is not None
        a._listener_task.cancel()
        sub = await a.subscription(Scope("poll"))
        assert await sub.fetch(timeout=0.2) == []
        assert not a.listening
        await asyncio.gather(*[b.append("poll", "d", f"e{i}", "t", i) for i in range(20)])
        got: list[Any] = []
        t0 = time.monotonic()
        while len(got) < 20:
            got += await sub.fetch(timeout=5)
        assert time.monotonic() - t0 < 2
        assert sorted(e.event for e in got) == list(range(20))
    finally:
        await a.close()
        await b.close()


async def test_serve_with_two_workers(pg_url: str, tmp_path: Path) -> None:
    with ProcessServer(pg_url, None, "--workers", "2", cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            results = await asyncio.gather(*[http.post(f"/w/d/e{i % 5}/t", json={"event": i}) for i in range(100)])
            assert all(r.status_code == 201 for r in results)
            events = (await http.get("/w/d")).json()["events"]
            assert sorted(e["event"] for e in events) == list(range(100))
            # Both workers opened the store: each keeps a LISTEN connection of its own.
            listening: int = 0

            async def both_listen() -> bool:
                nonlocal listening
                rows = await sql(pg_url, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = "
                                         "current_database() AND application_name = 'perhap' AND query "
                                         "LIKE 'LISTEN%'")
                listening = rows[0]["n"]
                return listening >= 2

            await eventually(both_listen, 10, "a LISTEN connection per worker")
            assert listening == 2
        code, _out = server.terminate()
        assert code == 0


# --------------------------------------------------------------------------- durability settings

#: A trigger that notes the synchronous_commit in force for each statement writing events.
_NOTE_SETTING = """
CREATE TABLE seen_settings (setting text NOT NULL);
CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO seen_settings VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;
CREATE TRIGGER note_setting AFTER INSERT ON perhap_events FOR EACH STATEMENT EXECUTE FUNCTION note_setting();
"""


@pytest.mark.parametrize(("default", "in_writes"), [("off", "on"), ("remote_apply", "remote_apply")])
async def test_writes_flush_whatever_the_database_default(pg_url: str, default: str, in_writes: str) -> None:
    # A database default of synchronous_commit = off would acknowledge appends before their WAL
    # is flushed; the writer raises it to on for its own transactions, and keeps stronger settings.
    async with open_store(pg_url):
        pass  # the schema, for the trigger
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        await conn.execute(_NOTE_SETTING)
        await conn.execute(f"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = %L', "
                           f"current_database(), '{default}'); END $$")
    finally:
        await conn.close()
    assert (await sql(pg_url, "SHOW synchronous_commit"))[0][0] == default  # new sessions get it
    async with open_store(pg_url) as store:
        await store.append("sync", "d", "one", "t", 1)  # INSERT
        await store.append_batch("sync", "d", "many", [{"type": "t", "event": i} for i in range(150)])  # COPY
        await asyncio.gather(*(store.append("sync", "d", f"e{i}", "t", i) for i in range(20)))  # groups
        await store.append("sync", "d", "one", "t", 2)  # a remembered entity: the writer's one call
    seen = [r[0] for r in await sql(pg_url, "SELECT setting FROM seen_settings")]
    assert len(seen) >= 4 and set(seen) == {in_writes}, seen
    assert (await sql(pg_url, "SHOW synchronous_commit"))[0][0] == default  # only the writer's own


def _crash(server: PostgresServer) -> None:
    """Stop the server's WAL writer, background writer and checkpointer (what a commit made
    without its WAL flushed then stays in shared memory only), then SIGKILL the postmaster and
    every process of it: a crash of the database server, minus the OS."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children = [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)],
                                               capture_output=True, text=True, check=True).stdout.split()]
    writers = [pid for pid in children
               if re.search(rb"walwriter|background writer|checkpointer", Path(f"/proc/{pid}/cmdline").read_bytes())]
    assert len(writers) == 3, writers
    for pid in writers:
        os.kill(pid, signal.SIGSTOP)
    for pid in [postmaster, *children]:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{postmaster}").exists():  # until reaped: pg_ctl takes a zombie for a server
        assert time.monotonic() < deadline, "the killed postmaster was not reaped"
        time.sleep(0.02)


async def test_a_type_a_database_crash_took_back_is_not_used_again(own_server: PostgresServer) -> None:
    """Under synchronous_commit = off as the database's default, a new type's row commits without
    its WAL flushed, just before its group. If the group does not commit (here: blocked by a lock
    when the database crashes), the crash takes the type row back; the writer remembered its id,
    and later appends of that type were 201s stored with a type that no longer exists: in no read
    (seen by an audit: positions and versions with gaps, the events in no scope)."""
    url = own_server.create_database("crashtypes")
    await sql(url, "ALTER DATABASE crashtypes SET synchronous_commit = off")
    store = await pg_store(url)
    try:
        await store.append("r", "d", "e", "old", 0)  # the schema, and a group committed
        blocker = await asyncpg.connect(url, timeout=10)
        await blocker.execute("BEGIN; LOCK TABLE perhap_events IN EXCLUSIVE MODE")
        first = asyncio.ensure_future(store.append("r", "d", "e", "fresh", 1))

        async def type_committed() -> bool:
            return bool(await sql(url, "SELECT 1 FROM perhap_types WHERE name = 'fresh'"))

        await eventually(type_committed, 30, "the new type's row (its group waits for the lock)")
        await asyncio.to_thread(_crash, own_server)
        await asyncio.to_thread(own_server.start)
        acknowledged = []
        try:
            acknowledged.append(await first)  # (a 503 most likely: its connection died)
        except StorageUnavailable:
            pass
        for n in range(2, 6):
            for _ in range(100):  # the writer's reconnection, and its one retry, may meet the restart
                try:
                    acknowledged.append(await store.append("r", "d", "e", "fresh", n))
                    break
                except StorageUnavailable:
                    await asyncio.sleep(0.1)
        assert len(acknowledged) >= 4, own_server.log_tail()
        read = {e.event_id: e for e in await read_all(store, Scope("r", "d", "e"))}
        for result in acknowledged:
            event = read.get(result.first.event_id)
            assert event is not None and event.type == "fresh", (result, list(read.values()))
        assert [e.version for e in read.values()] == list(range(len(read)))
        assert (await sql(url, "SELECT count(*) FROM perhap_events e WHERE NOT EXISTS "
                               "(SELECT 1 FROM perhap_types t WHERE t.id = e.type_id)"))[0][0] == 0
    finally:
        await store.close()


async def test_a_server_without_fsync_is_named_at_open(own_server: PostgresServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    url = own_server.create_database("nofsync")
    async with open_store(url):
        pass
    assert "fsync = off" not in caplog.text
    await sql(url, "ALTER SYSTEM SET fsync = off")
    await sql(url, "SELECT pg_reload_conf()")
    await eventually(lambda: _setting(url, "fsync", "off"), 10, "the server to reload with fsync = off")
    with caplog.at_level("WARNING", logger="perhap.postgres"):
        async with open_store(url):
            pass
    assert "runs with fsync = off" in caplog.text


async def _setting(url: str, name: str, value: str) -> bool:
    return bool((await sql(url, f"SELECT current_setting('{name}') = '{value}'"))[0][0])


async def test_a_store_refuses_an_event_loop_that_did_not_open_it(pg_url: str) -> None:
    # The writer's queue and the appends' futures belong to the loop that opened the store, and so
    # do asyncpg's connections: every call from another loop is refused up front in one message,
    # as on SQLite (reads failed in asyncio's words, or as a 503, and health() answered False).
    async with open_store(pg_url) as store:
        first = await store.append("loops", "d", "e", "t", 0)
        states = store.group_states()
        calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "append": lambda: store.append("loops", "d", "e", "t", 1),
            "read": lambda: store.read(Scope("loops", "d")),
            "entity read": lambda: store.read(Scope("loops", "d", "e")),
            "get_event": lambda: store.get_event("loops", "d", first.first.event_id),
            "keys": lambda: store.keys("loops"),
            "count": store.count,
            "health": store.health,
            "entity_version": lambda: store.entity_version("loops", "d", "e"),  # type: ignore[attr-defined]
            "group state read": lambda: states.get("loops", "g"),
            "group state write": lambda: states.put("loops", "g", b"{}", "t1", None),
            "subscription": lambda: store.subscription(Scope("loops"), following=first.first.event_id),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="belongs to the event loop that opened it"):
                in_another_loop(call)
                pytest.fail(f"{name} from another loop was not refused")
        assert await store.health()
        assert [e.event for e in (await store.read(Scope("loops", "d"))).events] == [0]
        assert (await store.append("loops", "d", "e", "t", 2)).first.version == 1
        assert await states.get("loops", "g") is None  # the refused write stored nothing


async def test_a_read_that_times_out_waits_its_timeout_once(pg_url: str) -> None:
    """A read blocked past ``timeout`` (a table locked: what a network dropping packets looks like)
    is a 503 after ``timeout``, not retried into twice that (a retry is for a dead pooled
    connection, which fails fast)."""
    sep = "&" if "?" in pg_url else "?"
    async with open_store(f"{pg_url}{sep}timeout=1") as store:
        await store.append("r", "d", "e", "t", 1)
        blocker = await asyncpg.connect(pg_url, timeout=10)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("LOCK TABLE perhap_events IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="unavailable"):
                await store.read(Scope("r", "d", "e"))
            took = time.monotonic() - started
            await transaction.rollback()
        finally:
            await blocker.close()
        assert 0.9 < took < 1.7, took  # one timeout (it took 2 s: two)
        assert [e.event for e in (await store.read(Scope("r", "d", "e"))).events] == [1]



class _FreezingProxy(TcpRelay):
    """A TCP relay to the real server that can stop passing bytes on, without closing anything:
    to the client, a server (or network) that hangs. New connections are accepted, and hang too."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_read_from_a_hung_server_answers_after_its_timeout_once(pg_url: str) -> None:
    """A server that stops answering (a network dropping packets): a read is a 503 after
    ``timeout``. asyncpg cancels the statement by another connection, which to a hung server waits
    as long again before the first is given back: the answer does not wait for that (it took two)."""
    proxy, user, rest = relayed_postgres(pg_url, _FreezingProxy)
    relay_port = await proxy.start()
    sep = "&" if "?" in rest else "?"
    try:
        async with open_store(f"postgresql://{user}@127.0.0.1:{relay_port}/{rest}{sep}timeout=1") as store:
            await store.append("r", "d", "e", "t", 1)
            proxy.flowing.clear()
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match="unavailable"):
                await store.read(Scope("r", "d", "e"))
            took = time.monotonic() - started
            proxy.flowing.set()
            assert 0.9 < took < 1.7, took  # one timeout (it took 2 s: the cancellation's too)
            assert [e.event for e in (await store.read(Scope("r", "d", "e"))).events] == [1]
    finally:
        proxy.flowing.set()
        proxy.close()


async def test_two_stores_stay_exact_on_a_database_whose_default_isolation_is_stricter(pg_url: str) -> None:
    """A database set to REPEATABLE READ (or SERIALIZABLE) by default: perhap's connections read
    committed all the same, so two stores appending to one realm at once never collide on a
    position (they answered 503 on a healthy database) and positions stay 1..n."""
    for level in ("repeatable read", "serializable"):
        await sql(pg_url, f"ALTER DATABASE {pg_url.rsplit('/', 1)[1]} SET default_transaction_isolation = '{level}'")
        realm = f"iso{uuid.uuid4().hex[:8]}"
        a, b = await open_store(pg_url), await open_store(pg_url)
        try:
            async def write(store: Store, realm: str, w: int) -> None:
                for i in range(15):
                    await store.append(realm, "d", f"e{w % 6}", "t", [w, i])

            await asyncio.gather(*[write(a if w % 2 else b, realm, w) for w in range(16)])
            events = await read_all(a, Scope(realm))
            assert [e.position for e in events] == list(range(1, 16 * 15 + 1)), level
            level_seen = await sql(pg_url, "SHOW default_transaction_isolation")
            assert level_seen[0][0] == level  # the database's default is as set; perhap's own is not
        finally:
            await a.close()
            await b.close()


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc), zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _workers(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing's spawned children, not its resource tracker)."""
    return [p for p in _children(pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def test_a_worker_that_dies_is_started_again(pg_url: str, tmp_path: Path) -> None:
    """`perhap serve --workers 2` stays two serving processes: a worker SIGKILLed is logged and
    started again (it ran on with one, silently); a SIGTERM still stops everything with 0."""
    with ProcessServer(pg_url, None, "--workers", "2", cwd=tmp_path) as server:
        assert server.proc is not None

        async def serving_workers() -> list[int]:
            rows = await sql(pg_url, "SELECT DISTINCT pid FROM pg_stat_activity WHERE datname = "
                                     "current_database() AND application_name = 'perhap' AND query LIKE 'LISTEN%'")
            return [r["pid"] for r in rows]

        async def two_listening() -> bool:
            return len(await serving_workers()) == 2

        await eventually(two_listening, 20, "a LISTEN connection per worker")
        victim = _workers(server.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: victim not in _children(server.proc.pid), 10, "the worker's end")
        await eventually(two_listening, 30, "the worker started again (its LISTEN connection)")
        spawned = _workers(server.proc.pid)
        assert len(spawned) == 2 and victim not in spawned
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            results = await asyncio.gather(*[http.post(f"/w/d/e{i % 5}/t", json={"event": i}) for i in range(40)])
            assert all(r.status_code == 201 for r in results)
        code, out = server.terminate()
    assert code == 0, out
    assert f"exited with status -{int(signal.SIGKILL)}; starting it again" in out, out


async def test_workers_stop_when_their_supervisor_is_killed(pg_url: str, tmp_path: Path) -> None:
    """A SIGKILLed `perhap serve --workers 2` takes its workers with it: left running, unsupervised,
    they kept the port, and the server could not be started again there."""
    server = ProcessServer(pg_url, None, "--workers", "2", cwd=tmp_path).start()
    try:
        assert server.proc is not None
        await eventually(lambda: len(_workers(server.proc.pid)) == 2, 20, "two workers")
        workers = _workers(server.proc.pid)
        server.proc.kill()
        server.proc.wait(30)
        await eventually(lambda: not any(Path(f"/proc/{w}").exists() and _alive(w) for w in workers), 30,
                         "the workers to stop with their supervisor")
    finally:
        server.kill()
    with ProcessServer(pg_url, server.port, cwd=tmp_path) as again:  # the port is free again
        async with httpx.AsyncClient(base_url=again.url, timeout=30) as http:
            assert (await http.post("/w/d/e/t", json={"event": 1})).status_code == 201


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_that_cannot_open_the_store_are_one_error_line(pg_url: str) -> None:
    """With --workers 2 the store is opened once before the workers start: a database that is not
    there is the same one line (exit 1) as with one process, not each worker's log lines."""
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    r = subprocess.run([sys.executable, "-m", "perhap.cli", "serve", "--workers", "2", "--port", str(free_port()),
                        "--db", missing], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the store"), r.stderr
    assert "no_such_database_here" in lines[0] and "does not exist" in lines[0]
