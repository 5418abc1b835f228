"""Consumer groups over HTTP (issue 17), on every backend: settings, leases, per-entity order,
acknowledgements, expiry and redelivery, parking and replay, statistics, errors and durability.

Each rule of docs/groups.md has a test here that fails if the rule breaks. Streams, tokens and
metrics are rules of the HTTP layer and run on SQLite only (tests/test_groups_http.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from perhap.backends import open_store
from perhap.groups import ahead as group_ahead
from perhap.groups import state as group_state
from perhap.groups.settings import GroupSettings
from perhap.http.app import PerhapApp
from perhap.store import states as store_states
from perhap.store.base import Store
from perhap.testing.conformance.helpers import problem
from tests.helpers import wait_until

Json = dict[str, Any]


async def put(client: httpx.AsyncClient, realm: str, group: str = "g", **settings: Any) -> httpx.Response:
    return await client.put(f"/_groups/{realm}/{group}", json=settings)


async def lease(client: httpx.AsyncClient, realm: str, consumer: str, group: str = "g", max: int = 100,
                wait: float = 0) -> list[Json]:
    r = await client.get(f"/_groups/{realm}/{group}/events", params={"consumer": consumer, "max": max, "wait": wait})
    assert r.status_code == 200, r.text
    events: list[Json] = r.json()["events"]
    return events


async def ack(client: httpx.AsyncClient, realm: str, consumer: str, events: list[Json],
              group: str = "g") -> httpx.Response:
    return await client.post(f"/_groups/{realm}/{group}/ack",
                             json={"consumer": consumer, "event_ids": [e["event_id"] for e in events]})


async def nack(client: httpx.AsyncClient, realm: str, consumer: str, events: list[Json], action: str = "retry",
               group: str = "g") -> httpx.Response:
    return await client.post(f"/_groups/{realm}/{group}/nack", json={
        "consumer": consumer, "event_ids": [e["event_id"] for e in events], "action": action})


async def stats(client: httpx.AsyncClient, realm: str, group: str = "g") -> Json:
    r = await client.get(f"/_groups/{realm}/{group}")
    assert r.status_code == 200, r.text
    body: Json = r.json()
    return body


async def append(client: httpx.AsyncClient, realm: str, entity: str, value: Any, domain: str = "orders",
                 type_: str = "placed") -> Json:
    r = await client.post(f"/{realm}/{domain}/{entity}/{type_}", json={"event": value})
    assert r.status_code == 201, r.text
    body: Json = r.json()
    return body


# --------------------------------------------------------------------------- the group itself


async def test_create_is_idempotent_and_a_different_group_is_a_conflict(client: httpx.AsyncClient,
                                                                          realm: str) -> None:
    settings = {"domain": "orders", "types": ["placed", "cancelled"], "start": "beginning", "ack_timeout": 30,
                "max_deliveries": 5, "max_in_flight": 1000}
    r = await put(client, realm, **settings)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/_groups/{realm}/g"
    created = r.json()
    assert {k: created[k] for k in settings} == {**settings, "types": ["cancelled", "placed"]}
    again = await put(client, realm, **{**settings, "types": ["cancelled", "placed"]})
    assert again.status_code == 200 and again.json()["name"] == "g"
    # Positions 0 and 1 are the beginning (docs/groups.md): the same group, said another way.
    for start in (0, 1):
        assert (await put(client, realm, **{**settings, "start": start})).status_code == 200, start
    problem(await put(client, realm, **{**settings, "start": 2}), 409)
    body = problem(await put(client, realm, **{**settings, "max_deliveries": 6}), 409)
    assert "max_deliveries" in body["detail"]
    assert (await stats(client, realm))["max_deliveries"] == 5  # unchanged
    # No body at all: every default.
    r = await client.put(f"/_groups/{realm}/plain")
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in settings} == {"domain": None, "types": None, "start": "beginning",
                                                  "ack_timeout": 30, "max_deliveries": 5, "max_in_flight": 1000}


@pytest.mark.parametrize("settings", [
    {"ack_timeout": 0}, {"ack_timeout": -1}, {"ack_timeout": "30"}, {"ack_timeout": 10**9},
    {"max_deliveries": 0}, {"max_deliveries": 1.5}, {"max_in_flight": 0}, {"max_in_flight": True},
    {"start": "middle"}, {"start": -1}, {"types": "placed"}, {"types": [""]}, {"domain": "a/b"},
    {"domain": 5}, {"colour": "red"},
])
async def test_bad_settings_are_400_and_make_nothing(client: httpx.AsyncClient, realm: str,
                                                     settings: Json) -> None:
    problem(await put(client, realm, **settings), 400)
    problem(await client.get(f"/_groups/{realm}/g"), 404)


async def test_bad_names_and_bodies_are_400(client: httpx.AsyncClient, realm: str) -> None:
    problem(await client.put("/_groups/_system/g", json={}), 400)
    problem(await client.put(f"/_groups/{realm}/g", content=b"[1, 2]"), 400)
    assert (await put(client, realm)).status_code == 201
    base = f"/_groups/{realm}/g"
    problem(await client.get(f"{base}/events"), 400)  # no consumer
    problem(await client.get(f"{base}/events", params={"consumer": "c", "max": 0}), 400)
    problem(await client.get(f"{base}/events", params={"consumer": "c", "wait": "soon"}), 400)
    problem(await client.get(f"{base}/events", params={"consumer": "c", "wait": 301}), 400)
    for wait in ("1_0", " 1", "1 ", "nan", "inf", "-0.5"):  # (float() takes the first three)
        problem(await client.get(f"{base}/events", params={"consumer": "c", "wait": wait}), 400)
    for wait in ("0", "0.25", "1e-1", ".5"):
        assert (await client.get(f"{base}/events", params={"consumer": "c", "wait": wait})).status_code == 200
    problem(await client.get(f"{base}/events", params={"consumer": "c", "colour": "red"}), 400)
    problem(await client.post(f"{base}/ack", json={"consumer": "c"}), 400)
    problem(await client.post(f"{base}/ack", json={"consumer": "c", "event_ids": "x"}), 400)
    problem(await client.post(f"{base}/ack", json={"consumer": "c", "event_ids": ["not-an-id"]}), 400)
    problem(await client.post(f"{base}/ack", json={"event_ids": []}), 400)
    problem(await client.post(f"{base}/nack", json={"consumer": "c", "event_ids": [], "action": "drop"}), 400)
    problem(await client.post(f"{base}/ack", content=b"{"), 400)
    problem(await client.get(f"{base}/somewhere"), 404)
    problem(await client.post(f"{base}/events", json={}), 405)


async def test_unknown_group_is_404_everywhere(client: httpx.AsyncClient, realm: str) -> None:
    base = f"/_groups/{realm}/nobody"
    problem(await client.get(base), 404)
    problem(await client.delete(base), 404)
    problem(await client.get(f"{base}/events", params={"consumer": "c"}), 404)
    problem(await client.post(f"{base}/ack", json={"consumer": "c", "event_ids": []}), 404)
    problem(await client.post(f"{base}/nack", json={"consumer": "c", "event_ids": []}), 404)
    problem(await client.get(f"{base}/parked"), 404)
    problem(await client.post(f"{base}/parked/replay"), 404)


async def test_list_and_delete(client: httpx.AsyncClient, realm: str) -> None:
    assert (await client.get(f"/_groups/{realm}")).json() == {"groups": []}
    for name in ("b", "a"):
        assert (await put(client, realm, name, domain="orders")).status_code == 201
    groups = (await client.get(f"/_groups/{realm}")).json()["groups"]
    assert [g["name"] for g in groups] == ["a", "b"] and groups[0]["domain"] == "orders"
    r = await client.delete(f"/_groups/{realm}/a")
    assert r.status_code == 204 and r.content == b""
    assert [g["name"] for g in (await client.get(f"/_groups/{realm}")).json()["groups"]] == ["b"]
    problem(await client.get(f"/_groups/{realm}/a"), 404)
    # Made again, it starts afresh.
    await append(client, realm, "o1", 1)
    assert (await put(client, realm, "a")).status_code == 201
    assert len(await lease(client, realm, "c", "a")) == 1


# --------------------------------------------------------------------------- delivery


async def test_per_entity_order_ack_and_lag(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    plan = ["o1", "o2", "o1", "o3", "o1", "o2"]
    appended = [await append(client, realm, entity, i) for i, entity in enumerate(plan)]
    s = await stats(client, realm)
    assert (s["lag"], s["in_flight"], s["checkpoint"], s["head"]) == (6, 0, 0, appended[-1]["position"])
    # One event per entity at a time, oldest first: o1#1, o2#1, o3#1.
    first = await lease(client, realm, "c1")
    assert [(e["entity"], e["event"], e["delivery"]) for e in first] == [("o1", 0, 1), ("o2", 1, 1), ("o3", 3, 1)]
    assert [e["position"] for e in first] == sorted(e["position"] for e in first)
    # Nothing else may go out while those are in flight, to anyone.
    assert await lease(client, realm, "c2") == []
    s = await stats(client, realm)
    assert (s["lag"], s["in_flight"]) == (6, 3)
    assert s["checkpoint"] < first[0]["position"]
    r = await ack(client, realm, "c1", first[:1])
    assert r.status_code == 200 and r.json() == {"acknowledged": 1}
    second = await lease(client, realm, "c2")
    assert [(e["entity"], e["event"]) for e in second] == [("o1", 2)]
    assert (await ack(client, realm, "c1", first[1:])).status_code == 200
    assert (await ack(client, realm, "c2", second)).status_code == 200
    rest = []
    while batch := await lease(client, realm, "c1"):
        rest += batch
        assert (await ack(client, realm, "c1", batch)).status_code == 200
    assert [(e["entity"], e["event"]) for e in rest] == [("o1", 4), ("o2", 5)]
    s = await stats(client, realm)
    assert (s["lag"], s["in_flight"], s["parked"], s["checkpoint"]) == (0, 0, 0, s["head"])
    assert (s["delivered"], s["acknowledged"], s["redeliveries"]) == (6, 6, 0)
    assert {c["consumer"] for c in s["consumers"]} == {"c1", "c2"}
    # Acknowledged events never come back.
    assert await lease(client, realm, "c3") == []
    problem(await ack(client, realm, "c1", first[:1]), 409)


async def test_scope_types_and_start(client: httpx.AsyncClient, realm: str) -> None:
    await append(client, realm, "o1", "old")
    head = await append(client, realm, "o1", "kept", type_="cancelled")
    assert (await put(client, realm, "typed", domain="orders", types=["cancelled"])).status_code == 201
    assert (await put(client, realm, "late", start="end")).status_code == 201
    assert (await put(client, realm, "from", start=head["position"])).status_code == 201
    await append(client, realm, "o2", "new", type_="cancelled")
    await append(client, realm, "s1", "stock", domain="stock", type_="cancelled")

    async def drain(group: str) -> list[Any]:
        seen = []
        while batch := await lease(client, realm, "c", group):
            seen += [e["event"] for e in batch]
            assert (await ack(client, realm, "c", batch, group)).status_code == 200
        return seen

    assert await drain("typed") == ["kept", "new"]
    assert await drain("late") == ["new", "stock"]
    assert await drain("from") == ["kept", "new", "stock"]
    typed = await stats(client, realm, "typed")
    assert typed["lag"] == 0 and typed["head"] > head["position"]


async def test_wrong_consumer_is_409_and_changes_nothing(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    await append(client, realm, "o1", 1)
    await append(client, realm, "o2", 2)
    mine = await lease(client, realm, "a")
    assert len(mine) == 2
    body = problem(await ack(client, realm, "b", mine), 409)
    assert "not to 'b'" in body["detail"]
    problem(await nack(client, realm, "b", mine, "park"), 409)
    # All or nothing: one good id and one not held means neither is acknowledged.
    problem(await client.post(f"/_groups/{realm}/g/ack", json={
        "consumer": "a", "event_ids": [mine[0]["event_id"], "0190a4c2-0000-7000-8000-000000000000"]}), 409)
    s = await stats(client, realm)
    assert (s["in_flight"], s["parked"], s["acknowledged"]) == (2, 0, 0)
    assert (await ack(client, realm, "a", mine)).json() == {"acknowledged": 2}


async def test_expired_lease_goes_to_another_consumer(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm, ack_timeout=0.5)).status_code == 201
    await append(client, realm, "o1", "x")
    await append(client, realm, "o1", "y")
    [first] = await lease(client, realm, "a")
    assert first["delivery"] == 1
    assert await lease(client, realm, "b") == []
    again = await lease(client, realm, "b", wait=5)  # the wait ends when the lease runs out
    assert [(e["event_id"], e["delivery"]) for e in again] == [(first["event_id"], 2)]
    problem(await ack(client, realm, "a", [first]), 409)  # too late: b holds it
    assert (await ack(client, realm, "b", again)).status_code == 200
    [second] = await lease(client, realm, "a")
    assert second["event"] == "y" and second["delivery"] == 1
    assert (await stats(client, realm))["redeliveries"] == 1


async def test_an_answer_after_the_lease_ran_out_is_409_though_nobody_took_it(client: httpx.AsyncClient,
                                                                             realm: str) -> None:
    """A lease past its ack_timeout went back to the group (or was parked) at that moment, whether
    or not anyone has looked since: a late ack or nack is refused and changes nothing."""
    assert (await put(client, realm, ack_timeout=0.3)).status_code == 201
    assert (await put(client, realm, "once", ack_timeout=0.3, max_deliveries=1)).status_code == 201
    await append(client, realm, "o1", "x")
    [event] = await lease(client, realm, "a")
    [parked] = await lease(client, realm, "a", group="once")
    await asyncio.sleep(0.6)
    problem(await ack(client, realm, "a", [event]), 409)
    problem(await nack(client, realm, "a", [event]), 409)
    [again] = await lease(client, realm, "b")  # back in the group: the next lease has it
    assert (again["event_id"], again["delivery"]) == (event["event_id"], 2)
    # With one delivery allowed, the lease's end parked the event: a late ack does not unpark it.
    problem(await ack(client, realm, "a", [parked], group="once"), 409)
    listed = (await client.get(f"/_groups/{realm}/once/parked")).json()["events"]
    assert [e["event_id"] for e in listed] == [parked["event_id"]]
    # Parked when its lease ran out: the same moment however often, and whenever, it is looked at.
    await asyncio.sleep(0.05)
    again_listed = (await client.get(f"/_groups/{realm}/once/parked")).json()["events"]
    assert [e["parked_at"] for e in again_listed] == [e["parked_at"] for e in listed]
    s = await stats(client, realm, "once")
    assert (s["parked"], s["acknowledged"]) == (1, 0)



async def test_a_lease_whose_state_would_not_fit_is_507_not_400(client: httpx.AsyncClient, store: Store,
                                                                 realm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's state has a size limit. A valid lease that would take it past the limit is not bad
    input: 507 (Insufficient Storage) saying what to do, nothing leased, and what shrinks the state
    (an ack) still goes through."""
    assert (await put(client, realm)).status_code == 201
    for i in range(40):
        await append(client, realm, f"o{i}", i)
    [one] = await lease(client, realm, "a", max=1)
    record = await store.group_states().get(realm, "g")
    assert record is not None
    limit = len(record.data) + 600  # room for a few leases, not for forty
    monkeypatch.setattr(store_states, "MAX_STATE_BYTES", limit)
    r = await client.get(f"/_groups/{realm}/g/events", params={"consumer": "a", "max": 40})
    body = problem(r, 507)
    assert body["max_bytes"] == limit and "acknowledge" in body["detail"], body
    assert (await stats(client, realm))["in_flight"] == 1
    assert (await ack(client, realm, "a", [one])).status_code == 200
    assert len(await lease(client, realm, "a", max=2)) == 2


