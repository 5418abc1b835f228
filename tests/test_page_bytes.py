"""A JSON page ends at a byte bound as well as at its ``limit`` (``--max-page-bytes``).

Without it, one GET of ``limit=10000`` over events of 1 MiB asked the server for 10 GB (a page of
200 events of 900 KB raised its peak by 530 MB). A page now ends at the event whose data and meta
bring it to the bound, one event at least, with ``next`` set; following ``next`` reads the rest,
exactly. The rule is ``Store.read_page``'s, so it holds on every backend; each backend also stops
its own reads there, so that what is cut off is never read.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc
import uuid
from dataclasses import replace
from typing import Any

import httpx
from eventsourcing.utils import Environment

from perhap.backends import open_store
from perhap.eventsourcing import Factory
from perhap.http.app import PerhapApp
from perhap.limits import DEFAULT_MAX_PAGE_BYTES
from perhap.model import Event, Scope
from perhap.store.base import Store
from perhap.store.query import ReadQuery, read_query
from tests.es_helpers import MODULE, stored
from tests.servers import ThreadServer

SMALL, LARGE, LARGE_BYTES = 60, 16, 24 * 1024
BUDGET = 64 * 1024


async def _fill(store: Store, realm: str) -> None:
    for n in range(SMALL):
        await store.append(realm, "d", f"e{n % 2}", "a" if n % 3 else "b", {"n": n})
    pad = "x" * LARGE_BYTES
    for n in range(LARGE):
        await store.append(realm, "d", "e1", "a" if n % 2 else "b", {"n": n, "pad": pad})


def _size(event: Event) -> int:
    return len(event.data_json) + len(event.meta_json)


def _queries(realm: str) -> list[ReadQuery]:
    out = []
    for scope in (Scope(realm), Scope(realm, "d"), Scope(realm, "d", "e1")):
        for types in ((), ("a",), ("a", "b")):
            for order in ("asc", "desc"):
                out.append(read_query(scope, limit=1000, order=order, types=list(types) or None))
    return out


async def test_a_page_ends_at_the_event_that_reaches_the_bound_and_next_reads_on_exactly(
        store: Store, realm: str) -> None:
    await _fill(store, realm)
    for plain in _queries(realm):
        everything = (await store.read_page(plain)).events
        assert len(everything) < plain.limit  # (so the count alone would give one page)
        pages, following = [], None
        while True:
            page = await store.read_page(replace(plain, max_bytes=BUDGET), following)
            pages.append(page)
            if page.next is None:
                break
            assert page.next == page.events[-1].event_id
            following = page.next
        for page in pages:
            sizes = [_size(e) for e in page.events]
            assert sum(sizes[:-1]) < BUDGET, plain  # nothing after the event that reached it
            if page.next is not None:
                assert sum(sizes) >= BUDGET, plain  # a page cut short only by the bound
        assert [e.event_id for p in pages for e in p.events] == [e.event_id for e in everything], plain
        assert len(pages) > 2, plain


async def test_an_event_larger_than_the_bound_is_a_page_of_its_own(store: Store, realm: str) -> None:
    await _fill(store, realm)
    scope = Scope(realm, "d", "e1")
    page = await store.read_page(ReadQuery(scope, max_bytes=1))
    assert len(page.events) == 1 and page.next == page.events[0].event_id
    rest = await store.read_page(ReadQuery(scope, max_bytes=LARGE_BYTES), page.next)
    assert rest.events[0].version == 1 and rest.next is not None
    small = await store.read_page(ReadQuery(Scope(realm, "d", "e0"), max_bytes=BUDGET))
    assert len(small.events) == SMALL // 2 and small.next is None  # under the bound: as before


async def test_every_backend_stops_its_own_read_at_the_bound(store: Store, realm: str) -> None:
    """What is cut off is not read: each backend's read ends at the event that reaches the bound."""
    await _fill(store, realm)
    for plain in _queries(realm):
        every = await store._read(replace(plain, limit=1000))
        read = await store._read(replace(plain, limit=1000, max_bytes=BUDGET))
        sizes = [_size(e) for e in read]
        assert sum(sizes[:-1]) < BUDGET <= sum(sizes), plain
        assert [e.event_id for e in read] == [e.event_id for e in every[:len(read)]], plain


async def test_a_read_bounded_by_bytes_fetches_about_its_bound_not_its_count(store: Store, realm: str) -> None:
    """A page of 1,000 asked of a scope holding 200 events of 64 KiB (12.5 MiB), bounded at one
    event's bytes: the process's traced memory peaks below the scope's bytes, so the read did not
    fetch the scope. (Cassandra read 1,000 rows a query and cut afterwards: its peak was about four
    times the scope's bytes, the driver's buffers and the rows it made.)"""
    size, count = 64 * 1024, 200
    pad = "x" * size
    for n in range(count):
        await store.append(realm, "big", "e", "t", {"n": n, "pad": pad})
    scopes = (Scope(realm), Scope(realm, "big"), Scope(realm, "big", "e"))
    await store.read_page(ReadQuery(scopes[0], descending=True, limit=1))  # (past Cassandra's settle window)
    for scope in scopes:
        for descending in (False, True):
            query = ReadQuery(scope, descending=descending, limit=1000, max_bytes=size)
            tracemalloc.start()
            try:
                events = await store._read(query)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < count * size, (scope, descending, peak)
            assert [e.version for e in events] == ([count - 1] if descending else [0]), (scope, descending)


