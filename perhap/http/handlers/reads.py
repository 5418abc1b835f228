"""Reads: a scope's events as a JSON page or a live stream, one event by id, and the keys lists."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from ...auth import ANY_REALM
from ...errors import InvalidInput, NotFound
from ...ids import check_event_id
from ...jsoncodec import right_sized
from ...model import Scope
from ...slotted import fast_constructor
from ...store.query import ReadQuery, read_query
from ..connection import connection_of
from ..pagecache import CachedPage, entity_version, known_version, page_key
from ..requests import Context, Request, header, header_list, page_limit
from ..responses import entity_tag, json_bytes, send_tagged
from ..streaming import STREAM_BATCH, stream_events, stream_head
from ..types import Send

#: On GET /keys for a token of one realm: the list holds that realm only, whatever else is stored.
LIMITED = ((b"perhap-keys-limited", b"by-token"),)
#: An event id as perhap writes it (lower case, hyphenated): only that spelling names the event.
#: Another spelling of the same id is an entity's name like any other (an MD5-named entity, say,
#: whose 32 hex digits an event's id also has was answered that event, and could not be listed).
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A Scope of names dispatch has checked (each level's name; a route has no entity without a
#: domain): built without checking them again, all four fields given.
_checked_scope = fast_constructor(Scope, checked=True)


async def read(ctx: Context, req: Request, send: Send) -> None:
    """GET /REALM[/DOMAIN[/ENTITY[/TYPE]]]: a type in the path, or types from ?type= (repeatable)."""
    names = req.names
    await send_events(ctx, req, send, _checked_scope(*names, *(None,) * (4 - len(names))))


async def read_or_event(ctx: Context, req: Request, send: Send) -> None:
    """GET /REALM/DOMAIN/ENTITY: one event when ENTITY is the id of an event there, else a read."""
    realm, domain, entity = req.names
    if _EVENT_ID.fullmatch(entity) and not req.wants_stream():
        if req.query:
            # The read's parameters mean nothing to one event, but a bad one is a 400 all the
            # same: checked as the entity's read would check them, before the event is looked up.
            following = req.query.get("following")
            _query(req, _checked_scope(realm, domain, entity, None),
                   None if following is None else check_event_id(following, "following"),
                   page_limit(req.query), stream=False)
        try:
            event = await ctx.store.get_event(realm, domain, check_event_id(entity))
        except (NotFound, InvalidInput):
            pass
        else:
            return await _send_tagged_json(req, send, event.to_json_dict())
    await send_events(ctx, req, send, _checked_scope(realm, domain, entity, None))


def _query(req: Request, where: Scope, following: str | None, limit: int, stream: bool,
           max_bytes: int | None = None) -> ReadQuery:
    """The request's read, checked in one place (clashing parameters are 400s naming both)."""
    q = req.query
    if not q:  # the common read: no parameters, nothing to check
        return read_query(where, limit=limit, stream=stream, max_bytes=max_bytes)
    return read_query(where, following=following, order=q.get("order", "asc"),
                      after_position=q.get("after_position"), before_position=q.get("before_position"),
                      types=req.values("type"), after_version=q.get("after_version"),
                      until_version=q.get("until_version"), limit=limit, stream=stream, max_bytes=max_bytes)


async def send_events(ctx: Context, req: Request, send: Send, where: Scope) -> None:
    following = req.query.get("following")
    if following is not None:
        following = check_event_id(following, "following")
    if req.wants_stream():
        # A stream reads in batches of its own: a valid `limit` means nothing to it and is ignored,
        # a bad one is refused as on any read.
        page_limit(req.query)
        query = _query(req, where, following, STREAM_BATCH, stream=True)
        last = header(req.scope, b"last-event-id")
        # An empty one is "no last event id" (the SSE spec's EventSource sends none then): the URL's start.
        if last is not None and last.strip():
            # A reconnecting EventSource repeats its URL: its Last-Event-ID wins over the starting
            # point the URL gives (`following` or `after_position`), which were checked all the same.
            following = check_event_id(last.strip(), "Last-Event-ID")
            query = replace(query, after_position=None)
        if req.method == "HEAD":  # HEAD never streams: GET's checks and headers, no body, no slot
            return await stream_head(ctx.store, query, following, send)
        return await stream_events(ctx.streams, ctx.store, query, following, req.receive, send, req.grant,
                                   connection_of(req.scope))
    query = _query(req, where, following, page_limit(req.query), stream=False, max_bytes=ctx.max_page_bytes)
    pages = ctx.pages
    if pages is None or where.entity is None:
        page = await ctx.store.read_page(query, following)
        return await _send_tagged_json(req, send, {"events": [e.to_json_dict() for e in page.events],
                                                   "next": page.next})
    # An entity read: served from the page cache while the entity stays at the cached version.
    key = page_key(query, following)
    cached = pages.get(key)
    version = None
    # Taken before any read: what is read next reflects at least every commit up to it.
    marker = ctx.store.commit_marker()
    if cached is not None:
        if marker is not None and marker == cached.marker:  # nothing stored since: no probe
            pages.hits += 1
            return await send_tagged(send, cached.body, cached.tag, header_list(req.scope, b"if-none-match"))
        version = await entity_version(ctx.store, query)
        if version == cached.version:
            pages.hits += 1
            if marker is not None:
                pages.put(key, replace(cached, marker=marker))
            return await send_tagged(send, cached.body, cached.tag, header_list(req.scope, b"if-none-match"))
    pages.misses += 1
    page = await ctx.store.read_page(query, following)
    body = json_bytes({"events": [e.to_json_dict() for e in page.events], "next": page.next})
    tag = entity_tag(body)
    # The probe came first, so the page is at least as new as `version`: kept under it, a later
    # read that finds the entity there gets this page or a newer one, never an older.
    if version is None:
        version = known_version(query, page)
    if version is not None:  # (kept: in a buffer of its own size, which the cache's bound counts)
        body = right_sized(body)
        pages.put(key, CachedPage(version, body, tag, marker))
    await send_tagged(send, body, tag, header_list(req.scope, b"if-none-match"))


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
        # Said, so that a tool meaning to cover the whole store (an export, a copy) can stop
        # rather than leave every other realm out in silence.
        return await _send_tagged_json(req, send, {"keys": [own] if shown else [], "next": None}, LIMITED)
    page = await ctx.store.keys(*levels, after=after, limit=page_limit(req.query))
    await _send_tagged_json(req, send, {"keys": page.keys, "next": page.next})


async def _send_tagged_json(req: Request, send: Send, value: object,
                            extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON 200 with an ETag of its bytes (or a 304: see send_tagged)."""
    body = json_bytes(value)
    await send_tagged(send, body, entity_tag(body), header_list(req.scope, b"if-none-match"), extra)
