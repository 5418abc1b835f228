"""The PostgreSQL writer's memory of its own commits (``perhap/backends/postgres/known.py``).

A group of entities the writer already wrote to is decided from that memory and written by one
statement, which writes only if the memory still matches the stored state. These tests show the
statements each path runs (asyncpg's query logger on the writer's connection) and, above all,
that a memory made stale by another writer, or by rows that went away behind the store's back,
never yields an answer or a row the look-up would not have given.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from perhap import Scope, open_store
from perhap.backends.postgres import PostgresStore, known
from perhap.backends.postgres import schema as pgschema
from perhap.backends.postgres import writer as pgwriter
from perhap.backends.postgres.known import CALL, WRITE_IF_UNCHANGED
from perhap.backends.postgres.schema import CHANNEL
from perhap.errors import EventIdConflict, VersionConflict
from tests.conftest import get_provider

pytestmark = pytest.mark.postgres

LOOK_UP = "SELECT k.i"


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return get_provider("postgres", tmp_path_factory).new_url()


async def opened(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = await open_store(pg_url)
    assert isinstance(store, PostgresStore)
    async with store:
        yield store


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    async for one in opened(pg_url):
        yield one


@pytest.fixture
async def other(pg_url: str) -> AsyncIterator[PostgresStore]:
    """A second store on the same database: another process, as far as the first can tell."""
    async for one in opened(pg_url):
        yield one


class Statements:
    """The statements the writer's connection runs, in order, by their first words."""

    def __init__(self, store: PostgresStore) -> None:
        conn = store._writer._conn
        assert conn is not None
        self.texts: list[str] = []
        self.failed: list[str] = []  # statements that raised
        conn.add_query_logger(self._log)

    def _log(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.texts.append(" ".join(record.query.split()))
        if record.exception is not None:
            self.failed.append(f"{self.texts[-1][:60]}: {record.exception!r}")

    def take(self) -> list[str]:
        texts, self.texts = self.texts, []
        return texts

    @staticmethod
    def kinds(texts: list[str]) -> list[str]:
        kinds = []
        for text in texts:
            if text == " ".join(CALL.split()):
                kinds.append("call")
            elif text.startswith(LOOK_UP):
                kinds.append("look-up")
            else:
                kinds.append(text.split()[0].split(";")[0])
        return kinds


async def behind_the_back(pg_url: str, *statements: str) -> None:
    """Change the stored rows on a connection of its own, as a restore or a hand edit would."""
    conn = await asyncpg.connect(pg_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def remove_entity(name: str) -> list[str]:
    """The statements that remove an entity's row and its types (its events go separately)."""
    return [f"DELETE FROM perhap_entity_types WHERE entity_id = (SELECT id FROM perhap_entities WHERE name = '{name}')",
            f"DELETE FROM perhap_entities WHERE name = '{name}'"]


async def positions_and_versions(store: PostgresStore, realm: str) -> list[tuple[int, str, int]]:
    page = await store.read(Scope(realm), limit=1000)
    return [(e.position, e.entity, e.version) for e in page.events]


async def test_a_remembered_entity_is_written_by_one_statement(store: PostgresStore) -> None:
    await store.append("r", "d", "e", "t", 0)
    seen = Statements(store)
    result = await store.append("r", "d", "e", "t", 1)
    assert (result.events[0].version, result.events[0].position) == (1, 2)
    assert seen.kinds(seen.take()) == ["call"]
    # An entity the writer has not written to yet takes the look-up.
    await store.append("r", "d", "new", "t", 2)
    assert "look-up" in seen.kinds(seen.take())
    # A new type for a remembered entity still goes by the one statement (its pair with it).
    await store.append("r", "d", "e", "other", 3)
    assert seen.kinds(seen.take()) == ["INSERT", "SELECT", "call"]
    assert (await store.keys("r", "d", "e")).keys == ["other", "t"]
    assert await positions_and_versions(store, "r") == [(1, "e", 0), (2, "e", 1), (3, "new", 0), (4, "e", 2)]


async def test_another_writer_in_the_realm_makes_the_memory_stale_and_nothing_is_lost(
        store: PostgresStore, other: PostgresStore) -> None:
    await store.append("r", "d", "e", "t", 0)
    await store.append("r", "d", "f", "t", 0)
    await other.append("r", "d", "g", "t", 0)  # position 3, which the first store does not know
    seen = Statements(store)
    # Only the realm's head moved: the expected version holds against the stored one, and the
    # one call numbers the event from the stored head (schema step 6).
    result = await store.append("r", "d", "e", "t", 1, expected_version=0)
    assert (result.events[0].version, result.events[0].position) == (1, 4)
    assert seen.kinds(seen.take()) == ["call"]
    # Two stores taking turns in one realm: one call a group.
    for n in range(5):
        await other.append("r", "d", "g", "t", 1 + n)
        await store.append("r", "d", "e", "t", 2 + n, expected_version=1 + n)
        assert seen.kinds(seen.take()) == ["call"]
    # The other store writes to e itself: the remembered version is stale, so the first call
    # writes nothing and says so, and the second, decided from the stored version, holds.
    await other.append("r", "d", "e", "t", 7)
    result = await store.append("r", "d", "e", "t", 8, expected_version=7)
    assert (result.events[0].version, result.events[0].position) == (8, 16)
    assert seen.kinds(seen.take()) == ["call", "call"]
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 17))
    assert [v for _, e, v in await positions_and_versions(store, "r") if e == "e"] == list(range(9))


