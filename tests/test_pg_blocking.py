"""Appends from plain threads on PostgreSQL (``Store.append_blocking``).

A plain thread's job crosses to the store's event loop by one ``call_soon_threadsafe``, and the
writer settles its thread-safe future. These tests hold that path to the rules every append keeps:
threads and the loop appending at once stay exact (versions, positions, conflicts), a waiting
subscriber is woken by a thread's append, the loop's own thread is refused rather than left waiting
for itself, and a store closing under a stream of threads' appends answers every one of them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from perhap import open_store
from perhap.backends.postgres import PostgresStore
from perhap.errors import PerhapError, StorageUnavailable, VersionConflict
from perhap.model import AppendResult, Scope, new_event
from perhap.store.job import WriteJob
from tests.conftest import get_provider
from tests.helpers import appends_from_threads_and_the_loop_at_once, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresStore]:
    opened = await open_store(get_provider("postgres", tmp_path_factory).new_url())
    assert isinstance(opened, PostgresStore) and opened.accepts_blocking_appends
    async with opened:
        yield opened


async def test_appends_from_plain_threads_and_the_loop_at_once_are_exact(store: PostgresStore) -> None:
    await appends_from_threads_and_the_loop_at_once(store, threads=4, each=25)


async def test_a_multi_entity_append_from_threads_is_all_or_nothing(store: PostgresStore) -> None:
    def append(n: int, expected: int) -> AppendResult:
        return store.append_blocking("r", "d", None, [{"entity": f"e{n}", "type": "t", "event": {}},
                                                      {"entity": "shared", "type": "t", "event": {}}],
                                     expected_versions={f"e{n}": expected})

    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(None, append, n, -1) for n in range(4)))
    assert sorted(r.events[1].version for r in results) == [0, 1, 2, 3]  # "shared", one version each
    with pytest.raises(VersionConflict):  # e0 is at 0 now: nothing of this one is stored
        await loop.run_in_executor(None, append, 0, -1)
    events = (await store.read(Scope("r"), limit=100)).events
    assert [e.position for e in events] == list(range(1, 9))


async def test_a_waiting_subscriber_is_woken_by_a_threads_append(store: PostgresStore) -> None:
    store.poll_interval = 600.0  # a delivery below cannot be the poll
    subscription = await store.subscription(Scope("r", "d"))
    waiting = asyncio.ensure_future(subscription.fetch())
    # It read nothing and waits for a commit (the store's waiter): the append below must wake it.
    await wait_until(lambda: len(store._waiters) == 1, "the subscriber to wait for a commit", 10)
    result = await asyncio.get_running_loop().run_in_executor(
        None, lambda: store.append_blocking("r", "d", "e", [new_event("t", {"n": 1})]))
    delivered = await asyncio.wait_for(waiting, 5)
    assert [e.event_id for e in delivered] == [result.first.event_id]


async def test_the_stores_own_loop_is_refused_not_left_waiting_for_itself(store: PostgresStore) -> None:
    with pytest.raises(RuntimeError, match="own event loop"):
        store.append_blocking("r", "d", "e", [new_event("t", {})])
    assert (await store.read(Scope("r"), limit=10)).events == []


async def test_a_store_closing_under_threads_appends_answers_every_one(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    store = await open_store(get_provider("postgres", tmp_path_factory).new_url())
    outcomes: list[object] = []
    stop = threading.Event()

    def work(n: int) -> None:
        # Each thread appends until its store refuses it: once closed, every thread's next append
        # is refused, so each ends with exactly one error (ending on `stop` instead raced close:
        # a thread between two appends when it was set ended with none).
        i = 0
        while not stop.is_set():  # (set only if the test fails, so no thread outlives it)
            try:
                outcomes.append(store.append_blocking("r", "d", f"e{n}", [new_event("t", {"i": i})]))
            except PerhapError as exc:  # closed: StorageUnavailable, or refused before it queued
                outcomes.append(exc)
                return
            i += 1

    pool = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
    for t in pool:
        t.start()
    await wait_until(lambda: len(outcomes) >= 20, "the threads to be appending", 10)
    await store.close()
    deadline = time.monotonic() + 10
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    assert not any(t.is_alive() for t in pool), "a thread's append was never answered"
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 4 and all(isinstance(e, StorageUnavailable) for e in errors), errors
    stored = [o for o in outcomes if isinstance(o, AppendResult)]
    assert len(stored) > 4  # the threads were appending when the store closed


async def test_an_append_handed_over_as_the_store_closes_is_answered(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's job that reaches the loop after close() queued the writer's STOP would never be
    taken: it is answered StorageUnavailable instead. The loop is held (its thread blocks until the
    thread has handed its job over) so the hand-over lands right after close()'s first step."""
    store = await open_store(get_provider("postgres", tmp_path_factory).new_url())
    assert isinstance(store, PostgresStore)
    await store.append("r", "d", "e", "t", 0)
    outcome: list[object] = []
    handed_over = threading.Event()
    hand_over = store._submit_from_thread

    def handing_over(job: WriteJob) -> None:  # the job is on the loop's queue once this returns
        hand_over(job)
        handed_over.set()

    monkeypatch.setattr(store, "_submit_from_thread", handing_over)

    def late() -> None:
        try:
            outcome.append(store.append_blocking("r", "d", "e", [new_event("t", {})]))
        except PerhapError as exc:
            outcome.append(exc)

    closing = asyncio.ensure_future(store.close())  # its first step runs at the loop's next turn
    thread = threading.Thread(target=late, daemon=True)
    thread.start()
    # On the loop's thread, so close() cannot start: the thread finds the store open and hands over.
    handed = handed_over.wait(10)
    await closing
    assert handed, "the thread never handed its job over"
    thread.join(10)
    assert not thread.is_alive(), "the append was never answered"
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable), outcome