async def test_leases_that_run_out_into_parking_never_wedge_a_group_at_its_size_limit(
        client: httpx.AsyncClient, store: Store, realm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease that runs out on its last delivery becomes a parked entry, larger than the lease: a
    group near its size limit grows by expiries alone. What the operation itself adds is what the
    limit judges: an ack of a valid lease, or a replay, still goes through; a new lease is the 507."""
    import types

    from perhap.groups import service as group_service

    clock = [1_000_000.0]
    monkeypatch.setattr(group_service, "time", types.SimpleNamespace(time=lambda: clock[0]))
    assert (await put(client, realm, ack_timeout=10, max_deliveries=1)).status_code == 201
    for i in range(41):
        await append(client, realm, f"o{i}", i)
    assert len(await lease(client, realm, "c", max=39)) == 39  # until 1,000,010
    clock[0] += 6
    [kept] = await lease(client, realm, "k", max=1)  # until 1,000,016
    record = await store.group_states().get(realm, "g")
    assert record is not None
    monkeypatch.setattr(store_states, "MAX_STATE_BYTES", len(record.data) + 40)  # no room for 39 parkings
    clock[0] += 5  # c's leases ran out for the last time: parked at the next operation
    assert (await ack(client, realm, "k", [kept])).status_code == 200
    s = await stats(client, realm)
    assert (s["parked"], s["in_flight"], s["acknowledged"]) == (39, 0, 1)
    problem(await client.get(f"/_groups/{realm}/g/events", params={"consumer": "m", "max": 1}), 507)
    r = await client.post(f"/_groups/{realm}/g/parked/replay", json={"event_ids": []})
    assert r.status_code == 200, r.text


async def test_a_backlog_on_one_entity_does_not_stop_the_others(client: httpx.AsyncClient, realm: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the pending list's cap, the events of an entity that cannot go out anyway are deferred
    (counted, read back in order when their turn comes): the scan goes on, so another entity's
    event goes out in parallel while one entity's long backlog waits, and none is lost."""
    for module in (group_state, group_ahead):
        monkeypatch.setattr(module, "MAX_PENDING", 4)
    assert (await put(client, realm)).status_code == 201
    r = await client.post(f"/{realm}/orders/hot", json={"events": [{"type": "t", "event": i} for i in range(12)]})
    assert r.status_code == 201, r.text
    await append(client, realm, "cold", "c")
    assert [e["event"] for e in await lease(client, realm, "a", max=1)] == [0]
    [cold] = await lease(client, realm, "b")  # beyond the hot entity's eleven waiting events
    assert cold["event"] == "c"
    assert (await stats(client, realm))["lag"] == 13
    assert (await ack(client, realm, "b", [cold])).status_code == 200
    hot = [0]
    held = [{"event_id": (await client.get(f"/{realm}/orders/hot")).json()["events"][0]["event_id"]}]
    while True:  # the hot entity's events, one at a time, in version order, each once
        assert (await ack(client, realm, "a", held)).status_code == 200
        held = await lease(client, realm, "a")
        if not held:
            break
        assert len(held) == 1
        hot.append(held[0]["event"])
    assert hot == list(range(12))
    s = await stats(client, realm)
    assert (s["lag"], s["in_flight"], s["acknowledged"], s["checkpoint"]) == (0, 0, 13, s["head"])


@pytest.mark.parametrize("one_event_a_read", [False, True])
async def test_the_checkpoint_is_exact_while_a_deferred_backlog_is_read_back(
        client: httpx.AsyncClient, realm: str, monkeypatch: pytest.MonkeyPatch, one_event_a_read: bool) -> None:
    """An entity's deferred events read back a few at a time stay deferred from the position of
    the entity's next event, not from the position after the last one read back (another
    entity's, acknowledged already): the checkpoint, which the oldest open event bounds, is the
    newest position with every event up to it acknowledged, at every step (it lagged by one).
    Also when each read ends at its first event (its bytes), so the next is read on its own."""
    for module in (group_state, group_ahead):
        monkeypatch.setattr(module, "MAX_PENDING", 2)
    monkeypatch.setattr(group_ahead, "TAKE_BACK", 2)
    if one_event_a_read:
        monkeypatch.setattr(group_ahead, "READ_BYTES", 1)
    assert (await put(client, realm)).status_code == 201
    events = [await append(client, realm, "hot", 0)]
    [first] = await lease(client, realm, "a", max=1)  # the hot entity is busy from here on
    for value in range(1, 7):
        events.append(await append(client, realm, "hot", value))
    events += [await append(client, realm, "b", "b"), await append(client, realm, "hot", 7),
               await append(client, realm, "c", "c")]
    others = await lease(client, realm, "b")
    assert [e["event"] for e in others] == ["b", "c"]  # past the hot entity's deferred backlog
    acked = {e["event_id"] for e in others}
    assert (await ack(client, realm, "b", others)).status_code == 200
    held = [first]
    while held:
        assert (await ack(client, realm, "a", held)).status_code == 200
        acked |= {e["event_id"] for e in held}
        open_ = [e["position"] for e in events if e["event_id"] not in acked]
        exact = max((e["position"] for e in events if not open_ or e["position"] < min(open_)), default=0)
        s = await stats(client, realm)
        assert (s["checkpoint"], s["lag"]) == (exact, len(open_)), (held, s)
        held = await lease(client, realm, "a", max=1)
    assert len(acked) == len(events)


async def test_poison_event_is_parked_listed_and_replayed(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm, max_deliveries=3)).status_code == 201
    poison = await append(client, realm, "o1", "poison")
    await append(client, realm, "o1", "after")
    deliveries = []
    for _ in range(3):
        [event] = await lease(client, realm, "w", max=1)
        assert event["event_id"] == poison["event_id"]
        deliveries.append(event["delivery"])
        r = await nack(client, realm, "w", [event])
        assert r.status_code == 200
    assert deliveries == [1, 2, 3]
    assert r.json() == {"retried": 0, "parked": 1}
    parked = (await client.get(f"/_groups/{realm}/g/parked")).json()["events"]
    assert [(p["event_id"], p["event"], p["delivery"], p["reason"]) for p in parked] == [
        (poison["event_id"], "poison", 3, "max_deliveries")]
    assert parked[0]["position"] == poison["position"] and parked[0]["parked_at"]
    # A parked event holds nothing back: the entity's next event goes out.
    [after] = await lease(client, realm, "w")
    assert after["event"] == "after"
    assert (await ack(client, realm, "w", [after])).status_code == 200
    s = await stats(client, realm)
    assert (s["parked"], s["lag"], s["checkpoint"]) == (1, 0, s["head"])
    r = await client.post(f"/_groups/{realm}/g/parked/replay")
    assert r.status_code == 200 and r.json() == {"replayed": 1}
    assert (await stats(client, realm))["lag"] == 1
    [back] = await lease(client, realm, "w")
    assert (back["event_id"], back["delivery"]) == (poison["event_id"], 1)
    assert (await ack(client, realm, "w", [back])).status_code == 200
    assert (await client.get(f"/_groups/{realm}/g/parked")).json() == {"events": []}
    s = await stats(client, realm)
    # Five deliveries of two events: the poison's second, third and replayed ones are repeats.
    assert (s["lag"], s["delivered"], s["redeliveries"], s["acknowledged"]) == (0, 5, 3, 2)


