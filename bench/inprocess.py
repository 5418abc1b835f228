"""perhap in process, through the public API (``perhap.open_store``): rows 3, 4 and 5."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from perhap import Scope, open_store

from .common import rate_of

PAYLOAD_TEXT = "hello from the benchmark"


def event_body(n: int) -> dict[str, Any]:
    """The event every benchmark appends: a small JSON object (about 45 bytes serialised)."""
    return {"n": n, "text": PAYLOAD_TEXT}


async def concurrent_appends(store: Any, seconds: float, *, workers: int = 64, realm: str = "bench",
                             domain: str = "append", prefix: str = "w") -> float:
    """Events per second: ``workers`` tasks, each appending one event at a time to its own entity."""
    async def append(index: int, n: int) -> None:
        await store.append(realm, domain, f"{prefix}{index}", "happened", event_body(n))

    # Warm up (names created, statements prepared) before the clock starts.
    await asyncio.gather(*(append(i, -1) for i in range(workers)))
    return await rate_of(workers, seconds, append)


async def batch_appends(store: Any, batches: int, *, size: int = 1000, realm: str = "bench",
                        domain: str = "batch", max_seconds: float | None = None) -> float:
    """Events per second appending ``size``-event batches one after another, each to a new entity.

    Stops early (after at least one batch) once ``max_seconds`` have passed, for slow backends.
    """
    await store.append_batch(realm, domain, "warm-up", [{"type": "happened", "event": event_body(0)}])
    prepared = [[{"type": "happened", "event": event_body(v)} for v in range(size)]
                for _ in range(batches)]
    start = time.perf_counter()
    done = 0
    for i, events in enumerate(prepared):
        await store.append_batch(realm, domain, f"b{i}", events)
        done += 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return done * size / (time.perf_counter() - start)


async def fill_entity(store: Any, realm: str, domain: str, entity: str, count: int) -> None:
    for first in range(0, count, 10_000):
        await store.append_batch(realm, domain, entity, [
            {"type": "happened", "event": event_body(v)} for v in range(first, min(first + 10_000, count))])


async def read_entity(store: Any, realm: str, domain: str, entity: str) -> int:
    """Read a whole entity through paging (``limit`` 10,000, the largest page); return the count."""
    scope = Scope(realm, domain, entity)
    following = None
    total = 0
    while True:
        page = await store.read(scope, following=following, limit=10_000)
        total += len(page.events)
        if page.next is None:
            return total
        following = page.next


async def read_back(store: Any, count: int, *, repeats: int = 3, flush: Callable[[], None] | None = None) -> float:
    """Events per second reading one ``count``-event entity from start to end (best of repeats);
    ``flush`` (blocking; Cassandra: write the memtables to SSTables) runs in a thread between the
    fill and the reads."""
    await fill_entity(store, "bench", "readback", "big", count)
    if flush is not None:
        await asyncio.to_thread(flush)
    await read_entity(store, "bench", "readback", "big")  # warm
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total = await read_entity(store, "bench", "readback", "big")
        best = min(best, time.perf_counter() - start)
        assert total == count, (total, count)
    return count / best


async def measure(url: str, seconds: float, batches: int, readback: int) -> dict[str, float]:
    async with open_store(url) as store:
        single = await concurrent_appends(store, seconds)
        batch = await batch_appends(store, batches)
        read = await read_back(store, readback)
        stats = {"groups": getattr(store, "groups_committed", None),
                 "events": getattr(store, "events_committed", None)}
    return {"single": single, "batch": batch, "read": read, **{k: v for k, v in stats.items() if v}}
