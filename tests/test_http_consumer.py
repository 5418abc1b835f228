"""The consumer API over HTTP (issue 15): the rules of the HTTP layer itself.

Query parameters and their clashes, conditional GET (ETag, If-None-Match, 304), the body of a
multi-entity append and its answers, live streams from a position, and the OpenAPI document.
SQLite only: what a backend stores and returns is the conformance suite's business; these are
rules of the HTTP layer, the same over every backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perhap.backends import open_store
from perhap.http.app import PerhapApp
from perhap.http.openapi import openapi_document
from perhap.http.routes import ROUTES, Kind
from perhap.store.base import Store
from perhap.testing.conformance import SSEReader
from perhap.testing.conformance.helpers import problem
from tests.servers import ThreadServer

SSE = {"accept": "text/event-stream"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path}/consumer.db") as s:
        yield s


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = PerhapApp(store, heartbeat=0.5, max_batch=50)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def seed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Nine events in realm shop: entities o1, o2 (orders) and s1 (stock), types a, b and c."""
    plan = [("orders", "o1", "a"), ("orders", "o2", "b"), ("stock", "s1", "a"), ("orders", "o1", "b"),
            ("orders", "o1", "c"), ("stock", "s1", "b"), ("orders", "o2", "a"), ("orders", "o1", "a"),
            ("orders", "o1", "b")]
    for i, (domain, entity, type_) in enumerate(plan):
        r = await client.post(f"/shop/{domain}/{entity}/{type_}", json={"event": i})
        assert r.status_code == 201, r.text
    events: list[dict[str, Any]] = (await client.get("/shop")).json()["events"]
    return events


def values(r: httpx.Response) -> list[Any]:
    assert r.status_code == 200, r.text
    return [e["event"] for e in r.json()["events"]]