async def test_nack_park_and_replay_of_some(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    for entity in ("o1", "o2", "o3"):
        await append(client, realm, entity, entity)
    leased = await lease(client, realm, "w")
    r = await nack(client, realm, "w", leased, "park")
    assert r.json() == {"retried": 0, "parked": 3}
    parked = (await client.get(f"/_groups/{realm}/g/parked", params={"limit": 2})).json()["events"]
    assert [p["event"] for p in parked] == ["o1", "o2"] and parked[0]["reason"] == "nack"
    r = await client.post(f"/_groups/{realm}/g/parked/replay", json={"event_ids": [leased[1]["event_id"]]})
    assert r.json() == {"replayed": 1}
    assert [e["event"] for e in await lease(client, realm, "w")] == ["o2"]
    assert (await stats(client, realm))["parked"] == 2


async def test_release_gives_back_without_counting_a_delivery(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm, max_deliveries=1)).status_code == 201
    await append(client, realm, "o1", 1)
    for _ in range(3):  # a worker stopping three times before it handles the event
        [event] = await lease(client, realm, "a")
        assert event["delivery"] == 1
        r = await nack(client, realm, "a", [event], "release")
        assert r.status_code == 200 and r.json() == {"released": 1}
    [event] = await lease(client, realm, "b")
    assert (await nack(client, realm, "b", [event])).json() == {"retried": 0, "parked": 1}
    s = await stats(client, realm)
    assert (s["parked"], s["delivered"], s["redeliveries"]) == (1, 1, 0)


