"""CORS for the origins the operator lists (none by default): preflights, and response headers.

A preflight from a listed origin carries no credentials by design, so it is answered here, before
any token check; one from any other origin is a request like any other (a 401 without a token).
"""

from __future__ import annotations

from collections.abc import Iterable

from .types import ASGIApp, Message, Receive, Scope, Send

#: Every method the API takes (PUT and DELETE: consumer groups), and the request headers it reads
#: (if-none-match: conditional GET).
METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS"
HEADERS = b"authorization, content-type, accept, last-event-id, if-none-match"
#: Response headers a page may read: where an event is, the token challenge, a read's tag.
EXPOSED = b"location, www-authenticate, etag, perhap-keys-limited"


class Cors:
    """ASGI middleware: ``Cors(app, origins)`` answers preflights and marks answers to listed origins."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.removesuffix("/").encode("latin-1") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = preflight = None
        for key, value in scope.get("headers", ()):
            if key == b"origin":
                origin = value
            elif key == b"access-control-request-method":
                preflight = value
        if origin is None or origin not in self.origins:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS" and preflight is not None:
            headers = [(b"vary", b"Origin"), (b"content-length", b"0"), (b"access-control-allow-origin", origin),
                       (b"access-control-allow-methods", METHODS), (b"access-control-allow-headers", HEADERS),
                       (b"access-control-max-age", b"600")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})
        extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                 (b"access-control-expose-headers", EXPOSED)]

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_cors)
