"""Consumer groups through the Python client (perhap.Client, perhap.AsyncClient) against a real
`perhap serve` on SQLite: the group methods, and the worker loop of ``consume``: each event
handled once in per-entity order, acknowledged after its handler, retried then parked when the
handler fails, given back at once on a stop, and a loop that outlives a server restart."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perhap import AsyncClient, Client, Event, InvalidInput
from perhap.client import BadRequest, Conflict, Delivery, GroupConflict, LeaseConflict, NotFound
from tests.servers import ProcessServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    workdir = tmp_path_factory.mktemp("groups-client")
    with ProcessServer(f"sqlite:///{workdir / 'groups.db'}", None, cwd=workdir) as s:
        yield s


@pytest.fixture
def client(server: ProcessServer) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


def _wait(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Until ``condition()`` holds (a generous bound, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _append(client: Client, realm: str, entities: int, per_entity: int, domain: str = "orders") -> list[str]:
    """Events round-robin over entities (so each lease can hold one of every entity); their ids."""
    ids = []
    for v in range(per_entity):
        for e in range(entities):
            ids.append(client.append(realm, domain, f"e{e}", "placed", {"e": e, "v": v}).first.event_id)
    return ids


def _in_entity_order(seen: list[Event], *, repeats: bool = False) -> bool:
    """Every entity's events were handled in version order (a version may come again right after
    itself with ``repeats``: a redelivery, allowed by at-least-once)."""
    versions: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in seen:
        versions[(event.domain, event.entity)].append(event.version)
    if repeats:
        return all(v == sorted(v) for v in versions.values())
    return all(v == sorted(set(v)) for v in versions.values())


# --------------------------------------------------------------------------- the group methods


def test_create_list_get_delete(client: Client, realm: str) -> None:
    created = client.create_group(realm, "projector", domain="orders", types=["placed", "paid"], ack_timeout=10)
    assert created["realm"] == realm and created["name"] == "projector" and created["domain"] == "orders"
    assert sorted(created["types"]) == ["paid", "placed"] and created["ack_timeout"] == 10
    assert created["max_deliveries"] == 5 and created["max_in_flight"] == 1000 and created["start"] == "beginning"
    # The same settings again: the same group; other settings: a conflict that names them.
    again = client.create_group(realm, "projector", domain="orders", types=["paid", "placed"], ack_timeout=10)
    assert again["created"] == created["created"]
    with pytest.raises(GroupConflict) as info:
        client.create_group(realm, "projector", domain="orders", ack_timeout=11)
    assert isinstance(info.value, Conflict) and info.value.status == 409 and "ack_timeout" in info.value.detail
    client.create_group(realm, "auditor")
    assert [g["name"] for g in client.groups(realm)] == ["auditor", "projector"]
    _append(client, realm, 2, 2)
    stats = client.group(realm, "projector")
    assert (stats["lag"], stats["in_flight"], stats["parked"], stats["checkpoint"]) == (4, 0, 0, 0)
    assert stats["head"] > 0 and stats["consumers"] == []
    client.delete_group(realm, "projector")
    with pytest.raises(NotFound):
        client.group(realm, "projector")
    with pytest.raises(NotFound):
        client.delete_group(realm, "projector")
    assert [g["name"] for g in client.groups(realm)] == ["auditor"]


def test_bad_arguments_are_refused(client: Client, realm: str) -> None:
    for call in (lambda: client.create_group("_sys", "g"), lambda: client.create_group(realm, "a/b"),
                 lambda: client.lease(realm, "g", ""), lambda: client.lease(realm, "g", "w", max=0),
                 lambda: client.lease(realm, "g", "w", wait=-1),
                 lambda: client.ack(realm, "g", "w", "01a2173a-af2e-701e-bbf0-c30a3181d1d9"),
                 lambda: client.nack(realm, "g", "w", [], action="drop"),
                 lambda: client.replay_parked(realm, "g", ["not-an-id"])):
        with pytest.raises(InvalidInput):
            call()
    with pytest.raises(BadRequest):  # checked by the server
        client.create_group(realm, "g", max_deliveries=0)
    with pytest.raises(NotFound):
        client.lease(realm, "nothing", "w")


def test_lease_ack_nack_park_replay(client: Client, realm: str) -> None:
    client.create_group(realm, "g", ack_timeout=60, max_deliveries=3)
    ids = _append(client, realm, 2, 2)  # e0 v0, e1 v0, e0 v1, e1 v1
    first = client.lease(realm, "g", "w1", max=10)
    # One event of an entity at a time: the second versions wait for the first to be settled.
    assert [d.event_id for d in first] == ids[:2]
    assert all(isinstance(d, Delivery) and isinstance(d, Event) and d.delivery == 1 for d in first)
    assert first[0].event == {"e": 0, "v": 0} and first[0].position > 0 and first[0].parked_at is None
    assert client.lease(realm, "g", "w2", max=10) == []
    with pytest.raises(LeaseConflict):  # not leased to w2: nothing changes
        client.ack(realm, "g", "w2", [first[0].event_id])
    with pytest.raises(LeaseConflict):  # all or nothing
        client.ack(realm, "g", "w1", [first[0].event_id, ids[2]])
    assert client.ack(realm, "g", "w1", [first[0].event_id]) == 1
    assert client.nack(realm, "g", "w1", [first[1].event_id]) == {"retried": 1, "parked": 0}
    second = {d.event_id: d for d in client.lease(realm, "g", "w2", max=10)}
    assert set(second) == {ids[1], ids[2]} and second[ids[1]].delivery == 2
    assert client.nack(realm, "g", "w2", [ids[1]], action="park") == {"retried": 0, "parked": 1}
    # A parked event holds nothing back: the next version of its entity goes out.
    assert [d.event_id for d in client.lease(realm, "g", "w2", max=10)] == [ids[3]]
    (parked,) = client.parked(realm, "g")
    assert parked.event_id == ids[1] and parked.reason == "nack" and parked.delivery == 2 and parked.parked_at
    assert parked.to_dict()["reason"] == "nack"
    stats = client.group(realm, "g")
    assert (stats["parked"], stats["in_flight"], stats["lag"]) == (1, 2, 2)
    assert {c["consumer"] for c in stats["consumers"]} == {"w1", "w2"}
    assert client.ack(realm, "g", "w2", [ids[2], ids[3]]) == 2
    assert client.group(realm, "g")["lag"] == 0  # a parked event is not lag
    assert client.replay_parked(realm, "g") == 1
    assert client.parked(realm, "g") == []
    (replayed,) = client.lease(realm, "g", "w1", max=10)
    assert replayed.event_id == ids[1] and replayed.delivery == 1
    assert client.ack(realm, "g", "w1", [ids[1]]) == 1
    assert client.group(realm, "g")["lag"] == 0


def test_replay_of_chosen_parked_events(client: Client, realm: str) -> None:
    client.create_group(realm, "g")
    ids = _append(client, realm, 3, 1)
    client.lease(realm, "g", "w", max=10)
    client.nack(realm, "g", "w", ids, action="park")
    assert client.replay_parked(realm, "g", [ids[1]]) == 1
    assert sorted(p.event_id for p in client.parked(realm, "g")) == sorted([ids[0], ids[2]])


# --------------------------------------------------------------------------- consume


def test_consume_handles_each_event_once_in_entity_order(client: Client, server: ProcessServer,
                                                        realm: str) -> None:
    client.create_group(realm, "g")
    ids = _append(client, realm, 8, 6)
    seen: list[Delivery] = []
    lock = threading.Lock()
    stop = threading.Event()
    counts: list[int] = []

    def handler(event: Delivery) -> None:
        with lock:
            seen.append(event)
            if len(seen) == len(ids):
                stop.set()

    def worker(name: str) -> None:
        with Client(server.url) as c:
            counts.append(c.consume(realm, "g", handler, consumer=name, max=5, wait=1, stop=stop))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(e.event_id for e in seen) == sorted(ids) and sum(counts) == len(ids)
    assert _in_entity_order(seen)  # across the three consumers, as handled
    assert all(e.delivery == 1 for e in seen)
    stats = client.group(realm, "g")
    assert (stats["lag"], stats["in_flight"], stats["acknowledged"], stats["redeliveries"]) == (0, 0, len(ids), 0)


def test_a_failing_handler_gets_retries_then_its_event_is_parked(client: Client, realm: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client.create_group(realm, "g", max_deliveries=3)
    ids = _append(client, realm, 3, 3)
    poison = ids[3]  # e0 v1: e0 v2 comes after it
    seen: list[Delivery] = []
    stop = threading.Event()

    def handler(event: Delivery) -> None:
        seen.append(event)
        if len({e.event_id for e in seen}) == len(ids) and sum(e.event_id == poison for e in seen) == 3:
            stop.set()
        if event.event_id == poison:
            raise ValueError("poison")

    with caplog.at_level(logging.WARNING, "perhap.client"):
        handled = client.consume(realm, "g", handler, consumer="w", max=4, wait=1, stop=stop)
    assert handled == len(ids) - 1
    assert [e.delivery for e in seen if e.event_id == poison] == [1, 2, 3]
    assert "ValueError: poison" in caplog.text and "parked" in caplog.text
    (parked,) = client.parked(realm, "g")
    assert parked.event_id == poison and parked.reason == "max_deliveries" and parked.delivery == 3
    stats = client.group(realm, "g")
    assert (stats["lag"], stats["parked"], stats["in_flight"]) == (0, 1, 0)
    # Replayed, and handled by a handler that now copes: nothing left.
    assert client.replay_parked(realm, "g") == 1
    again: list[Delivery] = []
    stop.clear()
    client.consume(realm, "g", lambda e: (again.append(e), stop.set()), consumer="w", wait=1, stop=stop)
    assert [e.event_id for e in again] == [poison] and again[0].delivery == 1
    assert client.group(realm, "g")["parked"] == 0


def test_stop_gives_back_the_unhandled_events_at_once(client: Client, realm: str) -> None:
    # A long ack_timeout: another consumer gets the events only if they were given back.
    client.create_group(realm, "g", ack_timeout=3600)
    ids = _append(client, realm, 5, 1)
    stop = threading.Event()
    seen: list[str] = []

    def handler(event: Delivery) -> None:
        seen.append(event.event_id)
        stop.set()  # the loop ends after this handler

    assert client.consume(realm, "g", handler, consumer="a", max=5, wait=1, stop=stop) == 1
    taken: list[Delivery] = []
    for _ in range(20):  # no wait: what is there is leased at once
        taken += client.lease(realm, "g", "b", max=10)
        if len(taken) >= 4:
            break
    assert sorted(d.event_id for d in taken) == sorted(set(ids) - set(seen))
    assert all(d.delivery == 1 for d in taken)  # released, not failed: the delivery did not count
    stats = client.group(realm, "g")
    assert stats["acknowledged"] == 1 and stats["in_flight"] == 4


def test_keyboard_interrupt_gives_back_the_rest_and_is_raised(client: Client, realm: str) -> None:
    client.create_group(realm, "g", ack_timeout=3600)
    ids = _append(client, realm, 4, 1)
    seen: list[str] = []

    def handler(event: Delivery) -> None:
        seen.append(event.event_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.consume(realm, "g", handler, consumer="a", max=4, wait=1)
    taken = client.lease(realm, "g", "b", max=10)
    # The first was handled and acknowledged; the interrupted one and the rest came back.
    assert sorted(d.event_id for d in taken) == sorted(set(ids) - {seen[0]})
    assert client.group(realm, "g")["acknowledged"] == 1


def test_a_slow_handler_does_not_hold_back_the_acknowledgement_of_an_earlier_event(
        client: Client, server: ProcessServer, realm: str) -> None:
    # docs/client.md: a lease's acknowledgements go "after a second at most". One lease holds a
    # (handled at once) and b (whose handler waits): a's acknowledgement must reach the server
    # while b's handler still runs, not after it (which, with a handler longer than ack_timeout,
    # would be too late and a handled again).
    client.create_group(realm, "g", ack_timeout=3600)
    a, b = _append(client, realm, 2, 1)
    stop = threading.Event()
    seen_inside: list[int] = []

    def handler(event: Delivery) -> None:
        if event.event_id == b:
            with Client(server.url) as other:
                deadline = time.monotonic() + 30  # a generous bound: the promise is one second
                while (acked := other.group(realm, "g")["acknowledged"]) < 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                seen_inside.append(acked)
            stop.set()

    assert client.consume(realm, "g", handler, consumer="w", max=2, wait=1, stop=stop) == 2
    assert seen_inside == [1]  # a was acknowledged while b's handler ran
    stats = client.group(realm, "g")
    assert (stats["acknowledged"], stats["in_flight"], stats["redeliveries"]) == (2, 0, 0)


def test_leases_that_ran_out_are_logged_not_fatal(client: Client, server: ProcessServer, realm: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    client.create_group(realm, "g", ack_timeout=0.5)
    ids = _append(client, realm, 2, 1)
    stop = threading.Event()
    seen: list[str] = []
    taken_over: list[Delivery] = []
    later: list[str] = []

    def handler(event: Delivery) -> None:
        seen.append(event.event_id)
        if event.event_id == ids[0]:
            # Slow enough for the leases to run out: another consumer gets both events meanwhile.
            with Client(server.url) as other:
                while len(taken_over) < 2:
                    taken_over.extend(other.lease(realm, "g", "b", max=10, wait=5))
                other.ack(realm, "g", "b", [d.event_id for d in taken_over])
                later.extend(_append(other, realm, 1, 1, domain="other"))
        elif event.event_id in later:
            stop.set()  # the loop went on after the refused ack

    with caplog.at_level(logging.WARNING, "perhap.client"):
        client.consume(realm, "g", handler, consumer="a", max=2, wait=1, stop=stop)
    assert sorted((d.event_id, d.delivery) for d in taken_over) == sorted((i, 2) for i in ids)
    assert seen == [ids[0], *later]  # the second event's lease ran out before its turn: left alone
    assert "ran out before their turn" in caplog.text and "its lease ran out" in caplog.text
    assert client.group(realm, "g")["lag"] == 0


def test_consume_outlives_a_server_restart(tmp_path: Path, realm: str) -> None:
    with ProcessServer(f"sqlite:///{tmp_path / 'restart.db'}", None, cwd=tmp_path) as server:
        with Client(server.url) as c:
            c.create_group(realm, "g", ack_timeout=10)
            ids = _append(c, realm, 4, 3)
        total = len(ids) + 4  # and 4 more appended after the restart
        seen: list[Delivery] = []
        stop = threading.Event()
        outcome: list[Any] = []

        killed = threading.Event()

        def handler(event: Delivery) -> None:
            seen.append(event)
            if len(seen) == 3:
                killed.wait(30)  # its acknowledgement goes to a server that is down, then back
            if len({e.event_id for e in seen}) == total:
                stop.set()

        def worker() -> None:
            try:
                with Client(server.url) as c:
                    outcome.append(c.consume(realm, "g", handler, consumer="w", max=2, wait=1, stop=stop))
            except BaseException as exc:  # surfaced below
                outcome.append(exc)

        thread = threading.Thread(target=worker)
        thread.start()
        _wait(lambda: len(seen) >= 3)
        assert server.proc is not None
        server.proc.kill()  # no goodbye: requests in flight fail, new ones are refused
        server.proc.wait(10)
        killed.set()
        server.start()
        with Client(server.url) as c:
            ids += _append(c, realm, 4, 1, domain="later")
        thread.join(90)
        assert not thread.is_alive() and outcome and isinstance(outcome[0], int), outcome
        assert {e.event_id for e in seen} == set(ids)
        # Redelivery after the restart is allowed (at least once), but never out of entity order.
        assert _in_entity_order(seen, repeats=True)
        with Client(server.url) as c:
            assert c.group(realm, "g")["lag"] == 0


# --------------------------------------------------------------------------- the async client


async def test_async_group_methods_and_consume(server: ProcessServer, realm: str) -> None:
    async with AsyncClient(server.url) as c:
        await c.create_group(realm, "g", domain="orders", types=["placed"])
        assert [g["name"] for g in await c.groups(realm)] == ["g"]
        ids = []
        for i in range(6):
            ids.append((await c.append(realm, "orders", f"e{i % 3}", "placed", i)).first.event_id)
            await c.append(realm, "orders", f"e{i % 3}", "paid", i)  # not of the group's types
        seen: list[Delivery] = []
        stop = asyncio.Event()

        async def handler(event: Delivery) -> None:
            await asyncio.sleep(0)
            seen.append(event)
            if len(seen) == len(ids):
                stop.set()

        assert await c.consume(realm, "g", handler, max=2, wait=1, stop=stop) == len(ids)
        assert sorted(e.event_id for e in seen) == sorted(ids) and all(e.type == "placed" for e in seen)
        assert _in_entity_order(seen)
        stats = await c.group(realm, "g")
        assert stats["lag"] == 0 and stats["acknowledged"] == len(ids)
        # A consumer id of its own by default: hostname-pid-random.
        (consumer,) = stats["consumers"]
        assert f"-{os.getpid()}-" in consumer["consumer"]
        # Leases, acks, nacks, parking, as with the blocking client.
        more = (await c.append(realm, "orders", "e9", "placed", 9)).first.event_id
        (leased,) = await c.lease(realm, "g", "w", wait=5)
        assert leased.event_id == more
        assert await c.nack(realm, "g", "w", [more], action="park") == {"retried": 0, "parked": 1}
        assert [p.event_id for p in await c.parked(realm, "g")] == [more]
        assert await c.replay_parked(realm, "g", [more]) == 1
        (leased,) = await c.lease(realm, "g", "w", wait=5)
        assert await c.ack(realm, "g", "w", [leased.event_id]) == 1
        await c.delete_group(realm, "g")
        with pytest.raises(NotFound):
            await c.group(realm, "g")


async def test_async_consume_takes_plain_handlers_and_gives_back_on_stop(server: ProcessServer, realm: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    async with AsyncClient(server.url) as c:
        await c.create_group(realm, "g", ack_timeout=3600, max_deliveries=2)
        ids = []
        for i in range(4):
            ids.append((await c.append(realm, "d", f"e{i}", "t", i)).first.event_id)
        stop = asyncio.Event()
        seen: list[Delivery] = []

        def handler(event: Delivery) -> None:  # not a coroutine function
            seen.append(event)
            if event.event_id == ids[0]:
                raise RuntimeError("not this one")
            stop.set()

        with caplog.at_level(logging.WARNING, "perhap.client"):
            assert await c.consume(realm, "g", handler, consumer="a", max=4, wait=1, stop=stop) == 1
        assert "RuntimeError: not this one" in caplog.text
        # ids[0] was nacked (retry); ids[2:] were given back on the stop: all there for another.
        taken = await c.lease(realm, "g", "b", max=10)
        assert sorted(d.event_id for d in taken) == sorted([ids[0], *ids[2:]])
        # The failed one counts a delivery; those given back unhandled do not.
        assert {d.event_id: d.delivery for d in taken} == {ids[0]: 2, **dict.fromkeys(ids[2:], 1)}


async def test_cancelling_async_consume_gives_back_the_leases(server: ProcessServer, realm: str) -> None:
    async with AsyncClient(server.url) as c:
        await c.create_group(realm, "g", ack_timeout=3600)
        ids = [(await c.append(realm, "d", f"e{i}", "t", i)).first.event_id for i in range(3)]
        inside = asyncio.Event()

        async def handler(event: Delivery) -> None:
            inside.set()
            await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(c.consume(realm, "g", handler, consumer="a", max=3, wait=1))
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        taken = await c.lease(realm, "g", "b", max=10)
        assert sorted(d.event_id for d in taken) == sorted(ids)


async def test_async_consume_acknowledges_an_earlier_event_while_a_slow_handler_runs(
        server: ProcessServer, realm: str) -> None:
    async with AsyncClient(server.url) as c:
        await c.create_group(realm, "g", ack_timeout=3600)
        a = (await c.append(realm, "d", "e0", "t", 0)).first.event_id
        b = (await c.append(realm, "d", "e1", "t", 1)).first.event_id
        stop = asyncio.Event()
        seen_inside: list[int] = []

        async def handler(event: Delivery) -> None:
            if event.event_id == b:
                deadline = time.monotonic() + 30  # a generous bound: the promise is one second
                while (acked := (await c.group(realm, "g"))["acknowledged"]) < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                seen_inside.append(acked)
                stop.set()

        assert await c.consume(realm, "g", handler, consumer="w", max=2, wait=1, stop=stop) == 2
        assert seen_inside == [1] and a != b  # a was acknowledged while b's handler ran
        stats = await c.group(realm, "g")
        assert (stats["acknowledged"], stats["in_flight"], stats["redeliveries"]) == (2, 0, 0)
