"""GET /_metrics: Prometheus text with appends, reads, latency by route, group commits, streams, errors."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from perhap import Store
from perhap.app import PerhapApp
from perhap.metrics import route_of


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
    key = ("perhap_http_request_duration_seconds_count", (("method", "POST"), ("route", "/{realm}/{domain}/{entity}/{type}")))
    assert got[key] >= 4
    assert ("perhap_open_streams", ()) in got
    assert ("perhap_backend_errors_total", ()) in got
    if hasattr(app.store, "groups_committed"):  # SQLite keeps group-commit counters
        assert got[("perhap_group_commits_total", ())] >= 1
        assert got[("perhap_group_commit_events_total", ())] >= got[("perhap_group_commits_total", ())]
    if hasattr(app.store, "path"):
        assert got[("perhap_store_size_bytes", ())] > 0
    # Labels are route templates, never names a client chose.
    assert realm not in r.text


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
    assert app.wrapped is None  # nothing wraps the request path then
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/_metrics")).status_code == 404


def test_route_templates_are_bounded() -> None:
    assert route_of(b"/shop/orders/o-1/placed?x=1") == ("/{realm}/{domain}/{entity}/{type}", True)
    assert route_of(b"/shop/keys") == ("/{realm}/keys", True)
    assert route_of(b"/shop/orders/o-1/keys") == ("/{realm}/{domain}/{entity}/keys", True)
    assert route_of(b"/keys") == ("/keys", False)
    assert route_of(b"/") == ("/", False)
    assert route_of(b"/_metrics") == ("/_metrics", False)
    assert route_of(b"/_whatever") == ("other", False)
    assert route_of(b"/a/b/c/d/e/f") == ("other", False)
