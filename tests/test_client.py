"""The Python client (perhap.Client, perhap.AsyncClient) against the real app, for every backend:
in process through the transport seam, and against a real `perhap serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import perhap
from perhap import AsyncClient, Client, Scope, Store
from perhap.app import PerhapApp
from perhap.client import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    EventIdConflict,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    PerhapClientError,
    Unavailable,
    VersionConflict,
)
from tests.conftest import BACKENDS, get_provider
from tests.helpers import take
from tests.servers import ProcessServer, free_port

UNKNOWN_ID = "01a2173a-af2e-701e-bbf0-c30a3181d1d9"


# --------------------------------------------------------------------------- in-process transports


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """The ASGI app in process, with response bodies streamed as the app sends them.

    httpx.ASGITransport waits for the whole body, which never comes on an SSE stream; this one
    hands chunks over as they are sent and tells the app the client left when the body is closed.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": request.method, "scheme": url.scheme, "path": url.path,
                 "raw_path": url.raw_path.split(b"?")[0], "query_string": url.query,
                 "headers": [(k.lower(), v) for k, v in request.headers.raw],
                 "client": ("127.0.0.1", 1), "server": (url.host, url.port or 80)}
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        gone = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set_result(message)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await chunks.put(message["body"])
                if not message.get("more_body", False):
                    await chunks.put(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                await chunks.put(None)
                if not started.done():
                    started.set_exception(RuntimeError("the app sent no response"))

        task = asyncio.ensure_future(run())
        start = await started

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                while (chunk := await chunks.get()) is not None:
                    yield chunk

            async def aclose(self) -> None:
                gone.set()
                await asyncio.wait_for(task, 10)

        return httpx.Response(start["status"], headers=start.get("headers", []), stream=Body())


class SyncBridge(httpx.BaseTransport):
    """Lets the blocking Client, run in a worker thread, reach an async transport on ``loop``."""

    def __init__(self, transport: httpx.AsyncBaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport, self.loop = transport, loop

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._run(self.transport.handle_async_request(request))
        stream = response.stream
        run = self._run

        class Body(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                chunks = stream.__aiter__()

                async def next_chunk() -> bytes | None:
                    try:
                        return await chunks.__anext__()  # type: ignore[no-any-return]
                    except StopAsyncIteration:
                        return None

                while (chunk := run(next_chunk())) is not None:
                    yield chunk

            def close(self) -> None:
                run(stream.aclose())

        return httpx.Response(response.status_code, headers=response.headers, stream=Body())


@pytest.fixture
async def aclient(app: PerhapApp) -> AsyncIterator[AsyncClient]:
    async with AsyncClient("http://perhap.test", transport=httpx.ASGITransport(app=app)) as c:
        yield c


@pytest.fixture
async def sync_in_process(app: PerhapApp) -> AsyncIterator[Any]:
    """Run a function with a blocking Client on the in-process app, in a worker thread."""
    bridge = SyncBridge(StreamingASGITransport(app), asyncio.get_running_loop())

    async def run(fn: Any) -> Any:
        def target() -> Any:
            with Client("http://perhap.test", transport=bridge) as c:
                return fn(c)

        return await asyncio.to_thread(target)

    yield run


# --------------------------------------------------------------------------- AsyncClient in process


async def test_append_read_and_idempotent_replay(aclient: AsyncClient, store: Store, realm: str) -> None:
    eid = str(uuid.uuid4())
    first = await aclient.append(realm, "d", "e", "created", {"a": [1, "ü"]}, event_id=eid.upper(),
                                 meta={"corr": "x"}, expected_version=-1)
    assert first.created and first.first.event_id == eid and first.first.version == 0
    again = await aclient.append(realm, "d", "e", "created", {"a": [1, "ü"]}, event_id=eid, meta={"corr": "x"})
    assert not again.created and again.first == first.first
    second = await aclient.append(realm, "d", "e", "renamed", None)
    assert second.first.version == 1
    # The client's events are the store's own value type, equal to what the store reads.
    got = [e async for e in aclient.read(realm, "d", "e")]
    stored = (await store.read(Scope(realm, "d", "e"))).events
    assert got == stored
    assert [e.to_dict() for e in got][0] == {
        "event_id": eid, "realm": realm, "domain": "d", "entity": "e", "type": "created",
        "event": {"a": [1, "ü"]}, "meta": {"corr": "x"}, "version": 0, "position": first.first.position,
        "timestamp": first.first.timestamp}
    assert second.first.position > first.first.position == stored[0].position
    assert (await aclient.get_event(realm, "d", eid)) == stored[0]


async def test_read_follows_every_page_in_every_scope(aclient: AsyncClient, realm: str) -> None:
    for i in range(23):
        await aclient.append(realm, f"d{i % 2}", f"e{i % 3}", f"t{i % 2}", i)

    async def values(*args: Any, **kw: Any) -> list[Any]:
        return [e.event async for e in aclient.read(*args, page_size=4, **kw)]

    assert await values(realm) == list(range(23))
    assert await values(realm, type="t1") == list(range(1, 23, 2))
    assert await values(f"{realm}/d0") == list(range(0, 23, 2))
    assert await values(realm, "d0", "e0") == [0, 6, 12, 18]
    assert await values(f"{realm}/d1/e1/t1") == [1, 7, 13, 19]
    assert await values(Scope(realm, "d1", "e1")) == [1, 7, 13, 19]
    ids = [e.event_id async for e in aclient.read(realm)]
    assert await values(realm, following=ids[19]) == [20, 21, 22]
    assert await values(realm + "x") == []  # an unknown realm is an empty scope
    with pytest.raises(NotFound):
        await values(realm, "d0", following=ids[1])  # event 1 is in d1


async def test_keys_every_page(aclient: AsyncClient, realm: str) -> None:
    for i in range(7):
        await aclient.append(realm, f"d{i % 3}", f"e{i}", f"t{i % 2}", i)
        await aclient.append(realm, f"d{i % 3}", f"e{i}", "z", i)
    assert realm in [k async for k in aclient.keys(page_size=1)]
    assert [k async for k in aclient.keys(realm, page_size=2)] == ["d0", "d1", "d2"]
    assert [k async for k in aclient.keys(realm, "d0", page_size=2)] == ["e0", "e3", "e6"]
    assert [k async for k in aclient.keys(realm, "d1", "e1", page_size=1)] == ["t1", "z"]
    assert [k async for k in aclient.keys(realm, "nope")] == []


async def test_batches_and_typed_errors(aclient: AsyncClient, realm: str) -> None:
    batch: list[dict[str, Any]] = [{"type": "t", "event": i, "event_id": str(uuid.uuid4())} for i in range(3)]
    result = await aclient.append_batch(realm, "d", "e", batch, expected_version=-1)
    assert result.created and [a.version for a in result.events] == [0, 1, 2]
    assert (await aclient.append_batch(realm, "d", "e", batch)).created is False

    with pytest.raises(VersionConflict) as info:
        await aclient.append(realm, "d", "e", "t", 3, expected_version=0)
    error = info.value
    assert error.current_version == 2 and error.expected_version == 0 and error.status == 409
    assert error.problem["type"] == "urn:perhap:problem:version-conflict" and error.detail
    # One except clause for the in-process store and the client alike.
    assert isinstance(error, perhap.VersionConflict) and isinstance(error, Conflict)
    assert isinstance(error, PerhapClientError) and isinstance(error, perhap.PerhapError)
    assert "409" in error.one_line() and "\n" not in error.one_line()

    with pytest.raises(EventIdConflict) as id_info:
        await aclient.append(realm, "d", "other", "t", "different", event_id=batch[0]["event_id"])
    assert id_info.value.event_id == batch[0]["event_id"] and isinstance(id_info.value, perhap.EventIdConflict)

    with pytest.raises(BadRequest) as bad:
        await aclient.append(realm, "d", "e", "t", 1, event_id="not-a-uuid")
    assert bad.value.status == 400 and isinstance(bad.value, perhap.InvalidInput)
    with pytest.raises(BadRequest):
        await aclient.append_batch(realm, "d", "e", [])
    with pytest.raises(NotFound) as missing:
        await aclient.get_event(realm, "d", UNKNOWN_ID)
    assert isinstance(missing.value, perhap.NotFound)
    # Bad names never leave the process (and never reach a different route, like `keys`).
    for args in (("_sys", "d", "e", "t"), (realm, "keys", "e", "t"), (realm, "d", "a/b", "t"), (realm, "d", "e", "")):
        with pytest.raises(perhap.InvalidInput):
            await aclient.append(*args, 1)
    with pytest.raises(perhap.InvalidInput):
        [e async for e in aclient.read(realm, "d", "keys")]
    with pytest.raises(perhap.InvalidInput):
        await aclient.get_event(realm, "d", "nope")


async def test_get_event_of_another_domain_is_not_found(aclient: AsyncClient, realm: str) -> None:
    eid = (await aclient.append(realm, "d1", "e", "t", 1)).first.event_id
    assert (await aclient.get_event(realm, "d1", eid)).event == 1
    with pytest.raises(NotFound) as other_domain:
        await aclient.get_event(realm, "d2", eid)  # the server reads an (empty) entity here
    # A problem like the server's own 404 (it was empty: e.problem had no status, type or title).
    with pytest.raises(NotFound) as unknown:
        await aclient.get_event(realm, "d1", str(uuid.uuid4()))
    assert other_domain.value.problem["status"] == unknown.value.problem["status"] == 404
    assert other_domain.value.problem["type"] == unknown.value.problem["type"] == "urn:perhap:problem:not-found"
    assert set(other_domain.value.problem) == {"type", "title", "status", "detail"}


async def test_payload_too_large(store: Store, realm: str) -> None:
    app = PerhapApp(store, max_body=1000)
    async with AsyncClient("http://perhap.test", transport=httpx.ASGITransport(app=app)) as c:
        with pytest.raises(PayloadTooLarge) as info:
            await c.append(realm, "d", "e", "t", "x" * 2000)
    assert info.value.status == 413 and info.value.extra["max_body"] == 1000


async def test_any_json_value_and_big_integers(aclient: AsyncClient, realm: str) -> None:
    values: list[Any] = [None, True, 0, -1.5, 1e300, "text\n\"quoted\"", [], {}, 2**64 + 1, {"n": -(10**30)},
              {"deep": [{"x": "✓"}]}]
    for v in values:
        await aclient.append(realm, "d", "e", "t", v)
    assert [e.event async for e in aclient.read(realm, "d", "e")] == values
    batch = [{"type": "t", "event": 10**25}, {"type": "t", "event": 1, "meta": {"big": 10**25}}]
    await aclient.append_batch(realm, "d", "b", batch)
    assert [(e.event, e.meta) async for e in aclient.read(realm, "d", "b")] == [(10**25, {}), (1, {"big": 10**25})]


async def test_subscribe_in_process(store: Store, realm: str) -> None:
    app = PerhapApp(store, heartbeat=0.3)
    async with AsyncClient("http://perhap.test", transport=StreamingASGITransport(app)) as c:
        ids = [(await c.append(realm, "d", f"e{i % 2}", f"t{i % 2}", i)).first.event_id for i in range(4)]
        async with contextlib.aclosing(c.subscribe(realm, "d")) as sub:
            assert [e.event for e in await take(sub, 4)] == [0, 1, 2, 3]
            await c.append(realm, "d", "e9", "t", 4)
            live = await take(sub, 1)
            assert live[0].event == 4 and live[0].entity == "e9"
        async with contextlib.aclosing(c.subscribe(realm, type="t1", following=ids[1])) as sub:
            await c.append(realm, "d", "e1", "t1", 5)
            assert [e.event for e in await take(sub, 2)] == [3, 5]
        with pytest.raises(NotFound):
            await take(c.subscribe(realm, "d", following=UNKNOWN_ID), 1)
    await _until(lambda: app.open_streams == 0)  # closing the iterator ended the stream on the server


async def test_newest_first_positions_types_and_version_bounds(aclient: AsyncClient, realm: str) -> None:
    for i in range(23):
        await aclient.append(realm, f"d{i % 2}", f"e{i % 3}", f"t{i % 3}", i)

    async def values(*args: Any, **kw: Any) -> list[Any]:
        return [e.event async for e in aclient.read(*args, page_size=4, **kw)]

    everything = [e async for e in aclient.read(realm)]
    positions = [e.position for e in everything]
    assert positions == sorted(positions) and len(set(positions)) == 23
    # Newest first, through every page (`next` continues in the same order), in every scope.
    assert await values(realm, order="desc") == list(range(22, -1, -1))
    assert await values(f"{realm}/d1", order="desc") == list(range(21, 0, -2))
    assert await values(realm, "d0", "e0", order="desc") == [18, 12, 6, 0]
    # Several types at once, at every scope, in both orders.
    assert await values(realm, types=["t0", "t2"]) == [i for i in range(23) if i % 3 != 1]
    assert await values(realm, "d0", types=("t1", "t2"), order="desc") == [
        i for i in range(22, -1, -2) if i % 3 != 0]
    assert await values(realm, "d1", "e1", types=["t1"]) == [1, 7, 13, 19]
    # Position bounds: a checkpoint to resume from, and pages backwards from a position.
    assert await values(realm, after_position=positions[19]) == [20, 21, 22]
    assert await values(realm, order="desc", before_position=positions[3]) == [2, 1, 0]
    assert await values(realm, types=["t0"], after_position=positions[10]) == [12, 15, 18, 21]
    assert await values(realm, after_position=2**63 - 1) == []  # beyond the head: empty, not an error
    # Version bounds on an entity: after_version exclusive, until_version inclusive.
    assert await values(realm, "d0", "e0", after_version=0, until_version=2) == [6, 12]
    assert await values(realm, "d0", "e0", until_version=1, order="desc") == [6, 0]
    # The head of a realm and an entity's last event: newest first, one event.
    head = [e async for e in aclient.read(realm, order="desc", page_size=1)][0]
    assert head == everything[-1]
    answer = await aclient.read_page(realm, "d0", "e0", order="desc", limit=1)
    entity = [e for e in everything if (e.domain, e.entity) == ("d0", "e0")]
    assert answer is not None and answer[0].events == entity[-1:]  # an entity's last event
    assert await aclient.read_page(realm, "d0", "e0", order="desc", limit=1, if_none_match=answer[1]) is None
    # Clashes are refused before anything is sent, with the store's own words.
    for kw in ({"following": everything[0].event_id, "after_position": 1}, {"order": "desc", "after_position": 1},
               {"before_position": 5}, {"after_version": 1}, {"order": "sideways"},
               {"types": [f"t{i}" for i in range(101)]}):
        with pytest.raises(perhap.InvalidInput) as refused:
            [e async for e in aclient.read(realm, **kw)]
        assert not isinstance(refused.value, PerhapClientError), kw


async def test_append_many_and_its_conflicts(aclient: AsyncClient, store: Store, realm: str) -> None:
    await aclient.append(realm, "d", "stock-4", "received", {"n": 12})
    events = [{"entity": "order-17", "type": "placed", "event": {"total": 42}, "event_id": str(uuid.uuid4())},
              {"entity": "stock-4", "type": "reserved", "event": {"n": 1}, "meta": {"by": "me"}},
              {"entity": "order-17", "type": "priced", "event": 42}]
    if not store.supports_multi_entity:
        with pytest.raises(NotSupported) as unsupported:
            await aclient.append_many(realm, "d", events)
        assert unsupported.value.status == 501 and isinstance(unsupported.value, perhap.NotSupported)
        return
    result = await aclient.append_many(realm, "d", events, expected_versions={"order-17": -1, "stock-4": 0})
    assert result.created
    assert [(a.entity, a.version) for a in result.events] == [("order-17", 0), ("stock-4", 1), ("order-17", 1)]
    assert [a.position for a in result.events] == sorted(a.position for a in result.events)
    assert result.events[0].event_id == events[0]["event_id"]
    stored = [e async for e in aclient.read(realm, "d", order="desc", page_size=3)][:3][::-1]
    assert [(e.event_id, e.position) for e in stored] == [(a.event_id, a.position) for a in result.events]
    assert result.events[0].to_dict() == {"entity": "order-17", "event_id": stored[0].event_id, "version": 0,
                                          "position": stored[0].position, "timestamp": stored[0].timestamp}
    # A retry with the same ids is the original result; it stores nothing twice.
    retry = [dict(e, event_id=a.event_id) for e, a in zip(events, result.events, strict=True)]
    again = await aclient.append_many(realm, "d", retry)
    assert not again.created and again.events == result.events
    # Every failing expectation is listed, including a guard on an entity that gets no event.
    with pytest.raises(VersionConflict) as info:
        await aclient.append_many(realm, "d", [{"entity": "order-17", "type": "paid", "event": 1}],
                                  expected_versions={"order-17": 0, "stock-4": 1, "guard": 3})
    error = info.value
    assert sorted(error.conflicts) == [("guard", 3, -1), ("order-17", 0, 1)]
    assert isinstance(error, perhap.VersionConflict) and error.status == 409
    assert (error.expected_version, error.current_version) in {(3, -1), (0, 1)}
    assert len([e async for e in aclient.read(realm, "d")]) == 4  # nothing was stored
    # Bad input never leaves the process.
    for bad in ([], [{"type": "t", "event": 1}], [{"entity": "a/b", "type": "t", "event": 1}]):
        with pytest.raises(perhap.InvalidInput):
            await aclient.append_many(realm, "d", bad)
    # An event's own time (an import's) goes with it, as in a batch and in a Store (it was dropped).
    when = "2020-01-02T03:04:05.678901Z"
    timed = await aclient.append_many(realm, "d", [{"entity": "old", "type": "t", "event": 1, "timestamp": when},
                                                   {"entity": "new", "type": "t", "event": 2}])
    assert timed.events[0].timestamp == when and timed.events[1].timestamp != when
    assert [e.timestamp async for e in aclient.read(realm, "d", "old")] == [when]


async def test_subscribe_after_a_position_to_several_types(store: Store, realm: str) -> None:
    app = PerhapApp(store, heartbeat=0.3)
    async with AsyncClient("http://perhap.test", transport=StreamingASGITransport(app)) as c:
        appended = [(await c.append(realm, "d", "e", f"t{i % 3}", i)).first for i in range(6)]
        async with contextlib.aclosing(c.subscribe(realm, after_position=appended[2].position,
                                                   types=["t0", "t1"])) as sub:
            await c.append(realm, "d", "e", "t2", 6)
            await c.append(realm, "d", "e", "t1", 7)
            assert [(e.event, e.position > appended[2].position) for e in await take(sub, 3)] == [
                (3, True), (4, True), (7, True)]
        with pytest.raises(perhap.InvalidInput):
            await take(c.subscribe(realm, after_position=1, following=appended[0].event_id), 1)
    await _until(lambda: app.open_streams == 0)


# --------------------------------------------------------------------------- Client in process


async def test_blocking_client_in_process(sync_in_process: Any, realm: str) -> None:
    def work(c: Client) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["first"] = c.append(realm, "d", "e", "t", {"n": 0}, expected_version=-1)
        c.append_batch(realm, "d", "e", [{"type": "u", "event": n} for n in range(1, 6)])
        out["values"] = [e.event for e in c.read(realm, "d", page_size=2)]
        out["keys"] = list(c.keys(realm, "d", "e", page_size=1))
        out["event"] = c.get_event(realm, "d", out["first"].first.event_id)
        try:
            c.append(realm, "d", "e", "t", 1, expected_version=-1)
        except perhap.VersionConflict as exc:
            out["conflict"] = exc.current_version
        out["health"] = c.health() and c.ping()
        sub = c.subscribe(realm, "d", "e", "u")
        out["stream"] = [next(sub).event for _ in range(5)]
        sub.close()
        return out

    out = await sync_in_process(work)
    assert out["values"] == [{"n": 0}, 1, 2, 3, 4, 5]
    assert out["keys"] == ["t", "u"]
    assert out["event"].event == {"n": 0} and out["event"].version == 0
    assert out["conflict"] == 5 and out["health"] is True
    assert out["stream"] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- a real server process


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    """`perhap serve` as a user runs it, one per backend for this module's tests."""
    provider = get_provider(request.param, tmp_path_factory)
    with ProcessServer(provider.new_url(), None, "--heartbeat", "1",
                       cwd=tmp_path_factory.mktemp("client-server")) as s:
        yield s


def test_blocking_client_against_a_server(server: ProcessServer, realm: str) -> None:
    with Client(server.url) as c:
        assert c.health()
        results = [c.append(realm, f"d{i % 2}", f"e{i % 4}", "t", {"i": i}) for i in range(12)]
        assert all(r.created for r in results)
        got = list(c.read(realm, page_size=5))
        assert [e.event["i"] for e in got] == list(range(12))
        assert [e.event_id for e in got] == [r.first.event_id for r in results]
        assert [e.version for e in c.read(realm, "d1", "e3", page_size=1)] == [0, 1, 2]
        assert list(c.keys(realm, page_size=1)) == ["d0", "d1"]
        assert c.get_event(realm, "d0", results[4].first.event_id).event == {"i": 4}
        with pytest.raises(VersionConflict) as info:
            c.append(realm, "d0", "e0", "t", 0, expected_version=-1)
        assert info.value.current_version == 2
        with pytest.raises(NotFound):
            list(c.read(realm, following=UNKNOWN_ID))
        with pytest.raises(BadRequest):
            list(c.read(realm, page_size=0))
        # Newest first through every page; the head of the realm; a checkpoint to resume from.
        assert [e.event["i"] for e in c.read(realm, order="desc", page_size=5)] == list(range(11, -1, -1))
        assert next(c.read(realm, order="desc", page_size=1)) == got[-1]
        assert [e.event["i"] for e in c.read(realm, after_position=got[8].position)] == [9, 10, 11]
        assert [e.event["i"] for e in c.read(realm, "d0", order="desc", before_position=got[4].position,
                                             page_size=1)] == [2, 0]
        # One page at a time, with its ETag: asking again with it costs no body while nothing changed.
        page, etag = c.read_page(realm, order="desc", limit=5)
        assert page.events == got[:-6:-1] and page.next == got[7].event_id and etag
        assert c.read_page(realm, order="desc", limit=5, if_none_match=etag) is None
        rest = c.read_page(realm, order="desc", limit=10, following=page.next)
        assert rest is not None and rest[0].events == got[6::-1] and rest[0].next is None
        newer = c.append(realm, "d0", "e0", "t", {"i": 12}).first
        answer = c.read_page(realm, order="desc", limit=5, if_none_match=etag)
        assert answer is not None and answer[0].events[0].event_id == newer.event_id and answer[1] != etag


async def test_async_client_against_a_server_one_writer_wins(server: ProcessServer, realm: str) -> None:
    async with AsyncClient(server.url) as c:
        await c.append(realm, "d", "e", "t", 0)

        async def attempt(n: int) -> str:
            try:
                await c.append(realm, "d", "e", "t", n, expected_version=0)
                return "won"
            except VersionConflict as exc:
                assert exc.current_version == 1
                return "lost"

        outcomes = await asyncio.gather(*[attempt(n) for n in range(10)])
        assert sorted(outcomes) == ["lost"] * 9 + ["won"]
        assert len([e async for e in c.read(realm, "d", "e", page_size=1)]) == 2


def test_subscribe_resumes_after_the_server_restarts(server: ProcessServer, realm: str) -> None:
    """The stream drops when the server dies; the iterator reconnects with Last-Event-ID and
    yields every event once, in order (here a stream started from a position, of two types: the
    reconnect resumes after the last event, not from the position again)."""
    retries: list[float] = []
    got: list[Any] = []
    errors: list[BaseException] = []
    restarted = threading.Event()
    with Client(server.url) as c:
        start = c.append(realm, "d", "e", "t", -1).first.position
        for i in range(3):
            c.append(realm, "d", "e", "other", "not this type")
            c.append(realm, "d", "e", "t" if i % 2 else "u", i)

    def consume() -> None:
        try:
            with Client(server.url) as c:
                for event in c.subscribe(realm, "d", after_position=start, types=["t", "u"],
                                         on_retry=lambda e, d: retries.append(d)):
                    got.append(event)
                    if len(got) == 6:
                        return
        except BaseException as exc:  # surfaced by the assertions below
            errors.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    _wait(lambda: len(got) == 3)
    assert server.proc is not None
    server.proc.kill()  # the connection drops without a goodbye
    server.proc.wait(10)
    server.start()
    restarted.set()
    with Client(server.url) as c:
        for i in range(3, 6):
            c.append(realm, "d", "e", "other", "not this type")
            c.append(realm, "d", "e", "t" if i % 2 else "u", i)
    reader.join(30)
    assert not errors, errors
    assert [e.event for e in got] == [0, 1, 2, 3, 4, 5]
    assert len({e.event_id for e in got}) == 6 and retries



def test_getting_a_dropped_stream_back_waits_out_a_429_and_a_proxys_502_or_504() -> None:
    """Once a stream was served, the answers that reconnecting may meet while the server still
    counts the old stream against its limit (429) or restarts behind a proxy (502, 504) are waited
    out like a 503; before the stream was ever served, they are the caller's to see at once."""
    from perhap.client.errors import Unavailable
    from perhap.client.stream import StreamState

    request = httpx.Request("GET", "http://perhap.test/r")
    state = StreamState(lambda headers: request, "/r", None, None, None)

    def answer(status: int) -> httpx.Response:
        body = {"type": "urn:perhap:problem:x", "title": "x", "status": status, "detail": "x"}
        return httpx.Response(status, json=body, request=request)

    for status in (429, 502, 504, 400, 404):
        with pytest.raises(PerhapClientError):
            state.opened(answer(status))
    assert isinstance(state.opened(answer(503)), Unavailable)
    stream = httpx.Response(200, headers={"content-type": "text/event-stream"}, request=request)
    assert state.opened(stream) is None  # served once
    for status in (429, 502, 503, 504):
        assert isinstance(state.opened(answer(status)), PerhapClientError), status
    for status in (400, 401, 404):
        with pytest.raises(PerhapClientError):
            state.opened(answer(status))


async def test_a_password_in_the_url_never_shows_in_an_error(store: Store) -> None:
    """``http://user:password@host`` (httpx sends it as basic auth): every error's message and
    ``url`` show the password as ``***``, as ``--url`` is shown elsewhere: an answer that is no
    perhap server's, a problem+json answer, a server that cannot be reached."""
    async def not_perhap(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello"})

    secret = "s3cret"
    errors: list[PerhapClientError] = []
    for app in (not_perhap, PerhapApp(store)):
        async with AsyncClient(f"http://alice:{secret}@perhap.test",
                               transport=httpx.ASGITransport(app=app)) as c:  # type: ignore[arg-type]
            with pytest.raises(PerhapClientError) as info:  # not JSON, or a 409's problem+json
                await c.append("r", "d", "e", "t", 1, expected_version=5)
            errors.append(info.value)
    with Client(f"http://alice:{secret}@127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(PerhapClientError) as info:
            c.append("r", "d", "e", "t", 1)
        errors.append(info.value)
    for error in errors:
        assert secret not in str(error) and secret not in (error.url or ""), (error, error.url)
        assert "alice:***@" in (error.url or ""), error.url
    # A user name alone may be a token itself.
    with Client(f"http://{secret}@127.0.0.1:{free_port()}", timeout=2) as c, \
            pytest.raises(PerhapClientError) as info:
        c.append("r", "d", "e", "t", 1)
    assert secret not in str(info.value) and info.value.url is not None and "//***@" in info.value.url


def test_a_stream_of_something_else_is_a_client_error_both_clients_raise() -> None:
    """Bytes a perhap stream never holds (not UTF-8, not JSON, JSON but no event) end the stream
    with the client's own error, not a UnicodeDecodeError (which `perhap tail` called a bug)."""
    from perhap.client.stream import StreamState

    request = httpx.Request("GET", "http://perhap.test/r")
    for garbage in (b"id: x\ndata: \xff\xfe\n\n", b"data: {nope\n\n", b"data: [1]\n\n"):
        state = StreamState(lambda headers: request, "/r", None, None, None)
        with pytest.raises(PerhapClientError, match="unexpected data in the stream from /r"):
            state.feed(garbage)


async def test_a_closed_client_says_so_even_to_an_open_stream(server: ProcessServer, realm: str) -> None:
    """A request after close(), a stream's reconnection included, is the client's own error (httpx's
    RuntimeError came through, past `except PerhapError`)."""
    c = AsyncClient(server.url)
    await c.append(realm, "d", "e", "t", 0)
    sub = c.subscribe(f"{realm}/d/e")
    assert [e.event for e in await take(sub, 1)] == [0]
    await c.aclose()
    with pytest.raises(PerhapClientError, match="this client is closed"):
        await take(sub, 1)
    with pytest.raises(PerhapClientError, match="this client is closed"):
        await c.append(realm, "d", "e", "t", 1)
    with Client(server.url) as blocking:
        blocking.append(realm, "d", "e", "t", 1)
    with pytest.raises(PerhapClientError, match="this client is closed"):
        blocking.append(realm, "d", "e", "t", 2)
    with pytest.raises(PerhapClientError, match="this client is closed"):
        next(iter(blocking.subscribe(f"{realm}/d/e")))


def test_closing_a_client_ends_the_subscription_another_thread_reads(tmp_path: Path, realm: str) -> None:
    """A program shutting down closes its client from another thread: the thread reading a
    subscription must stop at once with the closed client's error (it went on waiting on its
    connection until the server's next heartbeat, a minute here, 15 s by default)."""
    with ProcessServer(f"sqlite:///{tmp_path}/s.db", None, "--heartbeat", "60", cwd=tmp_path) as server:
        _close_while_reading(server, realm)


def _close_while_reading(server: ProcessServer, realm: str) -> None:
    c = Client(server.url)
    c.append(realm, "d", "e", "t", 0)
    got: list[Any] = []
    raised: list[BaseException] = []
    first = threading.Event()

    def read() -> None:
        try:
            for e in c.subscribe(f"{realm}/d/e"):
                got.append(e.event)
                first.set()
        except BaseException as exc:  # what the reader got is the subject of the test
            raised.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(10)
    c.close()
    reader.join(10)
    assert not reader.is_alive()
    assert got == [0] and len(raised) == 1 and isinstance(raised[0], PerhapClientError), raised
    assert "this client is closed" in str(raised[0])


async def test_async_subscribe_against_a_server(server: ProcessServer, realm: str) -> None:
    async with AsyncClient(server.url) as c:
        await c.append(realm, "d", "e", "t", 0)
        async with contextlib.aclosing(c.subscribe(f"{realm}/d/e")) as sub:
            assert [e.event for e in await take(sub, 1)] == [0]
            await c.append(realm, "d", "e", "t", 1)
            assert [e.event for e in await take(sub, 1)] == [1]


def test_server_down_is_connection_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5) as c:
        with pytest.raises(ConnectionFailed) as info:
            c.append("r", "d", "e", "t", 1)
        assert info.value.status == 0 and "cannot reach" in str(info.value)
        # Nothing answered: as transient as a store that is down, and caught as one.
        assert isinstance(info.value, Unavailable) and isinstance(info.value, perhap.StorageUnavailable)
        with pytest.raises(ConnectionFailed):
            list(c.read("r"))
        assert c.health() is False
        with pytest.raises(ConnectionFailed):
            c.ping()  # health's strict form: nothing answering is an error, not False
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            next(c.subscribe("r", max_retries=2))
        assert time.monotonic() - started < 5


async def test_async_server_down_is_connection_failed() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", timeout=5) as c:
        with pytest.raises(ConnectionFailed):
            await c.append("r", "d", "e", "t", 1)
        with pytest.raises(ConnectionFailed):
            await take(c.keys(), 1)
        assert await c.health() is False
        with pytest.raises(ConnectionFailed):
            await c.ping()
        with pytest.raises(ConnectionFailed):
            await take(c.subscribe("r", max_retries=1), 1)


def _wait(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Block until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (yielding to the event loop) until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_examples_in_docs_client_md_run(server: ProcessServer, tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    text = (Path(__file__).parent.parent / "docs" / "client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.replace("http://127.0.0.1:8787", server.url), "docs/client.md", "exec"), {})


# --------------------------------------------------------------------------- local mistakes, said as such


@pytest.mark.parametrize("value", ["Bearer perhap_secret\n", "Bearer perhap_sécret", "Bearer perhap\r\nX: y"])
def test_a_header_httpx_cannot_send_is_refused_at_construction_without_its_value(value: str) -> None:
    """A token read from a file with its newline was a ConnectionFailed at every request, its
    message showing the token, and a stream retried it for ever."""
    headers = {"authorization": value}
    for make in (lambda: Client(headers=headers), lambda: AsyncClient(headers=headers)):
        with pytest.raises(perhap.InvalidInput, match="authorization header") as refused:
            make()
        assert "secret" not in str(refused.value) and "sécret" not in str(refused.value)


def test_a_blocking_client_given_an_asyncio_transport_says_so(app: PerhapApp) -> None:
    with pytest.raises(TypeError, match="AsyncClient"):
        Client(transport=httpx.ASGITransport(app=app))  # type: ignore[arg-type]


def test_keys_named_below_a_missing_level_say_what_was_asked() -> None:
    with pytest.raises(perhap.InvalidInput, match="a domain's entities"):
        list(Client().keys(None, "d"))
    with pytest.raises(perhap.InvalidInput, match="an entity's types"):
        list(Client().keys("r", None, "e"))


def test_a_request_sent_and_never_answered_is_not_called_unreachable() -> None:
    """The request went out, so it may have been carried out: the message says so, rather than
    "cannot reach", which after an append reads as "nothing was stored"."""
    import socket
    with socket.socket() as listener:  # accepts connections (the kernel's backlog), answers nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        with pytest.raises(ConnectionFailed, match="no answer from .* may have been carried out"):
            client.append("r", "d", "e", "t", 1)
        # A read's says retrying is safe, not an append's advice (perhap read, keys, tail gave it).
        with pytest.raises(ConnectionFailed, match=r"no answer from .* in time \(timed out\) \(retrying it is safe\)$"):
            client.get_event("r", "d", "01a2173a-af2e-701e-bbf0-c30a3181d1d9")
        client.close()


def test_a_request_read_whole_then_dropped_is_not_called_unreachable_and_both_clients_say_so_alike() -> None:
    """A server that read the whole request, then closed without an answer, may have carried it
    out: "no answer", from the sync and the async client in the same words; a refused connection
    is "cannot reach" from both, in the operating system's words."""
    import socket
    import threading

    done = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)  # so that the thread sees the test end, rather than wait for ever

        def read_then_close() -> None:
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                conn.settimeout(None)
                with conn:  # the whole request (head, then its body), then a close with no answer
                    got = b""
                    while b"\r\n\r\n" not in got:
                        got += conn.recv(65536)
                    head, _, body = got.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    while len(body) < length:
                        body += conn.recv(65536)

        threading.Thread(target=read_then_close, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        refused = f"http://127.0.0.1:{free_port()}"
        messages = []
        for target in (url, refused):
            with Client(target, timeout=5) as sync_client, pytest.raises(ConnectionFailed) as sync_error:
                sync_client.append("r", "d", "e", "t", 1)

            async def async_append(target: str = target) -> None:
                async with AsyncClient(target, timeout=5) as async_client:
                    await async_client.append("r", "d", "e", "t", 1)

            with pytest.raises(ConnectionFailed) as async_error:
                asyncio.run(async_append())
            # (the same words but for the transport's reason, which a broken connection may word
            # either way: reset by the peer, or closed before an answer)
            assert str(sync_error.value).split(" (")[0] == str(async_error.value).split(" (")[0]
            messages.append(str(sync_error.value))
        done.set()
    assert messages[0].startswith(f"no answer from {url} (the connection broke)"), messages
    assert "may have been carried out" in messages[0], messages
    assert messages[1] == f"cannot reach {refused}: Connection refused", messages


class _Answering:
    """A real HTTP server that is not perhap: every request gets ``answer``, then the connection closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer, self.requests = answer, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                got = b""
                while b"\r\n\r\n" not in got and (chunk := conn.recv(65536)):
                    got += chunk
                self.requests += 1
                conn.sendall(self.answer)

    def __enter__(self) -> _Answering:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)
        self.listener.close()


def test_a_connection_idle_for_4_s_is_not_used_again() -> None:
    """perhap serve closes a connection idle for 5 s (--idle-timeout); httpx reused one up to 5 s,
    so a request sent as the server closed it failed as "no answer ... may have been carried out".
    The pool lets a connection go after 4 s: here the second request, 4.3 s on, opens another."""
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}"
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:  # answers each request on its connection, keeps every connection open
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                conn.sendall(ok)

    threading.Thread(target=serve, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5) as c:
            assert c.ping() and c.ping() and len(accepted) == 1  # kept alive, and used again at once
            time.sleep(4.3)
            assert c.ping() and len(accepted) == 2
    finally:
        stop.set()
        listener.close()
        for conn in accepted:
            conn.close()


def test_an_error_page_of_another_server_is_named_as_such_not_pasted() -> None:
    """The client pointed at another server (or a proxy's error page): its HTML was pasted into
    the message, after the status said twice ("404 File not found: HTTP 404 File not found:
    <!DOCTYPE HTML> ..."). A page is named, a line of plain text kept, and the server asked about."""
    html = (b"HTTP/1.1 404 File not found\r\ncontent-type: text/html;charset=utf-8\r\ncontent-length: 31\r\n"
            b"connection: close\r\n\r\n<!DOCTYPE HTML><html lang='en'>")
    plain = (b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n"
             b"connection: close\r\n\r\nupstream refused it\n")
    with _Answering(html) as page, Client(page.url, timeout=5) as c, pytest.raises(PerhapClientError) as caught:
        list(c.read("r"))
    assert caught.value.one_line() == (f"404 File not found: not an answer of perhap's (an HTML page); is "
                                       f"{page.url} a perhap server (or a proxy in front of one)?")
    with _Answering(plain) as page, Client(page.url, timeout=5) as c, pytest.raises(PerhapClientError) as caught:
        list(c.read("r"))
    assert caught.value.status == 502 and "not an answer of perhap's: upstream refused it; is" in str(caught.value)


def test_an_append_answered_with_no_result_object_is_a_client_error() -> None:
    """A 201 whose body is JSON but no append's result (a proxy's, another server's) raised a bare
    AttributeError from append, append_batch and append_many, past `except PerhapClientError`."""
    for body in (b"[]", b'"s"', b'{"events": [1]}', b'{"events": [[]]}'):
        answer = (b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: "
                  + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        with _Answering(answer) as other, Client(other.url, timeout=5) as c:
            for call in (lambda: c.append("r", "d", "e", "t", 1),
                         lambda: c.append_batch("r", "d", "e", [{"type": "t", "event": 1}]),
                         lambda: c.append_many("r", "d", [{"entity": "e", "type": "t", "event": 1}])):
                with pytest.raises(PerhapClientError, match="unexpected response"):
                    call()


def test_a_subscription_that_cannot_connect_fails_in_the_same_words_from_both_clients() -> None:
    """The stream's final error carried the transport's own text: "[Errno 111] Connection
    refused" from one client, "All connection attempts failed" from the other. (on_retry still
    gets the transport's exception: callers tell a timeout by its class.)"""
    url = f"http://127.0.0.1:{free_port()}"
    errors: list[Exception] = []
    with Client(url, timeout=5) as c, pytest.raises(ConnectionFailed) as sync_failure:
        next(c.subscribe("a", max_retries=1, on_retry=lambda error, delay: errors.append(error)))

    async def follow() -> None:
        async with AsyncClient(url, timeout=5) as ac:
            await take(ac.subscribe("a", max_retries=1, on_retry=lambda error, delay: errors.append(error)), 1)

    with pytest.raises(ConnectionFailed) as async_failure:
        asyncio.run(follow())
    expected = f"the stream of /a failed 2 times: cannot reach {url}: Connection refused"
    assert str(sync_failure.value) == str(async_failure.value) == expected
    assert len(errors) == 2 and all(isinstance(e, httpx.ConnectError) for e in errors)


def test_a_subscription_to_what_is_no_event_stream_fails_and_one_that_ends_at_once_backs_off() -> None:
    """A 200 of HTML was taken for a stream and retried for ever, ten times a second; and a stream
    answered then ended at once reset the failure count at each 200: max_retries was never reached
    and the wait never grew (perhap tail against a proxy's page looped so)."""
    html = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>"
    empty = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    with _Answering(html) as page:
        with Client(page.url, timeout=5) as c, pytest.raises(PerhapClientError, match="not an event stream"):
            next(c.subscribe("r", max_retries=None))

        async def async_first() -> None:
            async with AsyncClient(page.url, timeout=5) as ac:
                await take(ac.subscribe("r", max_retries=None), 1)

        with pytest.raises(PerhapClientError, match="not an event stream"):
            asyncio.run(async_first())
        assert page.requests == 2
    with _Answering(empty) as ending:
        delays: list[float] = []
        with Client(ending.url, timeout=5) as c, pytest.raises(ConnectionFailed, match="ended the stream"):
            next(c.subscribe("r", max_retries=3, on_retry=lambda error, delay: delays.append(delay)))
        assert delays == [0.1, 0.2, 0.4] and ending.requests == 4

        async def async_retries() -> None:
            async with AsyncClient(ending.url, timeout=5) as ac:
                await take(ac.subscribe("r", max_retries=2, on_retry=lambda e, d: delays.append(d)), 1)

        delays.clear()
        with pytest.raises(ConnectionFailed, match="ended the stream"):
            asyncio.run(async_retries())
        assert delays == [0.1, 0.2]


def test_ping_of_a_url_past_the_servers_root_is_no_perhap_answer(server: ProcessServer) -> None:
    """``http://host/shop/_health`` is an empty page of realm shop's domain ``_health``: a 200,
    which ping took for health. Only perhap's own health answer is."""
    with Client(server.url) as c:
        assert c.ping() and c.health()
    for base in (f"{server.url}/shop", f"{server.url}/shop/d"):
        with Client(base) as c, pytest.raises(PerhapClientError, match="past the server's root"):
            c.ping()


def test_a_host_name_that_does_not_resolve_is_said_in_words() -> None:
    """A resolver's error number is no errno: it read "Unknown error -2"."""
    with Client("http://name-that-does-not-resolve.invalid:8787", timeout=5) as c, \
            pytest.raises(ConnectionFailed) as info:
        c.ping()
    assert "Unknown error" not in str(info.value) and "cannot reach" in str(info.value), info.value


@pytest.mark.parametrize("name", ["bad name", "x:y", "é", ""])
def test_a_header_name_httpx_cannot_send_is_refused_at_construction(name: str) -> None:
    for make in (lambda: Client(headers={name: "v"}), lambda: AsyncClient(headers={name: "v"})):
        with pytest.raises(perhap.InvalidInput, match="not a valid header name"):
            make()


async def test_reading_an_events_address_as_an_entity_says_what_it_is(aclient: AsyncClient, realm: str) -> None:
    """A 201's Location (/realm/domain/<event id>) read as an entity: the API answers that one
    event, and the client says so, not "unexpected response"."""
    event_id = (await aclient.append(realm, "d", "e", "t", 1)).first.event_id
    with pytest.raises(perhap.PerhapClientError, match="is the address of the event") as info:
        await aclient.read_page(realm, "d", event_id)
    assert info.value.one_line().startswith(f"/{realm}/d/{event_id} is the address")


@pytest.mark.parametrize("url", ["127.0.0.1:8787", "localhost", "http://[::1", "ftp://h/", "http://h/?x=1", "http://",
                                 "http://h:99999", "https://h:0", "http://h:8787#f"])
def test_a_server_url_that_no_request_could_use_is_refused_at_construction(url: str) -> None:
    """Taken, it made every request a ConnectionFailed: a server that is down, to be retried (or,
    with a query, every request went to the wrong path: the server's own answer, a 400 or 405)."""
    for make in (lambda: Client(url), lambda: AsyncClient(url)):
        with pytest.raises(perhap.InvalidInput, match="server's URL"):
            make()