async def test_a_released_repeat_is_one_redelivery_and_delivered_minus_redeliveries_counts_events(
        client: httpx.AsyncClient, realm: str) -> None:
    """A released delivery does not count, a repeat's no more than a first one's: an event retried
    once, then released three times, was counted as four redeliveries (its release stored one
    delivery fewer, so each lease after it looked like a repeat), while a first delivery's
    releases counted in `delivered` only; `consume` releases at every graceful stop."""
    assert (await put(client, realm)).status_code == 201
    await append(client, realm, "o1", 1)
    await append(client, realm, "o2", 1)
    one, two = await lease(client, realm, "a")
    assert (await nack(client, realm, "a", [one])).json() == {"retried": 1, "parked": 0}
    assert (await nack(client, realm, "a", [two], "release")).json() == {"released": 1}
    for _ in range(3):
        leased = await lease(client, realm, "a")
        assert len(leased) == 2
        assert [e["delivery"] for e in leased if e["event_id"] == one["event_id"]] == [2]
        assert (await nack(client, realm, "a", leased, "release")).json() == {"released": len(leased)}
    s = await stats(client, realm)
    assert (s["delivered"], s["redeliveries"]) == (3, 1)  # o1 twice, o2 once
    leased = await lease(client, realm, "b")
    assert sorted(e["delivery"] for e in leased) == [1, 2]
    assert (await ack(client, realm, "b", leased)).status_code == 200
    s = await stats(client, realm)
    assert (s["delivered"] - s["redeliveries"], s["acknowledged"], s["lag"]) == (2, 2, 0)


