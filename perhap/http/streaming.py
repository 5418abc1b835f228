"""Server-Sent Events over the store's subscriptions.

Each stream is a cursor (:class:`perhap.store.Subscription`) read as fast as the client takes
events: there is no per-subscriber queue, so a slow client never slows writers or other
subscribers. What one stream holds is bounded in bytes (``stream_buffer``: a batch over it is cut,
the rest read again later in smaller batches), and a client that leaves a write unread for
``write_timeout`` seconds loses its stream, so it cannot hold memory or a slot for ever.

Streams at the same place share their reads: when several wait with equal queries (the
subscribers of one domain, all caught up), one of them fetches and encodes, and the others are
handed the same bytes and the query that follows them, each sending on its own (its own token
check, buffer and write timeout). A stream that falls behind has a query of its own again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from ..auth import Authenticator, Grant
from ..errors import StorageUnavailable, StoreClosed
from ..limits import DEFAULT_STREAM_BUFFER, DEFAULT_WRITE_TIMEOUT, StreamLimiter
from ..model import Event
from ..store.base import Store
from ..store.query import ReadQuery, event_bytes
from ..store.subscription import Followed, OutagePause, Subscription
from .connection import Connection, still_reading, unknown
from .types import Receive, Send

log = logging.getLogger("perhap.stream")
_T = TypeVar("_T")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer the stream
]
KEEP_ALIVE = b": keep-alive\n\n"
#: A body at least this large gives the loop a turn once sent (see _pump).
YIELD_AFTER = 16 * 1024
#: Events a stream reads at once, at most (fewer while its client is slow: see _encode).
STREAM_BATCH = 500
#: A stream's first batch: small (32 events, not 500), grown while its events are small, so that
#: the first message a client waits for is a short one (each read also ends at the buffer's bytes).
FIRST_BATCH = 32


class StreamRegistry:
    """What the streams of one app share: their limits, the signal to end, and what they counted."""

    def __init__(self, limiter: StreamLimiter, heartbeat: float, auth: Authenticator | None,
                 buffer: int = DEFAULT_STREAM_BUFFER, write_timeout: float | None = DEFAULT_WRITE_TIMEOUT) -> None:
        self.limiter = limiter
        self.heartbeat = heartbeat  # seconds between keep-alive comments on an idle stream
        self.auth = auth  # with a token file, a stream ends when its token is revoked
        self.buffer = buffer  # bytes of events sent at once (one event at least)
        self.write_timeout = write_timeout or None  # None or 0: never
        self.write_timeouts = 0  # streams ended because their client did not read
        self.stopping = asyncio.Event()
        self.messages = MessageCache()
        #: (store, query, full batch) -> the futures of streams waiting for the fetch of another
        #: stream at that same query (see _next_body)
        self.shared: dict[tuple[Followed, ReadQuery, int], list[asyncio.Future[_Body | None]]] = {}

    @property
    def open(self) -> int:
        """Streams holding a slot now (starting or streaming)."""
        return self.limiter.open

    def stop(self) -> None:
        """End every open stream (the server is stopping); new streams end at once too."""
        self.stopping.set()


def sse_message(event_id: str, data: dict[str, Any]) -> bytes:
    return b"id: " + event_id.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageCache:
    """The SSE message of each recent event, encoded once for every stream that sends it.

    The streams of one scope are handed the very same :class:`Event` objects (the SQLite ring's,
    or one shared read), so the cache is keyed by identity and holds the event, so that its id
    cannot be reused while the entry lives; an event is immutable, so its message never goes
    stale. Bounded in entries and bytes (an entry's message and its event's data and meta, which
    it keeps alive: counting the message alone let it hold twice its bound): emptied when either
    is exceeded.
    """

    __slots__ = ("items", "size", "max_items", "max_bytes")

    def __init__(self, max_items: int = 4096, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.items: dict[int, tuple[Event, bytes]] = {}
        self.size = 0
        self.max_items, self.max_bytes = max_items, max_bytes

    def message(self, event: Event) -> bytes:
        """The SSE message of ``event`` (equal to a fresh ``sse_message`` of it)."""
        hit = self.items.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        message = sse_message(event.event_id, event.to_json_dict())
        if len(self.items) >= self.max_items or self.size >= self.max_bytes:
            self.items.clear()
            self.size = 0
        self.items[id(event)] = (event, message)
        self.size += len(message) + event_bytes(event)
        return message


async def stream_head(store: Store, query: ReadQuery, following: str | None, send: Send) -> None:
    """HEAD of a stream: the checks and headers of GET (an unknown start is 404), no stream, no slot."""
    await _subscription(store, query, following)
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _subscription(store: Store, query: ReadQuery, following: str | None) -> Subscription:
    """The stream's subscription; a 503 before the stream opens when the storage does not answer
    (a stream that opened only to end at once would have its client reconnect, again and again)."""
    sub = await store.subscription_for(query, following)
    if not await store.health():
        raise StorageUnavailable("the storage does not answer")
    return sub


class Writing:
    """When the stream's current write began (loop time), or None between writes: what the write
    timeout watches. A pump sends through :meth:`send`."""

    __slots__ = ("since", "last", "_send", "_clock")

    def __init__(self, send: Send) -> None:
        self.since: float | None = None
        self._send = send
        self._clock = asyncio.get_running_loop().time
        self.last = self._clock()  # when the last write was done

    async def send(self, body: bytes) -> None:
        self.since = self._clock()
        await self._send({"type": "http.response.body", "body": body, "more_body": True})
        self.since, self.last = None, self._clock()


class _Silence:
    """Keeps a stream's promise of a comment at least every ``heartbeat`` seconds while its pump is
    held up in a read: a database that stops answering (hung, not down) holds a read until the
    storage's own timeout, 10 s past the keep-alive the read was meant to end at. One timer a
    stream, looking at most once a heartbeat; nothing is paid per event. It speaks only when the
    pump's own keep-alive is over a grace late, so the two never both send."""

    def __init__(self, writing: Writing, heartbeat: float) -> None:
        self.writing, self.late = writing, heartbeat + min(1.0, heartbeat)
        self.loop = asyncio.get_running_loop()
        self.sending: asyncio.Future[None] | None = None
        self.timer = self.loop.call_at(writing.last + self.late, self._look)

    def _look(self) -> None:
        writing, now = self.writing, self.loop.time()
        if writing.since is not None:  # a write waits on its client (the write timeout's to watch)
            self.timer = self.loop.call_at(now + self.late, self._look)
            return
        if now >= writing.last + self.late:
            self.sending = asyncio.ensure_future(writing.send(KEEP_ALIVE))
            self.sending.add_done_callback(_seen)
            self.timer = self.loop.call_at(now + self.late, self._look)
            return
        self.timer = self.loop.call_at(writing.last + self.late, self._look)

    def close(self) -> None:
        self.timer.cancel()
        if self.sending is not None:
            self.sending.cancel()


