"""Server-Sent Events over the store's subscriptions.

Each stream is a cursor (:class:`perhap.store.Subscription`) read as fast as the client takes
events: there is no per-subscriber queue, so a slow client costs memory for one page at most and
never slows writers or other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from ..auth import Authenticator, Grant
from ..limits import StreamLimiter
from ..model import Scope
from ..store.base import Store, Subscription
from .types import Receive, Send

log = logging.getLogger("perhap.stream")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer the stream
]


class StreamRegistry:
    """What the streams of one app share: how many are open, their limits, and the signal to end."""

    def __init__(self, limiter: StreamLimiter, heartbeat: float, auth: Authenticator | None) -> None:
        self.limiter = limiter
        self.heartbeat = heartbeat  # seconds between keep-alive comments on an idle stream
        self.auth = auth  # with a token file, a stream ends when its token is revoked
        self.open = 0
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        """End every open stream (the server is stopping); new streams end at once too."""
        self.stopping.set()


def sse_message(event_id: str, data: dict[str, Any]) -> bytes:
    return b"id: " + event_id.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def stream_events(streams: StreamRegistry, store: Store, where: Scope, following: str | None,
                        receive: Receive, send: Send, grant: Grant | None = None) -> None:
    """Answer a read with a live stream: catch-up from ``following``, then new events."""
    token_id = grant.id if grant is not None else None
    streams.limiter.reserve(streams.open, token_id)  # 429 before anything is sent
    try:
        # Resolve the start first, so an unknown Last-Event-ID is a plain 404 before the stream opens.
        sub = await store.subscription(where, following=following)
    except BaseException:
        streams.limiter.release(token_id)
        raise
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    # A comment first: it flushes the headers through proxies and tells the client it is live.
    await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
    streams.open += 1
    pump = asyncio.ensure_future(_pump(streams, sub, send, grant))
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    stop = asyncio.ensure_future(streams.stopping.wait())
    try:
        await asyncio.wait({pump, watch, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        streams.open -= 1
        streams.limiter.release(token_id)
        for task in (pump, watch, stop):
            task.cancel()
        await asyncio.gather(pump, watch, stop, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            log.warning("stream of %s ended: %s", where, pump.exception())
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # the client is gone already
        pass


async def _pump(streams: StreamRegistry, sub: Subscription, send: Send, grant: Grant | None) -> None:
    auth = streams.auth
    while True:
        events = await sub.fetch(timeout=streams.heartbeat)
        # A revoked token's stream ends before it carries another event.
        if grant is not None and auth is not None and not auth.still_valid(grant):
            return
        if not events:
            await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
            continue
        body = b"".join(sse_message(e.event_id, e.to_json_dict()) for e in events)
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
