"""The observer: ASGI middleware that sees each request's answer, for metrics and the access log."""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

from ..errors import hide_tokens_in
from .metrics import Metrics
from .routes import ROUTE_KEY, Route, route_of
from .types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("perhap.access")
#: Scope keys perhap's listener sets when it answered the request itself (perhap.server): the
#: status it sent, and the size of the body it sent instead of the app's.
LISTENER_STATUS = "perhap.status"
LISTENER_BYTES = "perhap.bytes"
#: Set by a handler that ends without an answer because its client left (a long poll's): logged
#: and counted as 499, nginx's "client closed request", not as the 500 of an app that sent nothing.
CLIENT_GONE = "perhap.client_gone"
CLIENT_CLOSED_REQUEST = 499


class Observer:
    """``Observer(app, metrics, access_log)``: counts each answer, and logs it when asked to."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None, access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = size = 0
        stream = False

        async def observed_send(message: Message) -> None:
            nonlocal status, size, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", ()):
                    if k == b"content-type":
                        stream = v.startswith(b"text/event-stream")
            else:
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            # A request refused before dispatch matched it (a preflight, a bad path) is matched here.
            route: Route | None = scope.get(ROUTE_KEY)
            if route is None:
                route = route_of(scope.get("raw_path") or scope["path"].encode("utf-8"))
            # The listener's own answer (a 408 for a body too slow) replaces what the app saw; a
            # HEAD's body, made by the app, never went out.
            if scope.get(LISTENER_STATUS):
                status, size = scope[LISTENER_STATUS], scope.get(LISTENER_BYTES, 0)
            elif scope["method"] == "HEAD":
                size = 0
            status = status or (CLIENT_CLOSED_REQUEST if scope.get(CLIENT_GONE) else 500)
            if self.metrics is not None:  # (a HEAD never streams: it ends at once, and is timed)
                self.metrics.observe(scope["method"], route.template, route.realm, status, elapsed,
                                     stream and scope["method"] != "HEAD")
            if self.access:
                self.log(scope, route, status, elapsed, size)

    @staticmethod
    def log(scope: Scope, route: Route, status: int, elapsed: float, size: int) -> None:
        realm = None
        if route.realm_at is not None:  # /{realm}/... and /_groups/{realm}/... alike
            raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            segments = raw.split(b"?", 1)[0].split(b"/")[1:]
            if route.realm_at < len(segments):
                realm = unquote(segments[route.realm_at].decode("latin-1"), errors="replace")
        # The path only: no query, no headers (tokens), no bodies; nor a token sent as a name.
        path: str = scope["path"]
        if "perhap_" in path:
            path, realm = hide_tokens_in(path), realm and hide_tokens_in(realm)
        access_log.info("%s %s %d", scope["method"], path, status, extra={"access": {
            "method": scope["method"], "path": path, "status": status,
            "duration": round(elapsed, 6), "duration_ms": round(elapsed * 1000, 3), "realm": realm, "bytes": size}})
