"""The HTTP contract: the API over a backend, through the ASGI app in process."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from ...http.app import PerhapApp
from ...store.base import Store
from .base import BackendContract
from .helpers import problem

ENTITY = "59535c06-79c4-4499-bfcc-c695aaebf491"
#: Not UUIDs, though Python's uuid.UUID reads each as one (it drops hyphens, braces and "urn:"
#: anywhere, and takes 0x, a sign, spaces, "_" and any Unicode digit).
NOT_UUIDS = [b"0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"+1111111111111111111111111111111",
             b" 2222222222222222222222222222222", b"3_3_3_3_3_3_3_3_3_3_3_3_3_3_3_33",
             b"0190b1a2-0000-7000-8000-urn:0000000000aa", b"{{0190b1a2000070008000000000000abd}}",
             b"-0190b1a2-0000-7000-8000-000000000abe-", b"0190b1a2-00007000-8000-0000000000aa",
             "0190b1a20000700080000000000\u0661\u0662\u0663\u0664\u0665".encode()]


class HTTPContract(BackendContract):
    """Status codes, bodies, paging, keys and limits of the HTTP API over the backend."""

    @pytest_asyncio.fixture
    async def client(self, store: Store) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client talking to the app in process (no sockets)."""
        app = PerhapApp(store, heartbeat=0.5)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as c:
            yield c

    async def test_seed_example_with_form_content_type(self, client: httpx.AsyncClient) -> None:
        # curl -d sends application/x-www-form-urlencoded; the body is JSON all the same.
        r = await client.post(f"/performance/communications/{ENTITY}/click",
                              content=b'{"event": {"URI": "http://example.com"}}',
                              headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"event_id", "version", "position", "timestamp"}
        assert body["version"] == 0 and uuid.UUID(body["event_id"]).version == 7
        assert r.headers["location"] == f"/performance/communications/{body['event_id']}"
        r = await client.get(f"/performance/communications/{ENTITY}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        page = r.json()
        assert page["next"] is None
        assert page["events"] == [{
            "event_id": body["event_id"], "realm": "performance", "domain": "communications",
            "entity": ENTITY, "type": "click", "event": {"URI": "http://example.com"}, "meta": {},
            "version": 0, "position": body["position"], "timestamp": body["timestamp"]}]
        # The Location names the event.
        r = await client.get(f"/performance/communications/{body['event_id']}")
        assert r.status_code == 200 and r.json()["event"] == {"URI": "http://example.com"}

    async def test_big_integers_are_stored_exactly(self, client: httpx.AsyncClient, realm: str) -> None:
        body = b'{"event": {"big": 123456789012345678901234567890, "neg": -98765432109876543210}}'
        assert (await client.post(f"/{realm}/d/e/t", content=body)).status_code == 201
        r = await client.get(f"/{realm}/d/e")
        assert b"123456789012345678901234567890" in r.content and b"-98765432109876543210" in r.content
        assert r.json()["events"][0]["event"]["big"] == 123456789012345678901234567890

    async def test_timestamp_is_rfc3339_utc(self, client: httpx.AsyncClient, realm: str) -> None:
        r = await client.post(f"/{realm}/d/e/t", json={"event": 1})
        stamp = r.json()["timestamp"]
        assert stamp.endswith("Z")
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60

    async def test_append_options_and_read_back(self, client: httpx.AsyncClient, realm: str) -> None:
        eid = str(uuid.uuid4())
        r = await client.post(f"/{realm}/d/e/t", json={"event": None, "event_id": eid.upper(),
                                                        "meta": {"corr": "x"}, "expected_version": -1})
        assert r.status_code == 201, r.text
        assert r.json()["event_id"] == eid  # canonical lower-case form
        event = (await client.get(f"/{realm}/d/{eid}")).json()
        assert event["event"] is None and event["meta"] == {"corr": "x"} and event["event_id"] == eid

    async def test_a_uuids_other_spellings_are_its_canonical_id(self, client: httpx.AsyncClient,
                                                               realm: str) -> None:
        """No hyphens, braces, a urn:uuid: URN, any case: one UUID, stored as perhap writes it."""
        eid = str(uuid.uuid4())
        plain = eid.replace("-", "")
        for spelling in (plain, "{" + eid + "}", f"urn:uuid:{eid}", f"URN:UUID:{plain.upper()}"):
            r = await client.post(f"/{realm}/d/e/t", json={"event": 1, "event_id": spelling})
            assert r.status_code in (200, 201) and r.json()["event_id"] == eid, (spelling, r.text)
            following = await client.get(f"/{realm}/d", params={"following": spelling})
            assert following.status_code == 200 and following.json()["events"] == []
        assert len((await client.get(f"/{realm}")).json()["events"]) == 1

    async def test_only_an_event_ids_own_spelling_names_the_event(self, client: httpx.AsyncClient,
                                                                  realm: str) -> None:
        """GET /{realm}/{domain}/{x} is the event whose event_id is x; another spelling of that
        id (no hyphens, as an MD5-named entity has; upper case) is an entity's name like any
        other, its events listed, not shadowed by the event."""
        first = (await client.post(f"/{realm}/d/e/t", json={"event": 1})).json()["event_id"]
        for name in (first.replace("-", ""), first.upper()):
            assert (await client.post(f"/{realm}/d/{name}/t", json={"event": name})).status_code == 201
            page = (await client.get(f"/{realm}/d/{name}")).json()
            assert [(e["entity"], e["event"]) for e in page["events"]] == [(name, name)], page
        assert (await client.get(f"/{realm}/d/{first}")).json()["event_id"] == first

    async def test_idempotent_append_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        eid = str(uuid.uuid4())
        body = {"event": {"a": 1}, "event_id": eid, "meta": {"m": 1}}
        first = await client.post(f"/{realm}/d/e/t", json=body)
        again = await client.post(f"/{realm}/d/e/t", json=body)
        assert first.status_code == 201 and again.status_code == 200
        assert again.json() == first.json()
        different = await client.post(f"/{realm}/d/e/t", json={**body, "event": {"a": 2}})
        p = problem(different, 409)
        assert p["event_id"] == eid
        elsewhere = await client.post(f"/{realm}/d/other/t", json=body)
        problem(elsewhere, 409)
        assert len((await client.get(f"/{realm}")).json()["events"]) == 1

    async def test_version_conflict_body(self, client: httpx.AsyncClient, realm: str) -> None:
        await client.post(f"/{realm}/d/e/t", json={"event": 1})
        r = await client.post(f"/{realm}/d/e/t", json={"event": 2, "expected_version": 3})
        p = problem(r, 409)
        assert p["current_version"] == 0 and p["expected_version"] == 3
        r = await client.post(f"/{realm}/d/e/t", json={"event": 2, "expected_version": 0})
        assert r.status_code == 201 and r.json()["version"] == 1
        # However large, an integer is an expectation: a version no entity is at, so a 409.
        huge = b'{"event": 3, "expected_version": 99999999999999999999}'
        p = problem(await client.post(f"/{realm}/d/e/t", content=huge), 409)
        assert p["current_version"] == 1 and p["expected_version"] == 10**20 - 1

    async def test_concurrent_expected_version_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        rs = await asyncio.gather(*[client.post(f"/{realm}/d/e/t", json={"event": i, "expected_version": -1})
                                    for i in range(12)])
        assert sorted(r.status_code for r in rs) == [201] + [409] * 11

    async def test_batch_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        ids = [str(uuid.uuid4()) for _ in range(2)]
        body: dict[str, Any] = {"events": [{"type": "a", "event": 1, "event_id": ids[0]},
                                           {"type": "b", "event": 2, "event_id": ids[1], "meta": {"k": 1}}],
                                "expected_version": -1}
        r = await client.post(f"/{realm}/d/e", json=body)
        assert r.status_code == 201, r.text
        events = r.json()["events"]
        assert [e["event_id"] for e in events] == ids and [e["version"] for e in events] == [0, 1]
        again = await client.post(f"/{realm}/d/e", json=body)
        assert again.status_code == 200 and again.json() == r.json()
        partly = {"events": [{"type": "c", "event": 3}, body["events"][0]]}
        assert problem(await client.post(f"/{realm}/d/e", json=partly), 409)["event_id"] == ids[0]  # (the id sent)
        conflict = await client.post(f"/{realm}/d/e", json={"events": [{"type": "a", "event": 0}],
                                                             "expected_version": 0})
        assert problem(conflict, 409)["current_version"] == 1
        bad_bodies: list[dict[str, Any]] = [
            {}, {"events": []}, {"events": "x"}, {"events": [1]}, {"events": [{"type": "a"}]},
            {"events": [{"event": 1}]}, {"events": [{"type": "keys", "event": 1}]},
            {"events": [{"type": "a", "event": 1, "event_id": "x"}]},
            {"events": [{"type": "a", "event": 1, "meta": 5}]},
            {"events": [{"type": "a", "event": 1}], "expected_version": "0"},
            {"events": [{"type": "a", "event": 1, "event_id": ids[0]}] * 2}]
        for bad in bad_bodies:
            problem(await client.post(f"/{realm}/d/e2", json=bad), 400)
        assert (await client.get(f"/{realm}/d/e2")).json()["events"] == []
        too_many = {"events": [{"type": "a", "event": i} for i in range(10_001)]}
        r = await client.post(f"/{realm}/d/e2", json=too_many)
        assert r.status_code in (400, 413)
        assert (await client.get(f"/{realm}/d/e2")).json()["events"] == []

    async def test_reads_at_every_scope(self, client: httpx.AsyncClient, realm: str) -> None:
        for i in range(12):
            r = await client.post(f"/{realm}/d{i % 2}/e{i % 3}/t{i % 2}", json={"event": i})
            assert r.status_code == 201
        async def events(url: str, **params: Any) -> list[Any]:
            r = await client.get(url, params=params)
            assert r.status_code == 200, r.text
            return [e["event"] for e in r.json()["events"]]

        assert await events(f"/{realm}") == list(range(12))
        assert await events(f"/{realm}", type="t1") == [1, 3, 5, 7, 9, 11]
        assert await events(f"/{realm}/d0") == [0, 2, 4, 6, 8, 10]
        assert await events(f"/{realm}/d0", type="t1") == []
        assert await events(f"/{realm}/d0/e0") == [0, 6]
        assert await events(f"/{realm}/d1/e1/t1") == [1, 7]
        assert await events(f"/{realm}/d1/e1/t0") == []
        assert await events(f"/{realm}/nothing") == []
        assert await events("/nothing-here") == []

    async def test_paging_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        for i in range(25):
            await client.post(f"/{realm}/d/e{i % 2}/t", json={"event": i})
        seen, following = [], None
        while True:
            params = {"limit": "10"} | ({"following": following} if following else {})
            page = (await client.get(f"/{realm}/d", params=params)).json()
            seen += [e["event"] for e in page["events"]]
            if page["next"] is None:
                break
            assert page["next"] == page["events"][-1]["event_id"]
            following = page["next"]
        assert seen == list(range(25))

    async def test_keys_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        await client.post(f"/{realm}/d2/e/t", json={"event": 1})
        await client.post(f"/{realm}/d1/e/t", json={"event": 1})
        await client.post(f"/{realm}/d1/f/u", json={"event": 1})
        await client.post(f"/{realm}/d1/f/t", json={"event": 1})
        root = (await client.get("/keys")).json()
        assert realm in root["keys"]
        assert (await client.get(f"/{realm}/keys")).json() == {"keys": ["d1", "d2"], "next": None}
        assert (await client.get(f"/{realm}/keys", params={"limit": 1})).json() == {"keys": ["d1"], "next": "d1"}
        assert (await client.get(f"/{realm}/keys", params={"after": "d1"})).json() == {"keys": ["d2"], "next": None}
        assert (await client.get(f"/{realm}/d1/keys")).json()["keys"] == ["e", "f"]
        assert (await client.get(f"/{realm}/d1/f/keys")).json()["keys"] == ["t", "u"]
        problem(await client.get(f"/{realm}/keys", params={"limit": "0"}), 400)

    async def test_get_one_event_or_entity(self, client: httpx.AsyncClient, realm: str) -> None:
        eid = (await client.post(f"/{realm}/d/e/t", json={"event": "x"})).json()["event_id"]
        r = await client.get(f"/{realm}/d/{eid}")
        assert r.status_code == 200 and r.json()["event_id"] == eid and r.json()["entity"] == "e"
        # The same id under another domain is not that event: it is an (empty) entity.
        r = await client.get(f"/{realm}/other/{eid}")
        assert r.status_code == 200 and r.json() == {"events": [], "next": None}
        r = await client.get(f"/{realm}/d/{uuid.uuid4()}")
        assert r.json() == {"events": [], "next": None}

    async def test_percent_decoding_per_segment(self, client: httpx.AsyncClient, realm: str) -> None:
        entity = "a/b c%é"
        url = f"/{realm}/d/{quote(entity, safe='')}/t"
        r = await client.post(url, json={"event": 1})
        # '/' is not allowed inside a name, even percent-encoded.
        problem(r, 400)
        entity = "b c%é?#"
        r = await client.post(f"/{realm}/d/{quote(entity, safe='')}/t", json={"event": 1})
        assert r.status_code == 201
        events = (await client.get(f"/{realm}/d/{quote(entity, safe='')}")).json()["events"]
        assert events[0]["entity"] == entity
        assert (await client.get(f"/{realm}/d/keys")).json()["keys"] == [entity]

    @pytest.mark.parametrize("body", [
        b"", b"not json", b"[1, 2]", b'"text"', b"null", b"{", b'{"no_event": 1}',
        b'{"event": 1, "meta": [1]}', b'{"event": 1, "meta": "x"}', b'{"event": 1, "meta": null}',
        b'{"event": 1, "event_id": "123"}', b'{"event": 1, "event_id": 5}',
        b'{"event": 1, "expected_version": "1"}', b'{"event": 1, "expected_version": 1.5}',
        b'{"event": 1, "expected_version": true}', b'{"event": 1, "expected_version": -2}',
        b'{"event": 1, "unknown": 2}', b'{"event": NaN}', b'{"event": Infinity}',
    b'\xff\xfe{"event": 1}', b'{"event": "\xff"}',
    # Strings Python's uuid.UUID reads as one, but no UUID: they were stored under another id.
    *[b'{"event": 1, "event_id": "%s"}' % bad for bad in NOT_UUIDS],
    ])
    async def test_bad_bodies_are_400(self, client: httpx.AsyncClient, realm: str, body: bytes) -> None:
        r = await client.post(f"/{realm}/d/e/t", content=body)
        problem(r, 400)
        assert (await client.get(f"/{realm}")).json()["events"] == []

    @pytest.mark.parametrize("path", [
        "/{realm}/d/keys/t", "/{realm}/keys/e/t", "/keys/d/e/t", "/_sys/d/e/t",
        "/{realm}/d/%00/t", "/{realm}/d/a%2Fb/t", "/{realm}/d/" + "x" * 256 + "/t", "/{realm}/d/%FF/t",
        "/{realm}/d/tab%09/t", "/{realm}//e/t",
    ])
    async def test_bad_names_are_400(self, client: httpx.AsyncClient, realm: str, path: str) -> None:
        r = await client.post(path.format(realm=realm), json={"event": 1})
        problem(r, 400)

    @pytest.mark.parametrize("query", [
        "limit=0", "limit=10001", "limit=-1", "limit=abc", "limit=1.5", "limit=", "following=nope",
        "following=", "type=keys", "type=", "type=%00",
        *[f"following={quote(bad.decode())}" for bad in NOT_UUIDS],
    ])
    async def test_bad_query_parameters_are_400(self, client: httpx.AsyncClient, realm: str, query: str) -> None:
        problem(await client.get(f"/{realm}/d?{query}"), 400)

    async def test_unknown_following_is_404(self, client: httpx.AsyncClient, realm: str) -> None:
        other = (await client.post(f"/{realm}/d/other/t", json={"event": 1})).json()["event_id"]
        await client.post(f"/{realm}/d/e/t", json={"event": 1})
        problem(await client.get(f"/{realm}/d/e", params={"following": other}), 404)
        problem(await client.get(f"/{realm}/d", params={"following": str(uuid.uuid4())}), 404)
        assert (await client.get(f"/{realm}/d", params={"following": other})).status_code == 200

    async def test_wrong_methods_are_405(self, client: httpx.AsyncClient, realm: str) -> None:
        # POST /{realm}/{domain} is the multi-entity append (see ConsumerHTTPContract).
        for method, path in [("POST", f"/{realm}"), ("DELETE", f"/{realm}/d/e"),
                             ("PUT", f"/{realm}/d/e/t"), ("PATCH", f"/{realm}/d/e/t"), ("POST", "/keys"),
                             ("POST", "/_health"), ("DELETE", f"/{realm}/keys"),
                             ("POST", f"/{realm}/d/keys"), ("POST", f"/{realm}/d/e/keys")]:
            r = await client.request(method, path, json={"event": 1})
            problem(r, 405)
            assert r.headers["allow"]

    async def test_body_limit_is_413(self, store: Store, realm: str) -> None:
        app = PerhapApp(store, max_body=1000)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.post(f"/{realm}/d/e/t", json={"event": "x" * 2000})
            problem(r, 413)
            r = await c.post(f"/{realm}/d/e/t", json={"event": "x" * 900})
            assert r.status_code == 201

    async def test_default_body_limit_is_one_mebibyte(self, client: httpx.AsyncClient, realm: str) -> None:
        problem(await client.post(f"/{realm}/d/e/t", json={"event": "x" * (1024 * 1024)}), 413)
        r = await client.post(f"/{realm}/d/e/t", json={"event": "x" * (1024 * 1024 - 100)})
        assert r.status_code == 201

    async def test_unknown_routes_are_404(self, client: httpx.AsyncClient, realm: str) -> None:
        no_route = problem(await client.get(f"/{realm}/d/e/t/extra"), 404)
        problem(await client.get("/_nothing"), 404)
        # One problem type, one title, whoever answers it: the router, or the store (no such event).
        no_event = problem(await client.get(f"/{realm}/d", params={"following": str(uuid.uuid4())}), 404)
        assert (no_route["type"], no_route["title"]) == (no_event["type"], no_event["title"])
        problem(await client.get("/keys/more"), 400)  # 'keys' is not a realm name
        problem(await client.get("/_health/more"), 400)  # nor is '_health'

    async def test_health_and_openapi(self, client: httpx.AsyncClient) -> None:
        r = await client.get("/_health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        doc = (await client.get("/_openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        for path in ["/keys", "/{realm}", "/{realm}/keys", "/{realm}/{domain}", "/{realm}/{domain}/keys",
                     "/{realm}/{domain}/{entity}", "/{realm}/{domain}/{entity}/keys",
                     "/{realm}/{domain}/{entity}/{type}", "/_health", "/_openapi.json"]:
            assert path in doc["paths"]
        assert "post" in doc["paths"]["/{realm}/{domain}/{entity}/{type}"]
        assert "post" in doc["paths"]["/{realm}/{domain}/{entity}"]
        assert "post" in doc["paths"]["/{realm}/{domain}"]

    async def test_health_is_503_when_store_is_closed(self, store: Store) -> None:
        app = PerhapApp(store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            await store.close()
            problem(await c.get("/_health"), 503)
            problem(await c.post("/r/d/e/t", json={"event": 1}), 503)
            problem(await c.get("/r/d/e"), 503)
