"""Server-Sent Events over the store's subscriptions.

Each stream is a cursor (:class:`perhap.store.Subscription`) read as fast as the client takes
events: there is no per-subscriber queue, so a slow client costs memory for one page at most and
never slows writers or other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from .store import Scope

if TYPE_CHECKING:
    from .app import PerhapApp, Receive, Send
    from .auth import Grant

log = logging.getLogger("perhap.stream")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer the stream
]


def sse_message(event_id: str, data: dict[str, Any]) -> bytes:
    return b"id: " + event_id.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def stream_events(app: PerhapApp, where: Scope, following: str | None,
                        receive: Receive, send: Send, grant: Grant | None = None) -> None:
    """Answer a read with a live stream: catch-up from ``following``, then new events."""
    assert app.store is not None
    token_id = grant.id if grant is not None else None
    app.stream_limits.reserve(app.open_streams, token_id)  # 429 before anything is sent
    try:
        # Resolve the start first, so an unknown Last-Event-ID is a plain 404 before the stream opens.
        sub = await app.store.subscription(where, following=following)
    except BaseException:
        app.stream_limits.release(token_id)
        raise
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    # A comment first: it flushes the headers through proxies and tells the client it is live.
    await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
    app.open_streams += 1
    pump = asyncio.ensure_future(_pump(app, sub, send, grant))
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    stop = asyncio.ensure_future(app.shutting_down.wait())
    try:
        await asyncio.wait({pump, watch, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        app.open_streams -= 1
        app.stream_limits.release(token_id)
        for task in (pump, watch, stop):
            task.cancel()
        await asyncio.gather(pump, watch, stop, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            log.warning("stream of %s ended: %s", where, pump.exception())
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # the client is gone already
        pass


async def _pump(app: PerhapApp, sub: Any, send: Send, grant: Grant | None) -> None:
    while True:
        events = await sub.fetch(timeout=app.heartbeat)
        # A revoked token's stream ends before it carries another event.
        if grant is not None and app.auth is not None and not app.auth.still_valid(grant):
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
