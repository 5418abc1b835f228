"""Appends from plain threads on SQLite (``Store.append_blocking``), and the commit notices they leave.

A caller on a plain thread commits its own job when the writer is idle, and its commit does not wake
the store's event loop when nothing there waits for it: the notice waits until the loop next reads,
gives out the commit marker or starts waiting. These tests hold that to what the store promised
before: appends from threads and from the loop at once stay exact, a waiting subscriber is woken by
a thread's append (not by its poll), and whatever the loop does after a thread's append sees it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import httpx
import pytest

from perhap.backends.sqlite import SQLiteStore, open_sqlite
from perhap.backends.sqlite import ring as ring_module
from perhap.http.app import PerhapApp
from perhap.model import Event, Scope, new_event
from tests.helpers import appends_from_threads_and_the_loop_at_once, read_all, wait_until

#: Long enough that no delivery below can be the subscribers' poll: each must be a wake-up.
NO_POLL = 600.0


async def _store(tmp_path: Path) -> SQLiteStore:
    store = await open_sqlite(str(tmp_path / "blocking.db"))
    store.poll_interval = NO_POLL
    return store


async def _all(store: SQLiteStore, scope: Scope) -> list[Event]:
    return list((await store.read(scope, limit=10_000)).events)


async def test_appends_from_plain_threads_and_the_loop_at_once_are_exact(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        await appends_from_threads_and_the_loop_at_once(store)
    finally:
        await store.close()


@pytest.mark.parametrize("ring", ["read", "unread"])
async def test_a_waiting_subscriber_is_woken_by_each_append_from_a_plain_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: str) -> None:
    """The append lands just before, during or just after the subscriber starts waiting; with the
    poll ten minutes away, every event must arrive by a wake-up. With the ring read (its events
    built at each commit) and unread (only the waiting subscriber makes a commit wake the loop)."""
    if ring == "unread":
        monkeypatch.setattr(ring_module, "RING_IDLE", -1.0)
    store = await _store(tmp_path)
    rng = random.Random(7)
    try:
        for realm, scope in (("r1", Scope("r1")), ("r2", Scope("r2", "d")), ("r3", Scope("r3", "d", "e"))):
            sub = await store.subscription(scope)
            assert await sub.fetch(timeout=0) == []
            for i in range(40):
                delay = rng.choice([0.0, 0.0005, 0.001, 0.003])

                def append(i: int = i, delay: float = delay, realm: str = realm) -> None:
                    threading.Event().wait(delay)
                    store.append_blocking(realm, "d", "e", [new_event("t", {"i": i})])

                thread = threading.Thread(target=append)
                thread.start()
                # A missed wake-up would wait for the poll, ten minutes away: fail at 10 s instead.
                got = await asyncio.wait_for(sub.fetch(), timeout=10)
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
                assert [e.event for e in got] == [{"i": i}], (scope, i)
    finally:
        await store.close()


async def test_what_the_loop_does_after_a_plain_threads_append_sees_it(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        await store.append_batch("r", "d", "e", [new_event("t", {"i": 0})])
        marker = store.commit_marker()
        # Nothing on the loop waits for it: the commit's notice is left for the loop to take in.
        await loop.run_in_executor(None, lambda: store.append_blocking("r", "d", "e", [new_event("t", {"i": 1})]))
        assert store._pending, "the notice should wait for the loop (the path under test)"
        assert store.commit_marker() != marker  # moved at the commit: no cached page outlives it
        for scope in (Scope("r"), Scope("r", "d"), Scope("r", "d", "e")):
            assert [e.event for e in await _all(store, scope)] == [{"i": 0}, {"i": 1}]

        # The same through a subscriber whose ring was read lately: still one event each time.
        sub = await store.subscription(Scope("r"), after_position=2)
        for i in range(2, 6):
            await loop.run_in_executor(None, lambda i=i: store.append_blocking(
                "r", "d", "e", [new_event("t", {"i": i})]))
            assert [e.event for e in await sub.fetch(timeout=30)] == [{"i": i}]
    finally:
        await store.close()


async def test_the_page_cache_serves_no_page_older_than_a_plain_threads_append(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    app = PerhapApp(store)
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as client:
            for i in range(5):
                await loop.run_in_executor(None, lambda i=i: store.append_blocking(
                    "r", "d", "e", [new_event("t", {"i": i})]))
                for _ in range(2):  # the second GET may come from the cache: it must be as fresh
                    answer = await client.get("/r/d/e")
                    assert answer.status_code == 200
                    assert [e["event"] for e in answer.json()["events"]] == [{"i": k} for k in range(i + 1)]
    finally:
        await store.close()


@pytest.fixture
def ring_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody has read the ring lately, whatever reads the test makes: the writer never builds
    ring events, so every commit nobody waits for leaves its notice for the loop to take in."""
    monkeypatch.setattr(ring_module, "RING_IDLE", -1.0)