async def test_expected_versions_are_checked_and_positions_follow_the_stored_heads(
        store: PostgresStore, other: PostgresStore) -> None:
    """A group with expected versions is checked against the remembered versions only: the realms'
    heads, which another writer moved, number its events from what is stored in the one call, and
    a refusal in the group is the one the look-up would have given."""
    for realm in ("r", "s"):
        await asyncio.gather(*[store.append(realm, "d", f"e{n}", "t", n) for n in range(2)])
    await other.append("r", "d", "x", "t", 0)  # r's head moves by one, s's by two
    await other.append_batch("s", "d", "x", [{"type": "t", "event": n} for n in range(2)])
    seen = Statements(store)
    results = await asyncio.gather(
        store.append("s", "d", "e0", "t", 10, expected_version=0),
        store.append("r", "d", "e1", "t", 11, expected_version=5),  # e1 is at 0: refused
        store.append_batch("r", "d", "e0", [{"type": "t", "event": n} for n in (12, 13)], expected_version=0),
        store.append_many("s", "d", [{"entity": "e1", "type": "t", "event": 14},
                                     {"entity": "e0", "type": "t", "event": 15}], expected_versions={"e1": 0}),
        return_exceptions=True)
    assert seen.kinds(seen.take()) == ["call"]
    refused = results.pop(1)
    assert isinstance(refused, VersionConflict) and refused.current_version == 0
    assert [[(e.version, e.position) for e in r.events] for r in results] == [  # type: ignore[union-attr]
        [(1, 5)], [(1, 4), (2, 5)], [(1, 6), (2, 7)]]
    answered = {e.event_id for r in results for e in r.events}  # type: ignore[union-attr]
    for realm, head in (("r", 5), ("s", 7)):
        assert [p for p, _, _ in await positions_and_versions(store, realm)] == list(range(1, head + 1))
    stored = [e for realm in ("r", "s") for e in (await store.read(Scope(realm), limit=1000)).events]
    assert answered == {e.event_id for e in stored if e.entity != "x" and e.version > 0}
    # The memory took the stored heads: the next group's call holds as it is.
    result = await store.append("r", "d", "e0", "t", 16, expected_version=2)
    assert (result.events[0].version, result.events[0].position) == (3, 6)
    assert seen.kinds(seen.take()) == ["call"]


