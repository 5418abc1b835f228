"""Live subscriptions: in process (store.subscribe) and over SSE, for every backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from perhap import Scope, Store
from perhap.sse import SSEDecoder, SSEMessage
from tests.helpers import read_all, take
from tests.servers import ProcessServer, ThreadServer


async def test_subscribe_catch_up_then_live(store: Store, realm: str) -> None:
    for i in range(5):
        await store.append(realm, "d", "e", "t", i)
    sub = store.subscribe(Scope(realm, "d"))
    first = await take(sub, 5)
    assert [e.event for e in first] == [0, 1, 2, 3, 4]

    async def later() -> None:
        await asyncio.sleep(0.05)
        for i in range(5, 10):
            await store.append(realm, "d", f"e{i}", "t", i)

    writer = asyncio.ensure_future(later())
    live = await take(sub, 5)
    await writer
    assert [e.event for e in live] == [5, 6, 7, 8, 9]
    await sub.aclose()


async def test_subscribe_following(store: Store, realm: str) -> None:
    ids = [(await store.append(realm, "d", "e", "t", i)).first.event_id for i in range(6)]
    sub = store.subscribe(Scope(realm, "d", "e"), following=ids[2])
    assert [e.event for e in await take(sub, 3)] == [3, 4, 5]
    await sub.aclose()


async def test_subscribe_scope_filtering(store: Store, realm: str) -> None:
    sub_domain = store.subscribe(Scope(realm, "d1"))
    sub_type = store.subscribe(Scope(realm, type="wanted"))
    sub_entity = store.subscribe(Scope(realm, "d1", "e1"))
    for i in range(12):
        await store.append(realm, f"d{i % 2}", f"e{i % 3}", "wanted" if i % 4 == 0 else "other", i)
    await store.append(realm + "x", "d1", "e1", "wanted", "elsewhere")
    assert [e.event for e in await take(sub_domain, 6)] == [1, 3, 5, 7, 9, 11]
    assert [e.event for e in await take(sub_type, 3)] == [0, 4, 8]
    assert [e.event for e in await take(sub_entity, 2)] == [1, 7]
    # Nothing else arrives: the other realm's event is not in any of these scopes.
    for sub in (sub_domain, sub_type, sub_entity):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sub.__anext__(), 0.3)
        await sub.aclose()


async def test_subscriber_during_8_writers_sees_5000_exactly_once(store: Store, realm: str) -> None:
    acknowledged: list[str] = []

    async def writer(w: int) -> None:
        for i in range(625):
            r = await store.append(realm, "d", f"e{w}", "t", [w, i])
            acknowledged.append(r.first.event_id)

    writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
    await asyncio.sleep(0.01)  # the subscriber starts while the writers are busy
    sub = store.subscribe(Scope(realm, "d"))
    got = await take(sub, 5000, timeout=120)
    await asyncio.gather(*writers)
    await sub.aclose()
    ids = [e.event_id for e in got]
    assert len(set(ids)) == 5000 and set(ids) == set(acknowledged)
    page_ids = [e.event_id for e in await read_all(store, Scope(realm, "d"), limit=10_000)]
    assert ids == page_ids  # the stream's order is the scope's commit order
    for w in range(8):
        mine = [e.event[1] for e in got if e.entity == f"e{w}"]
        assert mine == list(range(625))


async def test_slow_subscriber_catches_up_without_loss(store: Store, realm: str) -> None:
    sub = store.subscribe(Scope(realm, "d"))
    await store.append(realm, "d", "e", "t", 0)
    assert [e.event for e in await take(sub, 1)] == [0]
    # The subscriber reads nothing while 3,000 events commit, then catches up.
    for chunk in range(3):
        await store.append_batch(realm, "d", "e", [{"type": "t", "event": 1 + chunk * 1000 + i} for i in range(1000)])
    got = await take(sub, 3000)
    assert [e.event for e in got] == list(range(1, 3001))
    await sub.aclose()


async def test_200_concurrent_subscribers(store: Store, realm: str) -> None:
    subs = [store.subscribe(Scope(realm, "d")) for _ in range(200)]
    readers = [asyncio.ensure_future(take(s, 20)) for s in subs]
    for i in range(20):
        await store.append(realm, "d", f"e{i % 4}", "t", i)
    results = await asyncio.gather(*readers)
    assert all([e.event for e in r] == list(range(20)) for r in results)
    for s in subs:
        await s.aclose()


# ------------------------------------------------------------------ over HTTP (SSE)


class SSEReader:
    """Reads an SSE response incrementally."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.decoder = SSEDecoder()
        self.chunks = response.aiter_raw()
        self.pending: list[SSEMessage] = []
        self.raw = b""

    async def next(self, timeout: float = 20) -> SSEMessage:
        while not self.pending:
            chunk = await asyncio.wait_for(self.chunks.__anext__(), timeout)
            self.raw += chunk
            self.pending.extend(self.decoder.feed(chunk))
        return self.pending.pop(0)

    async def data_within(self, seconds: float) -> list[SSEMessage]:
        """Every data message (not comments) that arrives within ``seconds``; ends the reader."""
        deadline = time.monotonic() + seconds
        got = [m for m in self.pending if m.data is not None]
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(self.chunks.__anext__(), left)
            except asyncio.TimeoutError:
                break
            self.raw += chunk
            got += [m for m in self.decoder.feed(chunk) if m.data is not None]
        return got

    async def events(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            event = orjson.loads(message.data or "null")
            assert message.id == event["event_id"]
            out.append(event)
        return out


@pytest.fixture
def live(store_url: str) -> Any:
    with ThreadServer(store_url, heartbeat=0.3) as server:
        yield server


async def test_sse_catch_up_live_and_resume(live: ThreadServer, realm: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        ids = [(await http.post(f"/{realm}/d/e/t", json={"event": i})).json()["event_id"] for i in range(3)]
        async with http.stream("GET", f"/{realm}/d", headers={"accept": "text/event-stream"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            reader = SSEReader(r)
            assert [e["event"] for e in await reader.events(3)] == [0, 1, 2]
            await http.post(f"/{realm}/d/e2/t", json={"event": 3})
            live_event = (await reader.events(1))[0]
            assert live_event["event"] == 3 and live_event["entity"] == "e2"
            # The data line is the same event object as the JSON read.
            read = (await http.get(f"/{realm}/d")).json()["events"]
            assert read[-1] == live_event
            # Idle: keep-alive comments arrive (heartbeat 0.3 s here, 15 s by default).
            assert await reader.data_within(0.8) == []
            assert b"\n: keep-alive\n" in b"\n" + reader.raw
        # Reconnect with Last-Event-ID: it wins over `following`.
        headers = {"accept": "text/event-stream", "last-event-id": ids[1]}
        async with http.stream("GET", f"/{realm}/d", params={"following": ids[0]}, headers=headers) as r:
            assert [e["event"] for e in await SSEReader(r).events(2)] == [2, 3]
        async with http.stream("GET", f"/{realm}/d/e/t", params={"following": ids[0]},
                               headers={"accept": "text/event-stream"}) as r:
            assert [e["event"] for e in await SSEReader(r).events(2)] == [1, 2]


async def test_sse_unknown_last_event_id_is_404(live: ThreadServer, realm: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        await http.post(f"/{realm}/d/e/t", json={"event": 1})
        r = await http.get(f"/{realm}/d", headers={"accept": "text/event-stream",
                                                   "last-event-id": "01a2173a-af2e-701e-bbf0-c30a3181d1d9"})
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        r = await http.get(f"/{realm}/d", headers={"accept": "text/event-stream", "last-event-id": "x"})
        assert r.status_code == 400


async def test_sse_every_scope_and_type_filter(live: ThreadServer, realm: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        for i in range(6):
            await http.post(f"/{realm}/d{i % 2}/e{i % 3}/t{i % 2}", json={"event": i})
        cases = [(f"/{realm}", {}, [0, 1, 2, 3, 4, 5]), (f"/{realm}", {"type": "t1"}, [1, 3, 5]),
                 (f"/{realm}/d0", {}, [0, 2, 4]), (f"/{realm}/d0/e0", {}, [0]),
                 (f"/{realm}/d1/e1/t1", {}, [1]), (f"/{realm}/d1", {"type": "t0"}, [])]
        for url, params, expected in cases:
            async with http.stream("GET", url, params=params, headers={"accept": "text/event-stream"}) as r:
                reader = SSEReader(r)
                got = await reader.events(len(expected))
                assert [e["event"] for e in got] == expected
                assert await reader.data_within(0.7) == []  # only keep-alive comments follow


async def test_sse_exactly_once_under_concurrent_writers(live: ThreadServer, realm: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=60,
                                 limits=httpx.Limits(max_connections=20)) as http:
        acknowledged: list[str] = []

        async def writer(w: int) -> None:
            for i in range(150):
                r = await http.post(f"/{realm}/d/e{w}/t", json={"event": [w, i]})
                assert r.status_code == 201
                acknowledged.append(r.json()["event_id"])

        writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
        await asyncio.sleep(0.05)
        async with http.stream("GET", f"/{realm}/d", headers={"accept": "text/event-stream"}) as r:
            got = await SSEReader(r).events(1200, timeout=90)
        await asyncio.gather(*writers)
        ids = [e["event_id"] for e in got]
        assert len(set(ids)) == 1200 and set(ids) == set(acknowledged)


async def test_sse_connections_are_cleaned_up(live: ThreadServer, realm: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=httpx.Limits(max_connections=100)) as http:
        await http.post(f"/{realm}/d/e/t", json={"event": 1})
        baseline = live.task_count()
        for _round in range(10):
            async def one() -> None:
                async with http.stream("GET", f"/{realm}/d", headers={"accept": "text/event-stream"}) as r:
                    await SSEReader(r).events(1)

            await asyncio.gather(*[one() for _ in range(100)])
        deadline = time.monotonic() + 10
        while (live.app.open_streams or live.task_count() > baseline + 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert live.app.open_streams == 0
        assert live.task_count() <= baseline + 2


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_server_shutdown_closes_streams(backend: Any, store_url: str, realm: str, tmp_path: Any) -> None:
    with ProcessServer(store_url, cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await http.post(f"/{realm}/d/e/t", json={"event": 1})
            async with http.stream("GET", f"/{realm}/d", headers={"accept": "text/event-stream"}) as r:
                reader = SSEReader(r)
                await reader.events(1)
                started = time.monotonic()
                assert server.proc is not None
                server.proc.terminate()
                with pytest.raises(StopAsyncIteration):
                    while True:
                        await reader.next(10)
                assert time.monotonic() - started < 10
        assert server.proc.wait(20) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_tail_command_reconnects_with_last_event_id(backend: Any, tmp_path: Any, realm: str) -> None:
    db = f"sqlite:///{tmp_path}/tail.db"
    server = ProcessServer(db).start()
    tail = subprocess.Popen([sys.executable, "-m", "perhap.cli", "tail", f"{realm}/d", "--url", server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(3):
            httpx.post(f"{server.url}/{realm}/d/e/t", json={"event": i})
        lines = [tail.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        server.kill()  # the connection drops
        server = ProcessServer(db, server.port).start()
        for i in range(3, 6):
            httpx.post(f"{server.url}/{realm}/d/e/t", json={"event": i})
        lines += [tail.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        events = [orjson.loads(line) for line in lines]
        assert [e["event"] for e in events] == [0, 1, 2, 3, 4, 5]
        assert all(e["realm"] == realm for e in events)
    finally:
        tail.kill()
        tail.wait()
        server.kill()
