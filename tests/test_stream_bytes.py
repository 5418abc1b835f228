"""A live stream's reads end at its buffer's bytes on SQLite, not at a count of events.

A stream reads up to 500 events at a time while they are small; after many small events, a jump
to large ones used to be read as one batch of that many (500 events of 1 MiB: 500 MiB in memory
for one stream, then cut to the buffer). The read itself now stops once the events hold
``max_bytes`` (the stream's buffer), one event at least, and the stream reads on after the last.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx

from perhap import open_store
from perhap.model import Event, Scope
from perhap.store.query import ReadQuery, read_query
from tests.servers import ThreadServer

SMALL, LARGE, LARGE_BYTES = 120, 48, 256 * 1024


async def _fill(store: object, realm: str) -> None:
    for n in range(SMALL):
        await store.append(realm, "d", f"e{n % 2}", "a" if n % 3 else "b", {"n": n})  # type: ignore[attr-defined]
    pad = "x" * LARGE_BYTES
    await store.append_batch(realm, "d", "e1", [  # type: ignore[attr-defined]
        {"type": "a" if n % 2 else "b", "event": {"n": n, "pad": pad}} for n in range(LARGE)])


def _size(event: object) -> int:
    return len(event.data_json) + len(event.meta_json)  # type: ignore[attr-defined]


def test_a_read_with_max_bytes_stops_at_them_and_reads_on_exactly(tmp_path: Path) -> None:
    budget = 256 * 1024

    async def check() -> None:
        async with open_store(f"sqlite:///{tmp_path}/b.db") as store:
            await _fill(store, "r")
            for scope in (Scope("r"), Scope("r", "d"), Scope("r", "d", "e1")):
                for types in ((), ("a",), ("a", "b")):
                    plain = read_query(scope, limit=10_000, types=list(types) or None)
                    everything = await store._read(plain)
                    query = replace(plain, limit=500, max_bytes=budget)
                    pages = []
                    while page := await store._read(query):
                        pages.append(page)
                        query = replace(query, after=page[-1].cursor)
                    for page in pages:  # each ends at the event that reaches the budget, or at the end
                        assert sum(map(_size, page[:-1])) < budget, (scope, types)
                        assert sum(map(_size, page)) >= budget or page is pages[-1], (scope, types)
                    assert [e.event_id for p in pages for e in p] == [e.event_id for e in everything]
                    assert len(pages) > 1

    asyncio.run(check())


def test_a_stream_asks_the_store_for_its_buffers_bytes_at_a_time(tmp_path: Path) -> None:
    """The stream's reads carry its buffer as their byte bound (the store's reads are recorded
    on the way through; what they return is the store's own answer)."""
    with ThreadServer(f"sqlite:///{tmp_path}/s.db", stream_buffer=128 * 1024, heartbeat=5) as server:
        store = server.app.store
        assert server.loop is not None and store is not None
        asyncio.run_coroutine_threadsafe(_fill(store, "r"), server.loop).result(60)
        asked: list[ReadQuery] = []
        read = store._read

        async def recorded(query: ReadQuery) -> list[Event]:
            asked.append(query)
            return await read(query)

        store._read = recorded  # type: ignore[method-assign]
        seen = []
        with httpx.Client(base_url=server.url, timeout=60) as client, \
                client.stream("GET", "/r/d", headers={"Accept": "text/event-stream"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    seen.append(line[4:])
                    if len(seen) == SMALL + LARGE:
                        break
    assert len(seen) == len(set(seen)) == SMALL + LARGE
    assert asked and {q.max_bytes for q in asked} == {128 * 1024}
