"""Prometheus metrics and the access log: one wrapper around each request that sees its status.

Counters are per process: with ``--workers N`` each scrape shows the worker that answered it.
Values the store already keeps (group commits, size) are read at scrape time, so the write path
pays nothing for them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .app import PerhapApp, Receive, Send

access_log = logging.getLogger("perhap.access")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LEVELS = ("/{realm}", "/{realm}/{domain}", "/{realm}/{domain}/{entity}", "/{realm}/{domain}/{entity}/{type}")
_SYSTEM = {b"_health", b"_openapi.json", b"_metrics"}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def route_of(raw_path: bytes) -> tuple[str, bool]:
    """(route template, whether it is a realm route) for a raw path: bounded label values."""
    segments = raw_path.split(b"?", 1)[0].split(b"/")[1:]
    if segments and segments[-1] == b"":
        segments.pop()
    n = len(segments)
    if n == 0:
        return "/", False
    first = segments[0]
    if first.startswith(b"_"):
        if n == 1 and first in _SYSTEM:
            return "/" + first.decode(), False
        return ("/_ui" if first == b"_ui" else "other"), False
    if first == b"keys":
        return ("/keys" if n == 1 else "other"), False
    if n > 4:
        return "other", False
    if n >= 2 and segments[-1] == b"keys":
        return _LEVELS[n - 2] + "/keys", True
    return _LEVELS[n - 1], True


class Metrics:
    def __init__(self, app: PerhapApp) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("perhap_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("perhap_http_request_duration_seconds",
                                 "Time to answer a request (streams excluded), by route",
                                 ["method", "route"], buckets=_BUCKETS, registry=r)
        self.appends = Counter("perhap_appends", "Append requests by status", ["status"], registry=r)
        self.reads = Counter("perhap_reads", "Read requests (pages and streams) by status", ["status"], registry=r)
        self.backend_errors = Counter("perhap_backend_errors", "Requests answered 503: storage unavailable",
                                      registry=r)
        self.limited = Counter("perhap_limit_refusals", "Requests refused by a limit, by status",
                               ["status"], registry=r)
        Gauge("perhap_open_streams", "Server-Sent Event streams open now", registry=r).set_function(
            lambda: app.open_streams)
        r.register(_StoreCollector(app))
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(self, method: str, route: str, realm_route: bool, status: int, seconds: float,
                stream: bool) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds tuples: do it once per key
            kind = None
            if realm_route and not route.endswith("/keys"):
                kind = self.appends if method == "POST" else self.reads
            children = (self.requests.labels(method, route, str(status)),
                        self.latency.labels(method, route),
                        kind.labels(str(status)) if kind is not None else None)
            if len(self._children) < 10_000:  # bounded anyway; this only guards against surprises
                self._children[key] = children
        children[0].inc()
        if not stream:
            children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()
        if status == 503:
            self.backend_errors.inc()
        elif status in (413, 429, 431):
            self.limited.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector:
    """Read at scrape time from what the backend keeps anyway."""

    def __init__(self, app: PerhapApp) -> None:
        self.app = app

    def collect(self) -> Any:
        store = self.app.store
        groups = getattr(store, "groups_committed", None)
        if groups is not None:
            yield CounterMetricFamily("perhap_group_commits", "Write groups committed (one fsync each)",
                                      value=groups)
            yield CounterMetricFamily("perhap_group_commit_events",
                                      "Events in committed groups (divide by perhap_group_commits_total "
                                      "for the mean group size)",
                                      value=getattr(store, "events_committed", 0))
        size = store_size(store)
        if size is not None:
            yield GaugeMetricFamily("perhap_store_size_bytes", "Bytes the store takes on disk", value=size)


def store_size(store: Any) -> int | None:
    """SQLite: the database file plus its WAL; other backends cannot tell cheaply."""
    path = getattr(store, "path", None)
    if not isinstance(path, str):
        return None
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


class Observer:
    """Wraps each HTTP request: metrics, and the access log when asked for."""

    def __init__(self, app: PerhapApp, metrics: Metrics | None, access: bool) -> None:
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send, handler: Any) -> None:
        start = time.perf_counter()
        status = size = 0
        stream = False

        async def observed_send(message: dict[str, Any]) -> None:
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
            await handler(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            raw = scope.get("raw_path") or scope["path"].encode("utf-8")
            route, realm_route = route_of(raw)
            status = status or 500
            if self.metrics is not None:
                self.metrics.observe(scope["method"], route, realm_route, status, elapsed, stream)
            if self.access:
                realm = None
                if realm_route:
                    realm = unquote(raw.split(b"?", 1)[0].split(b"/")[1].decode("latin-1"), errors="replace")
                # The path only: no query, no headers (tokens), no bodies.
                access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={"access": {
                    "method": scope["method"], "path": scope["path"], "status": status,
                    "duration_ms": round(elapsed * 1000, 3), "realm": realm, "bytes": size}})