async def test_a_group_without_expectations_is_written_relative_to_what_is_stored(
        store: PostgresStore, other: PostgresStore) -> None:
    """No job expects a version, so what each is accepted as does not depend on what is stored:
    the one call writes each position moved by the realm's stored head minus the remembered one,
    and each version by its entity's, and the answers are what the look-up would have given."""
    await store.append("r", "d", "e", "t", 0)
    await store.append("r", "d", "f", "t", 0)
    await other.append("r", "d", "g", "t", 0)  # position 3, which the first store does not know
    await other.append_batch("r", "d", "e", [{"type": "t", "event": n} for n in (1, 2)])  # e at 2
    seen = Statements(store)
    result = await store.append("r", "d", "e", "t", 3)
    assert (result.events[0].version, result.events[0].position) == (3, 6)
    assert seen.kinds(seen.take()) == ["call"]
    # A group of several jobs, twins of one client id among them, and a batch.
    twin = "0190a3c4-0000-7000-8000-0000000000a1"
    await other.append("r", "d", "f", "t", 1)  # f at 1, position 7
    results = await asyncio.gather(
        store.append("r", "d", "e", "t", 4), store.append("r", "d", "f", "t", 2, event_id=twin),
        store.append("r", "d", "f", "t", 2, event_id=twin),
        store.append_batch("r", "d", "e", [{"type": "t", "event": n} for n in (5, 6)]),
        store.append_many("r", "d", [{"entity": "f", "type": "t", "event": 7},
                                     {"entity": "e", "type": "t", "event": 8}]))
    assert seen.kinds(seen.take()) == ["call"]
    answered = {(e.event_id, e.version, e.position) for r in results for e in r.events}
    stored = await store.read(Scope("r"), limit=1000)
    assert answered == {(e.event_id, e.version, e.position) for e in stored.events[7:]}
    assert [r.created for r in results] == [True, True, False, True, True]
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 14))
    for entity, last in (("e", 7), ("f", 3), ("g", 0)):
        assert [v for _, e, v in await positions_and_versions(store, "r") if e == entity] == list(range(last + 1))
    # The memory took what was stored: the next group's call holds as it is.
    await store.append("r", "d", "f", "t", 4, expected_version=3)
    assert seen.kinds(seen.take()) == ["call"]
    assert (await store.read(Scope("r", "d", "f"), order="desc", limit=1)).events[0].version == 4


async def test_a_relative_group_moves_each_realm_by_its_own_head(store: PostgresStore, other: PostgresStore) -> None:
    for realm in ("r", "s", "t"):
        await asyncio.gather(*[store.append(realm, "d", f"e{n}", "t", n) for n in range(2)])
    await other.append("s", "d", "x", "t", 0)  # s's head moves by one, t's by three, r's not at all
    await other.append_batch("t", "d", "e1", [{"type": "t", "event": n} for n in range(3)])
    seen = Statements(store)
    results = await asyncio.gather(*[store.append(realm, "d", f"e{n}", "t", 10 + n)
                                     for realm in ("t", "r", "s") for n in range(2)])
    assert seen.kinds(seen.take()) == ["call"]
    assert [(e.version, e.position) for r in results for e in r.events] == [
        (1, 6), (4, 7), (1, 3), (1, 4), (1, 4), (1, 5)]
    for realm, head in (("r", 4), ("s", 5), ("t", 7)):
        assert [p for p, _, _ in await positions_and_versions(store, realm)] == list(range(1, head + 1))


async def test_a_conflict_is_decided_from_the_stored_version(store: PostgresStore, other: PostgresStore) -> None:
    await store.append("r", "d", "e", "t", 0)
    await other.append("r", "d", "e", "t", 1)  # version 1, behind the first store's back
    # The memory says version 0: expecting 1 would be refused by it, but 1 is the stored version.
    result = await store.append("r", "d", "e", "t", 2, expected_version=1)
    assert result.events[0].version == 2
    await other.append("r", "d", "e", "t", 3)  # version 3
    # The memory says 2, which the caller expects: the stored version decides, and the 409 says 3.
    with pytest.raises(VersionConflict) as refused:
        await store.append("r", "d", "e", "t", 4, expected_version=2)
    assert refused.value.current_version == 3
    assert [(v, p) for p, _, v in await positions_and_versions(store, "r")] == [(0, 1), (1, 2), (2, 3), (3, 4)]


async def test_a_retry_of_a_stored_client_id_is_answered_as_a_retry(store: PostgresStore) -> None:
    await store.append("r", "d", "e", "t", 0)
    event_id = "0190a3c4-0000-7000-8000-000000000001"
    first = await store.append("r", "d", "e", "t", {"n": 1}, event_id=event_id)
    seen = Statements(store)
    again = await store.append("r", "d", "e", "t", {"n": 1}, event_id=event_id)
    assert again.created is False and again.events == first.events
    # The check found the id stored, wrote nothing, and the look-up answered: no failed
    # statement, no savepoints.
    kinds = seen.kinds(seen.take())
    assert kinds[:3] == ["call", "BEGIN", "look-up"] and "ROLLBACK" not in kinds
    with pytest.raises(EventIdConflict):
        await store.append("r", "d", "e", "t", {"n": 2}, event_id=event_id)
    # Two new client ids in one group, the second a twin of the first: decided in the group.
    twin = "0190a3c4-0000-7000-8000-000000000002"
    seen.take()
    both = await asyncio.gather(store.append("r", "d", "e", "t", 5, event_id=twin),
                                store.append("r", "d", "e", "t", 5, event_id=twin))
    assert both[0].events == both[1].events and [b.created for b in both] == [True, False]
    assert seen.kinds(seen.take()) == ["call"]
    assert [v for _, _, v in await positions_and_versions(store, "r")] == [0, 1, 2]