def test_a_release_and_a_replay_are_kept_in_the_stored_form_and_old_states_read_as_none() -> None:
    """Another process (PostgreSQL, Cassandra) reads the state from its bytes: the marks of a
    release and of a replay go with it, and only when set, so a state written before they existed
    reads as it was."""
    s = group_state.GroupState(GroupSettings(), 0.0, 3, 0)
    s.pending = {1: group_state.Waiting("a", "d", "e", 1, True), 2: group_state.Waiting("b", "d", "f", 0),
                 3: group_state.Waiting("c", "d", "g", 0, replayed=True)}
    stored = s.to_bytes()
    assert b'[1,"a","d","e",1,true]' in stored and b'[2,"b","d","f",0]' in stored
    # A replay's mark apart, so that a perhap of the release before reads the document (a row of
    # seven fields was a TypeError there, every operation on the group failing).
    assert b'[3,"c","d","g",0]' in stored and orjson.loads(stored)["replayed"] == [3]
    assert b"replayed" not in group_state.GroupState(GroupSettings(), 0.0, 3, 0).to_bytes()
    back = group_state.GroupState.from_bytes(stored)
    assert back.pending == s.pending
    leases = back.lease([1, 2, 3], "w", 0.0)
    assert [lease.delivery for lease in leases] == [2, 1, 1]
    # The released one was neither a delivery nor a repeat; the replayed one is a repeat.
    assert (back.delivered, back.redeliveries) == (2, 1)


