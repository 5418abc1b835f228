"""GET /_metrics: Prometheus text with appends, reads, latency by route, streams, errors, and every
statistic the store keeps (group commits, size, Cassandra's write attempts ...)."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from perhap import Store
from perhap.app import PerhapApp
from perhap.http.routes import route_of


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_appends_reads_and_latency(client: httpx.AsyncClient, app: PerhapApp, realm: str) -> None:
    for i in range(3):
        assert (await client.post(f"/{realm}/d/e/t", json={"event": i})).status_code == 201
    assert (await client.post(f"/{realm}/d/e/t", json={"nope": 1})).status_code == 400
    assert (await client.get(f"/{realm}/d")).status_code == 200
    assert (await client.get(f"/{realm}/d", params={"limit": 0})).status_code == 400
    r = await client.get("/_metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("perhap_appends_total", (("status", "201"),))] >= 3
    assert got[("perhap_appends_total", (("status", "400"),))] >= 1
    assert got[("perhap_reads_total", (("status", "200"),))] >= 1
    assert got[("perhap_reads_total", (("status", "400"),))] >= 1
    route = "/{realm}/{domain}/{entity}/{type}"
    key = ("perhap_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))
    assert got[key] >= 4
    assert ("perhap_open_streams", ()) in got
    assert ("perhap_backend_errors_total", ()) in got
    # Labels are route templates, never names a client chose.
    assert realm not in r.text


async def test_a_preflight_or_a_method_a_route_refuses_is_neither_a_read_nor_an_append(
        store: Store, realm: str) -> None:
    app = PerhapApp(store, cors_origins=["https://app.example.com"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        before = samples((await client.get("/_metrics")).text)
        preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
        assert (await client.options(f"/{realm}/d", headers=preflight)).status_code == 204
        assert (await client.delete(f"/{realm}/d")).status_code == 405
        assert (await client.post(f"/{realm}", json={"event": 1})).status_code == 405
        assert (await client.get(f"/{realm}/d")).status_code == 200  # a read, counted
        after = samples((await client.get("/_metrics")).text)

    def moved(name: str, status: str) -> float:
        key = (name, (("status", status),))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("perhap_reads_total", "204") == moved("perhap_reads_total", "405") == 0
    assert moved("perhap_appends_total", "405") == 0
    assert moved("perhap_reads_total", "200") == 1


async def test_a_head_asking_for_a_stream_is_timed(store: Store, realm: str) -> None:
    """A HEAD never streams (it ends at once), but its text/event-stream answer kept it out of the
    duration histogram, which leaves out streams only."""
    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        key = ("perhap_http_request_duration_seconds_count", (("method", "HEAD"), ("route", "/{realm}")))
        before = samples((await client.get("/_metrics")).text).get(key, 0)
        r = await client.head(f"/{realm}", headers={"accept": "text/event-stream"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert samples((await client.get("/_metrics")).text).get(key, 0) == before + 1


async def test_every_store_statistic_is_exported(client: httpx.AsyncClient, store: Store, realm: str) -> None:
    for i in range(3):
        assert (await client.post(f"/{realm}/d/e/t", json={"event": i})).status_code == 201
    before = {s.name: s for s in store.statistics()}
    assert before, f"{type(store).__name__} exports no statistics"
    got = samples((await client.get("/_metrics")).text)
    after = {s.name: s.value for s in store.statistics()}
    for name, stat in before.items():
        # Counters get _total; a figure may move between the reads, never outside them.
        key = (f"perhap_{name}_total" if stat.counter else f"perhap_{name}", ())
        assert key in got, f"{key[0]} is missing from /_metrics"
        low, high = sorted((stat.value, after[name]))
        assert low <= got[key] <= high, (key[0], stat.value, got[key], after[name])
    if store.backend_name in ("sqlite", "postgres"):  # backends that can tell their size do
        assert got[("perhap_store_size_bytes", ())] > 0
    if "group_commits" in before:  # SQLite and PostgreSQL: the appends above went through groups
        assert got[("perhap_group_commits_total", ())] >= 1
        assert got[("perhap_group_commit_events_total", ())] >= got[("perhap_group_commits_total", ())]


async def test_backend_errors_are_counted(store: Store, realm: str) -> None:
    app = PerhapApp(store)

    async def broken() -> bool:
        return False

    store.health = broken  # type: ignore[method-assign]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/_health")).status_code == 503
        got = samples((await c.get("/_metrics")).text)
    assert got[("perhap_backend_errors_total", ())] == 1


async def test_metrics_can_be_off(store: Store) -> None:
    app = PerhapApp(store, metrics=False)
    assert app.stack == app.dispatch  # nothing wraps the request path then
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/_metrics")
        # Nothing names it then: neither the 404's list of system endpoints nor the document.
        assert r.status_code == 404 and "/_metrics" not in r.json()["detail"]
        assert "/_metrics" not in (await c.get("/_openapi.json")).json()["paths"]
        assert "/_health" in (await c.get("/_openapi.json")).json()["paths"]


async def test_access_log_alone_wraps_with_the_observer(store: Store) -> None:
    app = PerhapApp(store, metrics=False, access_log=True)
    assert app.stack != app.dispatch


async def test_the_access_log_counts_the_body_bytes_sent(store: Store, realm: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """``bytes`` is the size of the body that went out: a GET's, and none for a HEAD (whose body
    the app makes and the server drops)."""
    app = PerhapApp(store, metrics=False, access_log=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.post(f"/{realm}/d/e/t", json={"event": "x" * 500})).status_code == 201
        with caplog.at_level(logging.INFO, "perhap.access"):
            got = await c.get(f"/{realm}/d/e")
            assert (await c.head(f"/{realm}/d/e")).status_code == 200
    lines = [r.access for r in caplog.records if hasattr(r, "access")]  # type: ignore[attr-defined]
    assert [(a["method"], a["bytes"]) for a in lines] == [("GET", len(got.content)), ("HEAD", 0)]


def test_route_templates_are_bounded() -> None:
    def label(raw: bytes) -> tuple[str, bool]:
        route = route_of(raw)
        return route.template, route.realm

    assert label(b"/shop/orders/o-1/placed?x=1") == ("/{realm}/{domain}/{entity}/{type}", True)
    assert label(b"/shop/keys") == ("/{realm}/keys", True)
    assert label(b"/shop/orders/o-1/keys") == ("/{realm}/{domain}/{entity}/keys", True)
    assert label(b"/keys") == ("/keys", False)
    assert label(b"/") == ("/", False)
    assert label(b"/_metrics") == ("/_metrics", False)
    assert label(b"/_ui/app.js") == ("/_ui", False)
    assert label(b"/_whatever") == ("other", False)
    assert label(b"/a/b/c/d/e/f") == ("other", False)
    assert label(b"/%ff/x") == ("/{realm}/{domain}", True)  # not UTF-8: still a bounded label


def test_latency_buckets_counts_and_sums_are_exact() -> None:
    """The request figures are kept as plain numbers and exported at scrape time: each bucket holds
    the requests at or under its bound (a time equal to a bound is in that bucket), streams are
    counted but not timed, and appends and reads are counted by status."""
    from perhap.http.metrics import Metrics

    class Streams:
        open = write_timeouts = 0

    m = Metrics(Streams())  # type: ignore[arg-type]
    route = "/{realm}/{domain}/{entity}"
    for seconds in (0.0001, 0.0005, 0.001, 0.003, 0.3, 11.0):
        m.observe("GET", route, True, 200, seconds, False)
    m.observe("GET", route, True, 200, 99.0, True)  # a stream: counted, not timed
    m.observe("POST", route, True, 409, 0.002, False)
    m.observe("GET", "/{realm}/keys", True, 200, 0.002, False)  # a key listing is not a read
    got = samples(generate_latest(m.registry).decode())
    labels = (("method", "GET"), ("route", route))
    bucket = {le: got[("perhap_http_request_duration_seconds_bucket", (("le", le), *labels))]
              for le in ("0.0005", "0.001", "0.0025", "0.005", "0.25", "0.5", "10.0", "+Inf")}
    assert bucket == {"0.0005": 2, "0.001": 3, "0.0025": 3, "0.005": 4, "0.25": 4, "0.5": 5, "10.0": 5, "+Inf": 6}
    assert got[("perhap_http_request_duration_seconds_count", labels)] == 6
    assert abs(got[("perhap_http_request_duration_seconds_sum", labels)] - 11.3046) < 1e-9
    assert got[("perhap_http_requests_total", (*labels, ("status", "200")))] == 7
    assert got[("perhap_reads_total", (("status", "200"),))] == 7
    assert got[("perhap_appends_total", (("status", "409"),))] == 1
    assert ("perhap_http_requests_created", (*labels, ("status", "200"))) in got
    assert ("perhap_http_request_duration_seconds_created", labels) in got
