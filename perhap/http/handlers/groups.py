"""Consumer groups over HTTP: /_groups/{realm}[/{group}[/events|ack|nack|parked[/replay]]].

Consuming (leases, acks, nacks, the parked list) needs ``read`` on the realm; creating, deleting
and replaying need ``write``. The semantics live in :mod:`perhap.groups`; this module only reads
requests and writes answers.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable
from typing import Any

from ...errors import InvalidInput, sent_text
from ...groups import GroupSettings, check_group_name
from ...groups.settings import DEFAULT_LEASE_MAX, MAX_LEASE_WAIT
from ...ids import check_event_id
from ...model import MAX_LIMIT, check_consumer, check_name
from ..connection import connection_of
from ..observer import CLIENT_GONE
from ..requests import CHALLENGE, Context, Request, authenticate, authorize, page_limit, read_json_object
from ..responses import HTTPProblem, send_json
from ..routes import encode_segment
from ..streaming import (
    FIRST_BATCH,
    KEEP_ALIVE,
    Pump,
    Writing,
    chunked,
    serve_stream,
    sse_message,
    through_outages,
    wait_disconnect,
)
from ..types import Send

NACK_ACTIONS = ("retry", "park", "release")


def _names(req: Request, permission: str) -> tuple[str, str]:
    """The realm and group of the path, the token's ``permission`` on the realm checked."""
    realm = check_name(req.names[1], "realm", realm=True)
    authorize(req.grant, realm, permission)
    return realm, check_group_name(req.names[2])


def _recheck(ctx: Context, req: Request, realm: str) -> Callable[[], None] | None:
    """For a lease that waits (a long poll, a stream): the token checked again before each look
    for events, so a token revoked meanwhile gets a 401 (a stream ends) instead of more leases."""
    auth = ctx.streams.auth
    if auth is None or req.grant is None:
        return None

    def check() -> None:
        authorize(authenticate(auth, req.scope), realm, "read")
    return check


async def _token_still_holds(ctx: Context, req: Request, realm: str, name: str, consumer: str,
                             events: list[dict[str, Any]]) -> bool:
    """After a lease that waited (a long poll, a stream's round): whether the token is valid now,
    the file looked at after the read that found the events, as before a stream's send. If not,
    they go back to the group unhandled (a release: the delivery does not count), so a token
    revoked before an event's commit never carries it (the check before each look is a request's,
    which trusts the file for a second)."""
    auth = ctx.streams.auth
    if auth is None or req.grant is None or not events or auth.still_valid(req.grant, time.monotonic()):
        return True
    await ctx.groups.nack(realm, name, consumer, [e["event_id"] for e in events], "release")
    return False


def group_path(realm: str, name: str) -> str:
    return f"/_groups/{encode_segment(realm)}/{encode_segment(name)}"


async def list_groups(ctx: Context, req: Request, send: Send) -> None:
    realm = check_name(req.names[1], "realm", realm=True)
    authorize(req.grant, realm, "read")
    groups = [group for _, _, group in await ctx.groups.figures(realm)]  # (one deleted meanwhile left out)
    await send_json(send, 200, {"groups": groups})


async def describe(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "read")
    await send_json(send, 200, await ctx.groups.describe(realm, name))


async def create(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "write")
    body = await read_json_object(req, ctx.max_body, ctx.max_depth, optional=True)
    created, group = await ctx.groups.create(realm, name, GroupSettings.from_json(body))
    headers = [(b"location", group_path(realm, name).encode())] if created else None
    await send_json(send, 201 if created else 200, group, headers)


