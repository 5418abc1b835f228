"""Reading a whole scope or level of a store through its public API, a page at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from ..model import Event, Scope
from ..store.base import Store

PAGE_SIZE = 1000


async def iter_scope(store: Store, scope: Scope, *, following: str | None = None,
                     page_size: int = PAGE_SIZE) -> AsyncGenerator[Event, None]:
    """Every event of a scope in its order, one page in memory and the next one being read.
    Iterate it inside ``contextlib.aclosing`` where the loop may stop early (its reader gone),
    so the read ahead ends before the store is closed."""
    pending = asyncio.ensure_future(store.read(scope, following=following, limit=page_size))
    try:
        while True:
            page = await pending
            if page.next is not None:
                pending = asyncio.ensure_future(store.read(scope, following=page.next, limit=page_size))
            for event in page.events:
                yield event
            if page.next is None:
                return
    finally:  # the read ahead stopped, and its outcome taken whatever it was (never left unseen)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


async def iter_keys(store: Store, *levels: str) -> AsyncIterator[str]:
    """Every name one level below ``levels`` (realms when none), through every page."""
    after = None
    while True:
        page = await store.keys(*levels, after=after, limit=PAGE_SIZE)
        for name in page.keys:
            yield name
        if page.next is None:
            return
        after = page.next
