"""A group's parked events in pages, on every backend: `GET /_groups/{realm}/{group}/parked`
ends a page at `limit` events or at the one reaching `--max-page-bytes`, gives `next` only when
more parked events follow, and `following=<event-id>` goes on after that event, even when it was
replayed between the pages. The clients read every page.

Before, the list stopped at 10,000 events (a group may hold about 50,000 parked), held every body
of them at once, and the clients could not see past it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from perhap import AsyncClient, Client
from perhap.groups import ahead as group_ahead
from perhap.http.app import PerhapApp
from perhap.store.base import Store
from perhap.testing.conformance.helpers import problem
from tests.servers import ThreadServer

PAD = 10_000


@pytest.fixture
async def http(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = PerhapApp(store, max_page_bytes=25_000)  # a page of three events of PAD bytes
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as c:
        yield c


async def _park(http: httpx.AsyncClient, realm: str, count: int, pad: int = 10) -> list[str]:
    """``count`` events of distinct entities, leased and parked at once; their ids in position order."""
    assert (await http.put(f"/_groups/{realm}/g", json={})).status_code == 201
    ids = []
    for i in range(count):
        r = await http.post(f"/{realm}/d/e{i}/t", json={"event": {"i": i, "pad": "p" * pad}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["event_id"])
    leased: list[str] = []
    while len(leased) < count:
        r = await http.get(f"/_groups/{realm}/g/events", params={"consumer": "w", "max": 100, "wait": 0})
        leased += [e["event_id"] for e in r.json()["events"]]
    r = await http.post(f"/_groups/{realm}/g/nack", json={"consumer": "w", "event_ids": leased, "action": "park"})
    assert r.json() == {"retried": 0, "parked": count}
    return ids


async def _pages(http: httpx.AsyncClient, realm: str, **params: Any) -> list[dict[str, Any]]:
    """Every answer from the first page on, following each ``next``."""
    answers = []
    while True:
        r = await http.get(f"/_groups/{realm}/g/parked", params=params)
        assert r.status_code == 200, r.text
        answers.append(r.json())
        if "next" not in answers[-1]:
            return answers
        params = {**params, "following": answers[-1]["next"]}


@pytest.mark.parametrize("reads", [group_ahead.PARKED_READS, 2])
async def test_pages_of_limit_events_follow_next_to_the_last_in_position_order(
        http: httpx.AsyncClient, realm: str, reads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_ahead, "PARKED_READS", reads)  # (2: pages cross the reads of bodies)
    ids = await _park(http, realm, 7)
    answers = await _pages(http, realm, limit=3)
    assert [[e["event_id"] for e in a["events"]] for a in answers] == [ids[:3], ids[3:6], ids[6:]]
    assert [a.get("next") for a in answers] == [ids[2], ids[5], None]
    assert all(e["reason"] == "nack" and e["delivery"] == 1 for a in answers for e in a["events"])
    # A list that ends within its page is the same object as before paging: no `next` at all.
    whole = (await http.get(f"/_groups/{realm}/g/parked")).json()
    assert list(whole) == ["events"] and [e["event_id"] for e in whole["events"]] == ids
    # A page that ends exactly at the last parked event says nothing more follows.
    last = (await http.get(f"/_groups/{realm}/g/parked", params={"limit": 2, "following": ids[4]})).json()
    assert [e["event_id"] for e in last["events"]] == ids[5:] and "next" not in last


@pytest.mark.parametrize("reads", [group_ahead.PARKED_READS, 2])
async def test_a_page_ends_at_the_event_reaching_max_page_bytes(http: httpx.AsyncClient, realm: str, reads: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_ahead, "PARKED_READS", reads)
    ids = await _park(http, realm, 8, pad=PAD)
    answers = await _pages(http, realm)  # no limit: 10,000 by count, so the bytes end each page
    assert [len(a["events"]) for a in answers] == [3, 3, 2]
    assert [e["event_id"] for a in answers for e in a["events"]] == ids
    assert [a.get("next") for a in answers] == [ids[2], ids[5], None]
    # The bound and the count together: whichever comes first.
    two = (await http.get(f"/_groups/{realm}/g/parked", params={"limit": 2})).json()
    assert [e["event_id"] for e in two["events"]] == ids[:2] and two["next"] == ids[1]


async def test_following_an_event_replayed_between_pages_goes_on_after_its_place(
        http: httpx.AsyncClient, realm: str) -> None:
    ids = await _park(http, realm, 5)
    first = (await http.get(f"/_groups/{realm}/g/parked", params={"limit": 2})).json()
    assert first["next"] == ids[1]
    r = await http.post(f"/_groups/{realm}/g/parked/replay", json={"event_ids": [ids[1]]})
    assert r.json() == {"replayed": 1}
    rest = (await http.get(f"/_groups/{realm}/g/parked", params={"following": ids[1]})).json()
    assert [e["event_id"] for e in rest["events"]] == ids[2:] and "next" not in rest
    # An event of the realm that was never parked places the page too.
    r = await http.post(f"/{realm}/other/x/t", json={"event": 1})
    later = (await http.get(f"/_groups/{realm}/g/parked", params={"following": r.json()["event_id"]})).json()
    assert later == {"events": []}


async def test_following_must_be_an_event_id_of_the_realm(http: httpx.AsyncClient, realm: str) -> None:
    await _park(http, realm, 2)
    r = await http.get(f"/_groups/{realm}/g/parked", params={"following": "not-an-id"})
    problem(r, 400)
    assert "following" in r.json()["detail"]
    problem(await http.get(f"/_groups/{realm}/g/parked", params={"following": str(uuid.uuid4())}), 404)
    elsewhere = await http.post(f"/{realm}x/d/e/t", json={"event": 1})
    problem(await http.get(f"/_groups/{realm}/g/parked", params={"following": elsewhere.json()["event_id"]}), 404)
    problem(await http.get(f"/_groups/{realm}/nope/parked"), 404)
    problem(await http.get(f"/_groups/{realm}/g/parked", params={"limit": 0}), 400)


def test_the_clients_read_every_page(sqlite_url: str) -> None:
    with ThreadServer(sqlite_url, max_page_bytes=25_000) as server:
        realm = "shop"

        async def park() -> list[str]:
            async with httpx.AsyncClient(base_url=server.url) as http:
                return await _park(http, realm, 10, pad=PAD)

        ids = asyncio.run(park())
        with Client(server.url) as client:
            parked = client.parked(realm, "g")
        assert [e.event_id for e in parked] == ids and {e.reason for e in parked} == {"nack"}

        async def read_async() -> list[str]:
            async with AsyncClient(server.url) as client:
                return [e.event_id for e in await client.parked(realm, "g")]

        assert asyncio.run(read_async()) == ids
