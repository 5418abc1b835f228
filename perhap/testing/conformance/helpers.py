"""Small helpers the contract's tests share; third parties may use them in their own tests too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx

from ...model import Event, Scope
from ...store.base import Store

T = TypeVar("T")


async def read_all(store: Store, scope: Scope, limit: int = 1000) -> list[Event]:
    """Every event of a scope, following ``next`` through every page."""
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=limit)
        events.extend(page.events)
        if page.next is None:
            return events
        following = page.next


async def take(it: AsyncIterator[T], n: int, timeout: float = 30) -> list[T]:
    """The next ``n`` items of an async iterator, failing after ``timeout`` seconds."""
    out: list[T] = []

    async def run() -> None:
        async for item in it:
            out.append(item)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def aclose(it: AsyncIterator[Any]) -> None:
    """Close a subscription (an async generator) so it stops reading at once."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Return as soon as ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """The problem+json body of a response, after checking its status and its shape."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in r.text
    return body


async def read_every(store: Store, scope: Scope, *, limit: int = 1000, **params: Any) -> list[Event]:
    """Every event of a read with ``Store.read``'s parameters (``order``, ``types`` ...), following
    ``next`` through every page in the read's own order."""
    events: list[Event] = []
    following = None
    while True:
        page = await store.read(scope, following=following, limit=limit, **params)
        assert len(page.events) <= limit
        events.extend(page.events)
        if page.next is None:
            return events
        assert page.next == page.events[-1].event_id
        following = page.next


async def read_by_position(store: Store, scope: Scope, *, limit: int = 1000, after: int = 0,
                           **params: Any) -> list[Event]:
    """Every event of an ascending read, paging by ``after_position`` (a consumer's checkpoint)."""
    events: list[Event] = []
    while True:
        page = await store.read(scope, after_position=after, limit=limit, **params)
        assert len(page.events) <= limit
        events.extend(page.events)
        if len(page.events) < limit:
            return events
        after = page.events[-1].position


def positions(events: list[Event]) -> list[int]:
    """The positions of some events, in their order."""
    return [e.position for e in events]


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))
