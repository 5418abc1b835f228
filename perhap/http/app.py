"""The HTTP API: a thin raw-ASGI adapter over a :class:`~perhap.store.Store`.

No web framework: on these machines raw ASGI under uvicorn answers about 2.5x the requests of
Starlette for the same route (shared/FACTS.md), and the API is small enough to route by hand.
A path finds its route in the route table (:mod:`.routes`) by shape; every failure becomes an
RFC 9457 problem+json response (:mod:`.responses`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from ..auth import Authenticator
from ..backends import open_store, redact
from ..errors import PerhapError, StorageUnavailable
from ..groups import Groups
from ..limits import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_PAGE_BYTES,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_STREAMS_PER_TOKEN,
    DEFAULT_STREAM_BUFFER,
    DEFAULT_WRITE_TIMEOUT,
    StreamLimiter,
)
from ..model import check_name
from ..store.base import Store
from .cors import Cors
from .handlers import HANDLERS
from .metrics import Metrics
from .observer import Observer
from .pagecache import DEFAULT_PAGE_CACHE, PageCache
from .requests import Context, Handler, Request, authenticate, authorize, route_query
from .responses import HTTPProblem, send_problem
from .routes import ANY_METHOD, OPEN_SEGMENTS, ROUTE_KEY, ROUTES, Kind, decode_segment, match, split_path
from .streaming import StreamRegistry
from .types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("perhap.http")

_LEVELS = ("realm", "domain", "entity", "type")


class PerhapApp:
    """The ASGI application. Give it an open store, or a URL to open at lifespan start-up."""

    def __init__(self, store: Store | None = None, *, store_url: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, heartbeat: float = DEFAULT_HEARTBEAT,
                 auth: str | Authenticator | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 max_depth: int = DEFAULT_MAX_DEPTH, max_streams: int = DEFAULT_MAX_STREAMS,
                 max_streams_per_token: int = DEFAULT_MAX_STREAMS_PER_TOKEN,
                 stream_buffer: int = DEFAULT_STREAM_BUFFER, write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
                 cors_origins: Sequence[str] = (), metrics: bool = True, access_log: bool = False,
                 page_cache: int = DEFAULT_PAGE_CACHE, max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> None:
        if store is None and store_url is None:
            raise ValueError("give a store or a store_url")
        self.store_url = store_url
        self.max_body, self.max_batch, self.max_depth = max_body, max_batch, max_depth
        self.max_page_bytes = max_page_bytes
        # None means off: the request path then pays one None check for each.
        self.auth = Authenticator(auth) if isinstance(auth, str) else auth
        self.stream_limits = StreamLimiter(max_streams, max_streams_per_token)
        self.streams = StreamRegistry(self.stream_limits, heartbeat, self.auth, stream_buffer, write_timeout)
        self.metrics = Metrics(self.streams) if metrics else None
        #: Serialised entity pages, up to ``page_cache`` bytes (0: none); see :mod:`.pagecache`.
        self.pages = PageCache(page_cache) if page_cache > 0 else None
        #: What the handlers share; None until the store is open.
        self.context: Context | None = None if store is None else self._context(store)
        self.handlers = self._bind_handlers()
        #: What serves each HTTP request: dispatch itself, or dispatch wrapped in middleware.
        self.stack = self.build_middleware_stack(cors_origins, access_log)

    def build_middleware_stack(self, cors_origins: Sequence[str], access_log: bool) -> ASGIApp:
        """Dispatch, wrapped in what is switched on; with nothing on, nothing wraps it (zero cost)."""
        app: ASGIApp = self.dispatch
        if cors_origins:  # inside the observer, so a preflight is counted and logged too
            app = Cors(app, cors_origins)
        if self.metrics is not None or access_log:
            app = Observer(app, self.metrics, access_log)
        return app

    def _bind_handlers(self) -> tuple[dict[str, Handler], ...]:
        """Each route's handler by method, indexed like ROUTES."""
        table = []
        for route in ROUTES:
            bound = {method: HANDLERS[op.kind] for method, op in route.operations.items()}
            if route.head_is_get:
                bound["HEAD"] = bound["GET"]
            if self.metrics is None and any(op.kind is Kind.METRICS for op in route.operations.values()):
                bound = {ANY_METHOD: HANDLERS[Kind.NO_ROUTE]}  # metrics off: /_metrics is no route
            table.append(bound)
        return tuple(table)

    def _context(self, store: Store) -> Context:
        return Context(store, self.max_body, self.max_batch, self.max_depth, self.metrics, self.streams,
                       self.pages, Groups(store), self.max_page_bytes)

    @property
    def store(self) -> Store | None:
        return None if self.context is None else self.context.store

    @property
    def open_streams(self) -> int:
        return self.streams.open

    def stop_streams(self) -> None:
        """End every open stream (the server is stopping); new streams end at once too."""
        self.streams.stop()

    # ----------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.stack(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.context is None:
                    url = self.store_url or ""
                    try:
                        self.context = self._context(await open_store(url))
                    except Exception as exc:
                        text = f"cannot open the store {redact(url)}: {exc}"
                        await send({"type": "lifespan.startup.failed", "message": text})
                        return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop_streams()
                if self.context is not None and self.store_url is not None:
                    await self.context.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------- dispatch

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request: find its route, check names, token and method, call its handler."""
        try:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8")
            segments = split_path(raw)
            ctx = self.context
            if ctx is None:
                raise StorageUnavailable("the store is not open yet")
            grant = None
            # The token first, before the path and query are judged: without a valid one, a bad
            # path is a 401 like any other (an open route's name is read leniently here).
            if self.auth is not None and segments and not _open(segments):
                grant = authenticate(self.auth, scope)
            names = [decode_segment(s) for s in segments]
            route = match(names)
            scope[ROUTE_KEY] = route
            method: str = scope["method"]
            query = route_query(route, method, scope.get("query_string", b""))
            handlers = self.handlers[route.index]
            handler = handlers.get(method)
            if route.realm:
                realm = check_name(names[0], "realm", realm=True)
                if grant is not None:  # write for an append; a POST the route has not is a 405 (or 404)
                    authorize(grant, realm, "write" if method == "POST" and handler is not None else "read")
                for i in range(1, route.levels):
                    check_name(names[i], _LEVELS[i])
            elif grant is not None and route.realm_at is not None:
                # As for /{realm}/...: another realm's token is a 403 whatever the method (every
                # group route needs read at least; the handlers ask for write where they need it).
                authorize(grant, check_name(names[route.realm_at], "realm", realm=True), "read")
            # Every route has an ANY_METHOD handler (the wrong-method 405, or no route).
            await (handler or handlers[ANY_METHOD])(ctx, Request(scope, receive, method, names, query, grant), send)
        except HTTPProblem as p:
            await send_problem(send, p.status, p.slug, p.title, p.detail, p.extra, p.headers)
        except PerhapError as e:
            await send_problem(send, e.status, e.slug, e.title, e.detail, e.extra)
        except Exception:  # a bug: log it, never show it to the client
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await send_problem(send, 500, "internal-error", "Internal Server Error",
                               "the server failed; the error is in its log", {})


def _open(segments: list[bytes]) -> bool:
    """Whether a path is an open route's: /_health and /_openapi.json exactly, or /_ui and any
    path below it (its static files). /_health/x is no route, and needs a token like any path."""
    first = _lenient(segments[0])
    return first in OPEN_SEGMENTS and (len(segments) == 1 or first == "_ui")


def _lenient(segment: bytes) -> str:
    """A path segment decoded whatever it holds (bad bytes replaced), to tell an open route."""
    return (unquote_to_bytes(segment) if b"%" in segment else segment).decode("utf-8", "replace")


def create_app(store_url: str, **options: Any) -> PerhapApp:
    return PerhapApp(store_url=store_url, **options)
