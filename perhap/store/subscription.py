"""A subscription: a cursor in a scope that moves forward as events are fetched, and the way an
in-process subscriber follows one through a storage outage (a live stream over HTTP does the same,
keeping its client with comments: :mod:`perhap.http.streaming`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Protocol

from ..errors import StorageUnavailable, StoreClosed
from ..model import Event, Scope
from .query import ReadQuery


class Followed(Protocol):
    """What a subscription reads through: a :class:`~perhap.store.base.Store`'s read path."""

    poll_interval: float

    def _check_open(self) -> None: ...

    def _change_token(self) -> int: ...

    async def _read(self, query: ReadQuery) -> list[Event]: ...

    async def _wait_for_change(self, token: int, timeout: float) -> None: ...


#: Seconds an open subscription (in process, or a live stream over HTTP) waits before reading again
#: while the storage does not answer: the first pause, doubled at each failed read up to the second.
OUTAGE_PAUSES = (0.25, 5.0)


class OutagePause:
    """The pauses of a subscription that reads on through a storage outage: the first of
    OUTAGE_PAUSES after a read that failed, doubling up to the second; a read that answers starts
    them again (see :func:`follow`, and a live stream's pump in :mod:`perhap.http.streaming`)."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = OUTAGE_PAUSES[0]

    @property
    def first(self) -> bool:
        """Whether the next pause is the outage's first."""
        return self.next == OUTAGE_PAUSES[0]

    async def wait(self) -> None:
        await asyncio.sleep(self.next)
        self.next = min(2 * self.next, OUTAGE_PAUSES[1])

    def reset(self) -> None:
        self.next = OUTAGE_PAUSES[0]


class Subscription:
    """A cursor in a scope that moves forward as events are fetched."""

    def __init__(self, store: Followed, query: ReadQuery) -> None:
        self.store, self.query = store, query

    @property
    def scope(self) -> Scope:
        return self.query.scope

    async def fetch(self, timeout: float | None = None) -> list[Event]:
        """The next events after the cursor, waiting up to ``timeout`` (None: forever) for some."""
        store = self.store
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            store._check_open()  # a closed store ends its streams with StorageUnavailable
            # Take the token before reading: a commit after it wakes the wait below at once.
            token = store._change_token()
            events = await store._read(self.query)
            if events:
                self.query = replace(self.query, after=events[-1].cursor)
                return events
            wait = store.poll_interval
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return []
            await store._wait_for_change(token, wait)


async def follow(sub: Subscription) -> AsyncGenerator[Event, None]:
    """Every event ``sub`` fetches, for ever. A storage that does not answer for a while (a
    database restarting) does not end it: its cursor stays, and it reads again after a pause; only
    a closed store ends it (StoreClosed)."""
    pause = OutagePause()
    while True:
        try:
            events = await sub.fetch()
        except StoreClosed:
            raise
        except StorageUnavailable:
            await pause.wait()
            continue
        pause.reset()
        for event in events:
            yield event