async def test_a_commit_between_a_subscribers_read_and_its_wait_ends_the_wait(
        tmp_path: Path, ring_unread: None) -> None:
    """The subscriber's steps, one by one, with a thread's append landing between its read and
    its wait: the wait must end at once, not at the poll ten minutes away."""
    store = await _store(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        for i in range(3):
            token = store._change_token()
            assert (await store.read(Scope("r"), after_position=i)).events == []
            await loop.run_in_executor(None, lambda i=i: store.append_blocking(
                "r", "d", "e", [new_event("t", {"i": i})]))
            assert store._pending  # not announced: nothing waited when it committed
            await asyncio.wait_for(store._wait_for_change(token, NO_POLL), timeout=30)
            assert [e.event for e in (await store.read(Scope("r"), after_position=i)).events] == [{"i": i}]
    finally:
        await store.close()


async def test_a_read_the_ring_could_answer_sees_a_plain_threads_append(tmp_path: Path, ring_unread: None) -> None:
    """The ring answers reads after its last notice; a notice left waiting must be taken in
    before it answers, or the read would miss the thread's own event."""
    store = await _store(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        first = await store.append_batch("r", "d", "e", [new_event("t", {"i": 0})])  # a loop job: announced
        following = first.first.event_id
        for i in range(1, 4):
            await loop.run_in_executor(None, lambda i=i: store.append_blocking(
                "r", "d", "e", [new_event("t", {"i": i})]))
            for scope in (Scope("r"), Scope("r", "d")):
                page = await store.read(scope, following=following)
                assert [e.event for e in page.events] == [{"i": k} for k in range(1, i + 1)], scope
    finally:
        await store.close()


async def test_a_page_cached_by_one_store_is_not_served_after_another_stores_append_to_the_file(
        tmp_path: Path) -> None:
    """Two stores of one process on one file (an application's in-process store on a loop thread
    of its own, a server's on this loop) share the commit marker: an append through the first,
    from a plain thread, must end the second's cached page at once."""
    path = str(tmp_path / "shared.db")
    other_loop = asyncio.new_event_loop()
    runner = threading.Thread(target=other_loop.run_forever, daemon=True)
    runner.start()
    first = asyncio.run_coroutine_threadsafe(open_sqlite(path), other_loop).result()
    second = await open_sqlite(path)
    loop = asyncio.get_running_loop()
    try:
        app = PerhapApp(second)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as client:
            for i in range(4):
                await loop.run_in_executor(None, lambda i=i: first.append_blocking(
                    "r", "d", "e", [new_event("t", {"i": i})]))
                for _ in range(2):
                    answer = await client.get("/r/d/e")
                    assert [e["event"] for e in answer.json()["events"]] == [{"i": k} for k in range(i + 1)]
    finally:
        await second.close()
        asyncio.run_coroutine_threadsafe(first.close(), other_loop).result()
        other_loop.call_soon_threadsafe(other_loop.stop)
        runner.join()
        other_loop.close()



async def test_a_plain_thread_does_not_go_ahead_of_a_job_the_writer_thread_took(tmp_path: Path) -> None:
    """The commit lock is not fair: a caller on a plain thread could take it, again and again,
    while the writer thread holds a job from the queue and waits for it. The writer marks itself
    taking first, and a plain thread's append then queues behind it."""
    store = await _store(tmp_path)
    writer = store._writer
    assert writer is not None
    from_a_thread = store._batch_job("r", "d", "thread", [new_event("t", {})], None, None)
    writer.commit_lock.acquire()  # as if a plain thread were committing
    try:
        loops_append = asyncio.ensure_future(store.append_batch("r", "d", "loop", [new_event("t", {})]))
        await wait_until(lambda: writer._taking and writer.jobs.empty(), "the writer to take the job")
    finally:
        writer.commit_lock.release()
    # Right after the release this thread still holds the GIL: the writer thread has not run yet.
    assert writer.commit_inline(from_a_thread) is False
    assert (await loops_append).first.version == 0
    await store.close()


_APPENDERS = r'''
import asyncio, json, random, sys, threading
from perhap.backends.sqlite import open_sqlite
from perhap.model import new_event

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
store = asyncio.run_coroutine_threadsafe(open_sqlite(sys.argv[1]), loop).result()
out = threading.Lock()

def acknowledged(ids):
    with out:
        sys.stdout.write(json.dumps(ids) + "\n")
        sys.stdout.flush()

def appender(c):
    n = 0
    while True:
        n += 1
        size = 5 if n % 4 == 0 else 1
        batch = [new_event("t", {"c": c, "n": n, "k": k}) for k in range(size)]
        result = store.append_blocking("r", "d", f"e{random.randrange(20)}", batch)
        acknowledged([e.event_id for e in result.events])

async def from_the_loop():
    n = 0
    while True:
        n += 1
        result = await store.append_batch("r", "d", f"e{random.randrange(20)}", [new_event("t", {"c": -1, "n": n})])
        acknowledged([result.first.event_id])

for c in range(6):
    threading.Thread(target=appender, args=(c,), daemon=True).start()
asyncio.run_coroutine_threadsafe(from_the_loop(), loop)
threading.Event().wait()
'''


async def test_sigkill_during_plain_thread_appends_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Six threads appending with append_blocking (committing themselves or through the writer)
    and the loop appending too, in a process killed with SIGKILL: every append it acknowledged
    is stored whole, with positions and versions still gapless."""
    import json
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "killed.db")
    child = subprocess.Popen([sys.executable, "-c", _APPENDERS, path], stdout=subprocess.PIPE, text=True)
    acknowledged: list[list[str]] = []
    assert child.stdout is not None
    try:
        for line in child.stdout:
            acknowledged.append(json.loads(line))
            if len(acknowledged) >= 3000:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(acknowledged) >= 3000, "the appenders stopped early"
    store = await open_sqlite(path)
    try:
        stored = await read_all(store, Scope("r"))
    finally:
        await store.close()
    ids = {e.event_id for e in stored}
    missing = [a for a in acknowledged if not set(a) <= ids]
    assert not missing, f"acknowledged but lost after SIGKILL: {missing[:3]}"
    sizes: dict[tuple[int, int], int] = {}
    for e in stored:
        data = e.event
        if "k" in data:
            sizes[(data["c"], data["n"])] = sizes.get((data["c"], data["n"]), 0) + 1
    assert all(count in (1, 5) for count in sizes.values())
    assert all(count == 5 for (c, n), count in sizes.items() if n % 4 == 0), "a batch stored in part"
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    for entity in {e.entity for e in stored}:
        versions = [e.version for e in stored if e.entity == entity]
        assert versions == list(range(len(versions)))
