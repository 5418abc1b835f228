"""Live delivery on Cassandra (issue 19): from an append's acknowledgement to its arrival at a
subscriber of another store instance (another process, as far as the store can tell: no local
wake-up, so the subscriber polls every ``poll_ms``).

Delivery is bounded below by the settle window W (a reader hands out an event only once its
position is W behind the reader's clock, docs/backends/cassandra.md), so the row reports p50 and
p99 next to W rather than against a fixed bar. The appender paces ``rate`` single appends a second
to a few entities of one domain; every event must arrive once, in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .common import percentile

DOMAIN = "live"


async def measure(url: str, events: int, rate: float) -> dict[str, Any]:
    from perhap import Scope, open_store
    from perhap.backends.cassandra import parse_cassandra_url

    options = parse_cassandra_url(url)
    acked: dict[str, float] = {}
    arrived: dict[str, float] = {}
    order: list[str] = []
    async with open_store(url) as writer, open_store(url) as reader:
        # The subscription starts after the warm-up event named by its id, not after what a read
        # of the domain returns: once in CI such a subscription started from the beginning and
        # counted the warm-up event as a measured one (a read that woke early from its settle wait
        # and skipped the event; fixed in the reader, docs/performance.md, section 10).
        warm_id = (await writer.append("bench", DOMAIN, "warm", "happened", {"n": -1})).first.event_id
        sub = await reader.subscription(Scope("bench", DOMAIN), following=warm_id)

        async def subscribe() -> None:
            while len(arrived) < events:
                for e in await sub.fetch(timeout=5.0):
                    if e.event_id in arrived:
                        raise RuntimeError(f"event {e.event_id} delivered twice")
                    if e.event_id == warm_id:
                        raise RuntimeError("the event named by following= was delivered")
                    arrived[e.event_id] = time.monotonic()
                    order.append(e.event_id)

        listening = asyncio.ensure_future(subscribe())
        start = time.monotonic()
        for n in range(events):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            result = await writer.append("bench", DOMAIN, f"e{n % 8}", "happened", {"n": n})
            acked[result.first.event_id] = time.monotonic()
        await asyncio.wait_for(listening, timeout=60 + options.settle_us / 1e6)
    missing = set(acked) - set(arrived)
    in_order = [i for i in order if i in acked] == list(acked)  # one writer: its append order
    latencies = [max(0.0, arrived[i] - t) * 1000 for i, t in acked.items() if i in arrived]
    return {"events": events, "rate": rate, "missing": len(missing), "delivered": len(arrived), "in_order": in_order,
            "settle_ms": options.settle_us / 1000, "poll_ms": options.poll * 1000,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan"))}
