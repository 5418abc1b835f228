"""Row 6: does perhap slow down as the store grows?

- append throughput (row 3's load: 64 tasks, each appending single events to its own new entity in
  domain ``d0``) into the prepared store of N events, divided by the same into an empty store;
- latency of reading one 100-event entity (picked at random) from the store of N events, divided by
  the same from a store of 10,000 events built the same way;
- latency of the head lookups a consumer makes (``order=desc, limit=1``): the realm's last event
  and a random entity's last event, at N events against 10,000 (one index probe each: flat).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from perhap import Scope, open_store

from .common import median, percentile
from .dataset import EVENTS_PER_ENTITY, Dataset, restore
from .inprocess import concurrent_appends


async def append_rate(url: str, seconds: float, prefix: str) -> float:
    async with open_store(url) as store:
        return await concurrent_appends(store, seconds, domain="d0", prefix=prefix)


async def read_latencies(data: Dataset, count: int, seed: int = 7) -> list[float]:
    """Seconds per read of a random entity's 100 events (after a few warm-up reads)."""
    rng = random.Random(seed)
    async with open_store(data.url) as store:
        for _ in range(min(20, count)):
            await store.read(Scope(*data.entity(rng.randrange(data.entities))), limit=1000)
        latencies = []
        for _ in range(count):
            scope = Scope(*data.entity(rng.randrange(data.entities)))
            start = time.perf_counter()
            page = await store.read(scope, limit=1000)
            latencies.append(time.perf_counter() - start)
            assert len(page.events) == EVENTS_PER_ENTITY, (scope, len(page.events))
    return latencies


async def head_latencies(data: Dataset, count: int, seed: int = 11) -> dict[str, list[float]]:
    """Seconds per newest-first, one-event read: the realm's head, and a random entity's last event."""
    rng = random.Random(seed)
    found: dict[str, list[float]] = {"realm": [], "entity": []}
    async with open_store(data.url) as store:
        realm = Scope(data.entity(0)[0])
        for i in range(count + 20):  # the first 20 warm the caches
            for kind in ("realm", "entity"):
                scope = realm if kind == "realm" else Scope(*data.entity(rng.randrange(data.entities)))
                start = time.perf_counter()
                page = await store.read(scope, order="desc", limit=1)
                took = time.perf_counter() - start
                assert len(page.events) == 1, (scope, page)
                if i >= 20:
                    found[kind].append(took)
    return found


async def measure(big: Dataset, small: Dataset, workdir: Path, seconds: float, reads: int,
                  repeats: int) -> dict[str, Any]:
    empty_rates, big_rates = [], []
    try:
        for i in range(repeats):
            empty = workdir / f"growth-empty-{i}.db"
            empty_rates.append(await append_rate(f"sqlite:///{empty}", seconds, f"g{i}-"))
            big_rates.append(await append_rate(big.url, seconds, f"g{i}-"))
    finally:
        restore(big)
    big_lat = await read_latencies(big, reads)
    small_lat = await read_latencies(small, reads)
    big_head = await head_latencies(big, reads)
    small_head = await head_latencies(small, reads)
    return {
        "head_realm_big_us": median(big_head["realm"]) * 1e6,
        "head_realm_small_us": median(small_head["realm"]) * 1e6,
        "head_entity_big_us": median(big_head["entity"]) * 1e6,
        "head_entity_small_us": median(small_head["entity"]) * 1e6,
        "append_empty": max(empty_rates), "append_big": max(big_rates),
        "read_big_ms": median(big_lat) * 1000, "read_small_ms": median(small_lat) * 1000,
        "read_big_p99_ms": percentile(big_lat, 99) * 1000,
        "read_small_p99_ms": percentile(small_lat, 99) * 1000,
        "runs": {"append_empty": empty_rates, "append_big": big_rates},
    }