async def test_a_database_of_schema_5_gets_the_function_of_step_6(pg_url: str) -> None:
    """Step 6 replaces the function in place: a database left at step 5, whose function compares
    the remembered heads too, is migrated at open, and an expected-version group whose realm head
    another store moved is then one call."""
    async with open_store(pg_url):
        pass
    step_5 = (known.FUNCTION % {"lock_class": pgschema.LOCK_CLASS, "channel": CHANNEL}).replace(
        "($21::boolean OR versions = $5::bigint[])",
        "($21::boolean OR (heads = $3::bigint[] AND versions = $5::bigint[]))")
    assert "heads = $3::bigint[]" in step_5
    await behind_the_back(pg_url, step_5, "UPDATE perhap_meta SET value = '5' WHERE key = 'schema_version'")
    async for store in opened(pg_url):
        async for other in opened(pg_url):
            conn = await asyncpg.connect(pg_url)
            try:
                source = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'perhap_write_known'")
            finally:
                await conn.close()
            assert "heads = $3" not in source and "OR versions = $5::bigint[]" in source
            await store.append("r", "d", "e", "t", 0)
            await other.append("r", "d", "f", "t", 0)
            seen = Statements(store)
            result = await store.append("r", "d", "e", "t", 1, expected_version=0)
            assert (result.events[0].version, result.events[0].position) == (1, 3)
            assert seen.kinds(seen.take()) == ["call"]


#: An append's expected version, and the calls a stale remembered version then costs: with one,
#: the group is checked against the memory and decided again; without, it is written relative to
#: what is stored.
EXPECTING = pytest.mark.parametrize("expect, calls", [(True, ["call", "call"]), (False, ["call"])],
                                    ids=["expected-version", "relative"])


@pytest.mark.parametrize("expect", [True, False], ids=["expected-version", "relative"])
async def test_a_head_gone_back_behind_the_stores_back_leaves_no_gap(
        store: PostgresStore, pg_url: str, expect: bool) -> None:
    """A realm's stored head below the memory's (a restore, a hand edit) is what the group's
    positions are numbered from, in the one call, with an expected version or without, and no
    position is skipped."""
    for n in range(3):
        await store.append("r", "d", "e", "t", n)
    await store.append("r", "d", "f", "t", 0)
    # f's only event goes, and f with it: the realm's head is 3 again
    await behind_the_back(pg_url, "DELETE FROM perhap_events WHERE position = 4", *remove_entity("f"))
    seen = Statements(store)
    result = await store.append("r", "d", "e", "t", 9, expected_version=2 if expect else None)
    assert (result.events[0].version, result.events[0].position) == (3, 4)
    assert seen.kinds(seen.take()) == ["call"]
    assert await positions_and_versions(store, "r") == [(1, "e", 0), (2, "e", 1), (3, "e", 2), (4, "e", 3)]


@EXPECTING
async def test_a_stored_version_the_memory_lacks_is_found(
        store: PostgresStore, pg_url: str, expect: bool, calls: list[str]) -> None:
    """Only an entity's version moved behind the store's back (the realm's head did not), to one
    that no new version would collide with: the version check alone finds it."""
    await store.append("r", "d", "e", "t", 0)
    await store.append("r", "d", "e", "t", 1)
    await store.append("r", "d", "f", "t", 0)
    await behind_the_back(pg_url, "UPDATE perhap_events SET version = 5 WHERE position = 2",
                          "UPDATE perhap_entities SET version = 5 WHERE name = 'e'")
    seen = Statements(store)
    result = await store.append("r", "d", "e", "t", 2, expected_version=5 if expect else None)
    assert (result.events[0].version, result.events[0].position) == (6, 4)
    assert seen.kinds(seen.take()) == calls
    assert await positions_and_versions(store, "r") == [(1, "e", 0), (2, "e", 5), (3, "f", 0), (4, "e", 6)]
    await store.append("r", "d", "e", "t", 3, expected_version=6)  # the entity's row says 6 too


