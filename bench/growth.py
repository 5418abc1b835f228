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

from .common import StealMeter, median, percentile, rounds
from .dataset import EVENTS_PER_ENTITY, Dataset, restore
from .inprocess import concurrent_appends


async def append_rate(url: str, seconds: float, prefix: str) -> float:
    async with open_store(url) as store:
        return await concurrent_appends(store, seconds, domain="d0", prefix=prefix)


#: Reads per block: the big and the small store are read in alternating blocks, so that a change
#: of the machine's load during the row weighs on both sides alike (row 6b's baseline once came out
#: at two thirds of its usual time when each store was read in one stretch, one after the other).
BLOCK = 25


async def read_latencies(big: Dataset, small: Dataset, count: int, seed: int = 7) -> dict[str, list[float]]:
    """Seconds per read of a random entity's 100 events, ``count`` per store (after a few warm-up
    reads), the two stores read in alternating blocks."""
    rng = random.Random(seed)
    found: dict[str, list[float]] = {"big": [], "small": []}
    async with open_store(big.url) as big_store, open_store(small.url) as small_store:
        stores = {"big": (big_store, big), "small": (small_store, small)}
        for store, data in stores.values():
            for _ in range(min(20, count)):
                await store.read(Scope(*data.entity(rng.randrange(data.entities))), limit=1000)
        while len(found["small"]) < count:
            for name, (store, data) in stores.items():
                latencies = found[name]
                for _ in range(min(BLOCK, count - len(latencies))):
                    scope = Scope(*data.entity(rng.randrange(data.entities)))
                    start = time.perf_counter()
                    page = await store.read(scope, limit=1000)
                    latencies.append(time.perf_counter() - start)
                    assert len(page.events) == EVENTS_PER_ENTITY, (scope, len(page.events))
    return found


async def head_latencies(big: Dataset, small: Dataset, count: int, seed: int = 11) -> dict[str, list[float]]:
    """Seconds per newest-first, one-event read: the realm's head, and a random entity's last
    event, ``count`` of each per store, the two stores read in alternating blocks (keys
    ``realm_big``, ``entity_small`` ...)."""
    rng = random.Random(seed)
    found: dict[str, list[float]] = {f"{kind}_{size}": [] for kind in ("realm", "entity")
                                     for size in ("big", "small")}
    async with open_store(big.url) as big_store, open_store(small.url) as small_store:
        stores = {"big": (big_store, big), "small": (small_store, small)}
        done = -20  # the first 20 of each store warm the caches
        while done < count:
            block = BLOCK if done >= 0 else 20
            for size, (store, data) in stores.items():
                realm = Scope(data.entity(0)[0])
                for _ in range(min(block, count - done)):
                    for kind in ("realm", "entity"):
                        scope = realm if kind == "realm" else Scope(*data.entity(rng.randrange(data.entities)))
                        start = time.perf_counter()
                        page = await store.read(scope, order="desc", limit=1)
                        took = time.perf_counter() - start
                        assert len(page.events) == 1, (scope, page)
                        if done >= 0:
                            found[f"{kind}_{size}"].append(took)
            done += block
    return found


async def measure(big: Dataset, small: Dataset, workdir: Path, seconds: float, reads: int,
                  repeats: int) -> dict[str, Any]:
    empty_rates, big_rates = [], []
    empty_steal, big_steal = [], []  # each run's CPU steal (None where unknown), beside its rate
    try:
        for i in rounds(repeats, "row 6a"):
            empty = workdir / f"growth-empty-{i}.db"
            with StealMeter() as steal:
                empty_rates.append(await append_rate(f"sqlite:///{empty}", seconds, f"g{i}-"))
            empty_steal.append(steal.percent)
            with StealMeter() as steal:
                big_rates.append(await append_rate(big.url, seconds, f"g{i}-"))
            big_steal.append(steal.percent)
    finally:
        restore(big)
    latencies = await read_latencies(big, small, reads)
    big_lat, small_lat = latencies["big"], latencies["small"]
    heads = await head_latencies(big, small, reads)
    return {
        **{f"head_{key}_us": median(values) * 1e6 for key, values in heads.items()},
        "append_empty": max(empty_rates), "append_big": max(big_rates),
        "read_big_ms": median(big_lat) * 1000, "read_small_ms": median(small_lat) * 1000,
        "read_big_p99_ms": percentile(big_lat, 99) * 1000,
        "read_small_p99_ms": percentile(small_lat, 99) * 1000,
        "runs": {"append_empty": empty_rates, "append_big": big_rates,
                 "steal_percent_empty": empty_steal, "steal_percent_big": big_steal},
    }
