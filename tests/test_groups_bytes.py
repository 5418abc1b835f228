"""What a consumer group holds of its events is bounded in bytes, not only in count.

The service kept the newest 20,000 event bodies it had read, for their deliveries: 300 events of
900 KB consumed through a group were 258 MiB still held afterwards (18 GB at 20,000). And a group's
read of its scope took up to 1,000 events at once, whatever their size. The bodies kept now stop at
``BODY_CACHE_BYTES``, and each read at ``READ_BYTES`` (one event at least), on every backend, with
every event still delivered once and in its entity's order.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import httpx
import pytest

from perhap.errors import NotFound
from perhap.groups import Groups
from perhap.groups import ahead as group_ahead
from perhap.groups import service as group_service
from perhap.groups.settings import GroupSettings
from perhap.http.app import PerhapApp
from perhap.store.base import Store

PAD = 100_000


async def _fill(store: Store, realm: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        result = await store.append(realm, "d", f"e{i % 4}", "t", {"i": i, "pad": "p" * PAD})
        ids.append(result.first.event_id)
    return ids


async def _consume(groups: Groups, realm: str, most: int) -> list[dict[str, Any]]:
    delivered = []
    while batch := await groups.lease(realm, "g", "w1", most, 0):
        delivered += [{k: e[k] for k in ("event_id", "entity", "version")} for e in batch]  # (not the bodies)
        await groups.ack(realm, "g", "w1", [e["event_id"] for e in batch])
    return delivered


def _in_entity_order(delivered: list[dict[str, Any]]) -> None:
    by_entity: dict[str, list[int]] = {}
    for event in delivered:
        by_entity.setdefault(event["entity"], []).append(event["version"])
    for versions in by_entity.values():
        assert versions == list(range(len(versions)))


async def test_the_bodies_a_group_keeps_stop_at_their_bytes(store: Store, realm: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_ahead, "BODY_CACHE_BYTES", 1_000_000, raising=False)
    ids = await _fill(store, realm, 60)
    groups = Groups(store)
    await groups.create(realm, "g", GroupSettings())
    gc.collect()
    tracemalloc.start()
    try:
        delivered = await _consume(groups, realm, 50)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert sorted(e["event_id"] for e in delivered) == sorted(ids)  # each once
    _in_entity_order(delivered)
    assert held < 3_000_000, held  # 6 MB of events were read (all of them kept, before)
    bodies = groups._bodies
    assert bodies.size <= 1_000_000 + PAD + 100 and len(bodies.events) <= 11
    assert bodies.size == sum(len(e.data_json) + len(e.meta_json) for e in bodies.events.values())


async def test_a_groups_reads_stop_at_their_bytes_and_every_event_is_delivered_once_in_order(
        store: Store, realm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_ahead, "READ_BYTES", 250_000, raising=False)
    monkeypatch.setattr(group_service, "READ_BYTES", 250_000, raising=False)  # (counting what is unread)
    ids = await _fill(store, realm, 40)
    pages: list[list[int]] = []
    read_page = store.read_page

    async def recorded(query: Any, following: Any = None) -> Any:
        page = await read_page(query, following)
        pages.append([len(e.data_json) + len(e.meta_json) for e in page.events])
        return page

    monkeypatch.setattr(store, "read_page", recorded)
    groups = Groups(store)
    await groups.create(realm, "g", GroupSettings())
    delivered = await _consume(groups, realm, 100)
    assert sorted(e["event_id"] for e in delivered) == sorted(ids)
    _in_entity_order(delivered)
    assert any(len(p) > 1 for p in pages) and max(len(p) for p in pages) <= 3
    assert all(sum(p[:-1]) < 250_000 for p in pages)


@pytest.mark.parametrize("kept", [64 * 1024 * 1024, 150_000], ids=["bodies-kept", "bodies-let-go"])
async def test_a_json_lease_ends_at_max_page_bytes_and_the_rest_wait_for_the_next(
        store: Store, realm: str, kept: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease of max=10,000 events of 1 MiB was one 10 GB answer: a JSON lease now ends at the
    server's --max-page-bytes (one event at least); the events left out wait for the next lease.
    Also when the bodies the lease read were let go before it was cut (a cache smaller than the
    events chosen): they counted as nothing, and a lease went on far past its bound."""
    monkeypatch.setattr(group_ahead, "BODY_CACHE_BYTES", kept)
    ids = []
    for i in range(20):  # twenty entities: every event may go out at once
        ids.append((await store.append(realm, "d", f"x{i}", "t", {"pad": "p" * PAD})).first.event_id)
    app = PerhapApp(store, max_page_bytes=250_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as http:
        assert (await http.put(f"/_groups/{realm}/g", json={})).status_code == 201
        sizes, delivered = [], []
        while True:
            answer = await http.get(f"/_groups/{realm}/g/events", params={"consumer": "w1", "max": "100"})
            events = answer.json()["events"]
            if not events:
                break
            sizes.append(len(events))
            delivered += [e["event_id"] for e in events]
            await http.post(f"/_groups/{realm}/g/ack", json={"consumer": "w1", "event_ids": delivered[-len(events):]})
    assert sorted(delivered) == sorted(ids)
    assert max(sizes) == 3 and len(sizes) >= 7, sizes  # 3 x 100 KB reach 250 KB


async def test_a_group_made_again_is_another_group_to_a_lease_that_saw_the_first(store: Store, realm: str) -> None:
    """A stream's leases (and a long poll's looks) keep the group's creation time from the first:
    deleted and made again between two looks (by another server, whose delete wakes no one here),
    the group is a 404 to them, not a new group whose events they go on leasing under settings
    they never asked for (a stream on another server did, in three runs of three)."""
    groups = Groups(store)
    await groups.create(realm, "g", GroupSettings())
    await store.append(realm, "d", "e", "t", 0)
    born: list[float] = []
    assert len(await groups.lease(realm, "g", "c", 10, 0.0, born=born)) == 1
    await groups.delete(realm, "g")
    await groups.create(realm, "g", GroupSettings(start="end"))
    later = await store.append(realm, "d", "e", "t", 1)
    with pytest.raises(NotFound, match="no consumer group 'g'"):
        await groups.lease(realm, "g", "c", 10, 0.0, born=born)
    [event] = await groups.lease(realm, "g", "c", 10, 0.0)  # a lease of its own: the new group's
    assert event["event_id"] == later.first.event_id