#: A group's state as the first release of consumer groups stored it (commit 042ea79): no floor,
#: pending rows of four fields, no deferred entries.
FIRST_RELEASE_STATE = (
    b'{"settings":{"domain":"orders","types":null,"start":"beginning","ack_timeout":600,"max_deliveries":5,'
    b'"max_in_flight":1000},"created":1796690242.110697,"scanned":11,'
    b'"leases":[[11,"01a2530d-13a2-73de-be1d-3a76e20192c3","orders","o3","c1",1796690842.1220272,1]],'
    b'"pending":[[7,"01a2530d-139b-7324-838d-45fa2f2a2cf3","orders","o5",1],'
    b'[9,"01a2530d-139e-7157-b3b3-7dd054b27bee","orders","o4",0]],'
    b'"parked":[[5,"01a2530d-1398-729f-9042-7c5d5c6aa3cc","orders","o6",1,1796690242.132128,"nack"]],'
    b'"consumers":{"c1":1796690242.1220272},"delivered":6,"redeliveries":0,"acknowledged":2}')


def test_a_state_stored_by_the_first_release_of_groups_reads_and_works_on() -> None:
    """A store upgraded in place keeps its groups: the first release's documents lack keys added
    since (every operation on such a group, and the realm's list, was a 500 after an upgrade)."""
    s = group_state.GroupState.from_bytes(FIRST_RELEASE_STATE)
    assert (s.scanned, sorted(s.pending), sorted(s.leases), sorted(s.parked)) == (11, [7, 9], [11], [5])
    assert (s.delivered, s.acknowledged, s.deferred) == (6, 2, {})
    leased = s.lease([7, 9], "c2", 1796690300.0)
    assert [(lease.entity, lease.delivery) for lease in leased] == [("o5", 2), ("o4", 1)]
    assert group_state.GroupState.from_bytes(s.to_bytes()).leases == s.leases