async def delete(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "write")
    await ctx.groups.delete(realm, name)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def lease(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "read")
    consumer = check_consumer(req.query.get("consumer"))
    most = _max(req.query.get("max"))
    wait = _wait(req.query.get("wait"))
    if req.wants_stream():
        return await _stream(ctx, req, send, realm, name, consumer, most)
    if wait <= 0:
        events = await ctx.groups.lease(realm, name, consumer, most, 0.0, max_bytes=ctx.max_page_bytes)
    else:
        # A client that hangs up while it waits must not have events leased to it afterwards
        # (they would sit unseen until ack_timeout): the poll ends with the connection. A server
        # that stops ends the wait too (as it ends streams), instead of holding the shutdown for
        # the whole wait and then failing it: with nothing leased, or, when a look was under way,
        # with what it leased (answered here, since the lease is stored whatever the poll does).
        poll = asyncio.ensure_future(ctx.groups.lease(realm, name, consumer, most, wait, _recheck(ctx, req, realm),
                                                      ctx.streams.stopping, ctx.max_page_bytes))
        hangup = asyncio.ensure_future(wait_disconnect(req.receive))
        try:
            await asyncio.wait({poll, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            poll.cancel()  # nothing if it finished
            await asyncio.gather(poll, hangup, return_exceptions=True)
        if poll.cancelled():
            req.scope[CLIENT_GONE] = True  # nobody to answer (a 499 in the log, not a 500)
            return
        events = poll.result()
        if not await _token_still_holds(ctx, req, realm, name, consumer, events):
            # (A 401 whatever the change: a token given more rights would pass a fresh check, and
            # the events it found are the group's again.)
            raise HTTPProblem(401, "the bearer token was revoked or changed while the poll waited; what it "
                                   "found went back to the group", "unauthorized", headers=CHALLENGE)
    await send_json(send, 200, {"events": events})


async def ack(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "read")
    body = await read_json_object(req, ctx.max_body, ctx.max_depth)
    _only(body, ("consumer", "event_ids"))
    count = await ctx.groups.ack(realm, name, check_consumer(body.get("consumer")), _required_ids(body))
    await send_json(send, 200, {"acknowledged": count})


async def nack(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "read")
    body = await read_json_object(req, ctx.max_body, ctx.max_depth)
    _only(body, ("consumer", "event_ids", "action"))
    action = body.get("action", "retry")
    if action not in NACK_ACTIONS:
        raise InvalidInput('action must be "retry" (deliver it again), "park", or "release" (give it back '
                           'unhandled: a worker stopping)')
    consumer = check_consumer(body.get("consumer"))
    retried, parked = await ctx.groups.nack(realm, name, consumer, _required_ids(body), action)
    answer = {"released": retried} if action == "release" else {"retried": retried, "parked": parked}
    await send_json(send, 200, answer)


async def parked(ctx: Context, req: Request, send: Send) -> None:
    """A page of parked events; ``next`` only when more follow, so a whole list is ``{"events": [...]}``."""
    realm, name = _names(req, "read")
    limit = page_limit(req.query) if "limit" in req.query else MAX_LIMIT
    following = req.query.get("following")
    if following is not None:
        following = check_event_id(following, "following")
    events, more = await ctx.groups.parked(realm, name, limit, following, ctx.max_page_bytes)
    await send_json(send, 200, {"events": events} if more is None else {"events": events, "next": more})


async def replay(ctx: Context, req: Request, send: Send) -> None:
    realm, name = _names(req, "write")
    body = await read_json_object(req, ctx.max_body, ctx.max_depth, optional=True)
    _only(body, ("event_ids",))
    ids = _event_ids(body, required=False)
    await send_json(send, 200, {"replayed": await ctx.groups.replay(realm, name, ids)})


# --------------------------------------------------------------------------- the stream


async def _stream(ctx: Context, req: Request, send: Send, realm: str, name: str, consumer: str,
                  most: int) -> None:
    """Lease to the consumer for as long as it listens: each leased event one SSE message, never
    more than the group's max_in_flight unacknowledged (the leases decide that, not the stream).

    Like every stream (:func:`..streaming.serve_stream`), one whose client leaves a write unread for
    the write timeout ends, what it holds is bounded by the stream buffer (a round leases up to a
    batch that grows while its events are small, ending at the event that reaches the buffer, and
    sends it in bodies of at most the buffer), and a storage outage keeps it open with comments.
    It ends when its group is deleted."""
    streams, groups = ctx.streams, ctx.groups
    recheck = _recheck(ctx, req, realm)

    async def pump(writing: Writing) -> None:
        batch = min(most, FIRST_BATCH)
        born: list[float] = []  # the group's creation time: a group deleted and made again ends the stream
        while True:
            # (A lease holds one event at least, and ends at the one reaching the buffer. Through an
            # outage, a lease whose write was lost meanwhile runs out and is delivered again.)
            lease = functools.partial(groups.lease, realm, name, consumer, batch, streams.heartbeat, recheck,
                                      max_bytes=streams.buffer, born=born)
            events = await through_outages(lease, writing, f"group {name} of {realm}")
            if not await _token_still_holds(ctx, req, realm, name, consumer, events):
                return  # (revoked: the stream ends, as a read stream's does)
            if not events:
                await writing.send(KEEP_ALIVE)
                continue
            size = 0
            for body in chunked((sse_message(e["event_id"], e) for e in events), streams.buffer):
                size += len(body)
                await writing.send(body)
            if size > streams.buffer:
                batch = max(1, len(events) * streams.buffer // size)
            elif 2 * size <= streams.buffer:
                batch = min(most, 2 * batch)

    async def ready() -> Pump:
        await groups.check(realm, name)  # an unknown group is a plain 404, before the stream
        return pump

    await serve_stream(streams, req.grant, ready, req.receive, send, f"group {name} of {realm}",
                       connection_of(req.scope))


# --------------------------------------------------------------------------- values


def _only(body: dict[str, Any], keys: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r} in the body: it takes {', '.join(keys)}")


def _required_ids(body: dict[str, Any]) -> list[str]:
    ids = _event_ids(body, required=True)
    assert ids is not None
    return ids


def _event_ids(body: dict[str, Any], *, required: bool) -> list[str] | None:
    ids = body.get("event_ids")
    if ids is None:
        if required:
            raise InvalidInput("event_ids is required: a list of the event ids of your leases")
        return None
    if not isinstance(ids, list):
        raise InvalidInput("event_ids must be a list of event ids")
    if len(ids) > MAX_LIMIT:
        raise InvalidInput(f"event_ids may hold at most {MAX_LIMIT} ids, got {len(ids)}")
    return [check_event_id(i, "event_ids") for i in ids]


def _max(text: str | None) -> int:
    if text is None:
        return DEFAULT_LEASE_MAX
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"max must be an integer from 1 to {MAX_LIMIT}, got {sent_text(text, 40)!r}")
    return int(text)


def _wait(text: str | None) -> float:
    if text is None:
        return 0.0
    try:  # (float() also takes "1_0" and padding spaces, which are no number of the query's)
        seconds = math.nan if "_" in text or text != text.strip() else float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_LEASE_WAIT:  # NaN fails this too
        raise InvalidInput(f"wait must be a number of seconds from 0 to {MAX_LEASE_WAIT:g}, "
                           f"got {sent_text(text, 40)!r}")
    return seconds