async def test_http_pages_end_at_max_page_bytes_and_following_next_reads_the_rest(
        store: Store, realm: str) -> None:
    await _fill(store, realm)
    app = PerhapApp(store, max_page_bytes=BUDGET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as http:
        for path, params in ((f"/{realm}", {}), (f"/{realm}/d", {"type": ["a", "b"]}), (f"/{realm}/d/e1", {}),
                             (f"/{realm}/d/e1", {"order": "desc"}), (f"/{realm}/d", {"after_position": "3"})):
            whole = (await http.get(path, params={**params, "limit": "5000"})).json()
            ids, pages, more = [], 0, dict(params)
            while True:
                answer = await http.get(path, params={**more, "limit": "5000"})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                ids += [e["event_id"] for e in body["events"]]
                pages += 1
                if body["next"] is None:
                    break
                more = {k: v for k, v in params.items() if k != "after_position"} | {"following": body["next"]}
            assert pages > 2, path
            assert whole["next"] is not None  # a page of at most BUDGET bytes, here too
            assert len(ids) == len(set(ids)) > len(whole["events"])
        # A page under the bound is answered as before: whole, and no `next`.
        small = (await http.get(f"/{realm}/d/e0")).json()
        assert len(small["events"]) == SMALL // 2 and small["next"] is None
    assert PerhapApp(store).max_page_bytes == DEFAULT_MAX_PAGE_BYTES == 16 * 1024 * 1024


def test_eventsourcing_over_http_reads_past_pages_the_server_ended_early(sqlite_url: str) -> None:
    """The recorders ask for ``limit`` events and take fewer as the end: over HTTP the transport
    follows ``next`` through pages the server cut at its byte bound."""
    state = b'{"pad":"' + b"y" * 20_000 + b'"}'
    with ThreadServer(sqlite_url, max_page_bytes=50_000) as server:
        recorder = Factory(Environment("Shop", {**MODULE, "PERHAP_URL": server.url})).application_recorder()
        originator = uuid.uuid4()
        recorder.insert_events([stored(originator, v, state) for v in range(1, 31)])
        events = recorder.select_events(originator)
        assert [e.originator_version for e in events] == list(range(1, 31))
        assert [e.originator_version for e in recorder.select_events(originator, desc=True, limit=25)] == \
            list(range(30, 5, -1))
        assert [e.originator_version for e in recorder.select_events(originator, gt=3, lte=27)] == list(range(4, 28))
        notifications = recorder.select_notifications(start=None, limit=100)
        assert [n.originator_version for n in notifications] == list(range(1, 31))
        assert len(recorder.select_notifications(start=5, limit=20)) == 20


def test_perhap_serve_refuses_a_page_bound_below_one_byte(tmp_path: Any) -> None:
    answer = subprocess.run([sys.executable, "-m", "perhap.cli", "serve", "--db", f"sqlite:///{tmp_path}/x.db",
                             "--max-page-bytes", "0"], capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "--max-page-bytes must be 1 or more" in answer.stderr
    assert not (tmp_path / "x.db").exists()



async def test_pages_cut_by_bytes_while_writers_append_skip_nothing_and_repeat_nothing(
        store: Store, realm: str) -> None:
    """Every page one event (a bound of one byte) while three writers append to the realm: paging
    on with `next` until the writers are done and a page ends with none, the pages hold every event
    of the realm once, in its order, as a plain read does."""
    async def writer(w: int) -> None:
        for n in range(40):
            await store.append(realm, "d", f"w{w}-{n % 5}", "t", {"w": w, "n": n})

    writers = asyncio.gather(*(writer(w) for w in range(3)))
    seen: list[str] = []
    following = None
    query = ReadQuery(Scope(realm), max_bytes=1)
    while True:
        done = writers.done()  # (before the read: a page read after it shows all they wrote)
        page = await store.read_page(query, following)
        assert len(page.events) <= 1
        seen += [e.event_id for e in page.events]
        following = page.next or following
        if page.next is None and done:
            break
        if page.next is None:
            await asyncio.sleep(0.01)
    await writers
    everything = [e.event_id for e in (await store.read_page(ReadQuery(Scope(realm), limit=10_000))).events]
    assert len(everything) == 120 and seen == everything


async def test_a_bound_past_any_integer_column_still_reads(store: Store, realm: str) -> None:
    """--max-page-bytes has no upper limit of its own: a bound past PostgreSQL's bigint was sent
    as a parameter it could not hold (503 on every read)."""
    await store.append(realm, "d", "e", "t", {"a": 1})
    app = PerhapApp(store, max_page_bytes=2 ** 70)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as http:
        for path in (f"/{realm}/d/e", f"/{realm}/d", f"/{realm}?type=t&type=u"):
            answer = await http.get(path)
            assert answer.status_code == 200 and len(answer.json()["events"]) == 1, (path, answer.text)


async def test_cassandra_reads_of_several_types_bounded_by_bytes_take_few_queries(cassandra: Any, realm: str) -> None:
    """An entity read of several types (filtered in perhap) bounded by bytes asked for as few as one
    row a query once the bytes left were fewer than a row's: each event of another type then cost
    a round trip (290 queries for 3 events). It asks for at least a scope scan's filtered chunk."""
    async with open_store(cassandra.new_url()) as store:
        big, small = "x" * 100_000, "y" * 10_000
        batch = [{"type": "b", "event": big}] * 2 + [{"type": "a", "event": small}] * 150 + [{"type": "c", "event": 1}]
        await store.append_batch(realm, "d", "e", batch)
        db = store.writer.ks.db  # type: ignore[attr-defined]
        real, queries = db.run, []

        async def counted(*args: Any, **kwargs: Any) -> Any:
            queries.append(args[0])
            return await real(*args, **kwargs)

        db.run = counted
        try:
            events = await store._read(ReadQuery(Scope(realm, "d", "e"), types=("b", "c"), limit=10, max_bytes=250_000))
        finally:
            del db.run
        assert [e.type for e in events] == ["b", "b", "c"]
        assert len(queries) <= 5, len(queries)
