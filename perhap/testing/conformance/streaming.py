"""The streaming contract: live subscriptions in process and Server-Sent Events over a socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ...model import Event, Scope
from ...sse import SSEDecoder, SSEMessage
from ...store.base import Store
from .base import BackendContract, StoreFactory
from .helpers import aclose, read_all, take, wait_until
from .live import LiveServer


class SSEReader:
    """Reads an SSE response incrementally."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.decoder = SSEDecoder()
        self.chunks = response.aiter_raw()
        self.pending: list[SSEMessage] = []
        self.raw = b""

    async def next(self, timeout: float = 20) -> SSEMessage:
        """The next message (comments are not messages); StopAsyncIteration when the stream ends,
        TimeoutError when none completes within ``timeout`` (keep-alive comments do not count)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no SSE message within {timeout} s")
            chunk = await asyncio.wait_for(self.chunks.__anext__(), left)
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
            except TimeoutError:
                break
            self.raw += chunk
            got += [m for m in self.decoder.feed(chunk) if m.data is not None]
        return got

    async def events(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The next ``n`` events, checking that each message's id is its event's id."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            message = await self.next(max(0.1, deadline - time.monotonic()))
            event: dict[str, Any] = orjson.loads(message.data or "null")
            assert message.id == event["event_id"]
            out.append(event)
        return out


SSE = {"accept": "text/event-stream"}


class StreamingContract(BackendContract):
    """Subscriptions see every event of their scope exactly once, in order, live and after a gap."""

    @pytest.fixture
    def live(self, store_factory: StoreFactory) -> Iterator[LiveServer]:
        """A real server over the backend (SSE needs a socket)."""
        with LiveServer(store_factory, heartbeat=0.3) as server:
            yield server

    # ------------------------------------------------------------- in process (store.subscribe)

    async def test_subscribe_catch_up_then_live(self, store: Store, realm: str) -> None:
        for i in range(5):
            await store.append(realm, "d", "e", "t", i)
        sub = store.subscribe(Scope(realm, "d"))
        first = await take(sub, 5)
        assert [e.event for e in first] == [0, 1, 2, 3, 4]
        reading = asyncio.ensure_future(take(sub, 5))
        # Nothing arrives while nothing is written: the subscriber has caught up and waits live.
        done, _ = await asyncio.wait({reading}, timeout=0.05)
        assert not done
        for i in range(5, 10):
            await store.append(realm, "d", f"e{i}", "t", i)
        live = await reading
        assert [e.event for e in live] == [5, 6, 7, 8, 9]
        await aclose(sub)

    async def test_subscribe_following(self, store: Store, realm: str) -> None:
        ids = [(await store.append(realm, "d", "e", "t", i)).first.event_id for i in range(6)]
        sub = store.subscribe(Scope(realm, "d", "e"), following=ids[2])
        assert [e.event for e in await take(sub, 3)] == [3, 4, 5]
        await aclose(sub)

    async def test_subscribe_scope_filtering(self, store: Store, realm: str) -> None:
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
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.__anext__(), 0.3)
            await aclose(sub)

    async def test_subscriber_during_8_writers_sees_5000_exactly_once(self, store: Store, realm: str) -> None:
        acknowledged: list[str] = []
        busy = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(625):
                r = await store.append(realm, "d", f"e{w}", "t", [w, i])
                acknowledged.append(r.first.event_id)
                if len(acknowledged) >= 100:
                    busy.set()

        writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
        await asyncio.wait_for(busy.wait(), 60)  # the subscriber starts while the writers are busy
        sub = store.subscribe(Scope(realm, "d"))
        got: list[Event] = await take(sub, 5000, timeout=120)
        await asyncio.gather(*writers)
        await aclose(sub)
        ids = [e.event_id for e in got]
        assert len(set(ids)) == 5000 and set(ids) == set(acknowledged)
        page_ids = [e.event_id for e in await read_all(store, Scope(realm, "d"), limit=10_000)]
        assert ids == page_ids  # the stream's order is the scope's commit order
        for w in range(8):
            mine = [e.event[1] for e in got if e.entity == f"e{w}"]
            assert mine == list(range(625))

    async def test_slow_subscriber_catches_up_without_loss(self, store: Store, realm: str) -> None:
        sub = store.subscribe(Scope(realm, "d"))
        await store.append(realm, "d", "e", "t", 0)
        assert [e.event for e in await take(sub, 1)] == [0]
        # The subscriber reads nothing while 3,000 events commit, then catches up.
        for chunk in range(3):
            batch = [{"type": "t", "event": 1 + chunk * 1000 + i} for i in range(1000)]
            await store.append_batch(realm, "d", "e", batch)
        got = await take(sub, 3000)
        assert [e.event for e in got] == list(range(1, 3001))
        await aclose(sub)

    async def test_200_concurrent_subscribers(self, store: Store, realm: str) -> None:
        subs = [store.subscribe(Scope(realm, "d")) for _ in range(200)]
        readers = [asyncio.ensure_future(take(s, 20)) for s in subs]
        for i in range(20):
            await store.append(realm, "d", f"e{i % 4}", "t", i)
        results = await asyncio.gather(*readers)
        assert all([e.event for e in r] == list(range(20)) for r in results)
        for s in subs:
            await aclose(s)

    async def test_subscribe_from_a_position_with_several_types(self, store: Store, realm: str) -> None:
        for i in range(9):
            await store.append(realm, "d", f"e{i % 2}", f"t{i % 3}", i)
        events = await read_all(store, Scope(realm))
        start = events[3].position
        sub = store.subscribe(Scope(realm), after_position=start, types=["t0", "t2"])
        expected = [e for e in events[4:] if e.type in ("t0", "t2")]
        got = await take(sub, len(expected))
        assert [(e.event_id, e.position) for e in got] == [(e.event_id, e.position) for e in expected]
        reading = asyncio.ensure_future(take(sub, 1))
        await store.append(realm, "d", "e0", "t1", "filtered out")
        live = await store.append(realm, "d2", "e0", "t2", "wanted")
        assert [(e.event_id, e.position) for e in await reading] == [(live.first.event_id, live.first.position)]
        await aclose(sub)
        # A position past the head waits for the next event; the same with a domain's subscription.
        head = (await store.read(Scope(realm), order="desc", limit=1)).events[0].position
        sub = store.subscribe(Scope(realm, "d"), after_position=head)
        reading = asyncio.ensure_future(take(sub, 1))
        later = await store.append(realm, "d", "e1", "t1", "later")
        assert [e.event_id for e in await reading] == [later.first.event_id]
        await aclose(sub)

    # ------------------------------------------------------------- over HTTP (SSE)

    async def test_sse_catch_up_live_and_resume(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            ids = [(await http.post(f"/{realm}/d/e/t", json={"event": i})).json()["event_id"] for i in range(3)]
            async with http.stream("GET", f"/{realm}/d", headers=SSE) as r:
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
            headers = {**SSE, "last-event-id": ids[1]}
            async with http.stream("GET", f"/{realm}/d", params={"following": ids[0]}, headers=headers) as r:
                assert [e["event"] for e in await SSEReader(r).events(2)] == [2, 3]
            async with http.stream("GET", f"/{realm}/d/e/t", params={"following": ids[0]}, headers=SSE) as r:
                assert [e["event"] for e in await SSEReader(r).events(2)] == [1, 2]
            # An empty Last-Event-ID is none at all (EventSource sends none then): the URL's start holds.
            headers = {**SSE, "last-event-id": ""}
            async with http.stream("GET", f"/{realm}/d", params={"following": ids[1]}, headers=headers) as r:
                assert r.status_code == 200 and [e["event"] for e in await SSEReader(r).events(2)] == [2, 3]

    async def test_sse_unknown_last_event_id_is_404(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            await http.post(f"/{realm}/d/e/t", json={"event": 1})
            r = await http.get(f"/{realm}/d", headers={**SSE, "last-event-id": "01a2173a-af2e-701e-bbf0-c30a3181d1d9"})
            assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
            r = await http.get(f"/{realm}/d", headers={**SSE, "last-event-id": "x"})
            assert r.status_code == 400

    async def test_sse_every_scope_and_type_filter(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            for i in range(6):
                await http.post(f"/{realm}/d{i % 2}/e{i % 3}/t{i % 2}", json={"event": i})
            cases: list[tuple[str, dict[str, str], list[int]]] = [
                (f"/{realm}", {}, [0, 1, 2, 3, 4, 5]), (f"/{realm}", {"type": "t1"}, [1, 3, 5]),
                (f"/{realm}/d0", {}, [0, 2, 4]), (f"/{realm}/d0/e0", {}, [0]),
                (f"/{realm}/d1/e1/t1", {}, [1]), (f"/{realm}/d1", {"type": "t0"}, [])]
            for url, params, expected in cases:
                async with http.stream("GET", url, params=params, headers=SSE) as r:
                    reader = SSEReader(r)
                    got = await reader.events(len(expected))
                    assert [e["event"] for e in got] == expected
                    assert await reader.data_within(0.7) == []  # only keep-alive comments follow

    async def test_sse_exactly_once_under_concurrent_writers(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=60,
                                     limits=httpx.Limits(max_connections=20)) as http:
            acknowledged: list[str] = []
            busy = asyncio.Event()

            async def writer(w: int) -> None:
                for i in range(150):
                    r = await http.post(f"/{realm}/d/e{w}/t", json={"event": [w, i]})
                    assert r.status_code == 201
                    acknowledged.append(r.json()["event_id"])
                    if len(acknowledged) >= 40:
                        busy.set()

            writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
            await asyncio.wait_for(busy.wait(), 60)  # the stream opens while the writers are busy
            async with http.stream("GET", f"/{realm}/d", headers=SSE) as r:
                got = await SSEReader(r).events(1200, timeout=90)
            await asyncio.gather(*writers)
            ids = [e["event_id"] for e in got]
            assert len(set(ids)) == 1200 and set(ids) == set(acknowledged)

    async def test_sse_connections_are_cleaned_up(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=httpx.Limits(max_connections=100)) as http:
            await http.post(f"/{realm}/d/e/t", json={"event": 1})
            baseline = live.task_count()

            async def one() -> None:
                async with http.stream("GET", f"/{realm}/d", headers=SSE) as r:
                    await SSEReader(r).events(1)

            for _round in range(10):
                await asyncio.gather(*[one() for _ in range(100)])
            await wait_until(lambda: live.app.open_streams == 0 and live.task_count() <= baseline + 2,
                             "every stream's tasks to end", timeout=10)

    async def test_sse_after_position_several_types_and_positions(self, live: LiveServer, realm: str) -> None:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            for i in range(8):
                assert (await http.post(f"/{realm}/d/e{i % 2}/t{i % 3}", json={"event": i})).status_code == 201
            read = (await http.get(f"/{realm}")).json()["events"]
            assert all(isinstance(e["position"], int) for e in read)
            start = read[2]["position"]
            params = [("after_position", start), ("type", "t0"), ("type", "t1")]
            expected = [e for e in read[3:] if e["type"] in ("t0", "t1")]
            for url in (f"/{realm}", f"/{realm}/d", f"/{realm}/d/e1"):
                async with http.stream("GET", url, params=params, headers=SSE) as r:
                    assert r.status_code == 200
                    reader = SSEReader(r)
                    want = [e for e in expected if url != f"/{realm}/d/e1" or e["entity"] == "e1"]
                    assert await reader.events(len(want)) == want  # data objects carry positions
                    await http.post(f"/{realm}/d/e1/t2", json={"event": "filtered out"})
                    await http.post(f"/{realm}/d/e1/t1", json={"event": "wanted"})
                    got = (await reader.events(1))[0]
                    assert got["event"] == "wanted" and got["position"] > want[-1]["position"]
                    expected.append(got)
            for query, names in [("order=desc", ["order"]), ("after_position=1&order=desc", ["order"]),
                                 (f"following={read[0]['event_id']}&after_position=1", ["following", "after_position"]),
                                 ("after_position=x", ["after_position"]),
                                 ("limit=0", ["limit"]), ("limit=abc", ["limit"]), ("limit=10001", ["limit"]),
                                 ("&".join(f"type=t{i}" for i in range(101)), ["type"])]:
                r = await http.get(f"/{realm}/d?{query}", headers=SSE)
                assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", query
                for name in names:
                    assert name in r.json()["detail"], (query, r.json())
