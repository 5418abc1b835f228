"""Group commit, written once: a writer takes every job queued while it was busy as one group,
decides each job's outcome, commits the group with one durable write, then settles every job.

SQLite runs its writer in a thread, PostgreSQL in a task; both take groups with
:func:`take_group` and hand outcomes back with :func:`settle_group`.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Sequence

from ..model import AppendResult
from .job import WriteJob

#: Queued after the last job by close(): the writer finishes what came before it, then stops.
STOP = object()
#: Events in one group, so one transaction stays short.
MAX_GROUP_EVENTS = 20_000

Outcome = tuple[WriteJob, AppendResult | BaseException]


def take_group(first: WriteJob, get_nowait: Callable[[], object],
               max_events: int = MAX_GROUP_EVENTS) -> tuple[list[WriteJob], bool]:
    """``first`` and whatever queued up after it (up to ``max_events`` events), and whether the
    queue's STOP was met."""
    jobs = [first]
    count = len(first.batch)
    while count < max_events:
        try:
            item = get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if item is STOP:
            return jobs, True
        assert isinstance(item, WriteJob)
        jobs.append(item)
        count += len(item.batch)
    return jobs, False


def settle_group(outcomes: Sequence[Outcome], *, from_thread: bool) -> None:
    """Settle every job of a group. From a writer thread: one wake-up per event loop."""
    if not from_thread:
        for job, outcome in outcomes:
            job.settle(outcome)
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
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


def _settle_all(outcomes: Sequence[Outcome]) -> None:
    for job, outcome in outcomes:
        job.settle(outcome)
