"""Small helpers shared by the test modules, and the binding of the contract to perhap's backends."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from perhap.backends import open_store
from perhap.backends.sqlite import open_sqlite
from perhap.errors import VersionConflict
from perhap.model import AppendResult, Scope, new_event
from perhap.store.base import Store
from perhap.testing.conformance import StoreFactory, read_all, take, wait_until

__all__ = ["PerhapBackends", "append_from_another_store", "appends_from_threads_and_the_loop_at_once", "read_all",
           "take", "wait_until"]


class PerhapBackends:
    """Runs a contract class on perhap's own backends: conftest's ``backend`` (PERHAP_TEST_BACKENDS)."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> StoreFactory:
        return lambda: open_store(store_url)


async def append_from_another_store(path: str, realm: str, domain: str, entity: str, count: int) -> None:
    """Append ``count`` events to an entity through a second SQLite store on the same file, on an
    event loop of its own (as another writer would): the first store's caches are then stale."""
    other = asyncio.new_event_loop()

    async def writes() -> None:
        async with await open_sqlite(path, synchronous="OFF") as twin:
            for i in range(count):
                await twin.append(realm, domain, entity, "t", i)

    try:
        await asyncio.get_running_loop().run_in_executor(None, other.run_until_complete, writes())
    finally:
        other.close()


async def appends_from_threads_and_the_loop_at_once(store: Store, threads: int = 6, each: int = 40) -> None:
    """Plain threads (``append_blocking``) and the store's loop append at once, and every rule of
    an append holds: versions gapless (one shared entity, one of each thread's own, the loop's own),
    each acknowledged once, positions 1..n in commit order, and a thread's stale expectation
    refused with nothing stored."""
    shared: list[AppendResult] = []
    own: dict[int, list[int]] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            versions = own.setdefault(n, [])
            for i in range(each):
                r = store.append_blocking("r", "d", "shared", [new_event("t", {"n": n, "i": i})])
                with lock:
                    shared.append(r)
                # Its own entity, at the version it expects: every one must hold.
                mine = store.append_blocking("r", "d", f"own-{n}", [new_event("t", {"i": i})],
                                             expected_version=i - 1)
                versions.append(mine.first.version)
        except BaseException as exc:
            failures.append(exc)

    async def from_the_loop() -> list[int]:
        versions = []
        for i in range(each * 2):
            r = await store.append_batch("r", "d", "loop", [new_event("t", {"i": i})], expected_version=i - 1)
            versions.append(r.first.version)
            if i % 7 == 0:
                await asyncio.sleep(0)
        return versions

    async def everything(scope: Scope) -> list[int]:
        return [e.version for e in (await store.read(scope, limit=10_000)).events]

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    loop_versions = await from_the_loop()
    def join_all() -> None:
        for t in pool:
            t.join()

    await asyncio.get_running_loop().run_in_executor(None, join_all)
    assert not failures, failures[0]
    assert loop_versions == list(range(each * 2))
    for n in range(threads):
        assert own[n] == list(range(each))
    # The shared entity: every append acknowledged once, versions gapless and one each.
    assert sorted(r.first.version for r in shared) == list(range(threads * each))
    stored = (await store.read(Scope("r", "d", "shared"), limit=10_000)).events
    assert [e.version for e in stored] == list(range(threads * each))
    assert {e.event_id for e in stored} == {r.first.event_id for r in shared}
    # The realm: positions 1..n without gaps, in commit order.
    realm = (await store.read(Scope("r"), limit=10_000)).events
    total = threads * each * 2 + each * 2
    assert [e.position for e in realm] == list(range(1, total + 1))
    # A thread whose expected version no longer holds gets the conflict, and nothing is stored.
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: store.append_blocking(
            "r", "d", "own-0", [new_event("t", {})], expected_version=0))
    except VersionConflict:
        pass
    else:
        raise AssertionError("a stale expected version from a thread was not refused")
    assert await everything(Scope("r", "d", "own-0")) == list(range(each))


_T = TypeVar("_T")


def in_another_loop(coro_fn: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion in a new event loop in another thread; its result or error."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", asyncio.run(coro_fn())))
        except BaseException as exc:
            out.append(("error", exc))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert out, "the other loop did not finish"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


class TcpRelay:
    """A TCP relay, on a port of its own, to a real server; each connection is passed to
    :meth:`relay` with the server's end, for a test to hang, cut or pass on what goes through."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.relay(reader, writer, *await asyncio.open_connection(*self.upstream))

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


_R = TypeVar("_R", bound=TcpRelay)


def relayed_postgres(url: str, relay: type[_R]) -> tuple[_R, str, str]:
    """A relay of ``relay``'s kind to the PostgreSQL server of ``url`` (not started), and the url's
    user and database part (``db`` or ``db?options``), to build the relayed URL once it has a port."""
    match = re.match(r"postgresql://([^@]+)@([^:/]+):(\d+)/(.+)", url)
    assert match is not None, url
    user, host, port, rest = match.groups()
    return relay(host, int(port)), user, rest
