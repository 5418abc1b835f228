"""Group commit, written once: a writer takes every job queued while it was busy as one group,
decides each job's outcome, commits the group with one durable write, then settles every job.

SQLite runs its event writer and its group-state writer in threads, PostgreSQL its event writer in
a task; each takes groups with :func:`take_group` and hands outcomes back with :func:`settle_group`.
A job is anything with the caller's ``loop`` (None: a caller on a plain thread, whose future is
thread-safe) and a ``settle(outcome)`` that skips a caller who stopped waiting: a
:class:`~perhap.store.job.WriteJob` of events, or a state document's write.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

#: Queued after the last job by close(): the writer finishes what came before it, then stops.
STOP = object()
#: Events in one group, so one transaction stays short.
MAX_GROUP_EVENTS = 20_000


class Job(Protocol):
    """What a writer groups: where its caller waits, and how to answer it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    def settle(self, outcome: Any) -> None: ...


J = TypeVar("J", bound=Job)


def _events(job: Any) -> int:
    batch: list[Any] = job.batch
    return len(batch)


def take_group(first: J, get_nowait: Callable[[], object], max_size: int = MAX_GROUP_EVENTS,
               size: Callable[[J], int] | None = None) -> tuple[list[J], bool]:
    """``first`` and whatever queued up after it (up to ``max_size``, counted by ``size``: a
    WriteJob's events when None), and whether the queue's STOP was met."""
    size = size or _events
    jobs = [first]
    count = size(first)
    kind = type(first)
    while count < max_size:
        try:
            item = get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if item is STOP:
            return jobs, True
        assert isinstance(item, kind)
        jobs.append(item)
        count += size(item)
    return jobs, False


def settle_group(outcomes: Sequence[tuple[J, Any]], *, from_thread: bool) -> None:
    """Settle every job of a group. From a writer thread: one wake-up per event loop."""
    if not from_thread:
        for job, outcome in outcomes:
            job.settle(outcome)
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[J, Any]]] = {}
    for item in outcomes:
        loop = item[0].loop
        if loop is None:  # a caller on a plain thread: its future is thread-safe, settle it here
            item[0].settle(item[1])
        else:
            by_loop.setdefault(loop, []).append(item)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:  # that caller's loop is closed: nobody waits for these outcomes
            pass


def _settle_all(outcomes: Sequence[tuple[Job, Any]]) -> None:
    for job, outcome in outcomes:
        job.settle(outcome)