async def page_all(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> list[Any]:
    """Every event of a read, a page at a time, continuing with `next` as `following`."""
    got: list[Any] = []
    following = None
    while True:
        query = {**params, **({"following": following} if following else {})}
        page = (await client.get(url, params=query)).json()
        got += [e["event"] for e in page["events"]]
        following = page["next"]
        if following is None:
            return got


def refused(r: httpx.Response, *names: str) -> str:
    """The detail of a 400 that names every one of ``names``."""
    detail: str = problem(r, 400)["detail"]
    for name in names:
        assert name in detail, (name, detail)
    return detail


# ------------------------------------------------------------------ positions, order, bounds, types


async def test_every_event_object_and_append_result_has_a_position(client: httpx.AsyncClient) -> None:
    r = await client.post("/shop/orders/o1/a", json={"event": 0})
    assert set(r.json()) == {"event_id", "version", "position", "timestamp"}
    r = await client.post("/shop/orders/o1", json={"events": [{"type": "a", "event": 1}]})
    assert set(r.json()["events"][0]) == {"event_id", "version", "position", "timestamp"}
    events = (await client.get("/shop")).json()["events"]
    assert [e["position"] for e in events] == [1, 2]
    one = (await client.get(f"/shop/orders/{events[1]['event_id']}")).json()
    assert one["position"] == 2 and list(one)[-2:] == ["position", "timestamp"]


@pytest.mark.parametrize("url", ["/shop", "/shop/orders", "/shop/orders/o1", "/shop/orders/o1/a"])
async def test_desc_is_the_reversed_asc_read_and_pages_backwards(client: httpx.AsyncClient, url: str) -> None:
    await seed(client)
    forward = values(await client.get(url))
    assert forward and values(await client.get(url, params={"order": "desc"})) == forward[::-1]
    assert values(await client.get(url, params={"order": "asc"})) == forward
    # `next` of a newest-first page continues newest first.
    assert await page_all(client, url, {"order": "desc", "limit": "2"}) == forward[::-1]
    assert await page_all(client, url, {"limit": "2"}) == forward


async def test_the_head_of_a_realm_and_the_last_event_of_an_entity(client: httpx.AsyncClient) -> None:
    events = await seed(client)
    head = (await client.get("/shop", params={"order": "desc", "limit": "1"})).json()
    assert head["events"] == [events[-1]] and head["next"] == events[-1]["event_id"]
    last = (await client.get("/shop/stock/s1", params={"order": "desc", "limit": "1"})).json()["events"]
    assert [e["event"] for e in last] == [5]


async def test_positions_page_both_ways(client: httpx.AsyncClient) -> None:
    events = await seed(client)
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    third = positions[2]
    assert values(await client.get("/shop", params={"after_position": str(third)})) == list(range(3, 9))
    assert values(await client.get("/shop", params={"after_position": "0"})) == list(range(9))
    r = await client.get("/shop", params={"order": "desc", "before_position": str(third)})
    assert values(r) == [1, 0]
    assert values(await client.get("/shop/orders/o1", params={"after_position": str(third)})) == [3, 4, 7, 8]
    # Beyond the head: an empty page, not an error.
    assert values(await client.get("/shop", params={"after_position": str(positions[-1] + 1000)})) == []
    assert values(await client.get("/shop", params={"order": "desc", "before_position": "1"})) == []


async def test_several_types_at_every_scope(client: httpx.AsyncClient) -> None:
    await seed(client)
    for url, expected in [("/shop", [1, 3, 4, 5, 8]), ("/shop/orders", [1, 3, 4, 8]),
                          ("/shop/orders/o1", [3, 4, 8])]:
        r = await client.get(f"{url}?type=b&type=c")
        assert values(r) == expected, url
        assert values(await client.get(f"{url}?type=c&type=b&type=c")) == expected  # order and repeats: no matter
        assert values(await client.get(f"{url}?type=b&type=c&order=desc")) == expected[::-1]
    assert values(await client.get("/shop?type=nothing&type=zilch")) == []
    assert values(await client.get("/shop?type=a")) == [0, 2, 6, 7]


async def test_version_bounds_on_entity_reads(client: httpx.AsyncClient) -> None:
    await seed(client)  # o1 has versions 0..4: events 0, 3, 4, 7, 8
    url = "/shop/orders/o1"
    assert values(await client.get(url, params={"after_version": "1"})) == [4, 7, 8]
    assert values(await client.get(url, params={"until_version": "1"})) == [0, 3]
    assert values(await client.get(url, params={"after_version": "0", "until_version": "2"})) == [3, 4]
    assert values(await client.get(url, params={"after_version": "1", "until_version": "3",
                                                "order": "desc"})) == [7, 4]
    assert values(await client.get(url, params={"after_version": "2", "until_version": "2"})) == []
    assert values(await client.get(url + "/b", params={"until_version": "3"})) == [3]
    assert values(await client.get(url, params={"after_version": "99"})) == []


# ------------------------------------------------------------------ clashes and bad values


@pytest.mark.parametrize(("url", "names"), [
    ("/shop?following={id}&after_position=1", ["following", "after_position"]),
    ("/shop?order=desc&following={id}&before_position=5", ["following", "before_position"]),
    ("/shop?order=desc&after_position=1", ["after_position", "order=asc"]),
    ("/shop?before_position=5", ["before_position", "order=desc"]),
    ("/shop?order=asc&before_position=5", ["before_position", "order=desc"]),
    ("/shop/orders?after_version=1", ["after_version", "entity"]),
    ("/shop?until_version=1", ["until_version", "entity"]),
    ("/shop/orders/o1?after_version=3&until_version=2", ["until_version", "after_version"]),
    ("/shop?order=newest", ["order"]),
    ("/shop?order=", ["order"]),
    ("/shop?after_position=x", ["after_position"]),
    ("/shop?after_position=-1", ["after_position"]),
    ("/shop?after_position=1.5", ["after_position"]),
    ("/shop?after_position=9223372036854775808", ["after_position"]),
    ("/shop?order=desc&before_position=-1", ["before_position"]),
    ("/shop/orders/o1?after_version=-1", ["after_version"]),
    ("/shop/orders/o1?until_version=", ["until_version"]),
    ("/shop?type=a&type=", ["type"]),
    ("/shop?type=keys", ["type"]),
    ("/shop?" + "&".join(f"type=t{i}" for i in range(101)), ["type", "100"]),
])
async def test_clashing_and_bad_parameters_are_400s_that_name_them(client: httpx.AsyncClient, url: str,
                                                                   names: list[str]) -> None:
    event_id = (await seed(client))[0]["event_id"]
    refused(await client.get(url.format(id=event_id)), *names)


async def test_a_parameter_that_may_not_repeat_is_400(client: httpx.AsyncClient) -> None:
    for query in ("order=asc&order=desc", "after_position=1&after_position=1", "until_version=1&until_version=2"):
        name = query.split("=")[0]
        r = await client.get(f"/shop/orders/o1?{query}")
        assert problem(r, 400)["parameter"] == name and "more than once" in r.json()["detail"]
    # The type route's type is its last segment: never in the query.
    r = await client.get("/shop/orders/o1/a?type=b")
    assert problem(r, 400)["parameter"] == "type"
    # Version bounds are an entity's: a realm or a domain does not take them at all.
    assert problem(await client.get("/shop?until_version=1"), 400)["parameter"] == "until_version"


# ------------------------------------------------------------------ conditional GET


@pytest.mark.parametrize("url", ["/shop", "/shop/orders", "/shop/orders/o1", "/shop/orders/o1/a",
                                 "/shop?order=desc&limit=2", "/shop/orders/o1?type=a&type=b",
                                 "/shop/orders/o1/keys"])
async def test_a_matching_if_none_match_is_304_and_a_change_moves_the_tag(client: httpx.AsyncClient,
                                                                         url: str) -> None:
    await seed(client)
    first = await client.get(url)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"') and tag.endswith('"')
    again = await client.get(url)
    assert again.headers["etag"] == tag and again.content == first.content
    r = await client.get(url, headers={"if-none-match": tag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
    assert "content-type" not in r.headers
    # A list of tags, a weak tag and `*` match too (weak comparison, RFC 9110); others do not.
    for held in (f'"nope", {tag}', f"W/{tag}", "*", f' W/"x" ,{tag} '):
        assert (await client.get(url, headers={"if-none-match": held})).status_code == 304, held
    for held in ('"nope"', tag[1:-1], "W/", "", tag[:-2] + '"'):
        assert (await client.get(url, headers={"if-none-match": held})).status_code == 200, held
    assert (await client.head(url, headers={"if-none-match": tag})).status_code == 304
    # The list sent as several header lines is one list (RFC 9110 5.3), whichever line holds it.
    for lines in ([("if-none-match", '"nope"'), ("if-none-match", tag)],
                  [("if-none-match", tag), ("if-none-match", '"nope"')]):
        assert (await client.get(url, headers=lines)).status_code == 304, lines
    assert (await client.get(url, headers=[("if-none-match", '"a"'), ("if-none-match", '"b"')])).status_code == 200
    # A new event in the scope changes the answer, so the tag.
    await client.post("/shop/orders/o1/a", json={"event": "new"})
    await client.post("/shop/orders/o1/zz", json={"event": "new"})  # a new type: the keys change too
    changed = await client.get(url, headers={"if-none-match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


async def test_a_304_over_a_real_connection_keeps_it_usable(tmp_path: Path) -> None:
    # Framing: a 304 has no body and no length; the next request on the connection must still work.
    with ThreadServer(f"sqlite:///{tmp_path}/etag.db") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as http:
            await http.post("/shop/orders/o1/a", json={"event": 1})
            tag = (await http.get("/shop/orders/o1")).headers["etag"]
            for _ in range(3):
                r = await http.get("/shop/orders/o1", headers={"if-none-match": tag})
                assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
                assert values(await http.get("/shop/orders/o1")) == [1]


async def test_the_tag_follows_the_answer_not_the_url(client: httpx.AsyncClient) -> None:
    await seed(client)
    asc = (await client.get("/shop/orders/o1")).headers["etag"]
    assert (await client.get("/shop/orders/o1?order=desc")).headers["etag"] != asc
    assert (await client.get("/shop/orders/o1?limit=2")).headers["etag"] != asc
    assert (await client.get("/shop/orders/o1?order=asc")).headers["etag"] == asc  # the same answer
    # An event in another entity leaves this entity's answer, and tag, as they were.
    await client.post("/shop/orders/o2/a", json={"event": "other"})
    assert (await client.get("/shop/orders/o1")).headers["etag"] == asc


async def test_a_single_event_has_a_tag_and_errors_ignore_if_none_match(client: httpx.AsyncClient) -> None:
    events = await seed(client)
    url = f"/shop/orders/{events[0]['event_id']}"
    r = await client.get(url)
    assert r.json()["event"] == 0 and "etag" in r.headers
    assert (await client.get(url, headers={"if-none-match": r.headers["etag"]})).status_code == 304
    problem(await client.get(f"/shop/orders/o1?following={uuid.uuid4()}", headers={"if-none-match": "*"}), 404)
    problem(await client.get("/shop?order=up", headers={"if-none-match": "*"}), 400)
    # Appends never answer 304, whatever the client sends.
    r = await client.post("/shop/orders/o1/a", json={"event": 1}, headers={"if-none-match": "*"})
    assert r.status_code == 201 and "etag" not in r.headers


async def test_a_cached_entity_page_is_served_only_while_the_entity_stays(store: Store) -> None:
    app = PerhapApp(store)
    assert app.pages is not None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await seed(client)
        first = await client.get("/shop/orders/o1")
        again = await client.get("/shop/orders/o1")
        assert app.pages.hits == 1 and again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
        assert (await client.get("/shop/orders/o1", headers={"if-none-match": first.headers["etag"]})
                ).status_code == 304
        # An append that never passed through this app (another process, say) is seen at once.
        await store.append("shop", "orders", "o1", "a", "direct")
        moved = await client.get("/shop/orders/o1")
        assert values(moved)[-1] == "direct" and moved.headers["etag"] != first.headers["etag"]
        assert (await client.get("/shop/orders/o1")).content == moved.content
        # Other entities, other queries and other starting points have pages of their own.
        assert values(await client.get("/shop/orders/o2")) == [1, 6]
        assert values(await client.get("/shop/orders/o1?limit=2")) == [0, 3]
        following = moved.json()["events"][2]["event_id"]
        assert values(await client.get(f"/shop/orders/o1?following={following}")) == [7, 8, "direct"]
        assert values(await client.get("/shop/orders/o1/a")) == [0, 7, "direct"]
        await store.append("shop", "orders", "o1", "a", "again")
        assert values(await client.get(f"/shop/orders/o1?following={following}")) == [7, 8, "direct", "again"]
        assert values(await client.get("/shop/orders/o1/a")) == [0, 7, "direct", "again"]
        assert values(await client.get("/shop/orders/o1?limit=2")) == [0, 3]


async def test_the_page_cache_can_be_switched_off(store: Store) -> None:
    app = PerhapApp(store, page_cache=0)
    assert app.pages is None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await seed(client)
        r = await client.get("/shop/orders/o1")
        assert values(r) == [0, 3, 4, 7, 8]
        assert (await client.get("/shop/orders/o1", headers={"if-none-match": r.headers["etag"]})).status_code == 304


# ------------------------------------------------------------------ multi-entity appends


async def test_a_multi_entity_append_answers_in_the_order_sent(client: httpx.AsyncClient) -> None:
    await client.post("/shop/stock/s4/set", json={"event": 12})
    eid = str(uuid.uuid4())
    body = {"events": [{"entity": "order-17", "type": "placed", "event": {"total": 3}, "event_id": eid,
                        "meta": {"by": "me"}},
                       {"entity": "s4", "type": "reserved", "event": 1},
                       {"entity": "order-17", "type": "paid", "event": None}],
            "expected_versions": {"order-17": -1, "s4": 0, "never": -1}}
    # The stock entity lives in another domain: expectations and events are the domain's entities.
    r = await client.post("/shop/orders", json=body)
    assert r.status_code == 409, r.text
    body["expected_versions"] = {"order-17": -1, "never": -1}
    r = await client.post("/shop/orders", json=body)
    assert r.status_code == 201, r.text
    results = r.json()["events"]
    assert [(a["entity"], a["version"]) for a in results] == [("order-17", 0), ("s4", 0), ("order-17", 1)]
    assert all(list(a) == ["entity", "event_id", "version", "position", "timestamp"] for a in results)
    assert results[0]["event_id"] == eid
    positions = [a["position"] for a in results]
    assert positions == sorted(positions)
    events = (await client.get("/shop/orders")).json()["events"]
    assert [e["event_id"] for e in events] == [a["event_id"] for a in results]
    assert events[0]["meta"] == {"by": "me"} and [e["position"] for e in events] == positions


async def test_a_retried_multi_entity_append_is_200_with_the_original_results(client: httpx.AsyncClient) -> None:
    body = {"events": [{"entity": e, "type": "t", "event": i, "event_id": str(uuid.uuid4())}
                       for i, e in enumerate(["a", "b", "a"])], "expected_versions": {"a": -1, "b": -1}}
    first = await client.post("/shop/orders", json=body)
    assert first.status_code == 201
    again = await client.post("/shop/orders", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    assert len((await client.get("/shop/orders")).json()["events"]) == 3


async def test_a_multi_entity_conflict_lists_every_failing_entity(client: httpx.AsyncClient) -> None:
    await client.post("/shop/orders/a/t", json={"event": 0})
    await client.post("/shop/orders/b/t", json={"event": 0})
    body = {"events": [{"entity": "a", "type": "t", "event": 1}, {"entity": "c", "type": "t", "event": 1}],
            "expected_versions": {"a": 3, "b": -1, "c": -1}}
    p = problem(await client.post("/shop/orders", json=body), 409)
    assert p["type"] == "urn:perhap:problem:version-conflict"
    assert sorted(p["conflicts"], key=lambda c: c["entity"]) == [
        {"entity": "a", "expected_version": 3, "current_version": 0},
        {"entity": "b", "expected_version": -1, "current_version": 0}]
    assert "a" in p["detail"] and "b" in p["detail"]
    assert values(await client.get("/shop/orders")) == [0, 0]  # nothing stored


@pytest.mark.parametrize(("body", "words"), [
    (b"", ["empty"]),
    (b"[1]", ["object"]),
    (b'{"event": 1}', ["multi-entity", '"entity"', "/REALM/DOMAIN/ENTITY/TYPE"]),
    (b'{"evnts": []}', ["multi-entity", "evnts"]),
    (b'{"events": [], "extra": 1}', ["unknown keys", "extra"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}], "expected_version": 0}',
     ["expected_version", "expected_versions"]),
    (b'{"events": {"entity": "a"}}', ["list"]),
    (b'{"events": []}', ["1 to"]),
    (b'{"events": [1]}', ["events[0]"]),
    (b'{"events": [{"type": "t", "event": 1}]}', ["events[0]", "entity"]),
    (b'{"events": [{"entity": "a", "type": "t"}]}', ["events[0]", "event"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1, "expected_version": 0}]}', ["events[0]", "unknown"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}, {"entity": "keys", "type": "t", "event": 1}]}',
     ["events[1]"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": [0]}', ["expected_versions"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": "0"}}',
     ["expected_version", "integer"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": null}}',
     ["expected_versions", "'a'"]),
    (b'{"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": -2}}', ["-1"]),
])
async def test_a_bad_multi_entity_body_is_a_clear_400(client: httpx.AsyncClient, body: bytes,
                                                      words: list[str]) -> None:
    refused(await client.post("/shop/orders", content=body), *words)
    assert (await client.get("/shop")).json()["events"] == []


async def test_a_multi_entity_append_over_the_batch_limit_is_413(client: httpx.AsyncClient) -> None:
    events = [{"entity": f"e{i % 3}", "type": "t", "event": i} for i in range(51)]
    p = problem(await client.post("/shop/orders", json={"events": events}), 413)
    assert p["type"] == "urn:perhap:problem:batch-too-large" and p["max_batch"] == 50
    r = await client.post("/shop/orders", json={"events": events[:50]})
    assert r.status_code == 201 and len(r.json()["events"]) == 50


async def test_a_multi_entity_append_takes_no_query(client: httpx.AsyncClient) -> None:
    body = {"events": [{"entity": "a", "type": "t", "event": 1}]}
    r = await client.post("/shop/orders?expected_versions=x", json=body)
    assert problem(r, 400)["parameter"] == "expected_versions" and "body" in r.json()["detail"]
    assert problem(await client.post("/shop/orders?limit=1", json=body), 400)["parameter"] == "limit"
    r = await client.post("/shop", json=body)  # a realm takes no appends
    assert problem(r, 405) and "/REALM/DOMAIN as" in r.json()["detail"]
    assert (await client.delete("/shop/orders")).headers["allow"] == "GET, HEAD, POST"


async def test_a_backend_without_multi_entity_appends_answers_501(store: Store, client: httpx.AsyncClient,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The real store with the capability switched off, as a backend that lacks it declares it.
    monkeypatch.setattr(store, "supports_multi_entity", False)
    r = await client.post("/shop/orders", json={"events": [{"entity": "a", "type": "t", "event": 1}]})
    p = problem(r, 501)
    assert p["type"] == "urn:perhap:problem:not-supported" and p["backend"] == store.backend_name
    assert "docs/backends" in p["detail"]
    # A bad body is still a 400 first: the client's mistake is the more useful answer.
    problem(await client.post("/shop/orders", json={"events": "x"}), 400)
    assert (await client.post("/shop/orders/a", json={"events": [{"type": "t", "event": 1}]})).status_code == 201


# ------------------------------------------------------------------ live streams


async def test_streams_take_a_position_and_types_and_refuse_desc(client: httpx.AsyncClient) -> None:
    await seed(client)
    for url in ("/shop?order=desc", "/shop/orders/o1?order=desc&type=a", "/shop?before_position=3"):
        r = await asyncio.wait_for(client.get(url, headers=SSE), 30)
        problem(r, 400)
    r = await asyncio.wait_for(client.get("/shop?order=desc", headers=SSE), 30)
    assert "stream" in r.json()["detail"]
    r = await asyncio.wait_for(client.get(f"/shop?following={uuid.uuid4()}&after_position=2", headers=SSE), 30)
    refused(r, "following", "after_position")
    r = await client.head("/shop?after_position=2&type=a&type=b", headers=SSE)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")


async def test_a_live_stream_from_a_position_of_several_types(tmp_path: Path) -> None:
    with ThreadServer(f"sqlite:///{tmp_path}/live.db", heartbeat=0.2) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            events = await seed(http)
            start = events[3]["position"]
            url = f"/shop?after_position={start}&type=a&type=c"
            async with http.stream("GET", url, headers=SSE) as r:
                reader = SSEReader(r)
                got = await reader.events(3)
                assert [e["event"] for e in got] == [4, 6, 7]
                assert [e["position"] for e in got] == [events[i]["position"] for i in (4, 6, 7)]
                await http.post("/shop/orders/o9/b", json={"event": "skipped"})
                await http.post("/shop/stock/s9/c", json={"event": "live"})
                live = await reader.events(1)
                assert live[0]["event"] == "live" and live[0]["position"] == events[-1]["position"] + 2
            # A reconnecting EventSource repeats its URL: Last-Event-ID wins over after_position.
            async with http.stream("GET", url, headers={**SSE, "last-event-id": got[1]["event_id"]}) as r:
                resumed = await SSEReader(r).events(2)
                assert [e["event"] for e in resumed] == [7, "live"]
            # An entity's stream starts after a version as its pages do.
            async with http.stream("GET", "/shop/orders/o1?after_version=2&type=a&type=b", headers=SSE) as r:
                reader = SSEReader(r)
                assert [e["event"] for e in await reader.events(2)] == [7, 8]
                await http.post("/shop/orders/o1/b", json={"event": "o1 live"})
                assert [e["version"] for e in await reader.events(1)] == [5]


# ------------------------------------------------------------------ the OpenAPI document


def test_the_document_describes_the_consumer_api() -> None:
    doc = openapi_document()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    reads = ("/{realm}", "/{realm}/{domain}", "/{realm}/{domain}/{entity}", "/{realm}/{domain}/{entity}/{type}")
    for template in reads:
        op = paths[template]["get"]
        query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
        assert {"order", "after_position", "before_position", "following", "limit"} <= set(query), template
        assert ("after_version" in query) == ("{entity}" in template), template
        assert ("type" in query) == (not template.endswith("{type}")), template
        if "type" in query:
            assert query["type"]["schema"]["type"] == "array" and query["type"]["explode"] is True
            assert query["type"]["schema"]["maxItems"] == 100
        assert query["order"]["schema"]["enum"] == ["asc", "desc"]
        assert "304" in op["responses"] and "ETag" in op["responses"]["200"]["headers"]
        assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in op["parameters"])
    many = paths["/{realm}/{domain}"]["post"]
    assert many["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ManyRequest")
    assert {"200", "201", "400", "409", "413", "501"} <= set(many["responses"])
    assert not [p for p in many.get("parameters", []) if p["in"] == "query"]
    request = schemas["ManyRequest"]
    assert set(request["properties"]) == {"events", "expected_versions"}
    assert set(request["properties"]["events"]["items"]["required"]) == {"entity", "type", "event"}
    assert schemas["AppendedMany"]["properties"]["events"]["items"]["required"] == [
        "entity", "event_id", "version", "position", "timestamp"]
    assert "position" in schemas["Event"]["required"] and "position" in schemas["Appended"]["required"]
    assert "conflicts" in schemas["Problem"]["properties"]


def test_every_kind_of_operation_is_in_the_route_table() -> None:
    kinds = {op.kind for route in ROUTES for op in route.operations.values()}
    assert Kind.APPEND_MANY in kinds


async def test_the_document_is_served_as_built(client: httpx.AsyncClient) -> None:
    r = await client.get("/_openapi.json")
    # (built for this module's server, whose --max-batch is 50)
    assert orjson.loads(r.content) == orjson.loads(orjson.dumps(openapi_document(50)))


async def test_the_served_document_caps_batches_at_the_servers_own_max_batch(store: Store) -> None:
    """A schema-driven client must not take a batch the server refuses (--max-batch 3) for valid."""
    app = PerhapApp(store, max_batch=3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as client:
        schemas = (await client.get("/_openapi.json")).json()["components"]["schemas"]
        assert schemas["BatchRequest"]["properties"]["events"]["maxItems"] == 3
        assert schemas["ManyRequest"]["properties"]["events"]["maxItems"] == 3
        four = [{"type": "t", "event": i} for i in range(4)]
        r = await client.post("/r/d/e", json={"events": four})
        assert r.status_code == 413 and r.json()["max_batch"] == 3
        r = await client.post("/r/d", json={"events": [{"entity": "e", **e} for e in four]})
        assert r.status_code == 413 and r.json()["max_batch"] == 3
