"""The consumer's contract in process: positions, newest-first reads, position and version bounds,
several types at once (issue 15)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ...errors import EventIdConflict, InvalidInput, NotFound, VersionConflict
from ...model import MAX_POSITION, Event, Scope
from ...store.base import Store
from .base import BackendContract
from .helpers import positions, read_all, read_by_position, read_every, strictly_increasing


async def fill(store: Store, realm: str, count: int = 30) -> list[Event]:
    """``count`` events over two domains, three entities and three types; the realm's events."""
    for i in range(count):
        await store.append(realm, f"d{i % 2}", f"e{i % 3}", f"t{i % 3 if i % 4 else 0}", i)
    return await read_all(store, Scope(realm))


def scopes_of(realm: str) -> list[tuple[Scope, dict[str, Any]]]:
    """A read at every scope, with and without a type filter: (scope, extra read parameters)."""
    return [
        (Scope(realm), {}), (Scope(realm), {"types": ["t1", "t2"]}), (Scope(realm, type="t0"), {}),
        (Scope(realm, "d0"), {}), (Scope(realm, "d1"), {"types": ["t0", "t2"]}),
        (Scope(realm, "d0", "e0"), {}), (Scope(realm, "d1", "e1"), {"types": ["t1", "t0"]}),
        (Scope(realm, "d0", "e2", "t2"), {}),
    ]


def expected_of(events: list[Event], scope: Scope, types: list[str] | None = None) -> list[str]:
    """The ids a read of ``scope`` (filtered by ``types``) must return, from the realm's events."""
    return [e.event_id for e in events if scope.contains(e) and (not types or e.type in types)]


def ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]


#: Reads that must fail: (scope level, Store.read parameters, names the error must mention).
CLASHES: list[tuple[int, dict[str, Any], list[str]]] = [
    (1, {"following": "00000000-0000-7000-8000-000000000000", "after_position": 3},
     ["following", "after_position"]),
    (3, {"following": "00000000-0000-7000-8000-000000000000", "order": "desc", "before_position": 3},
     ["following", "before_position"]),
    (1, {"after_position": 3, "order": "desc"}, ["after_position", "order"]),
    (2, {"before_position": 3}, ["before_position", "order"]),
    (2, {"before_position": 3, "order": "asc"}, ["before_position", "order"]),
    (2, {"after_version": 1}, ["after_version", "domain"]),
    (1, {"until_version": 1}, ["until_version", "realm"]),
    (3, {"after_version": 5, "until_version": 4}, ["after_version", "until_version"]),
    (1, {"after_position": "x"}, ["after_position"]),
    (1, {"after_position": -1}, ["after_position"]),
    (1, {"after_position": 2**63}, ["after_position"]),
    (1, {"after_position": 1.5}, ["after_position"]),
    (1, {"after_position": True}, ["after_position"]),
    (1, {"order": "desc", "before_position": -1}, ["before_position"]),
    (3, {"after_version": -1}, ["after_version"]),
    (3, {"until_version": "two"}, ["until_version"]),
    (3, {"after_version": 2**63}, ["after_version"]),
    (1, {"order": "newest"}, ["order"]),
    (1, {"types": [f"t{i}" for i in range(101)]}, ["type"]),
    (2, {"types": ["ok", "keys"]}, ["type"]),
    (4, {"types": ["other"]}, ["type"]),
]


