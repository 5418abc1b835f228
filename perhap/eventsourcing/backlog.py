"""What a live stream has brought and its subscriber has not taken yet, bounded.

A subscription from an early notification id reads the log as fast as the store gives it; without
a bound, a projection catching up held the whole backlog in memory (60,000 events of 2 KB: 150 MB
more) and the store never slowed down. The stream's pump waits for room once ``limit`` events
wait (the library's own subscriptions hold about as many: ten batches of 500); a thread (the HTTP
stream's) waits on a condition, a task on the in-process stores' event loop on an asyncio.Event
that the taking thread sets, so that loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from eventsourcing.persistence import PersistenceError

from ..model import Event

#: Events waiting in a subscription's backlog before its stream waits for room.
LIMIT = 5_000

Item = list[Event] | PersistenceError | None  # a batch, the error that ended the stream, or the end


class Backlog:
    def __init__(self, limit: int | None = None) -> None:
        self.limit = LIMIT if limit is None else limit
        self.waiting = 0  # events in the backlog
        self._items: deque[Item] = deque()
        self._changed = threading.Condition()
        self._ended = False
        self._room: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # a task waiting

    def __call__(self, item: Item) -> None:
        """Add a batch, an error or the end; never waits (see :meth:`room`)."""
        with self._changed:
            self._items.append(item)
            if isinstance(item, list):
                self.waiting += len(item)
            else:
                self._ended = True  # no more batches: a pump waiting for room stops waiting
            self._changed.notify_all()
        if not isinstance(item, list):
            self._wake_task()

    def take(self) -> Item:
        """The next item, waiting for one."""
        with self._changed:
            self._changed.wait_for(lambda: self._items)
            item = self._items.popleft()
            if isinstance(item, list):
                self.waiting -= len(item)
                self._changed.notify_all()
        if self.waiting < self.limit:
            self._wake_task()
        return item

    def has_room(self) -> bool:
        return self.waiting < self.limit or self._ended

    def wait_for_room(self) -> None:
        """For a pump on a thread of its own."""
        with self._changed:
            self._changed.wait_for(self.has_room)

    async def room(self) -> None:
        """For a pump on an event loop: returns once the backlog has room, without blocking the loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self._changed:
                if self.has_room():
                    return
                woken = asyncio.Event()
                self._room = (loop, woken)
            await woken.wait()

    def _wake_task(self) -> None:
        with self._changed:
            room, self._room = self._room, None
        if room is not None:
            loop, woken = room
            with contextlib.suppress(RuntimeError):  # (its loop closed: the task is gone with it)
                loop.call_soon_threadsafe(woken.set)
