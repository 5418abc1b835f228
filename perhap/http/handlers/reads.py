"""Reads: a scope's events as a JSON page or a live stream, one event by id, and the keys lists."""

from __future__ import annotations

import re

from ...auth import ANY_REALM
from ...errors import InvalidInput, NotFound
from ...ids import check_event_id
from ...model import Scope
from ..requests import Context, Request, header, page_limit, type_filter
from ..responses import send_json
from ..streaming import abort_hook, stream_events, stream_head
from ..types import Send

_UUID_SHAPE = re.compile(r"[0-9a-fA-F-]{32,36}")


async def read(ctx: Context, req: Request, send: Send) -> None:
    """GET /REALM[/DOMAIN[/ENTITY[/TYPE]]]: a type in the path, or else from ?type=."""
    names = req.names
    n = len(names)
    if n == 4:
        where = Scope(names[0], names[1], names[2], names[3])
    else:
        type_ = type_filter(req.query)
        where = Scope(names[0], names[1] if n > 1 else None, names[2] if n > 2 else None, type_)
    await send_events(ctx, req, send, where)


async def read_or_event(ctx: Context, req: Request, send: Send) -> None:
    """GET /REALM/DOMAIN/ENTITY: one event when ENTITY is the id of an event there, else a read."""
    realm, domain, entity = req.names
    if _UUID_SHAPE.fullmatch(entity) and not req.wants_stream():
        try:
            event = await ctx.store.get_event(realm, domain, check_event_id(entity))
        except (NotFound, InvalidInput):
            pass
        else:
            return await send_json(send, 200, event.to_json_dict())
    await send_events(ctx, req, send, Scope(realm, domain, entity, type_filter(req.query)))


async def send_events(ctx: Context, req: Request, send: Send, where: Scope) -> None:
    following = req.query.get("following")
    if following is not None:
        following = check_event_id(following, "following")
    if req.wants_stream():
        last = header(req.scope, b"last-event-id")
        if last is not None:
            following = check_event_id(last.strip(), "Last-Event-ID")
        if req.method == "HEAD":  # HEAD never streams: GET's checks and headers, no body, no slot
            return await stream_head(ctx.store, where, following, send)
        return await stream_events(ctx.streams, ctx.store, where, following, req.receive, send, req.grant,
                                   abort_hook(req.scope))
    page = await ctx.store.read(where, following=following, limit=page_limit(req.query))
    await send_json(send, 200, {"events": [e.to_json_dict() for e in page.events], "next": page.next})


async def keys(ctx: Context, req: Request, send: Send) -> None:
    """GET /keys, /REALM/keys ...: the names one level below, paged with ?after=."""
    levels = req.names[:-1]
    after = req.query.get("after")
    grant = req.grant
    if not levels and grant is not None and grant.realm != ANY_REALM:
        # A token of one realm sees that realm, if it exists: never the names of others.
        page_limit(req.query)  # still refuse a bad limit, as for everyone
        own = grant.realm
        shown = (after is None or own > after) and bool((await ctx.store.keys(own, limit=1)).keys)
        return await send_json(send, 200, {"keys": [own] if shown else [], "next": None})
    page = await ctx.store.keys(*levels, after=after, limit=page_limit(req.query))
    await send_json(send, 200, {"keys": page.keys, "next": page.next})
