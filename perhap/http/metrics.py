"""Prometheus metrics: the request counters the observer feeds, and the store's own figures.

Counters are per process: with ``--workers N`` each scrape shows the worker that answered it.
Figures the store keeps anyway (:meth:`perhap.store.Store.statistics`: group commits, size,
retries ...) are read at scrape time, so the write path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..store.base import Store
from .streaming import StreamRegistry

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One app's metrics registry: requests by route and status, latency, refusals, open streams."""

    def __init__(self, streams: StreamRegistry) -> None:
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
            lambda: streams.open)
        r.register(_StreamFigures(streams))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter | None]] = {}

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
        elif status in (408, 413, 429, 431):
            self.limited.labels(str(status)).inc()

    def exposition(self, store: Store, groups: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> bytes:
        """The Prometheus text: this registry, then the store's statistics and the consumer groups'
        figures (realm, name, description) as they are now."""
        return (generate_latest(self.registry) + generate_latest(_StoreStatistics(store))
                + generate_latest(_GroupFigures(groups)))


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
