"""Consumer groups, rules of the HTTP layer (SQLite): the lease stream and max_in_flight, tokens,
metrics and the OpenAPI document. What a group delivers on each backend is tests/test_groups.py."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perhap.auth import Authenticator, add_token, revoke_token
from perhap.backends import open_store
from perhap.groups import Groups
from perhap.groups import ahead as group_ahead
from perhap.groups import state as group_state
from perhap.http.app import PerhapApp
from perhap.http.openapi import openapi_document
from perhap.store.base import Store
from perhap.testing.conformance import SSEReader
from perhap.testing.conformance.helpers import problem
from tests.helpers import wait_until
from tests.servers import ThreadServer

SSE = {"accept": "text/event-stream"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path}/groups.db") as s:
        yield s


async def test_the_stream_never_holds_more_than_max_in_flight(tmp_path: Path) -> None:
    with ThreadServer(f"sqlite:///{tmp_path}/stream.db", heartbeat=0.2) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.put("/_groups/shop/g", json={"max_in_flight": 2})).status_code == 201
            for i in range(5):
                assert (await http.post(f"/shop/orders/o{i}/placed", json={"event": i})).status_code == 201
            url = "/_groups/shop/g/events?consumer=s"
            async with http.stream("GET", url, headers=SSE) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                reader = SSEReader(r)
                first = await reader.events(2)
                assert [e["event"] for e in first] == [0, 1] and all(e["delivery"] == 1 for e in first)
                # Two unacknowledged: the stream holds the rest back (a second lease of the same
                # consumer is bounded by the same leases).
                empty = await http.get(url)
                assert empty.json() == {"events": []}
                ack = {"consumer": "s", "event_ids": [first[0]["event_id"]]}
                assert (await http.post("/_groups/shop/g/ack", json=ack)).status_code == 200
                [third] = await reader.events(1)
                assert third["event"] == 2
                stats = (await http.get("/_groups/shop/g")).json()
                assert stats["in_flight"] == 2 and stats["consumers"][0]["consumer"] == "s"
            # An unknown group is a plain 404 before any stream.
            problem(await http.get("/_groups/shop/nobody/events?consumer=s", headers=SSE), 404)


async def test_a_stream_leases_no_more_than_its_buffer_at_once(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each lease of a stream ends at the event that reaches --stream-buffer (one at least): it
    took its whole batch, up to ``max`` events whatever their size (90 MB in one lease of 100 events
    of 900 KB, with a buffer of 1 MiB)."""
    leased: list[list[int]] = []  # the sizes of each lease's events, as the stream got them
    real = Groups.lease

    async def lease(self: Groups, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        events = await real(self, *args, **kwargs)
        if events:
            leased.append([len(orjson.dumps(e["event"])) for e in events])
        return events

    monkeypatch.setattr(Groups, "lease", lease)
    buffer, pad = 250_000, 100_000
    with ThreadServer(f"sqlite:///{tmp_path}/stream.db", heartbeat=0.2, stream_buffer=buffer) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.put("/_groups/shop/g", json={"max_in_flight": 100})).status_code == 201
            for i in range(20):
                r = await http.post(f"/shop/orders/o{i}/placed", json={"event": {"i": i, "pad": "p" * pad}})
                assert r.status_code == 201
            async with http.stream("GET", "/_groups/shop/g/events?consumer=s&max=100", headers=SSE) as r:
                got = await SSEReader(r).events(20)
    assert sorted(e["event"]["i"] for e in got) == list(range(20))
    assert len(leased) >= 20 * pad // buffer
    for sizes in leased:
        assert sum(sizes[:-1]) < buffer, sizes


async def test_head_never_leases(store: Store) -> None:
    """A lease is a GET that changes state: HEAD (whose answer has no body to carry the events)
    is a 405 there, so it cannot lease events nobody receives. Other group routes answer HEAD."""
    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        await store.append("shop", "d", "e", "t", 1)
        assert (await http.put("/_groups/shop/g", json={})).status_code in (200, 201)
        for accept in ("application/json", "text/event-stream"):
            r = await http.head("/_groups/shop/g/events?consumer=c&wait=0", headers={"accept": accept})
            assert r.status_code == 405 and r.headers["allow"] == "GET"
        assert (await http.get("/_groups/shop/g")).json()["in_flight"] == 0
        assert (await http.head("/_groups/shop/g")).status_code == 200
        got = (await http.get("/_groups/shop/g/events?consumer=c&wait=0")).json()
        assert [e["event"] for e in got["events"]] == [1]  # delivered once, to the GET


