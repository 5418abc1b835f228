"""What one stream may hold, and what a burst of streams may open (issue 13, points 10 to 12):
slots are reserved before the first await, HEAD never streams, a stream sends at most
``stream_buffer`` bytes at once, and a client that stops reading loses its stream."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from perhap import Store
from perhap.app import PerhapApp
from perhap.http.streaming import YIELD_AFTER
from perhap.server import limited_protocol
from tests.servers import ThreadServer

Message = dict[str, Any]


class Exchange:
    """One request driven straight through the app, as an ASGI server would: the request, then a
    disconnect only when the test says the client went away."""

    def __init__(self, app: PerhapApp, method: str, path: str, headers: dict[str, str]) -> None:
        raw_path, _, query = path.partition("?")
        self.scope = {"type": "http", "method": method, "path": raw_path, "raw_path": raw_path.encode(),
                      "query_string": query.encode(), "http_version": "1.1",
                      "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        self.sent: list[Message] = []
        self.started = asyncio.Event()
        self.changed = asyncio.Event()
        self.gone = asyncio.Event()
        self._requested = False
        self.task = asyncio.ensure_future(app(self.scope, self._receive, self._send))

    async def _receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        # A real server's send may let other tasks run (it waits while the socket drains).
        await asyncio.sleep(0)
        self.sent.append(message)
        if message["type"] == "http.response.start":
            self.started.set()
        self.changed.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.sent[1:]]

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Wait, with a deadline, until ``condition`` holds after something was sent."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0 or self.task.done() and not condition():
                raise AssertionError(f"never: {what}")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass

    async def close(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 30)


def stream_headers(**extra: str) -> dict[str, str]:
    return {"accept": "text/event-stream", **extra}


def ids_in(body: bytes) -> list[str]:
    return [line[4:].decode() for line in body.split(b"\n") if line.startswith(b"id: ")]


class _Eager(Exchange):
    """An exchange whose send never lets other tasks run, as uvicorn's while the socket takes
    every byte; it notes how many turns the loop's other tasks had by each message."""

    turns = 0

    async def _send(self, message: Message) -> None:
        self.sent.append((message, _Eager.turns))  # type: ignore[arg-type]
        self.changed.set()

    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m, _ in self.sent[1:]]  # type: ignore[misc]


@pytest.mark.parametrize("buffer", [1024 * 1024, 8192])
async def test_a_stream_catching_up_a_large_scope_lets_the_loop_run_between_bodies(store: Store, realm: str,
                                                                                   buffer: int) -> None:
    """A stream from the start of a large scope sends body after body; with a send that returns at
    once and SQLite's inline reads it held the loop until it reached the head: no other task ran
    (no request served, a client that left not noticed) for as long as the catch-up took. Also
    with a --stream-buffer whose bodies are all smaller than the size that yields by default."""
    app = PerhapApp(store, heartbeat=5, stream_buffer=buffer)
    threshold = min(YIELD_AFTER, buffer // 2)
    sent = []
    for first in range(0, 6000, 1000):
        batch = [{"type": "t", "event": i} for i in range(1000)]
        sent += [e.event_id for e in (await store.append_batch(realm, "d", f"e{first}", batch)).events]

    async def ticker() -> None:
        while True:
            _Eager.turns += 1
            await asyncio.sleep(0)

    tick = asyncio.ensure_future(ticker())
    stream = _Eager(app, "GET", f"/{realm}", stream_headers())
    try:
        await stream.until(lambda: sum(len(ids_in(b)) for b in stream.bodies()) >= len(sent), "every event arrived")
    finally:
        tick.cancel()
        await stream.close()
    assert [i for b in stream.bodies() for i in ids_in(b)] == sent
    turns = [t for _, t in stream.sent[1:]]  # type: ignore[misc]
    bodies = stream.bodies()
    large = [i for i, body in enumerate(bodies[:-1]) if len(body) >= threshold]
    assert len(large) >= 10, [len(b) for b in bodies]
    assert all(turns[i] < turns[i + 1] for i in large), turns  # another task ran after each large body


async def test_streams_sharing_a_read_each_keep_their_own_beat(store_url: str, realm: str) -> None:
    """Quiet streams of one scope share its read; each sends a keep-alive a heartbeat after its
    last body. One often got another's too (a stream that had just beaten rejoined the round,
    whose read then ended in the other's keep-alive a moment later): two beats at once."""
    heartbeat = 0.5
    with ThreadServer(store_url, heartbeat=heartbeat) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            assert (await c.post(f"/{realm}/quiet/e/t", json={"event": 0})).status_code == 201

            async def beats(path: str) -> list[float]:
                times: list[float] = []
                async with c.stream("GET", path, headers=stream_headers()) as r:
                    began = time.monotonic()
                    async for text in r.aiter_text():
                        times += [time.monotonic() - began] * text.count(": keep-alive")
                        if time.monotonic() - began > 8 * heartbeat:
                            return times
                return times

            async def busy() -> None:  # commits elsewhere in the realm wake the shared read
                while True:
                    await c.post(f"/{realm}/busy/e/t", json={"event": 0})
                    await asyncio.sleep(0.01)

            writer = asyncio.ensure_future(busy())
            try:
                streams = await asyncio.gather(*(beats(path) for path in (
                    f"/{realm}/quiet", f"/{realm}/quiet", f"/{realm}/quiet/e", f"/{realm}?type=zzz", f"/{realm}x")))
            finally:
                writer.cancel()
    for times in streams:
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) >= 5 and min(gaps) > heartbeat / 2, times


