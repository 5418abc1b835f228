"""The HTTP API: a thin raw-ASGI adapter over a :class:`~perhap.store.Store`.

No web framework: on these machines raw ASGI under uvicorn answers about 2.5x the requests of
Starlette for the same route (shared/FACTS.md), and the API is small enough to route by hand.
Routing is by path segment count; every failure becomes an RFC 9457 problem+json response.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes

import orjson

from .store import (
    MAX_LIMIT,
    InvalidInput,
    NotFound,
    PerhapError,
    Scope,
    StorageUnavailable,
    Store,
    check_event_id,
    check_expected_version,
    check_name,
    load_json,
    new_event,
)
from .auth import ANY_REALM, Authenticator, Grant
from .cors import Cors
from .limits import (DEFAULT_MAX_BATCH, DEFAULT_MAX_DEPTH, DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_TOKEN,
                     BatchTooLarge, StreamLimiter, check_depth)
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics, Observer
from .streaming import stream_events
from .ui import send_ui_file

log = logging.getLogger("perhap.http")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_BODY = 1024 * 1024
JSON = [(b"content-type", b"application/json")]
PROBLEM = [(b"content-type", b"application/problem+json")]
_INT = re.compile(r"-?[0-9]{1,12}")
_UUID_SHAPE = re.compile(r"[0-9a-fA-F-]{32,36}")
_STATUS_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
                  429: "Too Many Requests", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error", 503: "Service Unavailable"}
# With --auth, everything but these needs a bearer token: they hold no data.
_OPEN = frozenset({"_health", "_openapi.json", "_ui"})
_CHALLENGE = [(b"www-authenticate", b"Bearer")]


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str, slug: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra
        self.slug = slug or _STATUS_TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or []


def problem_body(status: int, slug: str, title: str, detail: str, extra: dict[str, Any]) -> bytes:
    body = {"type": f"urn:perhap:problem:{slug}", "title": title, "status": status, "detail": detail}
    body.update(extra)
    return orjson.dumps(body)


def event_path(realm: str, domain: str, event_id: str) -> str:
    return f"/{quote(realm, safe='')}/{quote(domain, safe='')}/{event_id}"


class PerhapApp:
    """The ASGI application. Give it an open store, or a URL to open at lifespan start-up."""

    def __init__(self, store: Store | None = None, *, store_url: str | None = None,
                 max_body: int = DEFAULT_MAX_BODY, heartbeat: float = 15.0,
                 auth: str | Authenticator | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 max_depth: int = DEFAULT_MAX_DEPTH, max_streams: int = DEFAULT_MAX_STREAMS,
                 max_streams_per_token: int = DEFAULT_MAX_STREAMS_PER_TOKEN,
                 cors_origins: Sequence[str] = (), metrics: bool = True, access_log: bool = False) -> None:
        if store is None and store_url is None:
            raise ValueError("give a store or a store_url")
        self.store = store
        self.store_url = store_url
        self.max_body = max_body
        self.heartbeat = heartbeat
        self.shutting_down = asyncio.Event()
        self.open_streams = 0
        # None means off: the request path then pays one None check for each.
        self.auth = Authenticator(auth) if isinstance(auth, str) else auth
        self.max_batch, self.max_depth = max_batch, max_depth
        self.stream_limits = StreamLimiter(max_streams, max_streams_per_token)
        self.metrics = Metrics(self) if metrics else None
        handler: Any = self.handle
        if cors_origins:
            handler = _chain(Cors(cors_origins), handler)
        if metrics or access_log:
            handler = _chain(Observer(self, self.metrics, access_log), handler)
        self.wrapped = None if handler == self.handle else handler

    # ----------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.store is None:
                        from .backends import open_store

                        self.store = await open_store(self.store_url)  # type: ignore[arg-type]
                except Exception as exc:
                    from .server import redact

                    message = f"cannot open the store {redact(self.store_url or '')}: {exc}"
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop_streams()
                if self.store is not None and self.store_url is not None:
                    await self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def stop_streams(self) -> None:
        """End every open stream (the server is stopping); new streams end at once too."""
        self.shutting_down.set()

    async def http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if self.wrapped is not None:
            return await self.wrapped(scope, receive, send)
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            await self.route(scope, receive, send)
        except HTTPProblem as p:
            await self.send_problem(send, p.status, p.slug, _STATUS_TITLES.get(p.status, "Error"),
                                    p.detail, p.extra, p.headers)
        except PerhapError as e:
            await self.send_problem(send, e.status, e.slug, e.title, e.detail, e.extra)
        except Exception:  # a bug: log it, never show it to the client
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await self.send_problem(send, 500, "internal-error", "Internal Server Error",
                                    "the server failed; the error is in its log", {})

    # ----------------------------------------------------------------- routing

    async def route(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        method = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw = raw.split(b"?", 1)[0]  # some servers and test transports include the query
        segments = raw.split(b"/")[1:]
        if segments and segments[-1] == b"":
            segments.pop()  # a trailing slash means the same resource
        names = [_decode_segment(s) for s in segments]
        query = _parse_query(scope.get("query_string", b""))
        store = self.store
        if store is None:
            raise StorageUnavailable("the store is not open yet")
        n = len(names)
        if self.auth is not None and n and names[0] not in _OPEN:
            grant = self.auth.authenticate(scope.get("headers", ()))
            if grant is None:
                # Never echo the token: a client may have pasted a secret in the wrong place.
                detail = ("the bearer token is not valid (unknown or revoked)" if _header(scope, b"authorization")
                          else "this route needs a bearer token: Authorization: Bearer TOKEN")
                raise HTTPProblem(401, detail, "unauthorized", headers=_CHALLENGE)
            scope["perhap.grant"] = grant

        if n == 0:
            self.allow(method, "GET")
            return await self.send_json(send, 200, {
                "name": "perhap", "api": "/_openapi.json", "health": "/_health", "keys": "/keys"})
        if names[0] == "_ui":
            self.allow(method, "GET")
            return await send_ui_file(send, names[1:])
        if names[0].startswith("_") and n == 1:
            if names[0] == "_metrics" and self.metrics is not None:
                self.allow(method, "GET")
                self.authorize(scope, None, "admin")
                body = self.metrics.exposition()
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", METRICS_TYPE), (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
            return await self.system(names, method, send)
        if names[0] == "keys" and n == 1:
            self.allow(method, "GET")
            return await self.send_keys(send, store, query, grant=scope.get("perhap.grant"))

        realm = check_name(names[0], "realm", realm=True)
        if self.auth is not None:
            self.authorize(scope, realm, "write" if method == "POST" else "read")
        if n == 1:
            self.allow(method, "GET")
            return await self.send_read(scope, receive, send, Scope(realm, type=_type(query)), query)
        if names[1] == "keys" and n == 2:
            self.allow(method, "GET")
            return await self.send_keys(send, store, query, realm)
        domain = check_name(names[1], "domain")
        if n == 2:
            self.allow(method, "GET")
            return await self.send_read(scope, receive, send, Scope(realm, domain, type=_type(query)), query)
        if names[2] == "keys" and n == 3:
            self.allow(method, "GET")
            return await self.send_keys(send, store, query, realm, domain)
        entity = check_name(names[2], "entity")
        if n == 3:
            self.allow(method, "GET", "POST")
            if method == "POST":
                return await self.append_batch(receive, send, scope, realm, domain, entity)
            if _UUID_SHAPE.fullmatch(entity) and not _wants_stream(scope):
                try:
                    event = await store.get_event(realm, domain, check_event_id(entity))
                except (NotFound, InvalidInput):
                    pass
                else:
                    return await self.send_json(send, 200, event.to_json_dict())
            return await self.send_read(scope, receive, send, Scope(realm, domain, entity, _type(query)), query)
        if names[3] == "keys" and n == 4:
            self.allow(method, "GET")
            return await self.send_keys(send, store, query, realm, domain, entity)
        type_ = check_name(names[3], "type")
        if n == 4:
            self.allow(method, "GET", "POST")
            if method == "POST":
                return await self.append(receive, send, scope, realm, domain, entity, type_)
            return await self.send_read(scope, receive, send, Scope(realm, domain, entity, type_), query)
        raise HTTPProblem(404, "no such route: paths are /REALM[/DOMAIN[/ENTITY[/TYPE]]]")

    @staticmethod
    def authorize(scope: dict[str, Any], realm: str | None, permission: str) -> None:
        grant = scope.get("perhap.grant")
        if grant is not None and not grant.allows(realm, permission):
            where = f"realm {realm!r}" if realm is not None else "this server"
            raise HTTPProblem(403, f"this token may not {permission} {where}", "forbidden")

    @staticmethod
    def allow(method: str, *methods: str) -> None:
        allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
        if method not in allowed:
            header = ", ".join(sorted(allowed)).encode()
            raise HTTPProblem(405, f"{method} is not allowed here; use {', '.join(sorted(allowed))}",
                              headers=[(b"allow", header)])

    async def system(self, names: list[str], method: str, send: Send) -> None:
        if names == ["_health"]:
            self.allow(method, "GET")
            ok = self.store is not None and await self.store.health()
            if ok:
                return await self.send_json(send, 200, {"status": "ok"})
            raise StorageUnavailable("the store does not answer")
        if names == ["_openapi.json"]:
            self.allow(method, "GET")
            from .openapi import openapi_document

            return await self.send_json(send, 200, openapi_document())
        raise HTTPProblem(404, "no such system endpoint")

    # ----------------------------------------------------------------- handlers

    async def append(self, receive: Receive, send: Send, scope: dict[str, Any],
                     realm: str, domain: str, entity: str, type_: str) -> None:
        body = await self.read_json_object(scope, receive)
        unknown = set(body) - {"event", "event_id", "meta", "expected_version"}
        if unknown:
            raise InvalidInput(f"unknown keys in the body: {', '.join(sorted(unknown))}")
        if "event" not in body:
            raise InvalidInput("the body needs an 'event' key: {\"event\": ...}")
        meta = body.get("meta")
        if "meta" in body and not isinstance(meta, dict):
            raise InvalidInput("meta must be a JSON object")
        prepared = new_event(type_, body["event"], body.get("event_id"), meta)
        expected = check_expected_version(body.get("expected_version"))
        assert self.store is not None
        result = await self.store.append_batch(realm, domain, entity, [prepared], expected_version=expected)
        first = result.first
        await self.send_json(send, 201 if result.created else 200, first.to_dict(),
                             [(b"location", event_path(realm, domain, first.event_id).encode())])

    async def append_batch(self, receive: Receive, send: Send, scope: dict[str, Any],
                           realm: str, domain: str, entity: str) -> None:
        body = await self.read_json_object(scope, receive)
        unknown = set(body) - {"events", "expected_version"}
        if unknown:
            raise InvalidInput(f"unknown keys in the body: {', '.join(sorted(unknown))}")
        if not isinstance(body.get("events"), list):
            raise InvalidInput("the body needs an 'events' list: {\"events\": [{\"type\": ..., \"event\": ...}]}")
        if len(body["events"]) > self.max_batch:
            raise BatchTooLarge(f"a batch holds at most {self.max_batch} events, got {len(body['events'])}",
                                max_batch=self.max_batch)
        expected = check_expected_version(body.get("expected_version"))
        assert self.store is not None
        result = await self.store.append_batch(realm, domain, entity, body["events"], expected_version=expected)
        await self.send_json(send, 201 if result.created else 200,
                             {"events": [a.to_dict() for a in result.events]})

    async def send_read(self, scope: dict[str, Any], receive: Receive, send: Send,
                        where: Scope, query: dict[str, str]) -> None:
        assert self.store is not None
        following = query.get("following")
        if following is not None:
            following = check_event_id(following, "following")
        if _wants_stream(scope):
            last = _header(scope, b"last-event-id")
            if last is not None:
                following = check_event_id(last.strip(), "Last-Event-ID")
            return await stream_events(self, where, following, receive, send, scope.get("perhap.grant"))
        page = await self.store.read(where, following=following, limit=_limit(query))
        await self.send_json(send, 200, {"events": [e.to_json_dict() for e in page.events], "next": page.next})

    async def send_keys(self, send: Send, store: Store, query: dict[str, str], *levels: str,
                        grant: Grant | None = None) -> None:
        after = query.get("after")
        if grant is not None and grant.realm != ANY_REALM:
            # A token of one realm sees that realm, if it exists: never the names of others.
            _limit(query)  # still refuse a bad limit, as for everyone
            own = grant.realm
            shown = (after is None or own > after) and bool((await store.keys(own, limit=1)).keys)
            return await self.send_json(send, 200, {"keys": [own] if shown else [], "next": None})
        page = await store.keys(*levels, after=after, limit=_limit(query))
        await self.send_json(send, 200, {"keys": page.keys, "next": page.next})

    # ----------------------------------------------------------------- I/O helpers

    async def read_json_object(self, scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise HTTPProblem(413, f"the body is larger than the limit of {self.max_body} bytes",
                              max_body=self.max_body)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPProblem(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise HTTPProblem(413, f"the body is larger than the limit of {self.max_body} bytes",
                                  max_body=self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if not raw.strip():
            raise InvalidInput("the body is empty; send a JSON object")
        try:
            body = load_json(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        check_depth(raw, body, self.max_depth)
        return body

    @staticmethod
    async def send_json(send: Send, status: int, value: Any,
                        headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = orjson.dumps(value)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def send_problem(send: Send, status: int, slug: str, title: str, detail: str,
                           extra: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
        body = problem_body(status, slug, title, detail, extra)
        try:
            await send({"type": "http.response.start", "status": status,
                        "headers": [*PROBLEM, (b"content-length", str(len(body)).encode()),
                                    *(headers or [])]})
            await send({"type": "http.response.body", "body": body})
        except Exception:  # the response had started already (a stream): nothing more to say
            pass


# --------------------------------------------------------------------------- parsing helpers

def _decode_segment(segment: bytes) -> str:
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a path segment is not valid UTF-8 after percent-decoding") from None


def _parse_query(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the query string is not valid percent-encoded UTF-8") from None


def _limit(query: dict[str, str]) -> int:
    text = query.get("limit")
    if text is None:
        return 1000
    if not _INT.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {text[:20]!r}")
    return int(text)


def _type(query: dict[str, str]) -> str | None:
    value = query.get("type")
    return None if value is None else check_name(value, "type")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def _wants_stream(scope: dict[str, Any]) -> bool:
    accept = _header(scope, b"accept")
    return accept is not None and "text/event-stream" in accept


def _chain(outer: Any, inner: Any) -> Any:
    async def call(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await outer(scope, receive, send, inner)
    return call


def create_app(store_url: str, **options: Any) -> PerhapApp:
    return PerhapApp(store_url=store_url, **options)