class ConsumerContract(BackendContract):
    """Positions on every event and result; ``order``, ``after_position``, ``before_position``,
    several ``types`` and version bounds on every scope; clashes are InvalidInput naming both sides."""

    # ------------------------------------------------------------------ positions

    async def test_positions_in_results_reads_and_lookups(self, store: Store, realm: str,
                                                          contiguous_positions: bool) -> None:
        one = await store.append(realm, "d", "e", "t", 0)
        batch = await store.append_batch(realm, "d", "f", [{"type": "t", "event": i} for i in (1, 2, 3)])
        other = await store.append(realm, "d2", "e", "t", 4)
        results = one.events + batch.events + other.events
        given = {a.event_id: a.position for a in results}
        assert strictly_increasing([a.position for a in results])
        assert all(isinstance(p, int) and 1 <= p <= MAX_POSITION for p in given.values())
        if contiguous_positions:
            assert [a.position for a in results] == [1, 2, 3, 4, 5]
        for scope in (Scope(realm), Scope(realm, "d"), Scope(realm, "d", "f"), Scope(realm, "d2", "e", "t")):
            for event in (await store.read(scope)).events:
                assert event.position == given[event.event_id], scope
                assert event.to_dict()["position"] == event.position
                found = await store.get_event(realm, event.domain, event.event_id)
                assert found.position == event.position
        assert list((await store.read(Scope(realm))).events[0].to_dict()) == [
            "event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "position", "timestamp"]
        assert set(one.first.to_dict()) == {"event_id", "version", "position", "timestamp"}

    async def test_positions_unique_and_increasing_in_every_scope(self, store: Store, realm: str,
                                                                 contiguous_positions: bool) -> None:
        other = realm + "o"
        for i in range(40):
            await store.append(realm if i % 3 else other, f"d{i % 2}", f"e{i % 5}", "t", i)
        for r in (realm, other):
            events = await read_all(store, Scope(r), limit=7)
            assert strictly_increasing(positions(events))
            if contiguous_positions:  # each realm counts from 1 on its own
                assert positions(events) == list(range(1, len(events) + 1))
            for scope in (Scope(r, "d0"), Scope(r, "d1", "e3"), Scope(r, "d0", "e4", "t")):
                assert strictly_increasing(positions(await read_all(store, scope, limit=3)))

    async def test_rejected_writes_take_no_position(self, store: Store, realm: str,
                                                    contiguous_positions: bool) -> None:
        eid = str(uuid.uuid4())
        first = await store.append(realm, "d", "e", "t", 0, event_id=eid)
        with pytest.raises(VersionConflict):
            await store.append(realm, "d", "e", "t", 1, expected_version=-1)
        with pytest.raises(VersionConflict):
            await store.append_batch(realm, "d", "e", [{"type": "t", "event": 1}] * 3, expected_version=7)
        with pytest.raises(EventIdConflict):
            await store.append_batch(realm, "d", "e", [{"type": "t", "event": 0, "event_id": eid},
                                                       {"type": "t", "event": 1}])
        with pytest.raises(InvalidInput):
            await store.append_batch(realm, "d", "e", [{"type": "t", "event": 1}, {"type": "keys", "event": 2}])
        if store.supports_multi_entity:
            with pytest.raises(VersionConflict):
                await store.append_many(realm, "d", [{"entity": "a", "type": "t", "event": 1},
                                                     {"entity": "e", "type": "t", "event": 2}],
                                        expected_versions={"e": 5})
        replay = await store.append(realm, "d", "e", "t", 0, event_id=eid)
        assert not replay.created and replay.first.position == first.first.position
        second = await store.append(realm, "d", "e", "t", 1)
        assert second.first.position > first.first.position
        events = (await store.read(Scope(realm))).events
        assert positions(events) == [first.first.position, second.first.position]
        if contiguous_positions:
            assert positions(events) == [1, 2]

    async def test_concurrent_appends_number_the_realm_without_gaps(self, store: Store, realm: str,
                                                                    contiguous_positions: bool) -> None:
        async def one(i: int) -> list[int]:
            try:
                if i % 5 == 0:
                    r = await store.append_batch(realm, f"d{i % 2}", f"e{i % 4}",
                                                 [{"type": "t", "event": [i, k]} for k in range(3)])
                else:
                    # Every fourth append expects a fresh entity: most of those fail and burn nothing.
                    r = await store.append(realm, f"d{i % 2}", f"e{i % 4}", "t", i,
                                           expected_version=-1 if i % 4 == 1 else None)
            except VersionConflict:
                return []
            return [a.position for a in r.events]

        given = [p for ps in await asyncio.gather(*[one(i) for i in range(120)]) for p in ps]
        events = await read_all(store, Scope(realm), limit=50)
        assert positions(events) == sorted(given) and len(set(given)) == len(given)
        if contiguous_positions:
            assert positions(events) == list(range(1, len(events) + 1))

    # ------------------------------------------------------------------ order and following

    async def test_desc_is_reversed_asc_at_every_scope(self, store: Store, realm: str) -> None:
        events = await fill(store, realm)
        for scope, extra in scopes_of(realm):
            expected = expected_of(events, scope, extra.get("types"))
            assert ids((await store.read(scope, **extra)).events) == expected, (scope, extra)
            desc = (await store.read(scope, order="desc", **extra)).events
            assert ids(desc) == expected[::-1], (scope, extra)
            for limit in (1, 4):
                assert ids(await read_every(store, scope, limit=limit, order="desc", **extra)) == expected[::-1]
                assert ids(await read_every(store, scope, limit=limit, order="asc", **extra)) == expected

    async def test_following_continues_in_either_order(self, store: Store, realm: str) -> None:
        written = [(await store.append(realm, "d", "e", "t", i)).first.event_id for i in range(10)]
        page = await store.read(Scope(realm, "d", "e"), order="desc", limit=4)
        assert ids(page.events) == written[9:5:-1] and page.next == written[6]
        page = await store.read(Scope(realm, "d", "e"), order="desc", limit=4, following=page.next)
        assert ids(page.events) == written[5:1:-1] and page.next == written[2]
        page = await store.read(Scope(realm, "d", "e"), order="desc", limit=4, following=page.next)
        assert ids(page.events) == written[1::-1] and page.next is None
        # `following` names a place, not a direction: from the same event, either way.
        for scope in (Scope(realm), Scope(realm, "d"), Scope(realm, "d", "e")):
            assert ids((await store.read(scope, following=written[4], order="desc")).events) == written[3::-1]
            assert ids((await store.read(scope, following=written[4])).events) == written[5:]
            assert (await store.read(scope, following=written[0], order="desc")).events == []
        with pytest.raises(NotFound):
            await store.read(Scope(realm, "d", "other"), following=written[3], order="desc")

    async def test_head_and_last_event_are_one_desc_read(self, store: Store, realm: str) -> None:
        assert (await store.read(Scope(realm), order="desc", limit=1)).events == []
        last: dict[str, str] = {}
        for i in range(12):
            r = await store.append(realm, "d", f"e{i % 3}", "t", i)
            last[f"e{i % 3}"] = r.first.event_id
            head = await store.read(Scope(realm), order="desc", limit=1)
            assert ids(head.events) == [r.first.event_id] and head.events[0].position == r.first.position
            assert head.next == (r.first.event_id if i > 0 else None)
        for entity, event_id in last.items():
            page = await store.read(Scope(realm, "d", entity), order="desc", limit=1)
            assert ids(page.events) == [event_id] and page.events[0].version == 3

    # ------------------------------------------------------------------ position bounds

    async def test_after_and_before_position_at_every_scope(self, store: Store, realm: str) -> None:
        events = await fill(store, realm)
        middle = events[13].position
        for scope, extra in scopes_of(realm):
            expected = [e for e in events if e.event_id in set(expected_of(events, scope, extra.get("types")))]
            later = [e.event_id for e in expected if e.position > middle]
            earlier = [e.event_id for e in expected if e.position < middle]
            assert ids((await store.read(scope, after_position=middle, **extra)).events) == later
            assert ids((await store.read(scope, order="desc", before_position=middle, **extra)).events) \
                == earlier[::-1]
            assert ids((await store.read(scope, after_position=0, **extra)).events) == ids(expected)
            assert ids(await read_by_position(store, scope, limit=2, **extra)) == ids(expected)
            # A page that starts from a position continues with next/following in its order.
            assert ids(await self._continued(store, scope, 3, after_position=middle, **extra)) == later
            assert ids(await self._continued(store, scope, 3, order="desc", before_position=middle,
                                             **extra)) == earlier[::-1]

    async def _continued(self, store: Store, scope: Scope, limit: int, **params: Any) -> list[Event]:
        page = await store.read(scope, limit=limit, **params)
        out = list(page.events)
        params = {k: v for k, v in params.items() if k not in ("after_position", "before_position")}
        while page.next is not None:
            page = await store.read(scope, limit=limit, following=page.next, **params)
            out += page.events
        return out

    async def test_after_position_beyond_the_head_is_an_empty_page(self, store: Store, realm: str) -> None:
        events = await fill(store, realm, 6)
        head = events[-1].position
        for after in (head, head + 1, head + 10_000, MAX_POSITION):
            for scope in (Scope(realm), Scope(realm, "d0"), Scope(realm, "d0", "e0")):
                page = await store.read(scope, after_position=after)
                assert page.events == [] and page.next is None
        for before in (0, 1):
            assert (await store.read(Scope(realm), order="desc", before_position=before)).events == []
        # No position is below the first: at every scope, with a type filter or version bounds, a
        # read before it (or before 0) is an empty page, never the whole scope.
        first = events[0].position
        for scope, extra in [*scopes_of(realm), (Scope(realm, "d0", "e0"), {"after_version": 0}),
                             (Scope(realm, "d0", "e0"), {"until_version": 1})]:
            for before in (0, first):
                page = await store.read(scope, order="desc", before_position=before, **extra)
                assert page.events == [] and page.next is None, (scope, extra, before)
        assert ids((await store.read(Scope(realm), order="desc", before_position=MAX_POSITION)).events) \
            == ids(events)[::-1]
        assert (await store.read(Scope(realm + "x"), after_position=0)).events == []

    # ------------------------------------------------------------------ types and versions

    async def test_several_types(self, store: Store, realm: str) -> None:
        events = await fill(store, realm)
        for types in (["t1"], ["t2", "t1"], ["t0", "t1", "t2"], ["t1", "t1"], ["t1", "nothing"], ["nothing"]):
            for scope in (Scope(realm), Scope(realm, "d1"), Scope(realm, "d1", "e2")):
                expected = expected_of(events, scope, types)
                assert ids(await read_every(store, scope, limit=2, types=types)) == expected
                assert ids(await read_every(store, scope, limit=3, types=types, order="desc")) == expected[::-1]
        assert ids((await store.read(Scope(realm), types=[])).events) == ids(events)
        # `following` must name an event the filtered read contains.
        t0 = next(e for e in events if e.type == "t0")
        with pytest.raises(NotFound):
            await store.read(Scope(realm), types=["t1", "t2"], following=t0.event_id)
        assert len((await store.read(Scope(realm), types=[f"t{i}" for i in range(100)])).events) == len(events)

    async def test_version_bounds_on_entity_scopes(self, store: Store, realm: str) -> None:
        for i in range(10):
            await store.append(realm, "d", "e", "a" if i % 2 else "b", i)
        scope = Scope(realm, "d", "e")

        async def versions(s: Scope = scope, **params: Any) -> list[int]:
            return [e.version for e in (await store.read(s, **params)).events]

        assert await versions(after_version=3) == [4, 5, 6, 7, 8, 9]
        assert await versions(until_version=5) == [0, 1, 2, 3, 4, 5]
        assert await versions(after_version=3, until_version=5) == [4, 5]
        assert await versions(after_version=3, until_version=5, order="desc") == [5, 4]
        assert await versions(after_version=3, until_version=3) == []
        assert await versions(after_version=9) == [] and await versions(after_version=50) == []
        assert await versions(until_version=0) == [0]
        assert await versions(until_version=2, order="desc", limit=1) == [2]
        assert await versions(Scope(realm, "d", "e", "a"), after_version=2, until_version=7) == [3, 5, 7]
        assert await versions(after_version=1, types=["b"], order="desc") == [8, 6, 4, 2]
        events = (await store.read(scope)).events
        assert await versions(after_version=2, after_position=events[5].position) == [6, 7, 8, 9]
        page = await store.read(scope, after_version=1, until_version=8, limit=3)
        assert [e.version for e in page.events] == [2, 3, 4]
        rest = await store.read(scope, after_version=1, until_version=8, following=page.next)
        assert [e.version for e in rest.events] == [5, 6, 7, 8]

    # ------------------------------------------------------------------ clashes

    async def test_clashes_are_invalid_input_naming_them(self, store: Store, realm: str) -> None:
        await store.append(realm, "d", "e", "t", 1)
        for level, params, names in CLASHES:
            scope = Scope(realm, *(["d", "e", "t"][:level - 1]))
            with pytest.raises(InvalidInput) as err:
                await store.read(scope, **params)
            for name in names:
                assert name in err.value.detail, (params, name, err.value.detail)

    # ------------------------------------------------------------------ gap safety newest first

    async def test_desc_pages_have_no_holes_under_concurrent_writers(self, store: Store, realm: str) -> None:
        done = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(60):
                if i % 7 == 0:
                    await store.append_batch(realm, f"d{w % 2}", f"e{w}", [{"type": "t", "event": k} for k in range(4)])
                else:
                    await store.append(realm, f"d{w % 2}", f"e{w}", "t", i)

        async def checker(scope: Scope) -> int:
            checked = 0
            while not done.is_set() or checked == 0:
                # A read may finish without suspending (a backend may answer from memory): sleep,
                # or the writers' acknowledgements never get the loop.
                await asyncio.sleep(0.001)
                newest = (await store.read(scope, order="desc", limit=15)).events
                if len(newest) < 2:
                    continue
                # Newest first shows a suffix of what ascending readers see: nothing inside it can
                # still appear later, so reading up from its oldest event gives it back exactly.
                oldest = newest[-1].position
                up = (await store.read(scope, after_position=oldest - 1, limit=len(newest))).events
                assert ids(up) == ids(newest)[::-1], scope
                checked += 1
            return checked

        checkers = [asyncio.ensure_future(checker(Scope(realm))), asyncio.ensure_future(checker(Scope(realm, "d1")))]
        await asyncio.gather(*[writer(w) for w in range(6)])
        done.set()
        assert all(n > 0 for n in await asyncio.gather(*checkers))
