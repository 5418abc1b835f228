"""JSON that perhap keeps is held in buffers of its own size.

orjson (3.12 on) returns its output in the buffer it wrote into: 4 KiB at least, never shrunk,
while ``len`` and ``sys.getsizeof`` show only the text. Every place that keeps serialised JSON
beyond the request that made it (an event's stored JSON from append to commit, the ring and a
client's pages; the eventsourcing module's meta and tracking records; the page cache) would
then hold 4 KiB for a 45-byte event. These tests count what tracemalloc sees allocated for many
kept values, so they fail if any of those paths keeps orjson's buffer again.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from perhap import open_store
from perhap.client.wire import event_from_dict
from perhap.http.app import PerhapApp
from perhap.jsoncodec import dump_json, right_sized
from perhap.model import new_event, prepare_batch

#: Bytes a kept small value may take, all its objects counted: well under orjson's 4 KiB.
BOUND = 1024
COUNT = 2_000  # (many, so that another thread's allocations meanwhile weigh little)
PAGES = 400


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _each(make: Callable[[int], Any]) -> float:
    """Bytes allocated and still held per value, for COUNT values made by ``make`` and kept."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(i) for i in range(COUNT)]
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    assert len(kept) == COUNT
    return held / COUNT


def test_the_instrument_sees_orjsons_buffer(tracing: None) -> None:
    # Without this, a tracemalloc that did not see orjson's allocations would pass every test here.
    import orjson

    assert _each(lambda i: right_sized(orjson.dumps({"n": i, "text": "hello"}))) < 200
    if tuple(int(p) for p in orjson.__version__.split(".")[:2]) >= (3, 12):  # (earlier ones shrink it)
        assert _each(lambda i: orjson.dumps({"n": i, "text": "hello"})) >= 4096


def test_stored_json_is_right_sized(tracing: None) -> None:
    assert _each(lambda i: dump_json({"n": i, "text": "hello"}, "event")) < 200
    assert _each(lambda i: new_event("happened", {"n": i}, meta={"by": "me"})) < BOUND
    batch_of = [{"type": "happened", "event": {"n": i}, "meta": {"i": i}} for i in range(COUNT)]
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    prepared = prepare_batch(batch_of)
    held = tracemalloc.get_traced_memory()[0] - before
    assert len(prepared) == COUNT and held / COUNT < BOUND


def test_a_clients_events_are_right_sized(tracing: None) -> None:
    def wire(i: int) -> dict[str, Any]:
        return {"event_id": str(uuid.uuid4()), "realm": "r", "domain": "d", "entity": "e", "type": "t",
                "version": i, "timestamp": "2026-12-07T08:00:00.000000Z", "event": {"n": i}, "meta": {},
                "position": i + 1}

    forms = [wire(i) for i in range(COUNT)]
    assert _each(lambda i: event_from_dict(forms[i])) < BOUND


def test_the_eventsourcing_records_are_right_sized(tracing: None) -> None:
    from eventsourcing.persistence import StoredEvent  # (the test extra installs it: missing, this fails)

    from perhap.eventsourcing.mapping import to_new_event, tracking_event

    ids = [uuid.uuid4() for _ in range(COUNT)]
    assert _each(lambda i: to_new_event(StoredEvent(ids[i], 1, "bank:Opened", b'{"n":1}'))) < BOUND
    assert _each(lambda i: tracking_event("upstream", i + 1)) < BOUND


async def test_the_page_cache_holds_pages_at_their_size(tmp_path: Path, tracing: None) -> None:
    async with open_store(f"sqlite:///{tmp_path}/kept.db") as store:
        for i in range(PAGES):
            await store.append("r", "d", f"e{i}", "happened", {"n": i})
        app = PerhapApp(store)
        assert app.pages is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for i in range(PAGES):
                assert (await client.get(f"/r/d/e{i}")).status_code == 200
            assert app.pages.misses == PAGES and app.pages.size > 0
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            app.pages._pages.clear()  # every cached page (body, tag, key) let go
            gc.collect()
            freed = before - tracemalloc.get_traced_memory()[0]
        assert 0 < freed / PAGES < BOUND