async def test_nack_retry_delivers_again_first(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    await append(client, realm, "o1", 1)
    await append(client, realm, "o1", 2)
    [one] = await lease(client, realm, "a")
    assert (await nack(client, realm, "a", [one])).json() == {"retried": 1, "parked": 0}
    [again] = await lease(client, realm, "b")
    assert (again["event"], again["delivery"]) == (1, 2)


async def test_max_in_flight_bounds_a_consumer(client: httpx.AsyncClient, realm: str) -> None:
    assert (await put(client, realm, max_in_flight=2)).status_code == 201
    for i in range(5):
        await append(client, realm, f"o{i}", i)
    held = await lease(client, realm, "a", max=10)
    assert len(held) == 2
    assert await lease(client, realm, "a", max=10) == []
    assert len(await lease(client, realm, "b", max=10)) == 2  # the bound is per consumer
    assert (await ack(client, realm, "a", held[:1])).status_code == 200
    assert len(await lease(client, realm, "a", max=10)) == 1


async def test_long_poll_wakes_on_append(client: httpx.AsyncClient, store: Store, realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    waiting = asyncio.ensure_future(lease(client, realm, "a", wait=30))
    # It looked, found nothing, and waits for a commit (the store's waiter), not answered at once.
    await wait_until(lambda: waiting.done() or len(store._waiters) == 1, "the poll to wait for an event")
    assert not waiting.done()
    await append(client, realm, "o1", "late")
    got = await asyncio.wait_for(waiting, 20)
    assert [e["event"] for e in got] == ["late"]


async def test_long_poll_wakes_when_an_ack_frees_the_entity(client: httpx.AsyncClient, store: Store,
                                                            realm: str) -> None:
    assert (await put(client, realm)).status_code == 201
    await append(client, realm, "o1", 1)
    await append(client, realm, "o1", 2)
    held = await lease(client, realm, "a")
    waiting = asyncio.ensure_future(lease(client, realm, "b", wait=30))
    # It looked, found the entity busy, and waits for a change (the store's waiter for a commit).
    await wait_until(lambda: waiting.done() or len(store._waiters) == 1, "the poll to wait for a change")
    assert not waiting.done()
    assert (await ack(client, realm, "a", held)).status_code == 200
    assert [e["event"] for e in await asyncio.wait_for(waiting, 20)] == [2]


async def test_concurrent_consumers_never_share_an_event(client: httpx.AsyncClient, realm: str) -> None:
    """Ten consumers at once over one process: every event handled once, entities in order."""
    assert (await put(client, realm)).status_code == 201
    for i in range(60):
        await append(client, realm, f"o{i % 7}", i)
    seen: dict[str, list[int]] = {}
    handled: list[str] = []

    async def work(consumer: str) -> None:
        while batch := await lease(client, realm, consumer, max=5):
            for e in batch:
                seen.setdefault(e["entity"], []).append(e["version"])
                handled.append(e["event_id"])
            assert (await ack(client, realm, consumer, batch)).status_code == 200

    await asyncio.gather(*(work(f"c{i}") for i in range(10)))
    while batch := await lease(client, realm, "last"):  # what was still in flight when some stopped
        await ack(client, realm, "last", batch)
        handled += [e["event_id"] for e in batch]
    assert len(handled) == len(set(handled)) == 60
    assert all(versions == sorted(versions) for versions in seen.values())
    assert (await stats(client, realm))["lag"] == 0


async def test_state_survives_a_restart(store_url: str, realm: str) -> None:
    """Leases, acknowledgements and parked events are stored: a new server over the same store
    goes on where the first stopped."""
    async def session() -> Any:
        store = await open_store(store_url)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=PerhapApp(store)), base_url="http://t")
        return store, client

    store, client = await session()
    try:
        assert (await put(client, realm, max_deliveries=1)).status_code == 201
        for i, entity in enumerate(("o1", "o2", "o3", "o1")):
            await append(client, realm, entity, i)
        o1, o2, o3 = await lease(client, realm, "a")
        assert (await ack(client, realm, "a", [o1])).status_code == 200
        assert (await nack(client, realm, "a", [o2], "park")).status_code == 200
    finally:
        await client.aclose()
        await store.close()
    store, client = await session()
    try:
        s = await stats(client, realm)
        assert (s["in_flight"], s["parked"], s["acknowledged"], s["lag"]) == (1, 1, 1, 2)
        assert (await ack(client, realm, "a", [o3])).status_code == 200  # the lease is still a's
        [last] = await lease(client, realm, "b")
        assert last["event"] == 3
        assert [p["event"] for p in (await client.get(f"/_groups/{realm}/g/parked")).json()["events"]] == [1]
    finally:
        await client.aclose()
        await store.close()