# --------------------------------------------------------------------------- point 10


async def test_a_burst_of_streams_never_opens_more_than_the_limit(store: Store, realm: str) -> None:
    """Each stream starts after a Last-Event-ID, so its start awaits the database (PostgreSQL,
    Cassandra; SQLite reads it inline) and then the server's send: the slot must be taken before
    the first await, or the whole burst passes the check while the count is still 0."""
    app = PerhapApp(store, max_streams=5, heartbeat=5)
    first = (await store.append(realm, "d", "e", "t", {"n": 1})).first.event_id
    streams = [Exchange(app, "GET", f"/{realm}", stream_headers(**{"last-event-id": first}))
               for _ in range(20)]
    try:
        for s in streams:
            await asyncio.wait_for(s.started.wait(), 30)
        statuses = sorted(s.status for s in streams)
        assert statuses == [200] * 5 + [429] * 15, statuses
        assert app.open_streams == 5
    finally:
        for s in streams:
            await s.close()
    assert app.open_streams == 0 and app.stream_limits.by_token == {}


# --------------------------------------------------------------------------- point 11


async def test_head_never_streams(store: Store, realm: str) -> None:
    """HEAD with Accept: text/event-stream answers GET's status and headers, ends at once and
    never holds a stream slot; an unknown start is 404 as for GET."""
    app = PerhapApp(store, max_streams=1, heartbeat=5)
    event = (await store.append(realm, "d", "e", "t", {"n": 1})).first
    for path in (f"/{realm}", f"/{realm}/d/e", f"/{realm}/d/e/{event.event_id}", f"/{realm}/d/e/t"):
        for _ in range(3):
            head = Exchange(app, "HEAD", path, stream_headers())
            await asyncio.wait_for(head.task, 10)  # it ends by itself: no stream was opened
            assert head.status == 200, path
            assert dict(head.sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
            assert head.bodies() == [b""] and head.sent[-1].get("more_body") is not True
            assert app.open_streams == 0
    nowhere = "0" * 8 + "-0000-7000-8000-" + "0" * 12
    unknown = Exchange(app, "HEAD", f"/{realm}", stream_headers(**{"last-event-id": nowhere}))
    await asyncio.wait_for(unknown.task, 10)
    assert unknown.status == 404
    # The one slot is free for a real stream.
    stream = Exchange(app, "GET", f"/{realm}", stream_headers())
    await asyncio.wait_for(stream.started.wait(), 10)
    assert stream.status == 200 and app.open_streams == 1
    await stream.close()
    assert app.open_streams == 0


# --------------------------------------------------------------------------- point 12


async def test_a_stream_sends_at_most_its_buffer_at_once(store: Store, realm: str) -> None:
    """500 large events are not one 500-event body: each body is at most ``stream_buffer`` bytes
    (or one event), nothing is lost or repeated, and the batch grows back once events are small."""
    buffer = 64 * 1024
    app = PerhapApp(store, stream_buffer=buffer, heartbeat=5)
    big = "x" * 8000
    sent = []
    for n in range(2):
        batch = [{"type": "t", "event": {"n": n * 50 + i, "pad": big}} for i in range(50)]
        sent += [e.event_id for e in (await store.append_batch(realm, "d", "e", batch)).events]
    small = [{"type": "t", "event": {"n": i}} for i in range(1000)]
    sent += [e.event_id for e in (await store.append_batch(realm, "d", "f", small)).events]
    stream = Exchange(app, "GET", f"/{realm}", stream_headers())
    try:
        await stream.until(lambda: sum(len(ids_in(b)) for b in stream.bodies()) >= len(sent),
                           "every event arrived")
    finally:
        await stream.close()
    got = [i for b in stream.bodies() for i in ids_in(b)]
    assert got == sent  # in order, none lost, none twice
    event_size = max(len(b) // max(1, len(ids_in(b))) for b in stream.bodies())
    for body in stream.bodies():
        assert len(body) <= buffer or len(ids_in(body)) == 1, (len(body), len(ids_in(body)))
    assert event_size < buffer
    # Once the events are small again, batches grow back towards the full 500.
    assert max(len(ids_in(b)) for b in stream.bodies()) >= 200


async def test_a_stream_of_large_events_never_reads_500_of_them_at_once(store: Store, realm: str) -> None:
    """What a stream holds is bounded in bytes, not only in what it sends: its first read asks
    for a few events (a store read is bounded by count), grows while events are small, and is cut
    back to what fits once they are large; events past a cut are not encoded."""
    app = PerhapApp(store, stream_buffer=256 * 1024, heartbeat=5)
    big = "x" * 100_000
    batch = [{"type": "t", "event": {"n": i, "pad": big}} for i in range(60)]
    sent = [e.event_id for e in (await store.append_batch(realm, "d", "e", batch)).events]
    limits: list[int] = []
    read = store._read

    async def recorded(query: Any) -> Any:
        limits.append(query.limit)
        return await read(query)

    store._read = recorded  # type: ignore[method-assign]
    stream = Exchange(app, "GET", f"/{realm}", stream_headers())
    try:
        await stream.until(lambda: sum(len(ids_in(b)) for b in stream.bodies()) >= len(sent), "every event arrived")
    finally:
        await stream.close()
        del store._read
    assert [i for b in stream.bodies() for i in ids_in(b)] == sent
    assert limits[0] <= 32 and max(limits) <= 32, limits  # 6 MB of events, never 500 at once
    assert max(len(ids_in(b)) for b in stream.bodies()) <= 3  # 256 KiB: two 100 kB events a body


async def test_an_idle_stream_that_reads_is_never_dropped(store_url: str, realm: str) -> None:
    """The write timeout counts only a write left unread: keep-alives on a quiet stream, and a
    client that reads them, live on well past it."""
    with ThreadServer(store_url, heartbeat=0.1, write_timeout=0.5) as server:
        async with (httpx.AsyncClient(base_url=server.url, timeout=30) as c,
                    c.stream("GET", f"/{realm}", headers=stream_headers()) as s):
            assert s.status_code == 200
            chunks = s.aiter_text()
            started = time.monotonic()
            seen = ""
            while seen.count("keep-alive") < 20:
                seen += await anext(chunks)
            assert time.monotonic() - started > 1.0  # two write timeouts at least
            await c.post(f"/{realm}/d/e/t", json={"event": 1})
            while "id: " not in seen:
                seen += await anext(chunks)
        assert server.app.streams.write_timeouts == 0


def test_a_client_that_stops_reading_loses_its_stream(store_url: str, realm: str) -> None:
    """A client that reads the headers and then nothing: once a write has waited ``write_timeout``
    seconds, the stream ends, its slot is free, the connection is closed and the metric counts it."""
    server = ThreadServer(store_url, heartbeat=0.2, write_timeout=1.0, max_body=4 * 1024 * 1024)
    # perhap's own listener (it can abort a connection), with the app's write timeout, as `perhap
    # serve` sets it: the listener's deadline for other answers must leave a stream's to the app.
    server.server.config.http = limited_protocol(write_timeout=1.0)
    with server:
        pad = "x" * (256 * 1024)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for n in range(8):  # 16 MiB: more than the kernel's socket buffers can swallow
                batch = {"events": [{"type": "t", "event": {"pad": pad, "n": n}} for _ in range(8)]}
                assert c.post(f"/{realm}/d/e", json=batch).status_code == 201
            stall_until_dropped(server, f"/{realm}")
            metrics = c.get("/_metrics").text
            assert "perhap_stream_write_timeouts_total 1.0" in metrics
        assert server.app.streams.write_timeouts == 1


def test_a_slow_reader_whose_kernel_acknowledges_in_steps_keeps_its_stream(store_url: str, realm: str) -> None:
    """A client with the kernel's own receive buffer, reading a steady 60 kB/s: its kernel reopens
    the window in steps of about 64 KiB (over loopback), so what the server has not sent falls
    only every second or so. Looked at every quarter of the write timeout (0.5 s here), that
    read as a client that stopped, and it was dropped; the looks are a timeout apart now."""
    server = ThreadServer(store_url, heartbeat=0.2, write_timeout=2.0, max_body=4 * 1024 * 1024)
    server.server.config.http = limited_protocol(write_timeout=2.0)
    with server:
        pad = "x" * 40_000
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for n in range(6):  # 600 events of 40 kB: 24 MB, more than the socket buffers hold
                batch = {"events": [{"type": "t", "event": {"pad": pad, "n": n * 100 + i}} for i in range(100)]}
                assert c.post(f"/{realm}/d/e", json=batch).status_code == 201
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(f"GET /{realm} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
            conn.settimeout(10)
            received, rate, began = 0, 60_000, time.monotonic()  # bytes a second
            while received < 600_000:  # ten seconds: five write timeouts
                chunk = conn.recv(4096)
                assert chunk, "the stream was closed"
                received += len(chunk)
                ahead = received / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            assert server.app.streams.write_timeouts == 0


def test_a_client_that_reads_slowly_but_steadily_keeps_its_stream(store_url: str, realm: str) -> None:
    """The write timeout is for a client that stopped reading: one that reads steadily, slower
    than a buffer (1 MiB) a write timeout (2 s here), keeps its stream and gets every event. Each
    write of a whole buffer was timed as one, so such a client was dropped again and again."""
    server = ThreadServer(store_url, heartbeat=0.2, write_timeout=2.0, max_body=4 * 1024 * 1024)
    server.server.config.http = limited_protocol(write_timeout=2.0)
    with server:
        pad = "x" * 4000
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for n in range(6):  # 3,000 events of 4 kB: 12 MB, more than the socket buffers hold
                batch = {"events": [{"type": "t", "event": {"pad": pad, "n": n * 500 + i}} for i in range(500)]}
                assert c.post(f"/{realm}/d/e", json=batch).status_code == 201
        with socket.socket() as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            conn.connect(("127.0.0.1", server.port))
            conn.sendall(f"GET /{realm} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
            conn.settimeout(10)
            received, rate, began = b"", 300_000, time.monotonic()  # bytes a second: 1 MiB in 3.5 s
            while received.count(b"\nid: ") + received.startswith(b"id: ") < 3000 and len(received) < 4_000_000:
                received += conn.recv(16384)
                ahead = len(received) / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        assert server.app.streams.write_timeouts == 0
        assert len(received) >= 4_000_000


def stall_until_dropped(server: ThreadServer, path: str) -> None:
    """Open a stream at ``path`` on a raw socket with a tiny receive buffer, read the headers and
    nothing more; return once the server has dropped the stream, freed its slot and closed the
    connection (asserting each within a deadline)."""
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", server.port))
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        conn.settimeout(10)
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        # ... and the client reads no more.
        deadline = time.monotonic() + 60
        while server.app.streams.write_timeouts == 0:
            assert time.monotonic() < deadline, "the stalled stream was never dropped"
            time.sleep(0.05)
        while server.app.open_streams:
            assert time.monotonic() < deadline, "the dropped stream kept its slot"
            time.sleep(0.05)
        # The connection was closed at once, unsent data dropped: the kernel's send queue too (a
        # plain close left megabytes of it flowing to the client after the drop), so the client
        # finds a reset after at most what its own small buffer held.
        closed_by, received = time.monotonic() + 10, 0
        with pytest.raises(ConnectionResetError):
            while chunk := conn.recv(1 << 20):
                received += len(chunk)
                assert time.monotonic() < closed_by, "the connection stayed open"
        assert received < 256 * 1024, received


# --------------------------------------------------------------------------- point 12, consumer groups


async def test_a_group_stream_sends_at_most_its_buffer_at_once(store: Store, realm: str) -> None:
    """A consumer group's stream is bounded like any stream: its rounds lease a batch that grows
    while events are small and shrinks to what fits the buffer, each body is at most the buffer
    (or one event), and every event arrives once, in order."""
    from perhap.groups import GroupSettings

    buffer = 64 * 1024
    app = PerhapApp(store, stream_buffer=buffer, heartbeat=5)
    assert app.context is not None
    await app.context.groups.create(realm, "g", GroupSettings.from_json({"max_in_flight": 10_000}))
    big = "x" * 8000
    # Each event an entity of its own: a group leases one event of an entity at a time.
    sent = [(await store.append(realm, "d", f"e{i}", "t", {"n": i, "pad": big})).first.event_id for i in range(100)]
    sent += [(await store.append(realm, "d", f"f{i}", "t", {"n": i})).first.event_id for i in range(600)]
    asked: list[int] = []
    lease = app.context.groups.lease

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[3])
        return await lease(*args, **kwargs)

    app.context.groups.lease = recorded  # type: ignore[method-assign]
    stream = Exchange(app, "GET", f"/_groups/{realm}/g/events?consumer=c&max=1000", stream_headers())
    try:
        await stream.until(lambda: sum(len(ids_in(b)) for b in stream.bodies()) >= len(sent), "every event arrived")
    finally:
        await stream.close()
    assert [i for b in stream.bodies() for i in ids_in(b)] == sent
    for body in stream.bodies():
        assert len(body) <= buffer or len(ids_in(body)) == 1, (len(body), len(ids_in(body)))
    # Never 1,000 large events leased (and held) at once; the small ones in batches grown back
    # to what the buffer holds (about 250 bytes an event here).
    assert asked[0] <= 32, asked
    assert max(n for n in asked[:10]) * 8000 <= 4 * buffer, asked
    assert max(asked) >= 100, asked


def test_a_group_stream_whose_client_stops_reading_loses_it(store_url: str, realm: str) -> None:
    """As for a scope's stream: once a write to a consumer group's stream has waited
    ``write_timeout`` seconds, the stream ends, its slot is free, the connection is closed and
    the metric counts it."""
    server = ThreadServer(store_url, heartbeat=0.2, write_timeout=1.0, max_body=4 * 1024 * 1024)
    server.server.config.http = limited_protocol(write_timeout=1.0)  # as `perhap serve` sets it
    with server:
        pad = "x" * (256 * 1024)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.put(f"/_groups/{realm}/g", json={"max_in_flight": 1000}).status_code == 201
            for n in range(64):  # 16 MiB, an entity each (leased together): more than the sockets hold
                assert c.post(f"/{realm}/d/e{n}/t", json={"event": {"pad": pad, "n": n}}).status_code == 201
            stall_until_dropped(server, f"/_groups/{realm}/g/events?consumer=c&max=1000")
            assert "perhap_stream_write_timeouts_total 1.0" in c.get("/_metrics").text
        assert server.app.streams.write_timeouts == 1
