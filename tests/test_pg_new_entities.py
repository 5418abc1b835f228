"""New entities in the PostgreSQL writer's one call (schema step 7, ``perhap/backends/postgres/known.py``).

An append that expects its entity to be new (expected version -1), in a domain the writer has
written to, is decided from the memory like a remembered entity's, and the call creates the
entity after checking, under the realm's lock, that it does not exist. These tests show that it
is one call, that a guess the stored rows contradict is decided by the look-up exactly as before
(a 409 naming the stored version, nothing written), that two stores creating one entity at once
store it once, and that a refused job creates nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from perhap import Scope, open_store
from perhap.backends.postgres import PostgresStore, known
from perhap.backends.postgres import schema as pgschema
from perhap.errors import VersionConflict
from tests.test_pg_known import (  # the fixtures pg_url, store and other are shared with it
    Statements,
    behind_the_back,
    opened,
    other,
    pg_url,
    positions_and_versions,
    store,
)

pytestmark = pytest.mark.postgres
__all__ = ["other", "pg_url", "store"]  # (fixtures: used by name, not by reference)

TAKE_IDS = "SELECT"  # the block of ids for new entities (``_TAKE_ENTITY_IDS``), by its first word


async def entity_rows(pg_url: str, name: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(pg_url)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT id, version FROM perhap_entities WHERE name = $1", name)]
    finally:
        await conn.close()


async def test_an_entity_expected_to_be_new_is_created_by_the_one_call(store: PostgresStore, pg_url: str) -> None:
    await store.append("r", "d", "e", "t", 0)  # the writer now knows realm r, domain d and r's head
    seen = Statements(store)
    result = await store.append("r", "d", "n1", "t", 1, expected_version=-1)
    assert (result.events[0].version, result.events[0].position) == (0, 2)
    assert seen.kinds(seen.take()) == [TAKE_IDS, "call"]  # ids for the next 64 new entities, then the call
    # The next new entities take the call alone: a batch, a new type, and a multi-entity append.
    result = await store.append_batch("r", "d", "n2", [{"type": "u", "event": n} for n in range(3)],
                                      expected_version=-1)
    assert [(e.version, e.position) for e in result.events] == [(0, 3), (1, 4), (2, 5)]
    result = await store.append_many("r", "d", [{"entity": "n3", "type": "t", "event": 5},
                                                {"entity": "e", "type": "t", "event": 6}],
                                     expected_versions={"n3": -1, "e": 0})
    assert [(e.entity, e.version, e.position) for e in result.events] == [("n3", 0, 6), ("e", 1, 7)]
    assert seen.kinds(seen.take()) == ["INSERT", "SELECT", "call", "call"]  # (type u is new)
    # Created as the look-up path creates them: listed, read, versions kept, remembered after.
    assert (await store.keys("r", "d")).keys == ["e", "n1", "n2", "n3"]
    assert (await store.keys("r", "d", "n2")).keys == ["u"]
    assert [e.version for e in (await store.read(Scope("r", "d", "n2"))).events] == [0, 1, 2]
    assert [v for _, v in await entity_rows(pg_url, "n2")] == [2]
    await store.append("r", "d", "n2", "u", 7)
    assert seen.kinds(seen.take()) == ["call"]
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 9))


async def test_an_entity_expected_new_that_exists_is_refused_as_the_look_up_refuses_it(
        store: PostgresStore, other: PostgresStore, pg_url: str) -> None:
    await store.append("r", "d", "e", "t", 0)
    await other.append_batch("r", "d", "x", [{"type": "t", "event": n} for n in range(2)])  # x at 1
    seen = Statements(store)
    with pytest.raises(VersionConflict) as refused:
        await store.append("r", "d", "x", "t", 2, expected_version=-1)
    assert refused.value.current_version == 1
    kinds = seen.kinds(seen.take())
    assert kinds[:2] == [TAKE_IDS, "call"] and "look-up" in kinds  # the call wrote nothing; the look-up decided
    # The call found x and said so: no statement failed, and the memory of e is intact.
    assert seen.failed == []
    await store.append("r", "d", "e", "t", 9, expected_version=0)
    assert seen.kinds(seen.take()) == ["call"]
    assert await positions_and_versions(store, "r") == [(1, "e", 0), (2, "x", 0), (3, "x", 1), (4, "e", 1)]
    assert len(await entity_rows(pg_url, "x")) == 1
    result = await store.append("r", "d", "x", "t", 3)  # no expectation: the look-up
    assert (result.events[0].version, result.events[0].position) == (2, 5)


async def test_two_stores_creating_one_entity_at_once_store_it_once(
        store: PostgresStore, other: PostgresStore, pg_url: str) -> None:
    await store.append("r", "d", "e", "t", 0)
    await other.append("r", "d", "f", "t", 0)
    for n in range(20):
        results = await asyncio.gather(store.append("r", "d", f"n{n}", "t", "mine", expected_version=-1),
                                       other.append("r", "d", f"n{n}", "t", "theirs", expected_version=-1),
                                       return_exceptions=True)
        stored = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(stored) == 1 and len(refused) == 1, results
        assert isinstance(refused[0], VersionConflict) and refused[0].current_version == 0
        events = (await store.read(Scope("r", "d", f"n{n}"))).events
        assert [(e.event_id, e.version) for e in events] == [(stored[0].events[0].event_id, 0)]
        assert [v for _, v in await entity_rows(pg_url, f"n{n}")] == [0]
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 23))


async def test_a_refused_job_creates_no_entity(store: PostgresStore, pg_url: str) -> None:
    await store.append("r", "d", "e", "t", 0)
    seen = Statements(store)
    with pytest.raises(VersionConflict):
        await store.append_many("r", "d", [{"entity": "n", "type": "t", "event": 1},
                                           {"entity": "e", "type": "t", "event": 2}],
                                expected_versions={"n": -1, "e": 5})
    kinds = seen.kinds(seen.take())
    assert kinds == [TAKE_IDS, "call"]  # refused from the memory, which the call found true
    assert await entity_rows(pg_url, "n") == []
    assert (await store.keys("r", "d")).keys == ["e"]
    result = await store.append("r", "d", "n", "t", 3, expected_version=-1)  # and it can be created later
    assert (result.events[0].version, result.events[0].position) == (0, 2)


async def test_a_new_entity_is_numbered_from_the_stored_head(store: PostgresStore, other: PostgresStore) -> None:
    """Another store moved the realm's head: the call numbers the new entity's events from it."""
    await store.append("r", "d", "e", "t", 0)
    await other.append_batch("r", "d", "x", [{"type": "t", "event": n} for n in range(3)])
    seen = Statements(store)
    results = await asyncio.gather(store.append("r", "d", "n", "t", 1, expected_version=-1),
                                   store.append("r", "d", "e", "t", 2, expected_version=0))
    assert seen.kinds(seen.take()) == [TAKE_IDS, "call"]
    assert [(r.events[0].version, r.events[0].position) for r in results] == [(0, 5), (1, 6)]
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 7))


async def test_a_database_of_schema_6_gets_the_function_of_step_7(pg_url: str) -> None:
    """Step 7 replaces the function of 21 arguments by one of 25: a database left at step 6 is
    migrated at open, keeps one function, and a new entity is then one call."""
    async with open_store(pg_url):
        pass
    new_arguments = known.STEP_6_ARGUMENTS + ", int[], text[], bigint[], bigint[]"
    step_6 = (f"CREATE FUNCTION perhap_write_known({known.STEP_6_ARGUMENTS}) RETURNS TABLE (out_holds boolean, "
              "out_heads bigint[], out_versions bigint[], out_ids_stored boolean) LANGUAGE sql "
              "AS $$ SELECT false, ARRAY[]::bigint[], ARRAY[]::bigint[], false $$")
    await behind_the_back(pg_url, f"DROP FUNCTION perhap_write_known({new_arguments})", step_6,
                          "UPDATE perhap_meta SET value = '6' WHERE key = 'schema_version'")
    async for reopened in opened(pg_url):
        conn = await asyncpg.connect(pg_url)
        try:
            arities = await conn.fetch("SELECT pronargs FROM pg_proc WHERE proname = 'perhap_write_known'")
            version = await conn.fetchval("SELECT value FROM perhap_meta WHERE key = 'schema_version'")
        finally:
            await conn.close()
        assert [r[0] for r in arities] == [25] and version == str(pgschema.SCHEMA_VERSION) == "7"
        await reopened.append("r", "d", "e", "t", 0)
        seen = Statements(reopened)
        await reopened.append("r", "d", "n", "t", 1, expected_version=-1)
        assert seen.kinds(seen.take()) == [TAKE_IDS, "call"]


async def test_a_role_that_may_not_take_entity_ids_creates_new_entities_by_the_look_up(pg_url: str) -> None:
    """Inserting into an identity column needs no privilege on its sequence, but taking ids from
    it does: a role granted only the tables' rows gets every append answered, new entities by the
    look-up (one refused attempt, then none)."""
    role = f"perhap_rows_{uuid.uuid4().hex[:8]}"
    async with open_store(pg_url) as owner:  # the schema, created by its owner
        await owner.append("r", "d", "e", "t", 0)
    await behind_the_back(pg_url, f"CREATE ROLE {role} LOGIN",
                          f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    parts = urlsplit(pg_url)
    try:
        async for limited in opened(urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))):
            await limited.append("r", "d", "e", "t", 1)
            seen = Statements(limited)
            for n in range(2):
                result = await limited.append("r", "d", f"n{n}", "t", n, expected_version=-1)
                assert (result.events[0].version, result.events[0].position) == (0, 3 + n)
            kinds = seen.kinds(seen.take())
            assert kinds.count("look-up") == 2, kinds
            assert len(seen.failed) == 1 and "permission denied" in seen.failed[0], seen.failed
            assert [p for p, _, _ in await positions_and_versions(limited, "r")] == [1, 2, 3, 4]
    finally:
        await behind_the_back(pg_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
