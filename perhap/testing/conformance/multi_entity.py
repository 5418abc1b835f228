"""The multi-entity atomic append in process (``Store.append_many``): all or nothing, in send order,
with expected versions on any entities, idempotent retries, one winner among equal expectations.

A backend that does not offer it (``supports_multi_entity = False``) must refuse every call with
NotSupported (501) naming itself and store nothing; each test checks that much and stops there.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ...errors import EventIdConflict, InvalidInput, NotSupported, VersionConflict
from ...model import Scope
from ...store.base import Store
from .base import BackendContract
from .helpers import positions, read_all, strictly_increasing

ONE = [{"entity": "a", "type": "t", "event": 1}]


def many(*entities: str, **fields: Any) -> list[dict[str, Any]]:
    """One event for each entity named, in that order (``event`` is its index)."""
    return [{"entity": e, "type": "t", "event": i, **fields} for i, e in enumerate(entities)]

#: (events, expected_versions) pairs append_many must refuse with InvalidInput.
BAD_INPUT: list[tuple[Any, Any]] = [
    ([], None), ("x", None), ([1], None), ([{"type": "t", "event": 1}], None),
    ([{"entity": "keys", "type": "t", "event": 1}], None), ([{"entity": "", "type": "t", "event": 1}], None),
    ([{"entity": 5, "type": "t", "event": 1}], None), ([{"entity": "a", "event": 1}], None),
    ([{"entity": "a", "type": "t"}], None), ([{"entity": "a", "type": "t", "event": 1, "extra": 1}], None),
    ([{"entity": "a", "type": "t", "event": 1, "meta": [1]}], None),
    ([{"entity": "a", "type": "t", "event": 1, "event_id": "nope"}], None),
    (ONE, [("a", 0)]), (ONE, {"a": "0"}), (ONE, {"a": None}), (ONE, {"a": -2}), (ONE, {"a": True}),
    (ONE, {"keys": 0}),
]


class MultiEntityContract(BackendContract):
    """``Store.append_many``: the atomic write to several entities of one domain."""

    async def offered(self, store: Store, realm: str) -> bool:
        """Whether the backend offers multi-entity appends; if not, check that it refuses them."""
        if store.supports_multi_entity:
            return True
        before = await read_all(store, Scope(realm))
        with pytest.raises(NotSupported) as err:
            await store.append_many(realm, "d", many("a", "b"), expected_versions={"a": -1})
        assert err.value.status == 501 and store.backend_name in err.value.detail
        assert await read_all(store, Scope(realm)) == before
        return False

    async def test_unsupported_is_refused_with_nothing_stored(self, store: Store, realm: str) -> None:
        await store.append(realm, "d", "a", "t", "before")
        if await self.offered(store, realm):
            result = await store.append_many(realm, "d", many("a", "b"))
            assert result.created and [a.entity for a in result.events] == ["a", "b"]

    async def test_versions_and_positions_follow_send_order(self, store: Store, realm: str,
                                                            contiguous_positions: bool) -> None:
        if not await self.offered(store, realm):
            return
        await store.append_batch(realm, "d", "a", [{"type": "t", "event": "a0"}, {"type": "t", "event": "a1"}])
        await store.append(realm, "other", "a", "t", "elsewhere")
        head = (await store.read(Scope(realm), order="desc", limit=1)).events[0].position
        result = await store.append_many(realm, "d", [
            {"entity": "a", "type": "x", "event": "a2", "meta": {"k": 1}},
            {"entity": "b", "type": "y", "event": "b0"},
            {"entity": "a", "type": "y", "event": "a3"},
            {"entity": "c", "type": "x", "event": "c0", "event_id": str(uuid.uuid4())},
            {"entity": "b", "type": "x", "event": "b1"},
        ])
        assert result.created
        assert [(a.entity, a.version) for a in result.events] == [("a", 2), ("b", 0), ("a", 3), ("c", 0), ("b", 1)]
        given = [a.position for a in result.events]
        assert given[0] > head and strictly_increasing(given)
        if contiguous_positions:
            assert given == list(range(head + 1, head + 6))
        assert [set(a.to_dict()) for a in result.events] == [
            {"entity", "event_id", "version", "position", "timestamp"}] * 5
        assert list(result.events[0].to_dict())[0] == "entity"
        stored = (await store.read(Scope(realm, "d"), after_position=head)).events
        assert [e.event for e in stored] == ["a2", "b0", "a3", "c0", "b1"]
        assert [(e.event_id, e.entity, e.version, e.position, e.timestamp) for e in stored] == [
            (a.event_id, a.entity, a.version, a.position, a.timestamp) for a in result.events]
        assert stored[0].meta == {"k": 1} and [e.type for e in stored] == ["x", "y", "y", "x", "x"]
        assert [e.event for e in (await store.read(Scope(realm, "d", "a"))).events] == ["a0", "a1", "a2", "a3"]
        # One entity, one event: the smallest multi-entity append.
        single = await store.append_many(realm, "d", many("z"), expected_versions={"z": -1})
        assert [(a.entity, a.version) for a in single.events] == [("z", 0)]

    async def test_expected_versions_may_name_any_entities(self, store: Store, realm: str) -> None:
        if not await self.offered(store, realm):
            return
        await store.append_batch(realm, "d", "a", [{"type": "t", "event": i} for i in range(3)])
        await store.append(realm, "d", "guard", "t", "g")
        # A subset of the entities written, plus a guard that receives nothing.
        r = await store.append_many(realm, "d", many("a", "b", "c"), expected_versions={"a": 2, "guard": 0})
        assert [a.version for a in r.events] == [3, 0, 0]
        # A guard that must not exist yet.
        r = await store.append_many(realm, "d", many("a"), expected_versions={"a": 3, "nobody": -1, "b": 0})
        assert [a.version for a in r.events] == [4]
        assert (await store.read(Scope(realm, "d", "nobody"))).events == []
        assert [e.version for e in (await store.read(Scope(realm, "d", "guard"))).events] == [0]
        # An expectation in another domain's entity of the same name is not this domain's.
        await store.append(realm, "other", "fresh", "t", 1)
        r = await store.append_many(realm, "d", many("x"), expected_versions={"fresh": -1})
        assert r.created

    async def test_conflict_lists_every_failing_entity_and_stores_nothing(
            self, store: Store, realm: str, contiguous_positions: bool) -> None:
        if not await self.offered(store, realm):
            return
        await store.append_batch(realm, "d", "a", [{"type": "t", "event": 0}, {"type": "t", "event": 1}])
        await store.append(realm, "d", "b", "t", 0)
        before = await read_all(store, Scope(realm))
        with pytest.raises(VersionConflict) as err:
            await store.append_many(realm, "d", many("a", "b", "c", "a"),
                                    expected_versions={"a": 0, "b": 0, "c": 4, "guard": 2})
        conflict = err.value
        assert conflict.status == 409 and conflict.slug == "version-conflict"
        failing = {("a", 0, 1), ("c", 4, -1), ("guard", 2, -1)}
        assert set(conflict.conflicts) == failing and len(conflict.conflicts) == 3
        assert {(c["entity"], c["expected_version"], c["current_version"])
                for c in conflict.extra["conflicts"]} == failing
        assert await read_all(store, Scope(realm)) == before
        # Only one failing: still nothing stored, and it alone is listed.
        with pytest.raises(VersionConflict) as err:
            await store.append_many(realm, "d", many("a", "b"), expected_versions={"a": 1, "b": -1})
        assert err.value.conflicts == [("b", -1, 0)]
        assert await read_all(store, Scope(realm)) == before
        # A version no entity reaches is a conflict too, however large.
        with pytest.raises(VersionConflict) as err:
            await store.append_many(realm, "d", many("a"), expected_versions={"a": 1, "b": 10**20})
        assert err.value.conflicts == [("b", 10**20, 0)]
        assert await read_all(store, Scope(realm)) == before
        # The refused appends burned no position.
        after = await store.append(realm, "d", "a", "t", 2, expected_version=1)
        assert after.first.position > before[-1].position
        if contiguous_positions:
            assert after.first.position == before[-1].position + 1

    async def test_idempotent_retry_by_event_id(self, store: Store, realm: str) -> None:
        if not await self.offered(store, realm):
            return
        ids = [str(uuid.uuid4()) for _ in range(3)]
        events = [{"entity": e, "type": "t", "event": {"n": i}, "event_id": ids[i]} for i, e in enumerate("aba")]
        first = await store.append_many(realm, "d", events, expected_versions={"a": -1, "b": -1})
        again = await store.append_many(realm, "d", events, expected_versions={"a": -1, "b": -1})
        assert first.created and not again.created and again.events == first.events
        # The entities moved on: a retry still gets the original answer.
        await store.append(realm, "d", "a", "t", "later")
        retry = await store.append_many(realm, "d", events, expected_versions={"a": -1, "b": -1})
        assert not retry.created and retry.events == first.events
        stored = await read_all(store, Scope(realm))
        partly = events[:2] + [{"entity": "a", "type": "t", "event": 9, "event_id": str(uuid.uuid4())}]
        changed = events[:2] + [{**events[2], "event": {"n": 99}}]
        moved = [events[0], events[1], {**events[2], "entity": "b"}]
        for bad in (partly, changed, moved):
            with pytest.raises(EventIdConflict):
                await store.append_many(realm, "d", bad)
        assert await read_all(store, Scope(realm)) == stored
        # The same ids under a single-entity batch are not this append either.
        with pytest.raises(EventIdConflict):
            await store.append_batch(realm, "d", "a", [{k: v for k, v in e.items() if k != "entity"}
                                                       for e in events])

    async def test_equal_expectations_have_exactly_one_winner(self, store: Store, realm: str) -> None:
        if not await self.offered(store, realm):
            return
        pairs = [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c"), ("b", "a"), ("c", "b")]
        for round_ in range(4):
            versions: dict[str, int] = {}
            for e in "abc":
                last = (await store.read(Scope(realm, "d", e), order="desc", limit=1)).events
                versions[e] = last[0].version if last else -1
            attempts = [store.append_many(realm, "d", many(*pairs[k % 6]), expected_versions=versions)
                        for k in range(12)]
            results = await asyncio.gather(*attempts, return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, VersionConflict)]
            assert len(winners) == 1 and len(losers) == 11, (round_, results)
            for loser in losers:
                # The winner moved two of the three entities; each loser names exactly those.
                moved = {e for e, _, _ in loser.conflicts}
                assert moved == {a.entity for a in winners[0].events}
        events = await read_all(store, Scope(realm))
        assert len(events) == 8 and strictly_increasing(positions(events))
        for e in "abc":
            got = [x.version for x in events if x.entity == e]
            assert got == list(range(len(got)))

    async def test_bad_input_is_refused(self, store: Store, realm: str) -> None:
        for events, expected_versions in BAD_INPUT:
            with pytest.raises((InvalidInput, NotSupported)) as err:
                await store.append_many(realm, "d", events, expected_versions=expected_versions)
            if store.supports_multi_entity:
                assert isinstance(err.value, InvalidInput), (events, expected_versions)
        assert (await store.read(Scope(realm))).events == []

    async def test_batch_limits(self, store: Store, realm: str) -> None:
        eid = str(uuid.uuid4())
        for bad in (many(*[f"e{i % 7}" for i in range(10_001)]), many("a", "b", event_id=eid)):
            with pytest.raises((InvalidInput, NotSupported)):
                await store.append_many(realm, "d", bad)
        if not await self.offered(store, realm):
            return
        big = await store.append_many(realm, "d", many(*[f"e{i % 7}" for i in range(10_000)]))
        assert len(big.events) == 10_000 and strictly_increasing([a.position for a in big.events])
        assert [a.version for a in big.events if a.entity == "e3"] == list(range(1429))