async def test_an_entity_gone_behind_the_stores_back_is_looked_up(store: PostgresStore, pg_url: str) -> None:
    await store.append("r", "d", "e", "t", 0)
    await store.append("r", "d", "f", "t", 0)
    await behind_the_back(pg_url, "DELETE FROM perhap_events WHERE position = 2", *remove_entity("f"))
    seen = Statements(store)
    result = await store.append("r", "d", "f", "t", 1)
    assert (result.events[0].version, result.events[0].position) == (0, 2)
    assert seen.kinds(seen.take())[:3] == ["call", "BEGIN", "look-up"]
    assert seen.failed == []  # the call found f gone and wrote nothing; it did not fail
    await store.append("r", "d", "e", "t", 1)
    assert await positions_and_versions(store, "r") == [(1, "e", 0), (2, "f", 0), (3, "e", 1)]


async def test_the_statement_probes_every_key(store: PostgresStore, pg_url: str) -> None:
    """Each check of the statement is an index probe and its update finds entities by id, whatever
    the planner believes: before any ANALYZE, after it, and with the generic plan a prepared
    statement may settle on. A scan of the events or entities would make every group O(store)."""
    conn = await asyncpg.connect(pg_url)
    try:
        args, versions = await stale_group(store, conn)
        await conn.execute("BEGIN;" + pgwriter.KEY_PLANS)  # as the writer's transactions do
        for analysed, mode in PLANNER_STATES:
            if analysed:
                await conn.execute("ANALYZE")
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            statement = await conn.prepare("EXPLAIN (ANALYZE, TIMING OFF) " + WRITE_IF_UNCHANGED)
            check_probes("\n".join(r[0] for r in await statement.fetch(*args)), (analysed, mode))
            # The same group written relative to the stored head (it holds, and writes: undone).
            await conn.execute("SAVEPOINT relative")
            plan = "\n".join(r[0] for r in await statement.fetch(*args[:19], True, *args[20:]))
            check_probes(plan, (analysed, mode, "relative"))
            assert re.search(r"Insert on perhap_events .*rows=0 loops=1", plan), plan  # (no RETURNING)
            # the given position 4401, moved by the stored head 4400 minus the remembered 4399
            assert await conn.fetchval("SELECT max(position) FROM perhap_events") == 4402
            await conn.execute("ROLLBACK TO SAVEPOINT relative")
        holds, heads, stored, ids_stored, new_exist = await conn.fetchrow(WRITE_IF_UNCHANGED, *args)
        assert (holds, heads, stored, ids_stored, new_exist) == (False, [4400], versions, False, False)
        assert await conn.fetchval("SELECT count(*) FROM perhap_events") == 4400  # nothing written
    finally:
        await conn.close()


async def test_the_call_plans_its_statement_as_probes_too(store: PostgresStore, pg_url: str) -> None:
    """Inside ``perhap_write_known`` PL/pgSQL plans the statement itself, under the settings the
    function sets after its locks: its plan, as ``auto_explain`` logs a nested statement (sent to
    this connection), is the same handful of probes, before and after ANALYZE and generic."""
    conn = await asyncpg.connect(pg_url)
    try:
        args, versions = await stale_group(store, conn)
        await conn.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                           "SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on; "
                           "SET auto_explain.log_timing = off; SET client_min_messages = log")
        logged: list[str] = []
        conn.add_log_listener(lambda _, message: logged.append(message.message))
        for analysed, mode in PLANNER_STATES:
            if analysed:
                await conn.execute("ANALYZE")
            await conn.execute(f"SET plan_cache_mode = {mode}")
            logged.clear()
            row = await conn.fetchrow(CALL, [pgwriter._realm_key("big")], *args)
            assert tuple(row) == (False, [4400], versions, False, False)
            [plan] = [m for m in logged if "WITH stored AS" in m]
            check_probes(plan, (analysed, mode))
        assert await conn.fetchval("SELECT count(*) FROM perhap_events") == 4400  # nothing written
    finally:
        await conn.close()


PLANNER_STATES = ((False, "auto"), (True, "auto"), (True, "force_generic_plan"))


