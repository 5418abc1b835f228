"""The consumer's contract over HTTP: positions in every body, the new query parameters and their
clashes, multi-entity appends (``POST /{realm}/{domain}``) and conditional GET."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from ...http.app import PerhapApp
from ...store.base import Store
from .base import BackendContract
from .helpers import problem, strictly_increasing

Params = dict[str, Any] | list[tuple[str, Any]]
RESULT_KEYS = {"event_id", "version", "position", "timestamp"}
EVENT_KEYS = ["event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "position", "timestamp"]

#: Reads that must be 400s: (path below the realm, query string, names the detail must mention).
CLASHES: list[tuple[str, str, list[str]]] = [
    ("", "following=01a2173a-af2e-701e-bbf0-c30a3181d1d9&after_position=1", ["following", "after_position"]),
    ("/d/e", "following=01a2173a-af2e-701e-bbf0-c30a3181d1d9&order=desc&before_position=5",
     ["following", "before_position"]),
    ("/d", "after_position=1&order=desc", ["after_position", "order=desc"]),
    ("", "before_position=1", ["before_position", "order"]),
    ("/d", "before_position=3&order=asc", ["before_position", "order"]),
    ("/d", "after_version=1", ["after_version"]),
    ("", "until_version=1", ["until_version"]),
    ("/d/e", "after_version=4&until_version=3", ["after_version", "until_version"]),
    ("", "after_position=abc", ["after_position"]), ("", "after_position=-1", ["after_position"]),
    ("", "after_position=1.5", ["after_position"]), ("", "after_position=", ["after_position"]),
    ("", f"after_position={2**63}", ["after_position"]), ("", "after_position=1e3", ["after_position"]),
    ("", "after_position=%205", ["after_position"]), ("/d/e", "until_version=5%20", ["until_version"]),
    ("", "after_position=+5", ["after_position"]),
    ("", "order=desc&before_position=-1", ["before_position"]),
    ("/d/e", "after_version=x", ["after_version"]), ("/d/e", "until_version=-1", ["until_version"]),
    ("/d/e", f"until_version={2**63}", ["until_version"]),
    ("", "order=newest", ["order"]), ("", "order=", ["order"]), ("/d", "order=asc&order=desc", ["order"]),
    ("/d/e/t", "type=u", ["type"]), ("/d", "type=ok&type=keys", ["type"]),
]
#: Bodies of POST /{realm}/{domain} that must be refused, storing nothing.
BAD_MULTI_BODIES: list[dict[str, Any]] = [
    {}, {"events": []}, {"events": {}}, {"events": [{"type": "t", "event": 1}], "expected_versions": {"e": -1}},
    {"events": [{"entity": "keys", "type": "t", "event": 1}]},
    {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": []},
    {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": "0"}},
    {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": -2}},
    {"events": [{"entity": "a", "type": "t", "event": 1}], "expected_versions": {"a": None}},
    {"events": [{"entity": "a", "type": "t", "event": 1}], "unknown": 1},
    {"events": [{"entity": "a", "type": "t", "event": 1, "nope": 1}]},
    {"events": [{"entity": "a", "type": "t", "event": 1, "event_id": "x"}]},
    {"events": [{"entity": "a/b", "type": "t", "event": 1}]},
]


class ConsumerHTTPContract(BackendContract):
    """Positions, order, position and version bounds, several types, multi-entity appends, ETags."""

    @pytest_asyncio.fixture
    async def client(self, store: Store) -> AsyncIterator[httpx.AsyncClient]:
        app = PerhapApp(store, heartbeat=0.5)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as c:
            yield c

    async def events(self, client: httpx.AsyncClient, url: str, params: Params | None = None) -> list[dict[str, Any]]:
        r = await client.get(url, params=params)
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()["events"]
        return events

    async def fill(self, client: httpx.AsyncClient, realm: str, count: int = 18) -> list[dict[str, Any]]:
        for i in range(count):
            r = await client.post(f"/{realm}/d{i % 2}/e{i % 3}/t{i % 3}", json={"event": i})
            assert r.status_code == 201, r.text
        return await self.events(client, f"/{realm}")

    # ------------------------------------------------------------------ positions

    async def test_positions_in_every_body(self, client: httpx.AsyncClient, realm: str,
                                           contiguous_positions: bool) -> None:
        one = await client.post(f"/{realm}/d/e/t", json={"event": 1})
        assert one.status_code == 201 and set(one.json()) == RESULT_KEYS
        two = [{"type": "t", "event": 2}, {"type": "t", "event": 3}]
        batch = await client.post(f"/{realm}/d/e", json={"events": two})
        assert batch.status_code == 201 and [set(x) for x in batch.json()["events"]] == [RESULT_KEYS] * 2
        given = [one.json()] + batch.json()["events"]
        assert strictly_increasing([x["position"] for x in given])
        if contiguous_positions:
            assert [x["position"] for x in given] == [1, 2, 3]
        for url in (f"/{realm}", f"/{realm}/d", f"/{realm}/d/e", f"/{realm}/d/e/t"):
            read = await self.events(client, url)
            assert [list(e) for e in read] == [EVENT_KEYS] * 3
            assert [(e["event_id"], e["version"], e["position"], e["timestamp"]) for e in read] == [
                (x["event_id"], x["version"], x["position"], x["timestamp"]) for x in given]
        single = await client.get(f"/{realm}/d/{given[1]['event_id']}")
        assert single.status_code == 200 and single.json()["position"] == given[1]["position"]
        assert list(single.json()) == EVENT_KEYS
        # A replayed append answers with the original position; a refused one takes none.
        eid = str(uuid.uuid4())
        first = await client.post(f"/{realm}/d/e/t", json={"event": 4, "event_id": eid})
        again = await client.post(f"/{realm}/d/e/t", json={"event": 4, "event_id": eid})
        assert again.status_code == 200 and again.json() == first.json()
        problem(await client.post(f"/{realm}/d/e/t", json={"event": 5, "expected_version": 0}), 409)
        problem(await client.post(f"/{realm}/d/e", json={"events": [{"type": "t", "event": 5}],
                                                          "expected_version": -1}), 409)
        last = await client.post(f"/{realm}/d/e/t", json={"event": 5, "expected_version": 3})
        assert last.status_code == 201 and last.json()["position"] > first.json()["position"]
        if contiguous_positions:
            assert (first.json()["position"], last.json()["position"]) == (4, 5)

    # ------------------------------------------------------------------ reading

    async def test_order_and_bounds_at_every_scope(self, client: httpx.AsyncClient, realm: str) -> None:
        events = await self.fill(client, realm)
        middle = events[8]["position"]
        scopes: list[tuple[str, list[tuple[str, Any]], Any]] = [
            (f"/{realm}", [], lambda e: True),
            (f"/{realm}", [("type", "t1"), ("type", "t2")], lambda e: e["type"] in ("t1", "t2")),
            (f"/{realm}/d0", [("type", "t0"), ("type", "t2")], lambda e: e["domain"] == "d0" and e["type"] != "t1"),
            (f"/{realm}/d1", [], lambda e: e["domain"] == "d1"),
            (f"/{realm}/d0/e0", [], lambda e: (e["domain"], e["entity"]) == ("d0", "e0")),
            (f"/{realm}/d1/e1", [("type", "t1"), ("type", "x")], lambda e: (e["domain"], e["entity"]) == ("d1", "e1")),
            (f"/{realm}/d1/e1/t1", [], lambda e: (e["domain"], e["entity"], e["type"]) == ("d1", "e1", "t1")),
        ]
        for url, types, keep in scopes:
            expected = [e["event_id"] for e in events if keep(e)]
            after = [e["event_id"] for e in events if keep(e) and e["position"] > middle]
            before = [e["event_id"] for e in events if keep(e) and e["position"] < middle]

            async def got(*extra: tuple[str, Any], url: str = url, types: list[tuple[str, Any]] = types) -> list[str]:
                return [e["event_id"] for e in await self.events(client, url, types + list(extra))]

            assert await got() == expected, url
            assert await got(("order", "asc")) == expected
            assert await got(("order", "desc")) == expected[::-1], url
            assert await got(("after_position", middle)) == after
            assert await got(("after_position", "0")) == expected
            assert await got(("order", "desc"), ("before_position", middle)) == before[::-1]
            assert await self.paged(client, url, types + [("order", "desc")], 2) == expected[::-1]
            assert await self.paged(client, url, types + [("after_position", middle)], 2) == after

    async def paged(self, client: httpx.AsyncClient, url: str, params: list[tuple[str, Any]], limit: int) -> list[str]:
        """Every id of a read, passing ``next`` back as ``following`` (a position bound only once)."""
        seen: list[str] = []
        query = [*params, ("limit", limit)]
        while True:
            r = await client.get(url, params=query)
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [e["event_id"] for e in page["events"]]
            if page["next"] is None:
                return seen
            query = [(k, v) for k, v in params if not k.endswith("_position")] + [
                ("limit", limit), ("following", page["next"])]

    async def test_version_bounds_over_http(self, client: httpx.AsyncClient, realm: str) -> None:
        for i in range(8):
            await client.post(f"/{realm}/d/e/{'a' if i % 2 else 'b'}", json={"event": i})

        async def versions(url: str, **params: Any) -> list[int]:
            return [e["version"] for e in await self.events(client, url, params)]

        assert await versions(f"/{realm}/d/e", after_version=2, until_version=5) == [3, 4, 5]
        assert await versions(f"/{realm}/d/e", after_version=2, until_version=5, order="desc") == [5, 4, 3]
        assert await versions(f"/{realm}/d/e/a", after_version=2) == [3, 5, 7]
        assert await versions(f"/{realm}/d/e", until_version=0) == [0]
        assert await versions(f"/{realm}/d/e", after_version=7) == []

    async def test_head_and_last_event(self, client: httpx.AsyncClient, realm: str) -> None:
        assert await self.events(client, f"/{realm}", {"order": "desc", "limit": 1}) == []
        events = await self.fill(client, realm, 9)
        head = await client.get(f"/{realm}", params={"order": "desc", "limit": 1})
        assert head.json() == {"events": [events[-1]], "next": events[-1]["event_id"]}
        last = await self.events(client, f"/{realm}/d0/e1", {"order": "desc", "limit": 1})
        assert last == [[e for e in events if (e["domain"], e["entity"]) == ("d0", "e1")][-1]]

    async def test_after_position_beyond_the_head_is_an_empty_page(self, client: httpx.AsyncClient, realm: str) -> None:
        events = await self.fill(client, realm, 3)
        for after in (events[-1]["position"], events[-1]["position"] + 1000, 2**63 - 1):
            for url in (f"/{realm}", f"/{realm}/d0", f"/{realm}/d0/e0"):
                r = await client.get(url, params={"after_position": after})
                assert r.status_code == 200 and r.json() == {"events": [], "next": None}

    async def test_type_repeats_up_to_100(self, client: httpx.AsyncClient, realm: str) -> None:
        await client.post(f"/{realm}/d/e/t7", json={"event": 1})
        hundred = [("type", f"t{i}") for i in range(100)]
        for url in (f"/{realm}", f"/{realm}/d", f"/{realm}/d/e"):
            assert len(await self.events(client, url, hundred)) == 1
            assert "type" in problem(await client.get(url, params=[*hundred, ("type", "t100")]), 400)["detail"]

    async def test_clashes_are_400_naming_the_parameters(self, client: httpx.AsyncClient, realm: str) -> None:
        await client.post(f"/{realm}/d/e/t", json={"event": 1})
        for path, query, names in CLASHES:
            detail = problem(await client.get(f"/{realm}{path}?{query}"), 400)["detail"]
            for name in names:
                assert name in detail, (path, query, name, detail)

    # ------------------------------------------------------------------ multi-entity appends

    async def test_multi_entity_append(self, client: httpx.AsyncClient, store: Store, realm: str,
                                       contiguous_positions: bool) -> None:
        await client.post(f"/{realm}/d/stock-4/t", json={"event": "s0"})
        ids = [str(uuid.uuid4()) for _ in range(3)]
        body: dict[str, Any] = {
            "events": [{"entity": "order-17", "type": "placed", "event": {"n": 1}, "event_id": ids[0],
                        "meta": {"m": 1}},
                       {"entity": "stock-4", "type": "reserved", "event": {"n": 2}, "event_id": ids[1]},
                       {"entity": "order-17", "type": "paid", "event": {"n": 3}, "event_id": ids[2]}],
            "expected_versions": {"order-17": -1, "stock-4": 0, "guard": -1}}
        r = await client.post(f"/{realm}/d", json=body)
        if not store.supports_multi_entity:
            p = problem(r, 501)
            assert p["type"].endswith("not-supported") and store.backend_name in p["detail"]
            assert len(await self.events(client, f"/{realm}")) == 1
            return
        assert r.status_code == 201, r.text
        results = r.json()["events"]
        assert [list(x) for x in results] == [["entity", "event_id", "version", "position", "timestamp"]] * 3
        assert [(x["entity"], x["version"]) for x in results] == [("order-17", 0), ("stock-4", 1), ("order-17", 1)]
        assert [x["event_id"] for x in results] == ids
        assert strictly_increasing([x["position"] for x in results])
        if contiguous_positions:
            assert [x["position"] for x in results] == [2, 3, 4]
        stored = (await self.events(client, f"/{realm}"))[1:]
        assert [(e["event_id"], e["entity"], e["type"], e["event"], e["position"]) for e in stored] == [
            (x["event_id"], x["entity"], t, {"n": n}, x["position"])
            for x, t, n in zip(results, ["placed", "reserved", "paid"], [1, 2, 3], strict=True)]
        assert stored[0]["meta"] == {"m": 1}
        # The retry answers 200 with the original results; the entities have moved on meanwhile.
        again = await client.post(f"/{realm}/d", json=body)
        assert again.status_code == 200 and again.json() == r.json()
        # Every failing expectation is listed; nothing is stored.
        conflict = {"events": [{"entity": "order-17", "type": "t", "event": 1},
                               {"entity": "new", "type": "t", "event": 2}],
                    "expected_versions": {"order-17": 0, "stock-4": 1, "new": 3, "guard": 0}}
        p = problem(await client.post(f"/{realm}/d", json=conflict), 409)
        assert p["type"].endswith("version-conflict")
        assert sorted((c["entity"], c["expected_version"], c["current_version"]) for c in p["conflicts"]) == [
            ("guard", 0, -1), ("new", 3, -1), ("order-17", 0, 1)]
        assert len(await self.events(client, f"/{realm}")) == 4
        # Part of the retried ids with new content: an event-id conflict, nothing stored.
        partly = {"events": [body["events"][0], {"entity": "x", "type": "t", "event": 1}]}
        problem(await client.post(f"/{realm}/d", json=partly), 409)
        assert len(await self.events(client, f"/{realm}")) == 4
        # The refused appends took no position.
        after = await client.post(f"/{realm}/d/order-17/t", json={"event": "after"})
        assert after.status_code == 201 and after.json()["position"] > results[-1]["position"]
        if contiguous_positions:
            assert after.json()["position"] == 5

    async def test_bad_multi_entity_bodies_are_400(self, client: httpx.AsyncClient, realm: str) -> None:
        for body in BAD_MULTI_BODIES:
            r = await client.post(f"/{realm}/d", json=body)
            assert r.status_code in (400, 501), (body, r.text)  # 501 where the backend has no multi-entity appends
            problem(r, r.status_code)
        assert await self.events(client, f"/{realm}") == []

    async def test_wrong_methods_still_405(self, client: httpx.AsyncClient, realm: str) -> None:
        for method, path in [("POST", f"/{realm}"), ("PUT", f"/{realm}/d"), ("DELETE", f"/{realm}/d")]:
            r = await client.request(method, path, json={"events": [{"entity": "a", "type": "t", "event": 1}]})
            problem(r, 405)
            assert r.headers["allow"]

    # ------------------------------------------------------------------ conditional GET

    async def cached(self, client: httpx.AsyncClient, url: str, params: Params | None = None) -> str:
        """The ETag of a read, after checking that it answers 304 without a body when matched."""
        r = await client.get(url, params=params)
        assert r.status_code == 200, r.text
        tag: str | None = r.headers.get("etag")
        assert tag, f"no ETag on {url}"
        again = await client.get(url, params=params, headers={"if-none-match": tag})
        assert again.status_code == 304, (url, again.status_code)
        assert again.content == b"" and again.headers.get("etag") == tag
        return tag

    async def test_conditional_get_of_reads(self, client: httpx.AsyncClient, realm: str) -> None:
        await self.fill(client, realm, 6)
        urls = [f"/{realm}", f"/{realm}/d0", f"/{realm}/d0/e0", f"/{realm}/d0/e0/t0"]
        tags = {u: await self.cached(client, u) for u in urls}
        # Nothing changed: the same tags.
        assert {u: await self.cached(client, u) for u in urls} == tags
        # Another realm, another domain, another entity: those reads keep their tags.
        await client.post(f"/{realm}x/d0/e0/t0", json={"event": "elsewhere"})
        assert {u: await self.cached(client, u) for u in urls} == tags
        await client.post(f"/{realm}/d1/e0/t0", json={"event": "other domain"})
        assert await self.cached(client, f"/{realm}/d0") == tags[f"/{realm}/d0"]
        assert await self.cached(client, f"/{realm}/d0/e0") == tags[f"/{realm}/d0/e0"]
        assert await self.cached(client, f"/{realm}") != tags[f"/{realm}"]
        tags[f"/{realm}"] = await self.cached(client, f"/{realm}")
        await client.post(f"/{realm}/d0/e1/t0", json={"event": "other entity"})
        assert await self.cached(client, f"/{realm}/d0/e0") == tags[f"/{realm}/d0/e0"]
        # An append to the entity changes every read that now answers differently.
        await client.post(f"/{realm}/d0/e0/t0", json={"event": "new"})
        for url in urls:
            r = await client.get(url, headers={"if-none-match": tags[url]})
            assert r.status_code == 200 and r.json()["events"][-1]["event"] == "new", url
            assert r.headers["etag"] != tags[url]

    async def test_etag_follows_the_query(self, client: httpx.AsyncClient, realm: str) -> None:
        await self.fill(client, realm, 6)
        for url in (f"/{realm}", f"/{realm}/d0/e0"):
            queries: list[dict[str, Any]] = [{}, {"order": "desc"}, {"limit": 1}, {"type": "t1"}]
            tags = [await self.cached(client, url, q) for q in queries]
            bodies = [(await client.get(url, params=q)).json() for q in queries]
            for i, q in enumerate(queries):
                for j, tag in enumerate(tags):
                    if bodies[i] != bodies[j]:
                        r = await client.get(url, params=q, headers={"if-none-match": tag})
                        assert r.status_code == 200, (url, q, queries[j])

    async def test_conditional_get_of_one_event(self, client: httpx.AsyncClient, realm: str) -> None:
        eid = (await client.post(f"/{realm}/d/e/t", json={"event": 1})).json()["event_id"]
        tag = await self.cached(client, f"/{realm}/d/{eid}")
        await client.post(f"/{realm}/d/e/t", json={"event": 2})
        assert await self.cached(client, f"/{realm}/d/{eid}") == tag  # an event never changes
        r = await client.get(f"/{realm}/d/e", headers={"if-none-match": tag})
        assert r.status_code == 200  # the entity's read is another answer

    async def test_if_none_match_lists_and_misses(self, client: httpx.AsyncClient, realm: str) -> None:
        await self.fill(client, realm, 3)
        tag = await self.cached(client, f"/{realm}")
        r = await client.get(f"/{realm}", headers={"if-none-match": f'"nope", {tag}'})
        assert r.status_code == 304 and r.content == b""
        r = await client.get(f"/{realm}", headers={"if-none-match": '"nope"'})
        assert r.status_code == 200 and r.headers["etag"] == tag
