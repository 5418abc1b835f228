"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from perhap import Event, Scope, Store


async def read_all(store: Store, scope: Scope, limit: int = 1000) -> list[Event]:
    """Every event of a scope, following `next` through every page."""
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=limit)
        events.extend(page.events)
        if page.next is None:
            return events
        following = page.next


async def take(it: AsyncIterator[Any], n: int, timeout: float = 30) -> list[Any]:
    """The next ``n`` items of an async iterator, failing after ``timeout`` seconds."""
    out: list[Any] = []

    async def run() -> None:
        async for item in it:
            out.append(item)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out
