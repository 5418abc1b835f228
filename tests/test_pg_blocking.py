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
from tests.conftest import get_provider

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresStore]:
    opened = await open_store(get_provider("postgres", tmp_path_factory).new_url())
    assert isinstance(opened, PostgresStore) and opened.accepts_blocking_appends
    async with opened:
        yield opened


async def test_appends_from_plain_threads_and_the_loop_at_once_are_exact(store: PostgresStore) -> None:
    threads, each = 4, 25
    shared: list[AppendResult] = []
    own: dict[int, list[int]] = {}
    refused: list[BaseException] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            versions = own.setdefault(n, [])
            for i in range(each):
                r = store.append_blocking("r", "d", "shared", [new_event("t", {"n": n, "i": i})])
                with lock:
                    shared.append(r)
                mine = store.append_blocking("r", "d", f"own-{n}", [new_event("t", {"i": i})],
                                             expected_version=i - 1)  # -1 first: a new entity
                versions.append(mine.first.version)
            try:  # a stale expectation from a thread: refused, nothing written
                store.append_blocking("r", "d", f"own-{n}", [new_event("t", {})], expected_version=0)
            except VersionConflict as exc:
                refused.append(exc)
            # a multi-entity append from a thread
            store.append_blocking("r", "d", None, [{"entity": f"own-{n}", "type": "t", "event": {}},
                                                   {"entity": "shared", "type": "t", "event": {}}],
                                  expected_versions={f"own-{n}": each - 1})
        except BaseException as exc:
            failures.append(exc)

    async def from_the_loop() -> None:
        for i in range(each * 2):
            await store.append_batch("r", "d", "loop", [new_event("t", {"i": i})], expected_version=i - 1)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    await from_the_loop()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in pool])
    assert failures == []
    assert len(refused) == threads and all(isinstance(e, VersionConflict) and e.current_version == each - 1
                                           for e in refused)
    assert all(versions == list(range(each)) for versions in own.values())
    events = list((await store.read(Scope("r"), limit=10_000)).events)
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    assert len(events) == threads * each * 2 + threads * 2 + each * 2
    by_entity: dict[str, list[int]] = {}
    for e in events:
        by_entity.setdefault(e.entity, []).append(e.version)
    assert all(versions == list(range(len(versions))) for versions in by_entity.values())
    answered = {(a.event_id, a.version, a.position) for r in shared for a in r.events}
    stored = {(e.event_id, e.version, e.position) for e in events if e.entity == "shared"}
    assert answered <= stored and len(stored) == threads * each + threads


async def test_a_waiting_subscriber_is_woken_by_a_threads_append(store: PostgresStore) -> None:
    store.poll_interval = 600.0  # a delivery below cannot be the poll
    subscription = await store.subscription(Scope("r", "d"))
    waiting = asyncio.ensure_future(subscription.fetch())
    await asyncio.sleep(0.05)
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
        i = 0
        while not stop.is_set():
            try:
                outcomes.append(store.append_blocking("r", "d", f"e{n}", [new_event("t", {"i": i})]))
            except PerhapError as exc:  # closed: StorageUnavailable, or refused before it queued
                outcomes.append(exc)
                return
            i += 1

    pool = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
    for t in pool:
        t.start()
    await asyncio.sleep(0.3)
    await store.close()
    stop.set()
    deadline = time.monotonic() + 10
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in pool), "a thread's append was never answered"
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 4 and all(isinstance(e, StorageUnavailable) for e in errors), errors
    stored = [o for o in outcomes if isinstance(o, AppendResult)]
    assert len(stored) > 4  # the threads were appending when the store closed


async def test_an_append_handed_over_as_the_store_closes_is_answered(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A thread's job that reaches the loop after close() queued the writer's STOP would never be
    taken: it is answered StorageUnavailable instead. The loop is held (a plain sleep on its thread)
    while the thread hands its job over, so the hand-over lands right after close()'s first step."""
    store = await open_store(get_provider("postgres", tmp_path_factory).new_url())
    await store.append("r", "d", "e", "t", 0)
    outcome: list[object] = []

    def late() -> None:
        try:
            outcome.append(store.append_blocking("r", "d", "e", [new_event("t", {})]))
        except PerhapError as exc:
            outcome.append(exc)

    closing = asyncio.ensure_future(store.close())  # its first step runs at the loop's next turn
    thread = threading.Thread(target=late, daemon=True)
    thread.start()
    time.sleep(0.3)  # the loop's thread: the thread checks the store open and hands its job over
    await closing
    thread.join(10)
    assert not thread.is_alive(), "the append was never answered"
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailable), outcome
