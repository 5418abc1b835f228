"""Strict query strings, and error messages that point at the mistake (issue 14, points 1 and 6).

The query string is as strict as the body: a parameter the route does not take, or one given twice,
is a 400 naming it, checked before the handler runs. The route table declares each operation's
parameters, and the OpenAPI document lists exactly those: both directions are checked here against
the document itself. SQLite only: these are rules of the HTTP layer, the same over every backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from perhap.backends import open_store
from perhap.http.app import PerhapApp
from perhap.http.openapi import openapi_document
from perhap.http.routes import ANY_METHOD, ROUTES
from perhap.testing.conformance.helpers import problem

SSE = {"accept": "text/event-stream"}


async def sse(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """A stream request that must be refused: the in-process transport waits for a whole response,
    so a stream opened by mistake fails the test at this deadline instead of hanging it."""
    return await asyncio.wait_for(client.get(url, headers=SSE), 30)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with open_store(f"sqlite:///{tmp_path}/strict.db") as store:
        app = PerhapApp(store, heartbeat=0.5)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def refused(r: httpx.Response, name: str) -> str:
    """The detail of a 400 that names the query parameter ``name``."""
    p = problem(r, 400)
    assert p["parameter"] == name, p
    assert repr(name) in p["detail"] or p["detail"].startswith(name), p
    detail: str = p["detail"]
    return detail


# ------------------------------------------------------------------ 14.1: unknown and repeated parameters


@pytest.mark.parametrize(("method", "url", "name"), [
    ("GET", "/shop/orders?limt=1", "limt"),
    ("GET", "/shop/orders?from=0", "from"),
    ("GET", "/shop?limit=5&offset=2", "offset"),
    ("GET", "/shop/orders/o1?after=x", "after"),  # a keys parameter on a read
    ("GET", "/shop/orders/o1/placed?type=placed", "type"),  # the type is in the path here
    ("HEAD", "/shop/orders?Limit=1", "Limit"),
    ("GET", "/keys?following=x", "following"),
    ("GET", "/shop/keys?type=x", "type"),
    ("GET", "/shop/orders/o1/keys?page=2", "page"),
    ("GET", "/_health?verbose", "verbose"),
    ("GET", "/_openapi.json?format=yaml", "format"),
    ("GET", "/_metrics?x=1", "x"),
    ("GET", "/?x=1", "x"),
    ("POST", "/shop/orders/o1/placed?limit=1", "limit"),
    ("POST", "/shop/orders/o1?type=placed", "type"),
])
async def test_an_unknown_query_parameter_is_400_naming_it(client: httpx.AsyncClient, method: str, url: str,
                                                           name: str) -> None:
    r = await client.request(method, url, content=b'{"event": 1}' if method == "POST" else None)
    if method == "HEAD":
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        return
    detail = refused(r, name)
    assert "unknown query parameter" in detail
    assert (await client.get("/shop")).json()["events"] == []  # nothing was appended


async def test_the_message_lists_what_the_route_takes(client: httpx.AsyncClient) -> None:
    detail = refused(await client.get("/shop/orders?limt=1"), "limt")
    assert "GET /{realm}/{domain}" in detail and "type, following, limit" in detail
    assert "after, limit" in refused(await client.get("/shop/keys?limt=1"), "limt")
    assert "takes no query parameters" in refused(await client.get("/_health?x"), "x")
    assert "last segment" in refused(await client.get("/shop/d/e/t?type=t"), "type")


@pytest.mark.parametrize("query", [
    "limit=1&limit=2", "limit=1&limit=1", "following={id}&following={id}", "order=asc&type=a&order=asc",
    "after_position=1&after_position=2",
])
async def test_a_repeated_query_parameter_is_400(client: httpx.AsyncClient, query: str) -> None:
    event_id = (await client.post("/shop/orders/o1/placed", json={"event": 1})).json()["event_id"]
    url = "/shop/orders?" + query.format(id=event_id)
    name = query.split("=")[0]
    assert "more than once" in refused(await client.get(url), name)
    assert "more than once" in refused(await sse(client, url), name)  # before a stream opens
    assert "more than once" in refused(await client.get("/shop/keys?after=a&after=b"), "after")


async def test_type_may_repeat(client: httpx.AsyncClient) -> None:
    # The one parameter that may: events of any of those types (issue 15).
    await client.post("/shop/orders/o1/placed", json={"event": 1})
    await client.post("/shop/orders/o1/paid", json={"event": 2})
    for url in ("/shop", "/shop/orders", "/shop/orders/o1"):
        r = await client.get(url + "?type=placed&type=paid&type=placed")
        assert [e["event"] for e in r.json()["events"]] == [1, 2], url


async def test_expected_version_in_the_query_of_an_append_says_it_belongs_in_the_body(
        client: httpx.AsyncClient) -> None:
    # The example: this answered 201 and stored version 1, unchecked.
    assert (await client.post("/shop/orders/o1/placed", json={"event": 0})).status_code == 201
    r = await client.post("/shop/orders/o1/placed?expected_version=0", content=b'{"event": 1}')
    detail = refused(r, "expected_version")
    assert "body" in detail and '{"event": ..., "expected_version": 0}' in detail
    r = await client.post("/shop/orders/o1?expected_version=5", json={"events": [{"type": "t", "event": 1}]})
    detail = refused(r, "expected_version")
    assert "batch" not in detail and '{"events": [...], "expected_version": 5}' in detail
    detail = refused(await client.post("/shop/orders/o1/placed?expected_version=x", json={"event": 1}),
                     "expected_version")
    assert '"expected_version": N}' in detail
    assert "body" in refused(await client.post("/shop/orders/o1/placed?event_id=x", json={"event": 1}), "event_id")
    # A key of another route's body is not said to belong in this one's (whose body refuses it).
    detail = refused(await client.post("/shop/orders?expected_version=0", json={"events": []}), "expected_version")
    assert "belongs" not in detail and "no expected_version" in detail and '"expected_versions"' in detail
    detail = refused(await client.post("/shop/orders/o1/placed?events=x", json={"event": 1}), "events")
    assert "belongs" not in detail and '{"event": ...}' in detail
    assert "belongs" in refused(await client.post("/shop/orders?expected_versions=x", json={"events": []}),
                                "expected_versions")
    assert len((await client.get("/shop/orders/o1")).json()["events"]) == 1


async def test_declared_parameters_are_taken_on_every_read(client: httpx.AsyncClient) -> None:
    first = (await client.post("/shop/orders/o1/placed", json={"event": 1})).json()["event_id"]
    await client.post("/shop/orders/o1/placed", json={"event": 2})
    for url in ("/shop", "/shop/orders", "/shop/orders/o1"):
        r = await client.get(url, params={"type": "placed", "following": first, "limit": "1"})
        assert r.status_code == 200 and [e["event"] for e in r.json()["events"]] == [2], (url, r.text)
    r = await client.get("/shop/orders/o1/placed", params={"following": first, "limit": "5"})
    assert [e["event"] for e in r.json()["events"]] == [2]
    for url in ("/keys", "/shop/keys", "/shop/orders/keys", "/shop/orders/o1/keys"):
        assert (await client.get(url, params={"after": "", "limit": "3"})).status_code == 200, url
    # No query, an empty one, and empty pairs all read the same.
    for url in ("/shop", "/shop?", "/shop?&", "/shop?&&"):
        assert len((await client.get(url)).json()["events"]) == 2, url


async def test_no_other_site_may_frame_the_ui(client: httpx.AsyncClient) -> None:
    for path in ("/_ui", "/_ui/app.js", "/_ui/shop/orders"):
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == "frame-ancestors 'none'", path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path


async def test_routes_that_do_not_read_the_query_still_answer_as_before(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_ui/?v=2")).status_code == 200  # static files: any query
    problem(await client.get("/shop/a/b/c/d?x=1&x=2"), 404)  # no route: the 404 wins
    r = await client.delete("/shop?x=1")  # a wrong method: the 405 wins
    assert problem(r, 405) and r.headers["allow"] == "GET, HEAD"
    # So does a query that is not valid percent-encoded UTF-8 (a link's Latin-1 parameters): it
    # was a 400 before the route was looked at.
    assert (await client.get("/_ui/?v=%FF")).status_code == 200
    problem(await client.get("/shop/a/b/c/d?x=%FF"), 404)
    r = await client.delete("/shop?x=%E9")
    assert problem(r, 405) and r.headers["allow"] == "GET, HEAD"
    assert "percent-encoded" in problem(await client.get("/shop?x=%FF"), 400)["detail"]


async def test_streams_take_following_and_type_and_refuse_the_rest(client: httpx.AsyncClient) -> None:
    refused(await sse(client, "/shop/orders?limt=5"), "limt")
    # A valid query gets as far as the stream's own checks: an unknown `following` is its 404.
    missing = str(uuid.uuid4())
    problem(await sse(client, f"/shop/orders?type=placed&following={missing}"), 404)


# ------------------------------------------------------------------ the document is exact


def test_the_document_lists_exactly_the_route_tables_parameters() -> None:
    paths = openapi_document()["paths"]
    described = 0
    for route in ROUTES:
        for method, op in route.operations.items():
            if method == ANY_METHOD or op.summary is None:
                continue
            described += 1
            params = paths[route.template][method.lower()].get("parameters", [])
            query = [p["name"] for p in params if p["in"] == "query"]
            assert query == list(op.query or ()), (method, route.template)
    assert described == sum(len(item) for item in paths.values())
    # Every route of docs/api.md's table of parameters, / among them (it takes none).
    assert paths["/"]["get"].get("parameters", []) == []


def _params(param: dict[str, Any], event_id: str) -> dict[str, str]:
    """A valid value of one documented parameter, with what it needs beside it (before_position
    pages newest first, so it comes with order=desc)."""
    name = param["name"]
    value = {"limit": "2", "following": event_id, "type": "placed", "after": "a", "order": "desc",
             "after_position": "0", "before_position": "5", "after_version": "0", "until_version": "3",
             "consumer": "c", "max": "5", "wait": "0"}[name]
    needs = {"before_position": {"order": "desc"}, "max": {"consumer": "c"}, "wait": {"consumer": "c"}}
    return {name: value, **needs.get(name, {})}


async def test_the_server_takes_what_the_document_lists_and_nothing_else(client: httpx.AsyncClient) -> None:
    event_id = (await client.post("/shop/orders/o1/placed", json={"event": 1})).json()["event_id"]
    assert (await client.put("/_groups/shop/g", json={})).status_code == 201
    names = {"{realm}": "shop", "{domain}": "orders", "{entity}": "o1", "{type}": "placed", "{group}": "g"}
    doc = (await client.get("/_openapi.json")).json()
    checked = 0
    for template, item in doc["paths"].items():
        url = "/".join(names.get(part, part) for part in template.split("/"))
        for method, op in item.items():
            query = [p for p in op.get("parameters", ()) if p["in"] == "query"]
            body = {"event": 2} if template.endswith("{type}") else {"events": [{"type": "t", "event": 3}]}
            if template == "/{realm}/{domain}":
                body = {"events": [{"entity": "o1", "type": "t", "event": 3}]}
            send = {"json": body} if method == "post" else {}
            for param in query:  # each documented parameter is taken ...
                r = await client.request(method, url, params=_params(param, event_id), **send)
                assert r.status_code < 400, (method, template, param["name"], r.text)
                checked += 1
            # ... and a name it does not list is refused, whatever the route.
            r = await client.request(method, url, params={"nope": "1"}, **send)
            refused(r, "nope")
            once = [p for p in query if not p.get("explode")]  # an exploded array may repeat
            if once:
                name = once[0]["name"]
                pairs = [(name, _params(once[0], event_id)[name])] * 2
                refused(await client.request(method, url, params=pairs, **send), name)
    assert checked >= 14


# ------------------------------------------------------------------ 14.6: messages that point at the mistake


async def test_an_unwrapped_event_is_told_to_wrap_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/shop/orders/o1/clicked", content=b'{"URI": "http://example.com"}')
    detail = problem(r, 400)["detail"]
    assert "wrapped" in detail and '{"event": ' in detail and "URI" in detail
    assert "unknown keys" not in detail
    detail = problem(await client.post("/shop/orders/o1/clicked", json={}), 400)["detail"]
    assert '{"event": ' in detail
    # An event that is no object, sent bare, is told the same (it only heard "a JSON object").
    for bare in (b'"hello"', b"42", b"null", b'[{"event": 1}]'):
        detail = problem(await client.post("/shop/orders/o1/clicked", content=bare), 400)["detail"]
        assert detail.startswith("the body must be a JSON object: send {\"event\": ") and "<your event>" in detail
    for path, shape in (("/shop/orders/o1", '{"events": [{"type": '), ("/shop/orders", '{"events": [{"entity": ')):
        detail = problem(await client.post(path, content=b'[{"type": "t", "event": 1}]'), 400)["detail"]
        assert detail.startswith(f"the body must be a JSON object: send {shape}"), detail
    # A batch sent to the single-event route is told where batches go.
    detail = problem(await client.post("/shop/orders/o1/clicked", json={"events": []}), 400)["detail"]
    assert "POST /REALM/DOMAIN/ENTITY" in detail and '{"event": ' in detail
    # A misspelt key next to `event` is still named, with the keys an append takes.
    detail = problem(await client.post("/shop/orders/o1/clicked", json={"event": 1, "expectedVersion": 0}),
                     400)["detail"]
    assert "unknown keys in the body: expectedVersion" in detail and "expected_version" in detail


async def test_a_single_event_posted_to_an_entity_is_told_about_both_shapes(client: httpx.AsyncClient) -> None:
    r = await client.post("/shop/orders/o1", json={"event": {"total": 1}})
    detail = problem(r, 400)["detail"]
    assert "batch route" in detail
    assert '{"events": [{"type": ' in detail  # the batch, here
    assert '/REALM/DOMAIN/ENTITY/TYPE as {"event": ' in detail  # one event, there
    assert "unknown keys" not in detail
    assert (await client.get("/shop")).json()["events"] == []


@pytest.mark.parametrize("url", ["/shop", "/shop/orders/keys", "/shop/keys", "/keys"])
async def test_a_post_to_one_or_two_segments_shows_where_appends_go(client: httpx.AsyncClient, url: str) -> None:
    r = await client.post(url, json={"event": 1})
    detail = problem(r, 405)["detail"]
    assert r.headers["allow"] == "GET, HEAD"
    assert "/REALM/DOMAIN/ENTITY/TYPE" in detail and '{"event": ' in detail
    assert "/REALM/DOMAIN/ENTITY as" in detail  # and the batch
    assert "/REALM/DOMAIN as" in detail  # and the batch over several entities
    # Other wrong methods keep the plain answer.
    r = await client.put(url, json={"event": 1})
    assert problem(r, 405)["detail"] == "PUT is not allowed here; use GET, HEAD"


async def test_a_stream_refused_in_accept_is_a_json_read(client: httpx.AsyncClient) -> None:
    """Accept with text/event-stream at q=0 ("not acceptable"), or weighed below JSON, gets the JSON
    page, not a stream; named plainly (in any case: media types are case-insensitive), or weighed
    at least as JSON, it gets the stream (HEAD, so the test need not read one)."""
    assert (await client.post("/r/d/e/t", json={"event": 1})).status_code == 201
    for accept in ("text/event-stream;q=0, application/json", "application/json, text/event-stream; q=0.0",
                   "text/event-stream;q=0.1, application/json", "text/event-stream;q=0.5, */*;q=0.9"):
        r = await asyncio.wait_for(client.get("/r/d", headers={"accept": accept}), 10)  # (a stream never ends)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), accept
        assert [e["event"] for e in r.json()["events"]] == [1]
    for accept in ("text/event-stream", "Text/Event-Stream", "text/event-stream;q=0.5, application/json;q=0.4",
                   "text/event-stream, */*", "application/json, text/event-stream"):
        r = await client.head("/r/d", headers={"accept": accept})
        assert r.headers["content-type"].startswith("text/event-stream"), accept
    # Two Accept lines are one list (RFC 9110 5.3): the second was not read.
    r = await client.head("/r/d", headers=[("accept", "application/json"), ("accept", "text/event-stream")])
    assert r.headers["content-type"].startswith("text/event-stream")
    r = await client.get("/r/d", headers=[("accept", "text/event-stream;q=0.1"), ("accept", "application/json")])
    assert r.headers["content-type"].startswith("application/json")


async def test_the_event_by_id_route_checks_the_read_parameters_it_shares(client: httpx.AsyncClient) -> None:
    """GET /REALM/DOMAIN/ID answers the event when ID is one of the domain's; the read parameters
    the route shares with the entity read are checked all the same (a bad one is a 400 there as
    on the entity's read), and good ones still give the event."""
    r = await client.post("/shop/orders/o1/placed", json={"event": {"n": 1}})
    event_id = r.json()["event_id"]
    url = f"/shop/orders/{event_id}"
    for query, name in [("limit=0", "limit"), ("limit=10001", "limit"), ("limit=abc", "limit"),
                        ("following=nope", "following"), ("type=", "type"), ("type=keys", "type"),
                        ("type=a%2Fb", "type"), ("after_version=x", "after_version"),
                        ("order=sideways", "order")]:
        p = problem(await client.get(f"{url}?{query}"), 400)
        assert name in p["detail"], (query, p)
        p = problem(await client.get(f"/shop/orders/o1?{query}"), 400)  # as the entity's read says
        assert name in p["detail"], (query, p)
    for query in ["limit=5", "type=placed", f"following={uuid.uuid4()}", "order=desc"]:
        r = await client.get(f"{url}?{query}")
        assert r.status_code == 200 and r.json()["event_id"] == event_id, (query, r.text)


@pytest.mark.parametrize(("path", "body", "key"), [
    ("/shop/orders/o1/placed", {"event": 1, "event_id": None}, "event_id"),
    ("/shop/orders/o1/placed", {"event": 1, "meta": None}, "meta"),
    ("/shop/orders/o1/placed", {"event": 1, "expected_version": None}, "expected_version"),
    ("/shop/orders/o1", {"events": [{"type": "t", "event": 1, "event_id": None}]}, "event_id"),
    ("/shop/orders/o1", {"events": [{"type": "t", "event": 1, "meta": None}]}, "meta"),
    ("/shop/orders/o1", {"events": [{"type": "t", "event": 1, "timestamp": None}]}, "timestamp"),
    ("/shop/orders/o1", {"events": [{"type": "t", "event": 1}], "expected_version": None}, "expected_version"),
    ("/shop/orders", {"events": [{"entity": "a", "type": "t", "event": 1, "event_id": None}]}, "event_id"),
    ("/shop/orders", {"events": [{"entity": "a", "type": "t", "event": 1, "meta": None}]}, "meta"),
    ("/shop/orders", {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": None},
     "expected_versions"),
    ("/shop/orders", {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": None}},
     "expected_versions"),
])
async def test_an_optional_key_given_as_null_is_refused_and_nothing_is_stored(
        client: httpx.AsyncClient, path: str, body: dict[str, Any], key: str) -> None:
    """null is not a UUID, an integer or an object: a 400 naming the key, on every append route
    (a key without a value is left out), and nothing stored."""
    p = problem(await client.post(path, json=body), 400)
    assert p["detail"].replace("events[0]: ", "").startswith(key) and "null" in p["detail"], p
    assert (await client.get("/shop")).json()["events"] == []
    # The event itself may be null: it is any JSON value.
    r = await client.post("/shop/orders/o1/placed", json={"event": None})
    assert r.status_code == 201, r.text


async def test_the_openapi_document_says_what_a_single_append_answers(client: httpx.AsyncClient) -> None:
    """The 201 (and the retry's 200) of POST /{realm}/{domain}/{entity}/{type} carry a Location
    header, as the document says; optional body keys are not nullable there (null is a 400)."""
    doc = openapi_document()
    op = doc["paths"]["/{realm}/{domain}/{entity}/{type}"]["post"]
    assert "Location" in op["responses"]["201"]["headers"] and "Location" in op["responses"]["200"]["headers"]
    r = await client.post("/shop/orders/o1/placed", json={"event": 1})
    assert r.status_code == 201 and r.headers["location"] == f"/shop/orders/{r.json()['event_id']}"
    schemas = doc["components"]["schemas"]
    for name in ("AppendRequest", "BatchRequest"):
        assert "null" not in str(schemas[name]), schemas[name]


async def test_a_head_that_the_route_does_not_answer_is_405_whatever_the_query(client: httpx.AsyncClient) -> None:
    """The lease route's GET changes state, so HEAD is not answered there: a 405 with or without
    a query it would not take (docs/api.md: a wrong method is still 405), as on any other route."""
    for query in ("", "?consumer=a", "?consumer=a&x=1", "?x=1&x=2"):
        r = await client.head("/_groups/shop/g/events" + query)
        assert r.status_code == 405 and "HEAD" not in r.headers["allow"], (query, r.status_code)
    assert (await client.head("/shop?x=1")).status_code == 400  # HEAD as GET: GET's query rules


async def test_a_post_where_no_append_goes_is_told_where_appends_go(client: httpx.AsyncClient) -> None:
    """docs/api.md: a POST where no append goes is told where appends go: at the root and the
    system endpoints too (a POST to / is the first wrong URL a new user tries), not on the
    consumer-group routes, whose POSTs are not appends."""
    for path in ("/", "/_health", "/_ui", "/_openapi.json", "/shop", "/keys"):
        body = problem(await client.post(path, json={"event": 1}), 405)
        assert "POST one event to /REALM/DOMAIN/ENTITY/TYPE" in body["detail"], (path, body)
    r = await client.post("/_groups/shop/g", json={})
    assert r.status_code == 405 and "ENTITY/TYPE" not in problem(r, 405)["detail"]


async def test_the_index_and_an_unknown_system_endpoint_say_where_things_are(client: httpx.AsyncClient) -> None:
    index = (await client.get("/")).json()
    assert index["ui"] == "/_ui" and index["groups"] == "/_groups/{realm}" and index["api"] == "/_openapi.json"
    for path in ("/_metric", "/_healthz", "/_groups", "/_UI"):
        detail = problem(await client.get(path), 404)["detail"]
        assert "/_health, /_openapi.json, /_metrics, /_ui and /_groups/REALM" in detail, (path, detail)