async def stale_group(store: PostgresStore, conn: asyncpg.Connection) -> tuple[tuple[object, ...], list[int]]:
    """4,400 events in realm "big", and the statement's parameters for a group that remembers its
    head as 4,399 and its first entity's version as one below the stored one (stale: the check
    fails on the version) and writes one event, and that expects one entity to be new that is not
    created (its job refused): (parameters, the 16 entities' stored versions)."""
    for table in ("perhap_events", "perhap_entities"):
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    for j in range(4):
        await store.append_batch("big", "d", f"x{j}", [{"type": "t", "event": k} for k in range(1000)])
    await asyncio.gather(*[store.append("big", "d", f"e{i}", "t", i) for i in range(400)])
    rows = await conn.fetch("SELECT id, version FROM perhap_entities ORDER BY id LIMIT 16")
    ids, versions = [r[0] for r in rows], [r[1] for r in rows]
    realm_id = await conn.fetchval("SELECT id FROM perhap_realms WHERE name = 'big'")
    event = ["0190a3c4-0000-7000-8000-00000000000a", 4401, realm_id, 1, ids[0], 1, versions[0] + 1,
             "2026-12-05T00:00:00.000000Z", b"1", b"{}"]
    await conn.set_type_codec("json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")
    return ([realm_id], [4399], ids, [versions[0] - 1, *versions[1:]], [event[0]], ids[:1], [versions[0] + 1],
            [ids[0]], [1],
            *([value] for value in event), False, [1], ["absent"], [None], [-1]), versions


def check_probes(plan: str, shown: object) -> None:
    """The statement's plan: each check an index probe, the update's entities found by id."""
    shown = (shown, plan)
    assert "Seq Scan" not in plan and "Bitmap" not in plan, shown
    head = [line for line in plan.splitlines() if "on perhap_events" in line and "Backward" in line]
    assert len(head) == 1 and "using perhap_events_realm" in head[0], shown
    assert "rows=1 loops=1" in head[0], shown  # the head 4400 found, unlike the 4399 given
    assert re.search(r"Index Scan using perhap_entities_pkey on perhap_entities n\b.*loops=16", plan), shown
    assert re.search(r"using perhap_events_pkey on perhap_events e_\d+ .*loops=1\)", plan), shown
    assert re.search(r"Index Scan using perhap_entities_pkey on perhap_entities n_\d+ ", plan), shown
    # a new entity looked for by its unique (domain, name) key
    assert re.search(r"Index Only Scan using perhap_entities_domain_id_name_key on perhap_entities n_\d+ "
                     r".*loops=1\)", plan), shown


async def test_the_memory_starts_again_past_its_limit(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known, "LIMIT", 3)
    memory = store._writer._known
    for n in range(8):
        await store.append("r", "d", f"e{n}", "t", n)
        assert len(memory.ids) <= 4
    seen = Statements(store)
    await store.append("r", "d", "e7", "t", 8)  # remembered since the last restart
    assert seen.kinds(seen.take()) == ["call"]
    await store.append("r", "d", "e0", "t", 9)  # forgotten: looked up, then remembered again
    assert "look-up" in seen.kinds(seen.take())
    assert [p for p, _, _ in await positions_and_versions(store, "r")] == list(range(1, 11))


async def test_a_call_that_stores_nothing_notifies_no_one(store: PostgresStore, pg_url: str) -> None:
    """A group of refusals decided from the memory commits no event, so it wakes no listener:
    only the next group's call, which stores one, is heard (notifications arrive in commit order,
    so a stray one from the refusal would arrive first)."""
    await store.append("r", "d", "e", "t", 0)
    conn = await asyncpg.connect(pg_url)
    try:
        heard: list[str] = []
        await conn.add_listener(CHANNEL, lambda *args: heard.append(args[2]))
        seen = Statements(store)
        with pytest.raises(VersionConflict):
            await store.append("r", "d", "e", "t", 1, expected_version=5)
        await store.append("r", "d", "e", "t", 2)
        assert seen.kinds(seen.take()) == ["call", "call"]
        for _ in range(500):
            if heard:
                break
            await asyncio.sleep(0.01)
        await conn.execute("SELECT 1")  # a round trip: anything queued behind it has arrived
        assert heard == [CHANNEL]
    finally:
        await conn.close()