async def test_checkpoint_is_the_last_settled_event_of_the_scope(client: httpx.AsyncClient, realm: str) -> None:
    """Other domains' events sit between the group's: the checkpoint is always one of the group's
    own positions, the newest with every event up to it settled."""
    assert (await put(client, realm, domain="orders")).status_code == 201
    first = await append(client, realm, "o1", 1)
    await append(client, realm, "s1", "elsewhere", domain="stock")
    second = await append(client, realm, "o2", 2)
    await append(client, realm, "s1", "elsewhere", domain="stock")
    assert (await stats(client, realm))["checkpoint"] == 0
    one, two = await lease(client, realm, "c")
    assert (await ack(client, realm, "c", [one])).status_code == 200
    s = await stats(client, realm)
    assert (s["checkpoint"], s["head"], s["lag"]) == (first["position"], second["position"], 1)
    assert (await nack(client, realm, "c", [two], "park")).status_code == 200
    s = await stats(client, realm)
    assert (s["checkpoint"], s["lag"]) == (second["position"], 0)
    assert (await client.post(f"/_groups/{realm}/g/parked/replay")).status_code == 200
    assert (await stats(client, realm))["checkpoint"] == first["position"]


async def test_a_group_started_at_a_position_checkpoints_at_a_scope_position_never_past_the_head(
        client: httpx.AsyncClient, realm: str) -> None:
    """A start given as a position: the checkpoint, before anything is done, is the scope's newest
    event before it (0 when none), not the position before the start, which may be another
    domain's event or past the head (start 99 over a head of 7 said 98)."""
    first = await append(client, realm, "o1", 1)
    stock = await append(client, realm, "s1", "elsewhere", domain="stock")
    later = await append(client, realm, "o2", 2)
    assert (await put(client, realm, domain="orders", start=stock["position"] + 1)).status_code == 201
    s = await stats(client, realm)
    assert (s["checkpoint"], s["head"], s["lag"]) == (first["position"], later["position"], 1)
    assert (await put(client, realm, group="far", domain="orders", start=later["position"] + 99)).status_code == 201
    s = await stats(client, realm, group="far")
    assert (s["checkpoint"], s["head"], s["lag"]) == (later["position"], later["position"], 0)
    assert (await put(client, realm, group="ahead", domain="orders", start=first["position"])).status_code == 201
    assert (await stats(client, realm, group="ahead"))["checkpoint"] == 0


async def test_operations_that_arrive_together_are_answered_each_on_its_own(client: httpx.AsyncClient,
                                                                            realm: str) -> None:
    """Operations queued on one group are stored together: one that fails (a 409) fails alone."""
    assert (await put(client, realm)).status_code == 201
    for i in range(6):
        await append(client, realm, f"o{i}", i)
    held = await lease(client, realm, "a", max=3)
    answers = await asyncio.gather(
        ack(client, realm, "a", held[:1]), ack(client, realm, "b", held[1:2]), nack(client, realm, "a", held[2:]),
        *(lease(client, realm, f"c{i}", max=1) for i in range(3)), ack(client, realm, "a", held[:1]))
    first, wrong, back, *leased, again = answers
    assert wrong.status_code == 409 and back.json() == {"retried": 1, "parked": 0}
    # The same ack twice: whichever goes first wins, the other finds nothing leased.
    assert sorted([first.status_code, again.status_code]) == [200, 409]
    got = [e["event_id"] for batch in leased for e in batch]
    assert len(got) == len(set(got)) == 3
    s = await stats(client, realm)
    assert (s["acknowledged"], s["in_flight"]) == (1, 4)