def _seen(task: asyncio.Future[None]) -> None:
    """A keep-alive's outcome, taken (a client gone meanwhile is the pump's to find)."""
    if not task.cancelled():
        task.exception()


#: Seconds a stream's last write may wait on its client once the server is stopping.
STOP_WRITE_GRACE = 1.0

#: What a stream runs once it is open: it sends through its Writing until it returns (or is cancelled).
Pump = Callable[[Writing], Coroutine[Any, Any, None]]


async def stream_events(streams: StreamRegistry, store: Store, query: ReadQuery, following: str | None,
                        receive: Receive, send: Send, grant: Grant | None = None,
                        connection: Connection | None = None) -> None:
    """Answer a read with a live stream: catch-up from ``following`` (or the query's own start),
    then new events, each within the query's bounds and types."""

    async def ready() -> Pump:
        # The start resolved first, so an unknown Last-Event-ID is a plain 404 before the stream opens.
        sub = await _subscription(store, query, following)
        return lambda writing: _pump(streams, sub, grant, writing)

    await serve_stream(streams, grant, ready, receive, send, query.scope, connection)


async def serve_stream(streams: StreamRegistry, grant: Grant | None, ready: Callable[[], Awaitable[Pump]],
                       receive: Receive, send: Send, where: object, connection: Connection | None) -> None:
    """A stream's whole life, the same for a scope's and a consumer group's: its slot taken before
    the first await (429 before anything is sent), ``ready`` making the checks that answer before
    it opens (a 404, say) and giving its pump, the headers, the pump run until the client goes,
    the server stops or the client leaves a write unread for the write timeout, the slot given
    back, and the response ended (a dropped stream counted and its connection closed)."""
    token_id = grant.id if grant is not None else None
    streams.limiter.reserve(token_id)
    try:
        pump = await ready()
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        # A comment first: it flushes the headers through proxies and tells the client it is live.
        await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
        dropped = await _run(streams, pump, receive, send, where, connection)
    finally:
        streams.limiter.release(token_id)
    if dropped:
        streams.write_timeouts += 1
        log.info("stream of %s dropped: its client left a write unread for %s s", where, streams.write_timeout)
        if connection is None:
            return  # the server closes the connection of a response left unfinished
        connection.abort()  # now the last send below returns at once: the connection is gone
    end = send({"type": "http.response.body", "body": b"", "more_body": False})
    try:
        if not streams.stopping.is_set():
            await end
        else:
            # The server is stopping: a client that stopped reading would hold the shutdown on
            # this last write until uvicorn's graceful limit, then end in a traceback. It gets
            # a moment, then its connection goes (it resumes with Last-Event-ID elsewhere).
            await asyncio.wait_for(end, STOP_WRITE_GRACE)
    except TimeoutError:
        if connection is not None:
            connection.abort()
            # The listener learns that the connection is gone on the loop's next turn; a
            # response returned before then would be logged as left unfinished.
            await asyncio.sleep(0)
    except Exception:  # the client is gone already
        pass


