"""The system endpoints: the index, /_health, /_openapi.json, /_metrics, /_ui; no route; wrong method."""

from __future__ import annotations

from ...errors import NotFound, StorageUnavailable
from ...model import check_name
from ...ui import ui_file
from ..metrics import CONTENT_TYPE as METRICS_TYPE
from ..openapi import openapi_document
from ..requests import Context, Request, authorize
from ..responses import HTTPProblem, send_body, send_json
from ..routes import GROUPS, ROUTE_KEY, Route
from ..types import Send

_INDEX = {"name": "perhap", "api": "/_openapi.json", "health": "/_health", "keys": "/keys", "ui": "/_ui",
          "groups": "/_groups/{realm}"}
_SYSTEM = ("/_health", "/_openapi.json", "/_metrics", "/_ui", "/_groups/REALM")
_LEVELS = ("realm", "domain", "entity", "type")
_APPEND_HINT = ('to append, POST one event to /REALM/DOMAIN/ENTITY/TYPE as {"event": ...}, '
                'a batch to /REALM/DOMAIN/ENTITY as {"events": [{"type": ..., "event": ...}]}, '
                'or a batch over several entities to /REALM/DOMAIN as '
                '{"events": [{"entity": ..., "type": ..., "event": ...}]}')


async def index(ctx: Context, req: Request, send: Send) -> None:
    await send_json(send, 200, _INDEX)


async def health(ctx: Context, req: Request, send: Send) -> None:
    if await ctx.store.health():
        return await send_json(send, 200, {"status": "ok"})
    raise StorageUnavailable("the store does not answer")


async def document(ctx: Context, req: Request, send: Send) -> None:
    await send_json(send, 200, openapi_document(ctx.max_batch, ctx.metrics is not None))


async def metrics(ctx: Context, req: Request, send: Send) -> None:
    if ctx.metrics is None:  # metrics off: as if the route did not exist
        return await no_route(ctx, req, send)
    authorize(req.grant, None, "admin")
    grant = req.grant
    # The group series name realms: a token sees those of the realms it administers.
    try:
        groups = [g for g in await ctx.groups.figures() if grant is None or grant.allows(g[0], "admin")]
    except StorageUnavailable:  # the database is away: the rest of the figures matter most now
        groups = []
    await ctx.store.refresh_statistics()
    await send_body(send, 200, ctx.metrics.exposition(ctx.store, groups), [(b"content-type", METRICS_TYPE)])


async def ui(ctx: Context, req: Request, send: Send) -> None:
    found = ui_file(req.names[1:])
    if found is None:
        raise NotFound("no such file")
    body, kind = found
    await send_body(send, 200, body, [(b"content-type", kind.encode()), *_UI_HEADERS])


#: The UI acts with the token it holds, so no other site may frame it (clickjacking): CSP's
#: frame-ancestors cannot be set by the page's own <meta>, and X-Frame-Options is for old browsers.
_UI_HEADERS = ((b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff"),
               (b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY"))


async def no_route(ctx: Context, req: Request, send: Send) -> None:
    """Nothing answers here: 404, after the checks a real route makes (bad names are 400, as ever)."""
    names = req.names
    if len(names) == 1 and names[0].startswith("_"):
        shown = [p for p in _SYSTEM if ctx.metrics is not None or p != "/_metrics"]
        there_are = ", ".join(shown[:-1]) + " and " + shown[-1]
        raise HTTPProblem(404, f"no such system endpoint: there are {there_are} (a realm's name cannot begin "
                               "with '_')")
    if names[0] == GROUPS:
        if len(names) > 1:  # another realm's token is a 403 here too, as on every route of a realm
            authorize(req.grant, check_name(names[1], "realm", realm=True), "read")
        raise HTTPProblem(404, "no such route: consumer groups are at /_groups/REALM[/GROUP[/events|ack|nack|"
                               "parked[/replay]]]")
    realm = check_name(names[0], "realm", realm=True)
    authorize(req.grant, realm, "read")  # (no route writes: a POST here is the 404 for a write token too)
    for i in range(1, min(len(names), 4)):
        check_name(names[i], _LEVELS[i])
    raise HTTPProblem(404, "no such route: paths are /REALM[/DOMAIN[/ENTITY[/TYPE]]]")


async def wrong_method(ctx: Context, req: Request, send: Send) -> None:
    """A method the route does not answer: 405 with its Allow header; a POST is told where appends go."""
    route: Route = req.scope[ROUTE_KEY]
    detail = f"{req.method} is not allowed here; use {route.allow}"
    if req.method == "POST" and not route.template.startswith(f"/{GROUPS}"):
        if route.template.endswith("/keys"):
            detail += "; 'keys' lists the names below and cannot be a name itself"
        detail += f"; {_APPEND_HINT}"
    raise HTTPProblem(405, detail, headers=[(b"allow", route.allow.encode())])
