"""Prometheus metrics: the request counters the observer feeds, and the store's own figures.

Counters are per process: with ``--workers N`` each scrape shows the worker that answered it.
Figures the store keeps anyway (:meth:`perhap.store.Store.statistics`: group commits, size,
retries ...) are read at scrape time, so the write path pays nothing for them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..store.base import Store
from .streaming import StreamRegistry

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = [*map(floatToGoString, _BUCKETS), "+Inf"]  # the bucket labels, as prometheus_client writes them


class _Count:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value, self.created = 0, time.time()


class _Latency:
    __slots__ = ("counts", "sum", "created")

    def __init__(self) -> None:
        self.counts, self.sum, self.created = [0] * len(_LE), 0.0, time.time()


class Metrics:
    """One app's metrics registry: requests by route and status, latency, refusals, open streams.

    The figures every request updates (requests, latency, appends, reads) are plain numbers that
    the event loop adds to, made into Prometheus families only when scraped: prometheus_client's
    own counters and histograms take a lock for each update and search the buckets in Python
    (a GET's server CPU under load fell from 97-111 to 83-93 µs without them; docs/performance.md,
    section 8). Rare figures (503s, limit refusals) stay prometheus_client counters.
    """

    def __init__(self, streams: StreamRegistry) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests: dict[tuple[str, str, str], _Count] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        self._kinds: dict[tuple[str, str], _Count] = {}  # ("appends" or "reads", status)
        r.register(_RequestFigures(self))
        self.backend_errors = Counter("perhap_backend_errors", "Requests answered 503: storage unavailable",
                                      registry=r)
        self.limited = Counter("perhap_limit_refusals", "Requests refused by a limit, by status",
                               ["status"], registry=r)
        Gauge("perhap_open_streams", "Server-Sent Event streams open now", registry=r).set_function(
            lambda: streams.open)
        r.register(_StreamFigures(streams))
        self._children: dict[tuple[str, str, int], tuple[_Count, _Latency, _Count | None]] = {}

    def observe(self, method: str, route: str, realm_route: bool, status: int, seconds: float,
                stream: bool) -> None:
        """Count one answered request (on the app's event loop, the only thread that updates these)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._child(key, realm_route)
        children[0].value += 1
        if not stream:
            latency = children[1]
            latency.counts[bisect_left(_BUCKETS, seconds)] += 1  # the first bound >= seconds, or +Inf
            latency.sum += seconds
        if children[2] is not None:
            children[2].value += 1
        if status == 503:
            self.backend_errors.inc()
        elif status in (408, 413, 429, 431):
            self.limited.labels(str(status)).inc()

    def _child(self, key: tuple[str, str, int], realm_route: bool) -> tuple[_Count, _Latency, _Count | None]:
        method, route, status = key
        kind = None
        # An append is a POST, a read a GET or a HEAD; a CORS preflight (OPTIONS) or a method the
        # route does not take (405) is neither.
        what = "appends" if method == "POST" else "reads" if method in ("GET", "HEAD") else None
        if realm_route and not route.endswith("/keys") and what is not None and status != 405:
            kind = self._kinds.setdefault((what, str(status)), _Count())
        children = (self._requests.setdefault((method, route, str(status)), _Count()),
                    self._latency.setdefault((method, route), _Latency()), kind)
        if len(self._children) < 10_000:  # routes and statuses are few; this only guards against surprises
            self._children[key] = children
        return children

    def exposition(self, store: Store, groups: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> bytes:
        """The Prometheus text: this registry, then the store's statistics and the consumer groups'
        figures (realm, name, description) as they are now."""
        return (generate_latest(self.registry) + generate_latest(_StoreStatistics(store))
                + generate_latest(_GroupFigures(groups)))


class _RequestFigures:
    """The request path's figures as Prometheus families, built at scrape time."""

    _KINDS = (("appends", "Append requests by status"), ("reads", "Read requests (pages and streams) by status"))

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily("perhap_http_requests", "HTTP requests by method, route and status",
                                       labels=["method", "route", "status"])
        for labels, count in list(m._requests.items()):
            requests.add_metric(labels, count.value, created=count.created)
        yield requests
        name = "perhap_http_request_duration_seconds"
        latency = HistogramMetricFamily(name, "Time to answer a request (streams excluded), by route",
                                        labels=["method", "route"])
        for (method, route), h in list(m._latency.items()):
            latency.add_metric([method, route], list(zip(_LE, accumulate(h.counts), strict=True)), h.sum)
            latency.samples.append(Sample(f"{name}_created", {"method": method, "route": route}, h.created))
        yield latency
        for kind, text in self._KINDS:
            family = CounterMetricFamily(f"perhap_{kind}", text, labels=["status"])
            for (k, status), count in list(m._kinds.items()):
                if k == kind:
                    family.add_metric([status], count.value, created=count.created)
            yield family


class _StreamFigures:
    """What the streams counted themselves, read at scrape time (streams pay nothing for it)."""

    def __init__(self, streams: StreamRegistry) -> None:
        self.streams = streams

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("perhap_stream_write_timeouts",
                                  "Streams ended because their client left a write unread for the write timeout",
                                  value=self.streams.write_timeouts)


class _GroupFigures:
    """Each consumer group's lag, leases in flight, parked events and redeliveries, by realm and group."""

    _GAUGES = (("lag", "Events of the group's scope not yet acknowledged or parked"),
               ("in_flight", "Events leased to the group's consumers and not yet acknowledged"),
               ("parked", "Events the group parked"))

    def __init__(self, groups: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        self.groups = groups

    def collect(self) -> Iterator[Metric]:
        for field, text in self._GAUGES:
            gauge = GaugeMetricFamily(f"perhap_consumer_group_{field}", text, labels=["realm", "group"])
            for realm, name, figures in self.groups:
                gauge.add_metric([realm, name], figures[field])
            yield gauge
        counter = CounterMetricFamily("perhap_consumer_group_redeliveries", "Deliveries of an event after its first",
                                      labels=["realm", "group"])
        for realm, name, figures in self.groups:
            counter.add_metric([realm, name], figures["redeliveries"])
        yield counter


class _StoreStatistics:
    """A collector of one scrape: ``perhap_<name>`` for each statistic the store reports."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        for s in self.store.statistics():
            if s.counter:
                yield CounterMetricFamily(f"perhap_{s.name}", s.help, value=s.value)
            else:
                yield GaugeMetricFamily(f"perhap_{s.name}", s.help, value=s.value)