async def test_a_realms_list_leaves_out_a_group_deleted_while_it_is_made(store: Store,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The list describes each group it found by name; one deleted in between is left out (the
    whole list was a 404 naming that group)."""
    real = Groups.describe

    async def describe(self: Groups, realm: str, name: str) -> dict[str, Any]:
        if name == "gone":  # deleted for real, between the names read and this description
            await self.delete(realm, name)
        return await real(self, realm, name)

    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        for name in ("a", "gone", "z"):
            assert (await http.put(f"/_groups/shop/{name}", json={})).status_code == 201
        monkeypatch.setattr(Groups, "describe", describe)
        r = await http.get("/_groups/shop")
        assert r.status_code == 200, r.text
        assert [g["name"] for g in r.json()["groups"]] == ["a", "z"]
        monkeypatch.undo()
        assert [g["name"] for g in (await http.get("/_groups/shop")).json()["groups"]] == ["a", "z"]


def h(token: str) -> dict[str, str]:
    """The header of a bearer token."""
    return {"authorization": f"Bearer {token}"}


def _long_poll(http: httpx.AsyncClient, base: str, token: str) -> asyncio.Future[httpx.Response]:
    """Consumer p's lease of group ``base``, waiting up to 20 s for an event."""
    return asyncio.ensure_future(http.get(f"{base}/events", params={"consumer": "p", "wait": 20}, headers=h(token)))


@pytest.fixture
def tokens(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.json")


async def test_tokens_read_consumes_write_manages(store: Store, tokens: str) -> None:
    read, _ = add_token(tokens, "shop", "read")
    write, _ = add_token(tokens, "shop", "write")
    other, _ = add_token(tokens, "elsewhere", "admin")
    app = PerhapApp(store, auth=Authenticator(tokens, recheck=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        base = "/_groups/shop/g"
        problem(await http.get(base), 401)
        problem(await http.put(base, json={}, headers=h(read)), 403)
        problem(await http.put(base, json={}, headers=h(other)), 403)
        assert (await http.put(base, json={}, headers=h(write))).status_code == 201
        assert (await http.post("/shop/d/e/t", json={"event": 1}, headers=h(write))).status_code == 201
        problem(await http.get(base, headers=h(other)), 403)
        # Another realm's token is a 403 whatever the method, as on /{realm}/... (not a 405).
        problem(await http.patch(base, headers=h(other)), 403)
        problem(await http.post(f"{base}/events", headers=h(other)), 403)
        problem(await http.patch(base, headers=h(read)), 405)
        problem(await http.get(f"{base}/events?consumer=c", headers=h(other)), 403)
        assert (await http.get(base, headers=h(read))).status_code == 200
        assert (await http.get("/_groups/shop", headers=h(read))).status_code == 200
        [event] = (await http.get(f"{base}/events?consumer=c", headers=h(read))).json()["events"]
        body = {"consumer": "c", "event_ids": [event["event_id"]], "action": "park"}
        assert (await http.post(f"{base}/nack", json=body, headers=h(read))).status_code == 200
        assert (await http.get(f"{base}/parked", headers=h(read))).status_code == 200
        problem(await http.post(f"{base}/parked/replay", headers=h(read)), 403)
        assert (await http.post(f"{base}/parked/replay", headers=h(write))).json() == {"replayed": 1}
        [again] = (await http.get(f"{base}/events?consumer=c", headers=h(read))).json()["events"]
        ack = {"consumer": "c", "event_ids": [again["event_id"]]}
        problem(await http.post(f"{base}/ack", json=ack, headers=h(other)), 403)
        assert (await http.post(f"{base}/ack", json=ack, headers=h(read))).status_code == 200
        problem(await http.delete(base, headers=h(read)), 403)
        assert (await http.delete(base, headers=h(write))).status_code == 204


async def test_a_long_poll_whose_token_changed_gives_back_what_it_found(store: Store, tokens: str) -> None:
    """A token whose entry changes while its poll waits (a read token made write, by hand) is one
    the file no longer vouches for as it was: the poll is a 401 and the event goes back, for
    another consumer to get as a first delivery. (The poll answered 200 with events it had just
    given back, and the other consumer got them too.)"""
    polled, polled_grant = add_token(tokens, "shop", "read")
    write, _ = add_token(tokens, "shop", "write")
    app = PerhapApp(store, auth=Authenticator(tokens))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        base = "/_groups/shop/g"
        assert (await http.put(base, json={}, headers=h(write))).status_code == 201
        poll = _long_poll(http, base, polled)
        await wait_until(lambda: len(store._waiters) == 1, "the poll to wait for an event")
        document = orjson.loads(Path(tokens).read_bytes())
        for entry in document["tokens"]:
            if entry["id"] == polled_grant.id:
                entry["permission"] = "write"
        Path(tokens + ".new").write_bytes(orjson.dumps(document))
        os.replace(tokens + ".new", tokens)  # as docs/security.md says to edit it
        assert (await http.post("/shop/d/e/t", json={"event": "late"}, headers=h(write))).status_code == 201
        problem(await asyncio.wait_for(poll, 10), 401)
        [event] = (await http.get(f"{base}/events?consumer=c", headers=h(write))).json()["events"]
        assert (event["event"], event["delivery"]) == ("late", 1)


@pytest.mark.parametrize("recheck", [0.0, 1.0])
async def test_a_revoked_token_gets_no_more_leases(store: Store, tokens: str, recheck: float) -> None:
    """A long poll and a lease stream check the token before each look for events: revoked while
    they wait, the poll is a 401 and the stream ends, and the event that came meanwhile is left
    for others, never delivered to the revoked token. Also with the file trusted for a second
    between requests' looks (the default): the look before a lease is a request's, so the token
    is looked at again, in the file, once a lease found events (they were delivered)."""
    from tests.test_stream_limits import Exchange, stream_headers

    doomed, doomed_grant = add_token(tokens, "shop", "read")
    streamed, streamed_grant = add_token(tokens, "shop", "read")
    write, _ = add_token(tokens, "shop", "write")
    app = PerhapApp(store, auth=Authenticator(tokens, recheck=recheck), heartbeat=0.3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        base = "/_groups/shop/g"
        assert (await http.put(base, json={}, headers=h(write))).status_code == 201
        poll = _long_poll(http, base, doomed)
        stream = Exchange(app, "GET", f"{base}/events?consumer=s", stream_headers(authorization=f"Bearer {streamed}"))
        await asyncio.wait_for(stream.started.wait(), 10)
        # Both looked (their token still good) and wait for an event: a commit's waiter each.
        await wait_until(lambda: len(store._waiters) == 2, "the poll and the stream to wait for an event")
        revoke_token(tokens, doomed_grant.id)
        revoke_token(tokens, streamed_grant.id)
        assert (await http.post("/shop/d/e/t", json={"event": "late"}, headers=h(write))).status_code == 201
        problem(await asyncio.wait_for(poll, 10), 401)
        await asyncio.wait_for(stream.task, 10)  # the stream ended ...
        assert b"late" not in b"".join(stream.bodies())  # ... without the event
        [event] = (await http.get(f"{base}/events?consumer=c", headers=h(write))).json()["events"]
        assert (event["event"], event["delivery"]) == ("late", 1)


async def test_metrics_per_group(store: Store) -> None:
    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.put("/_groups/shop/g", json={"max_deliveries": 1})).status_code == 201
        for i in range(3):
            await http.post(f"/shop/orders/o{i}/placed", json={"event": i})
        events = (await http.get("/_groups/shop/g/events?consumer=c&max=2")).json()["events"]
        await http.post("/_groups/shop/g/nack", json={"consumer": "c", "event_ids": [events[0]["event_id"]]})
        text = (await http.get("/_metrics")).text
        assert 'perhap_consumer_group_lag{group="g",realm="shop"} 2.0' in text
        assert 'perhap_consumer_group_in_flight{group="g",realm="shop"} 1.0' in text
        assert 'perhap_consumer_group_parked{group="g",realm="shop"} 1.0' in text
        assert 'perhap_consumer_group_redeliveries_total{group="g",realm="shop"} 0.0' in text


def test_openapi_lists_the_group_routes() -> None:
    paths = openapi_document()["paths"]
    assert set(paths["/_groups/{realm}/{group}"]) == {"get", "put", "delete"}
    lease = paths["/_groups/{realm}/{group}/events"]["get"]
    assert {p["name"] for p in lease["parameters"]} == {"realm", "group", "consumer", "max", "wait"}
    assert set(lease["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    for path in ("/_groups/{realm}", "/_groups/{realm}/{group}/ack", "/_groups/{realm}/{group}/nack",
                 "/_groups/{realm}/{group}/parked", "/_groups/{realm}/{group}/parked/replay"):
        assert path in paths
    # Every status a group route can answer is in the document: a body over --max-body (413), a
    # lease stream over the stream limits (429), the storage away (503).
    for path, operations in paths.items():
        if path.startswith("/_groups/"):
            for method, operation in operations.items():
                expected = {"503"} | ({"413"} if "requestBody" in operation else set())
                assert expected <= set(operation["responses"]), (method, path)
    assert "429" in lease["responses"]


async def test_consumer_ids_are_any_printable_text(store: Store) -> None:
    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.put("/_groups/shop/g", json={})).status_code == 201
        await http.post("/shop/orders/o1/placed", json={"event": 1})
        for consumer in ("host-a/1234", "keys", ".", "é ü"):
            r = await http.get("/_groups/shop/g/events", params={"consumer": consumer})
            assert r.status_code == 200, (consumer, r.text)
        for bad in ("", "a\x01b", "x" * 256):
            problem(await http.get("/_groups/shop/g/events", params={"consumer": bad}), 400)
        problem(await http.post("/_groups/shop/g/ack", json={"consumer": 5, "event_ids": []}), 400)


async def test_a_long_poll_that_hangs_up_leases_nothing(tmp_path: Path) -> None:
    with ThreadServer(f"sqlite:///{tmp_path}/hangup.db") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.put("/_groups/shop/g", json={"ack_timeout": 3600})).status_code == 201
            host, port = server.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /_groups/shop/g/events?consumer=gone&wait=60 HTTP/1.1\r\nHost: {host}\r\n\r\n"
                         .encode())
            await writer.drain()
            store = server.app.store
            assert store is not None
            await wait_until(lambda: len(store._waiters) == 1, "the poll to wait for an event")
            writer.close()
            await writer.wait_closed()
            # The server has seen the hang-up: the poll's request ended (uvicorn's task of it) and
            # its wait with it.
            requests = server.server.server_state.tasks
            await wait_until(lambda: not requests and not store._waiters, "the server to end the poll that hung up")
            assert (await http.post("/shop/orders/o1/placed", json={"event": 1})).status_code == 201
            got = (await http.get("/_groups/shop/g/events", params={"consumer": "here", "wait": 5})).json()
            assert [e["event"] for e in got["events"]] == [1]
            stats = (await http.get("/_groups/shop/g")).json()
            assert [c["consumer"] for c in stats["consumers"] if c["in_flight"]] == ["here"]
            # Counted as a request its client closed (499), not as a server error (it was a 500).
            metrics = (await http.get("/_metrics")).text
            polls = [line for line in metrics.splitlines() if line.startswith("perhap_http_requests_total")
                     and 'route="/_groups/{realm}/{group}/events"' in line]
            assert any('status="499"' in line for line in polls), polls
            assert not any('status="500"' in line for line in polls), polls
            del reader


async def test_competing_consumers_through_deferred_backlogs_lose_nothing_and_keep_entity_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three consumers racing over a skewed backlog (most events on one entity) with the pending
    list capped at 6, so most events pass through deferral and are read back: each event is
    acknowledged exactly once, no entity ever has two events out at once, and each entity's events
    are first delivered in version order. (SQLite: deferral is the state's, not the backend's;
    tests/test_groups.py checks the read-back on every backend.)"""
    for module in (group_state, group_ahead):
        monkeypatch.setattr(module, "MAX_PENDING", 6)
    rng = random.Random(7)
    async with open_store(f"sqlite:///{tmp_path}/deferred.db") as store:
        app = PerhapApp(store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            # Deliveries enough that no event is parked by the random nacks.
            assert (await client.put("/_groups/r/g", json={"max_deliveries": 100})).status_code == 201
            entities = ["hot"] * 7 + ["a", "b", "c"]
            for n in range(240):
                r = await client.post(f"/r/d/{rng.choice(entities)}/t", json={"event": n})
                assert r.status_code == 201
            out: dict[str, str] = {}  # entity -> event id leased now
            acked: list[str] = []
            first_seen: dict[str, list[int]] = {}
            seen: set[str] = set()

            async def consume(name: str) -> None:
                idle = 0
                while idle < 3:
                    r = await client.get("/_groups/r/g/events", params={"consumer": name, "max": 3})
                    events = r.json()["events"]
                    idle = 0 if events else idle + 1
                    for e in events:
                        assert e["entity"] not in out, f"{e['entity']} is out twice"
                        out[e["entity"]] = e["event_id"]
                        if e["event_id"] not in seen:
                            seen.add(e["event_id"])
                            first_seen.setdefault(e["entity"], []).append(e["version"])
                    await asyncio.sleep(0)
                    for e in events:
                        del out[e["entity"]]
                        action = "ack" if rng.random() < 0.85 else "nack"
                        body: dict[str, Any] = {"consumer": name, "event_ids": [e["event_id"]]}
                        if action == "nack":
                            body["action"] = "retry"
                        assert (await client.post(f"/_groups/r/g/{action}", json=body)).status_code == 200
                        if action == "ack":
                            acked.append(e["event_id"])

            await asyncio.gather(*(consume(f"c{i}") for i in range(3)))
            stored = [e["event_id"] for e in (await client.get("/r", params={"limit": 1000})).json()["events"]]
            assert sorted(acked) == sorted(stored)  # each exactly once
            for versions in first_seen.values():
                assert versions == sorted(versions)
            s = (await client.get("/_groups/r/g")).json()
            assert (s["lag"], s["in_flight"], s["acknowledged"]) == (0, 0, 240)


async def test_a_waiting_long_poll_ends_when_the_server_stops(store: Store) -> None:
    """A stopping server ends a long poll at once with nothing leased (as it ends streams),
    rather than holding the shutdown for the whole wait and then failing it."""
    app = PerhapApp(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as http:
        assert (await http.put("/_groups/shop/g", json={"start": "end"})).status_code == 201
        poll = asyncio.ensure_future(http.get("/_groups/shop/g/events", params={"consumer": "c", "wait": 60}))
        await asyncio.sleep(0.3)
        assert not poll.done()  # it waits: nothing to lease
        app.stop_streams()
        answer = await asyncio.wait_for(poll, 5)
        assert answer.status_code == 200 and answer.json() == {"events": []}
    # Nothing was leased to the consumer.
    stats = await app.context.groups.describe("shop", "g")  # type: ignore[union-attr]
    assert stats["in_flight"] == 0



async def test_a_long_poll_the_stopping_server_ends_answers_every_lease_it_made(tmp_path: Path) -> None:
    """A poll whose look was storing a lease when the server began to stop answers that lease:
    ended with [], it left the events leased to a consumer that never saw them (until
    ack_timeout), with a delivery counted."""
    async with open_store(f"sqlite:///{tmp_path}/stop.db") as store:
        app = PerhapApp(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as http:
            assert (await http.put("/_groups/shop/g", json={"start": "end", "max_in_flight": 3})).status_code == 201
            received: dict[str, int] = {}

            async def consumer(name: str) -> None:
                while True:
                    r = await http.get("/_groups/shop/g/events", params={"consumer": name, "max": 3, "wait": 5})
                    assert r.status_code == 200, r.text
                    events = r.json()["events"]
                    if app.streams.stopping.is_set() and not events:
                        return
                    received[name] = received.get(name, 0) + len(events)
                    if events:  # acknowledged at once, as a consumer that keeps up does
                        ids = [e["event_id"] for e in events]
                        r = await http.post("/_groups/shop/g/ack", json={"consumer": name, "event_ids": ids})
                        assert r.status_code == 200, r.text
                        received[name] -= len(ids)

            async def writer() -> None:
                for i in range(400):
                    await store.append("shop", "d", f"e{i % 40}", "t", i)
                    if i == 300:
                        app.stop_streams()  # the server begins to stop, polls under way

            consumers = [asyncio.ensure_future(consumer(f"c{i}")) for i in range(30)]
            await writer()
            await asyncio.wait_for(asyncio.gather(*consumers), 30)
        # Every lease a consumer holds now is one it was answered with (it has not acked those).
        stats = await app.context.groups.describe("shop", "g")  # type: ignore[union-attr]
        held = {c["consumer"]: c["in_flight"] for c in stats["consumers"]}
        assert {c: n for c, n in held.items() if n} == {c: n for c, n in received.items() if n}