async def _run(streams: StreamRegistry, pump: Pump, receive: Receive, send: Send, where: object,
               connection: Connection | None) -> bool:
    """Run an open stream's ``pump`` until the client goes, the server stops or the pump ends;
    True if the client stopped reading: a write waited the write timeout, and then nothing of
    what was sent was taken for another one (see :func:`still_reading`; the pump is then
    cancelled)."""
    writing = Writing(send)
    silence = _Silence(writing, streams.heartbeat)  # (a pump held up in a read still keeps the beat)
    task = asyncio.ensure_future(pump(writing))
    watch = asyncio.ensure_future(wait_disconnect(receive))
    stop = asyncio.ensure_future(streams.stopping.wait())
    timer: asyncio.TimerHandle | None = None
    dropped = False
    limit = streams.write_timeout or 0.0
    loop = asyncio.get_running_loop()

    unsent = connection.unsent if connection is not None else unknown
    seen: list[int | None] = [None]  # what the client had not taken at the last look, this write

    def check() -> None:
        # One timer a stream, at most once per write timeout while writes wait: nothing is paid
        # per event. A write of a buffer (1 MiB) waits on the client taking megabytes (the
        # kernel's send buffer grows to 4 MiB), so its time alone cannot tell a slow reader from
        # a stopped one; whether the bytes waiting go down can.
        nonlocal timer, dropped
        since, now = writing.since, loop.time()
        if since is None or now - since < limit:
            seen[0] = None
            timer = loop.call_later(limit if since is None else since + limit - now, check)
        elif still_reading(unsent(), seen):
            # A whole timeout between looks: a receiving kernel reopens its window in steps (about
            # 64 KiB over loopback), so a steady slow reader's count may not fall for seconds.
            timer = loop.call_later(limit, check)
        else:
            dropped = True
            task.cancel()

    if limit > 0:
        timer = loop.call_later(limit, check)
    try:
        await asyncio.wait({task, watch, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        silence.close()
        if timer is not None:
            timer.cancel()
        for t in (task, watch, stop):
            t.cancel()
        await asyncio.gather(task, watch, stop, return_exceptions=True)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("stream of %s ended: %s", where, task.exception())
    return dropped


async def _pump(streams: StreamRegistry, sub: Subscription, grant: Grant | None, writing: Writing) -> None:
    auth = streams.auth
    full = sub.query.limit
    # Grown from FIRST_BATCH while events are small (large ones never fill 500); each read ends
    # at the buffer's bytes, so a jump to large events after many small ones reads about a
    # buffer's worth, not a batch of them.
    sub.query = replace(sub.query, limit=min(full, FIRST_BATCH), max_bytes=streams.buffer)
    while True:
        sub.query, body, read_at = await through_outages(lambda: _next_body(streams, sub, full), writing, sub.scope)
        # A revoked token's stream ends before it carries another event: the token file is looked
        # at after the read that found the body's events (so after their commits), once for all
        # the streams that share that read.
        if grant is not None and auth is not None and not auth.still_valid(grant, read_at):
            return
        await writing.send(body)
        if len(body) >= min(YIELD_AFTER, streams.buffer // 2):  # (a small --stream-buffer: smaller bodies)
            # uvicorn's send returns at once while the socket takes the bytes (and once the client
            # is gone), and SQLite reads a batch inline: a stream catching up a large scope held
            # the loop until it reached the head, serving nothing else and not noticing a client
            # that had left. A catch-up's bodies are large: after each, the loop has a turn (1.4 µs;
            # a live stream's bodies of a few events, 100,000 a second in row 8, go without).
            await asyncio.sleep(0)


async def through_outages(read: Callable[[], Awaitable[_T]], writing: Writing, where: object) -> _T:
    """``read()`` once the storage answers. While it does not (a database restarting), the stream
    stays open, its cursor where it was, keeping its client with comments and trying again after
    a pause: ended, every client would reconnect into 503s, and a browser's EventSource gives up
    for good on the first one. A store closed (the server stopping) ends the stream."""
    pause = OutagePause()
    while True:
        try:
            return await read()
        except StoreClosed:
            raise
        except StorageUnavailable as exc:
            if pause.first:
                log.info("stream of %s waits for the storage: %s", where, exc.detail)
            await writing.send(KEEP_ALIVE)
            await pause.wait()


#: What a stream sends next: its query after that, the body, and when the read was done (monotonic).
_Body = tuple[ReadQuery, bytes, float]


async def _next_body(streams: StreamRegistry, sub: Subscription, full: int) -> _Body:
    """The stream's next body (events, or a keep-alive after ``heartbeat`` seconds without) and
    its query after it. When another stream is already fetching at an equal query, its answer is
    this stream's too (the same events after the same cursor), so a commit costs one read and
    one encoding per query, not per stream; if that stream ends without an answer, this one
    reads for itself.

    Each stream keeps its own keep-alive time, ``heartbeat`` after its last body, whichever
    stream reads: it never waits past it for another's answer, and a stream that takes over the
    read from one that left reads only until then."""
    loop = asyncio.get_running_loop()
    keep_alive_at = loop.time() + streams.heartbeat
    key = (sub.store, sub.query, full)
    shared = streams.shared
    own: _Body = (sub.query, KEEP_ALIVE, 0.0)
    while (waiting := shared.get(key)) is not None:
        answer: asyncio.Future[_Body | None] = loop.create_future()
        waiting.append(answer)
        # At its keep-alive time the stream answers itself (its cursor stays) and the shared read
        # goes on for the others. (Not asyncio.wait_for: on 3.11 it can swallow the cancellation
        # of a stream whose client left, if the answer comes at that moment.)
        timer = loop.call_at(keep_alive_at, _answer, answer, own)
        try:
            given = await answer  # each its own future: one stream cancelled cancels nobody else's
        finally:
            timer.cancel()
        if given is own:
            return sub.query, KEEP_ALIVE, time.monotonic()
        if given is not None and given[1] != KEEP_ALIVE:
            return given
        # (Another stream's keep-alive: this one's comes at its own time, not twice.)
    waiting = shared[key] = []
    result: _Body | None = None
    try:
        events = await sub.fetch(timeout=max(0.0, keep_alive_at - loop.time()))
        body = _encode(sub, events, streams.buffer, full, streams.messages.message) if events else KEEP_ALIVE
        # After _encode (a batch cut to the buffer moves the cursor back); the time after the read.
        result = (sub.query, body, time.monotonic())
        return result
    finally:
        del shared[key]  # the next fetch at this place starts a new round
        for answer in waiting:
            if not answer.done():
                answer.set_result(result)


def _answer(future: asyncio.Future[_Body | None], body: _Body) -> None:
    if not future.done():
        future.set_result(body)


def _encode(sub: Subscription, events: list[Event], buffer: int, full: int,
            message: Callable[[Event], bytes]) -> bytes:
    """The events as SSE messages, at most ``buffer`` bytes (one event at least); the batch size
    of ``sub`` follows: cut to what fitted, grown back (up to ``full``) while events are small.
    Events past the cut are not encoded (a batch of large events costs its bytes once, not twice)."""
    parts: list[bytes] = []
    size = 0
    for event in events:
        part = message(event)
        if parts and size + len(part) > buffer:
            # The rest is read again after the last event kept, in batches of what fitted this time.
            sub.query = replace(sub.query, after=events[len(parts) - 1].cursor, limit=len(parts))
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    batch = sub.query.limit
    if batch < full and 2 * size <= buffer:
        sub.query = replace(sub.query, limit=min(full, 2 * batch))
    return b"".join(parts)


def chunked(messages: Iterable[bytes], buffer: int) -> Iterator[bytes]:
    """Messages joined into bodies of at most ``buffer`` bytes (a message larger than that alone),
    each encoded only when the bodies before it have gone out."""
    parts: list[bytes] = []
    size = 0
    for part in messages:
        if parts and size + len(part) > buffer:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(part)
        size += len(part)
    if parts:
        yield b"".join(parts)


async def wait_disconnect(receive: Receive) -> None:
    """Returns when the client hangs up."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
