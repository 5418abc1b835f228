"""The PostgreSQL hot paths stay exact: the page cache's version probe (one statement shared by
concurrent requests) and the entity read's own row shape and Event construction."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from perhap import Scope, open_store
from perhap.backends.postgres import PostgresStore
from perhap.backends.postgres import queries as pgqueries
from perhap.http import pagecache
from perhap.http.app import PerhapApp
from perhap.model import Event
from perhap.store.query import ReadQuery
from tests.conftest import get_provider

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database on the session's PostgreSQL (private, or PERHAP_TEST_POSTGRES_URL)."""
    return get_provider("postgres", tmp_path_factory).new_url()


async def pg_store(url: str) -> PostgresStore:
    store = await open_store(url)
    assert isinstance(store, PostgresStore)
    return store


async def slow_probe_version(store: PostgresStore, realm: str, domain: str, entity: str) -> int:
    """The version as the page cache's generic probe finds it: the entity's last event."""
    page = await store.read_page(ReadQuery(Scope(realm, domain, entity), descending=True, limit=1))
    return page.events[0].version if page.events else -1


async def test_the_probe_agrees_with_a_read_of_the_last_event(pg_url: str) -> None:
    store = await pg_store(pg_url)
    async with store:
        await store.append_batch("r", "d", "e", [{"type": "t", "event": i} for i in range(5)])
        await store.append("r", "d", "f", "t", 0)
        for realm, domain, entity in [("r", "d", "e"), ("r", "d", "f"), ("r", "d", "none"),
                                      ("r", "none", "e"), ("none", "d", "e")]:
            found = await store.entity_version(realm, domain, entity)
            assert found == await slow_probe_version(store, realm, domain, entity)
        assert await store.entity_version("r", "d", "e") == 4
        assert await store.entity_version("r", "none", "e") == -1
        # The page cache uses the store's probe when there is one.
        assert await pagecache.entity_version(store, ReadQuery(Scope("r", "d", "e"))) == 4


async def test_concurrent_probes_share_statements_and_each_answer_is_right(pg_url: str) -> None:
    store = await pg_store(pg_url)
    async with store:
        for n in range(10):
            await store.append_batch("r", "d", f"e{n}", [{"type": "t", "event": i} for i in range(n + 1)])
        calls = 0
        fetch = store._probe._fetch

        async def counting(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return await fetch(*args)

        store._probe._fetch = counting
        asks = [(f"e{n % 12}", n % 12) for n in range(120)]  # e10 and e11 do not exist
        found = await asyncio.gather(*(store.entity_version("r", "d", e) for e, _ in asks))
        assert found == [n if n < 10 else -1 for _, n in asks]
        assert calls < len(asks)


async def test_an_ask_made_while_a_probe_runs_sees_what_was_committed_before_it(pg_url: str) -> None:
    """An append committed (by anyone) before an ask must be in its answer, even when a statement
    sent before the append is still on its way back: the ask waits for a statement of its own."""
    store = await pg_store(pg_url)
    other = await pg_store(pg_url)  # another process's store, as far as `store` can tell
    async with store, other:
        await store.append("r", "d", "e", "t", 0)
        fetch = store._probe._fetch
        answered = asyncio.Event()
        release = asyncio.Event()

        async def held(*args: Any) -> Any:
            rows = await fetch(*args)  # its snapshot is taken: only its answer is held back
            answered.set()
            await release.wait()
            return rows

        store._probe._fetch = held
        early = asyncio.ensure_future(store.entity_version("r", "d", "e"))
        await answered.wait()
        await other.append("r", "d", "e", "t", 1)  # committed: its 201 could have been sent
        late = asyncio.ensure_future(store.entity_version("r", "d", "e"))
        await asyncio.sleep(0.05)
        assert not late.done()  # it does not take the answer of the statement in flight
        release.set()
        assert await early == 0
        assert await late == 1


async def test_a_probe_failure_reaches_every_waiting_ask_and_the_next_probe_works(pg_url: str) -> None:
    store = await pg_store(pg_url)
    async with store:
        await store.append("r", "d", "e", "t", 0)
        fetch = store._probe._fetch

        async def failing(*args: Any) -> Any:
            raise RuntimeError("boom")

        store._probe._fetch = failing
        results = await asyncio.gather(*(store.entity_version("r", "d", "e") for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        store._probe._fetch = fetch
        assert await store.entity_version("r", "d", "e") == 0


async def test_the_page_cache_sees_another_process_append_at_once(pg_url: str) -> None:
    store = await pg_store(pg_url)
    other = await pg_store(pg_url)
    async with store, other:
        app = PerhapApp(store)
        assert app.pages is not None
        await store.append_batch("r", "d", "e", [{"type": "t", "event": i} for i in range(3)])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            first = await client.get("/r/d/e")
            assert (await client.get("/r/d/e")).content == first.content and app.pages.hits == 1
            for i in range(3, 6):
                await other.append("r", "d", "e", "t", i)
                got = await client.get("/r/d/e")
                assert [e["event"] for e in got.json()["events"]] == list(range(i + 1))
                fresh = await store.read_page(ReadQuery(Scope("r", "d", "e")))
                assert [e.event_id for e in fresh.events] == [e["event_id"] for e in got.json()["events"]]
            assert (await client.get("/r/d/e")).content == got.content


async def test_entity_reads_give_the_events_a_read_by_id_gives(pg_url: str) -> None:
    """The entity read's narrower rows (names from the scope) make the same Events as the full rows."""
    store = await pg_store(pg_url)
    async with store:
        await store.append_batch("r", "d", "e", [{"type": f"t{i % 3}", "event": i, "meta": {"m": i}}
                                                 for i in range(20)])
        await store.append("r", "d", "other", "t0", "x")
        for types in ((), ("t1",), ("t0", "t2")):
            for descending in (False, True):
                page = await store.read_page(ReadQuery(Scope("r", "d", "e"), types=types, descending=descending))
                assert page.events and all(type(e) is Event for e in page.events)
                for e in page.events:
                    by_id = await store.get_event("r", "d", e.event_id)
                    assert dataclasses.astuple(e)[:-1] == dataclasses.astuple(by_id)[:-1]
                    assert e.cursor == e.version and by_id.cursor == by_id.position
                    assert not types or e.type in types


def test_the_row_constructor_makes_equal_events() -> None:
    args = ("0190a2b3-0000-7000-8000-000000000000", "r", "d", "e", "t", 3, "2026-01-01T00:00:00Z",
            b"{}", b'{"m":1}', 9, 3)
    made, plain = pgqueries.make_event(*args), Event(*args)
    assert type(made) is Event and made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.version = 4  # type: ignore[misc]
