"""The store contract: what every backend's :class:`~perhap.store.Store` does, in process."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ...errors import EventIdConflict, InvalidInput, NotFound, VersionConflict
from ...model import Scope
from ...store.base import Store
from .base import BackendContract, StoreFactory
from .helpers import read_all


def wrong(value: object) -> Any:
    """A value of the wrong type, passed on purpose to check that the store refuses it."""
    return value


class StoreContract(BackendContract):
    """Appends, idempotency, batches, reads, paging, keys, validation and the life cycle."""

    async def test_append_and_read_entity(self, store: Store, realm: str) -> None:
        r1 = await store.append(realm, "d", "e", "created", {"a": 1}, meta={"by": "me"})
        r2 = await store.append(realm, "d", "e", "renamed", [1, "two", None])
        assert r1.created and r2.created
        assert (r1.first.version, r2.first.version) == (0, 1)
        uuid.UUID(r1.first.event_id)
        assert r1.first.timestamp.endswith("Z")
        page = await store.read(Scope(realm, "d", "e"))
        assert page.next is None
        assert [e.to_dict() for e in page.events] == [
            {"event_id": r1.first.event_id, "realm": realm, "domain": "d", "entity": "e", "type": "created",
             "event": {"a": 1}, "meta": {"by": "me"}, "version": 0, "position": r1.first.position,
             "timestamp": r1.first.timestamp},
            {"event_id": r2.first.event_id, "realm": realm, "domain": "d", "entity": "e", "type": "renamed",
             "event": [1, "two", None], "meta": {}, "version": 1, "position": r2.first.position,
             "timestamp": r2.first.timestamp},
        ]
        assert 1 <= r1.first.position < r2.first.position

    async def test_server_ids_are_uuid7_and_time_ordered(self, store: Store, realm: str) -> None:
        ids = [(await store.append(realm, "d", "e", "t", i)).first.event_id for i in range(20)]
        assert all(uuid.UUID(i).version == 7 for i in ids)
        assert ids == sorted(ids)

    async def test_any_json_value_is_an_event(self, store: Store, realm: str) -> None:
        values: list[Any] = [None, True, 0, -1.5, "text", [], {}, {"nested": {"deep": [1, {"x": "ü✓"}]}}]
        for v in values:
            await store.append(realm, "d", "e", "t", v)
        assert [e.event for e in (await store.read(Scope(realm, "d", "e"))).events] == values

    async def test_versions_are_per_entity_and_gapless(self, store: Store, realm: str) -> None:
        await asyncio.gather(*[store.append(realm, "d", f"e{i % 4}", "t", i) for i in range(80)])
        for n in range(4):
            events = (await store.read(Scope(realm, "d", f"e{n}"))).events
            assert [e.version for e in events] == list(range(20))

    async def test_expected_version(self, store: Store, realm: str) -> None:
        await store.append(realm, "d", "e", "t", 0, expected_version=-1)
        with pytest.raises(VersionConflict) as err:
            await store.append(realm, "d", "e", "t", 1, expected_version=-1)
        assert err.value.current_version == 0
        await store.append(realm, "d", "e", "t", 1, expected_version=0)
        with pytest.raises(VersionConflict) as err:
            await store.append(realm, "d", "e", "t", 2, expected_version=5)
        assert err.value.current_version == 1 and err.value.expected_version == 5
        # A conflict stores nothing.
        assert [e.event for e in (await store.read(Scope(realm, "d", "e"))).events] == [0, 1]
        # A new entity is at version -1.
        with pytest.raises(VersionConflict) as err:
            await store.append(realm, "d", "fresh", "t", 0, expected_version=0)
        assert err.value.current_version == -1
        assert (await store.read(Scope(realm, "d", "fresh"))).events == []
        assert (await store.keys(realm, "d")).keys == ["e"]
        # A version no entity reaches is a conflict like another, not invalid input, however large
        # (above what the databases' integers hold too): the current version, and nothing stored.
        for beyond in (2**62 + 1, 2**63, 10**20):
            for entity, current in (("e", 1), ("fresh", -1)):
                with pytest.raises(VersionConflict) as err:
                    await store.append_batch(realm, "d", entity, [{"type": "t", "event": 9}], expected_version=beyond)
                assert (err.value.current_version, err.value.expected_version) == (current, beyond)
        assert [e.event for e in (await store.read(Scope(realm, "d"))).events] == [0, 1]

    async def test_concurrent_same_expected_version_exactly_one_wins(self, store: Store, realm: str) -> None:
        for round_ in range(5):
            expected = round_ - 1
            results = await asyncio.gather(
                *[store.append(realm, "d", "e", "t", {"w": w}, expected_version=expected) for w in range(16)],
                return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, VersionConflict)]
            assert len(winners) == 1 and len(losers) == 15
            assert all(r.current_version == round_ for r in losers)
        events = (await store.read(Scope(realm, "d", "e"))).events
        assert [e.version for e in events] == [0, 1, 2, 3, 4]

    async def test_idempotent_append(self, store: Store, realm: str) -> None:
        eid = str(uuid.uuid4())
        first = await store.append(realm, "d", "e", "t", {"a": 1}, event_id=eid, meta={"m": 1})
        again = await store.append(realm, "d", "e", "t", {"a": 1}, event_id=eid, meta={"m": 1})
        assert first.created and not again.created
        assert again.events == first.events
        base: dict[str, Any] = {"domain": "d", "entity": "e", "type": "t", "event": {"a": 1}, "meta": {"m": 1}}
        changes: list[dict[str, Any]] = [{"event": {"a": 2}}, {"meta": {"m": 2}}, {"type": "other"},
                                         {"entity": "e2"}, {"domain": "d2"}, {"meta": None}]
        for change in changes:
            args = base | change
            with pytest.raises(EventIdConflict):
                await store.append(realm, args["domain"], args["entity"], args["type"], args["event"],
                                   event_id=eid, meta=args["meta"])
        assert len((await store.read(Scope(realm))).events) == 1

    async def test_idempotency_ignores_key_order_but_not_types(self, store: Store, realm: str) -> None:
        eid = str(uuid.uuid4())
        await store.append(realm, "d", "e", "t", {"a": 1, "b": 2}, event_id=eid)
        assert not (await store.append(realm, "d", "e", "t", {"b": 2, "a": 1}, event_id=eid)).created
        with pytest.raises(EventIdConflict):
            await store.append(realm, "d", "e", "t", {"a": True, "b": 2}, event_id=eid)
        with pytest.raises(EventIdConflict):
            await store.append(realm, "d", "e", "t", {"a": 1.0, "b": 2}, event_id=eid)

    async def test_event_id_reused_in_another_realm_conflicts(self, store: Store, realm: str) -> None:
        eid = str(uuid.uuid4())
        await store.append(realm, "d", "e", "t", 1, event_id=eid)
        with pytest.raises(EventIdConflict):
            await store.append(realm + "x", "d", "e", "t", 1, event_id=eid)

    async def test_idempotent_retry_ignores_expected_version(self, store: Store, realm: str) -> None:
        # A retry of an acknowledged append must get the original answer even though the entity moved on.
        eid = str(uuid.uuid4())
        await store.append(realm, "d", "e", "t", 1, event_id=eid, expected_version=-1)
        await store.append(realm, "d", "e", "t", 2)
        again = await store.append(realm, "d", "e", "t", 1, event_id=eid, expected_version=-1)
        assert not again.created and again.first.version == 0

    async def test_concurrent_idempotent_retries_store_once(self, store: Store, realm: str) -> None:
        eid = str(uuid.uuid4())
        results = await asyncio.gather(*[store.append(realm, "d", "e", "t", {"x": 1}, event_id=eid)
                                         for _ in range(20)])
        assert sum(r.created for r in results) == 1
        assert len({(r.first.event_id, r.first.version, r.first.timestamp) for r in results}) == 1
        assert len((await store.read(Scope(realm, "d", "e"))).events) == 1

    async def test_one_id_sent_at_once_to_several_entities_is_stored_once(self, store: Store, realm: str) -> None:
        # Not a retry: the same client id raced to different entities (and realms). One append
        # stores it; every other is refused with 409; the id is in one entity, once.
        for n in range(5):
            eid = str(uuid.uuid4())
            targets = [(realm, "d", f"e{n}-{i}") for i in range(4)] + [(realm + "x", "d", f"e{n}")]
            results = await asyncio.gather(*[store.append(r, d, e, "t", {"x": 1}, event_id=eid)
                                             for r, d, e in targets], return_exceptions=True)
            created = [t for t, r in zip(targets, results, strict=True) if not isinstance(r, BaseException)]
            assert len(created) == 1, results
            assert all(isinstance(r, EventIdConflict) for r in results if isinstance(r, BaseException)), results
            stored = [t for t in targets if (await store.read(Scope(*t))).events]
            assert stored == created

    async def test_batch_is_atomic_and_ordered(self, store: Store, realm: str) -> None:
        await store.append(realm, "d", "e", "t", "before")
        result = await store.append_batch(realm, "d", "e", [
            {"type": "a", "event": 1}, {"type": "b", "event": 2, "meta": {"k": "v"}}, {"type": "a", "event": 3}])
        assert [a.version for a in result.events] == [1, 2, 3]
        with pytest.raises(InvalidInput):
            await store.append_batch(realm, "d", "e", [{"type": "a", "event": 1}, {"type": "keys", "event": 2}])
        with pytest.raises(VersionConflict):
            await store.append_batch(realm, "d", "e", [{"type": "a", "event": 9}] * 3, expected_version=0)
        events = (await store.read(Scope(realm, "d", "e"))).events
        assert [e.event for e in events] == ["before", 1, 2, 3]
        assert [e.type for e in events] == ["t", "a", "b", "a"]
        assert events[2].meta == {"k": "v"}

    async def test_batch_limits(self, store: Store, realm: str) -> None:
        with pytest.raises(InvalidInput):
            await store.append_batch(realm, "d", "e", [])
        with pytest.raises(InvalidInput):
            await store.append_batch(realm, "d", "e", [{"type": "t", "event": i} for i in range(10_001)])
        eid = str(uuid.uuid4())
        with pytest.raises(InvalidInput):
            await store.append_batch(realm, "d", "e", [{"type": "t", "event": 1, "event_id": eid}] * 2)
        big = await store.append_batch(realm, "d", "e", [{"type": "t", "event": i} for i in range(10_000)])
        assert big.events[-1].version == 9_999

    async def test_batch_idempotency(self, store: Store, realm: str) -> None:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        batch = [{"type": "t", "event": i, "event_id": ids[i]} for i in range(3)]
        first = await store.append_batch(realm, "d", "e", batch)
        again = await store.append_batch(realm, "d", "e", batch)
        assert first.created and not again.created and again.events == first.events
        # Partly present: conflict, nothing stored.
        partly = batch[:2] + [{"type": "t", "event": 9, "event_id": str(uuid.uuid4())}]
        with pytest.raises(EventIdConflict):
            await store.append_batch(realm, "d", "e", partly)
        # Present but different.
        changed = batch[:2] + [{"type": "t", "event": 99, "event_id": ids[2]}]
        with pytest.raises(EventIdConflict):
            await store.append_batch(realm, "d", "e", changed)
        assert len((await store.read(Scope(realm, "d", "e"))).events) == 3

    async def test_domain_and_realm_reads_in_commit_order(self, store: Store, realm: str) -> None:
        appended = []
        for i in range(30):
            r = await store.append(realm, f"d{i % 2}", f"e{i % 5}", f"t{i % 3}", i)
            appended.append((r.first.event_id, i))
        realm_events = await read_all(store, Scope(realm), limit=7)
        assert [e.event for e in realm_events] == list(range(30))
        d0 = await read_all(store, Scope(realm, "d0"), limit=4)
        assert [e.event for e in d0] == list(range(0, 30, 2))
        typed = await read_all(store, Scope(realm, "d0", type="t1"), limit=2)
        assert [e.event for e in typed] == [i for i in range(0, 30, 2) if i % 3 == 1]
        realm_typed = await read_all(store, Scope(realm, type="t2"))
        assert [e.event for e in realm_typed] == [i for i in range(30) if i % 3 == 2]
        entity_typed = await read_all(store, Scope(realm, "d1", "e1", "t0"))
        assert [e.event for e in entity_typed] == [i for i in range(30) if i % 2 == 1 and i % 5 == 1 and i % 3 == 0]

    async def test_paging_next_and_following(self, store: Store, realm: str) -> None:
        ids = [(await store.append(realm, "d", "e", "t", i)).first.event_id for i in range(10)]
        page = await store.read(Scope(realm, "d", "e"), limit=4)
        assert [e.event for e in page.events] == [0, 1, 2, 3] and page.next == ids[3]
        page = await store.read(Scope(realm, "d", "e"), limit=4, following=page.next)
        assert [e.event for e in page.events] == [4, 5, 6, 7] and page.next == ids[7]
        page = await store.read(Scope(realm, "d", "e"), limit=4, following=page.next)
        assert [e.event for e in page.events] == [8, 9] and page.next is None
        # Exactly full last page: next is the last id (more may follow), then an empty page.
        page = await store.read(Scope(realm, "d", "e"), limit=5, following=ids[4])
        assert page.next is None and len(page.events) == 5
        page = await store.read(Scope(realm, "d", "e"), following=ids[9])
        assert page.events == [] and page.next is None

    async def test_following_outside_scope_is_not_found(self, store: Store, realm: str) -> None:
        other = (await store.append(realm, "d", "other", "t", 1)).first.event_id
        await store.append(realm, "d", "e", "t", 1)
        with pytest.raises(NotFound):
            await store.read(Scope(realm, "d", "e"), following=other)
        with pytest.raises(NotFound):
            await store.read(Scope(realm, "d2"), following=other)
        with pytest.raises(NotFound):
            await store.read(Scope(realm + "x"), following=other)
        with pytest.raises(NotFound):
            await store.read(Scope(realm), following=str(uuid.uuid4()))
        with pytest.raises(InvalidInput):
            await store.read(Scope(realm), following="not-a-uuid")

    async def test_read_limits(self, store: Store, realm: str) -> None:
        for bad in (0, -1, 10_001, "5", 1.5, True):
            with pytest.raises(InvalidInput):
                await store.read(Scope(realm), limit=wrong(bad))
        assert (await store.read(Scope(realm), limit=10_000)).events == []

    async def test_get_event(self, store: Store, realm: str) -> None:
        r = await store.append(realm, "d", "e", "t", {"x": 1})
        event = await store.get_event(realm, "d", r.first.event_id)
        assert event.event == {"x": 1} and event.version == 0
        with pytest.raises(NotFound):
            await store.get_event(realm, "other", r.first.event_id)
        with pytest.raises(NotFound):
            await store.get_event(realm, "d", str(uuid.uuid4()))
        # Without a domain: any of the realm's, and still none of another realm's.
        assert (await store.get_event(realm, None, r.first.event_id)).event_id == r.first.event_id
        with pytest.raises(NotFound):
            await store.get_event(realm + "x", None, r.first.event_id)

    async def test_keys_at_every_level(self, store: Store, realm: str) -> None:
        for d in ("b", "a", "c"):
            for e in ("z", "y"):
                for t in ("t2", "t1"):
                    await store.append(realm, d, e, t, 0)
        assert realm in (await store.keys()).keys
        assert (await store.keys(realm)).keys == ["a", "b", "c"]
        assert (await store.keys(realm, "a")).keys == ["y", "z"]
        assert (await store.keys(realm, "a", "y")).keys == ["t1", "t2"]
        page = await store.keys(realm, limit=2)
        assert page.keys == ["a", "b"] and page.next == "b"
        page = await store.keys(realm, after=page.next, limit=2)
        assert page.keys == ["c"] and page.next is None
        assert (await store.keys(realm + "nope")).keys == []
        assert (await store.keys(realm, "nope", "nope")).keys == []
        # A NUL in `after` (no name holds one) is read as ending it, alike on every backend
        # (PostgreSQL's text cannot carry it: this was a 503 there).
        assert (await store.keys(realm, after="\x00")).keys == ["a", "b", "c"]
        assert (await store.keys(realm, after="a\x00b")).keys == ["b", "c"]
        assert (await store.keys(realm, "a", "y", after="t1\x00")).keys == ["t2"]
        assert realm in (await store.keys(after=realm[:-1] + "\x00")).keys

    async def test_keys_names_are_validated(self, store: Store, realm: str) -> None:
        # As a read's: one backend answered an empty page, another a storage error (a 503's).
        for levels in [("nul\x00",), (realm, "a/b"), (realm, "d", "\ud800"), (realm, "d", ""), (5,),
                       (None, "d"), (realm, None, "e")]:
            with pytest.raises(InvalidInput):
                await store.keys(*levels)  # type: ignore[arg-type]
        for after in (5, "\ud800"):
            with pytest.raises(InvalidInput):
                await store.keys(realm, after=after)  # type: ignore[arg-type]

    async def test_keys_sort_by_code_point(self, store: Store, realm: str) -> None:
        names = ["b", "B", "a", "é", "Z", "_x", "10", "9", "ü", "日本", "a b"]
        for n in names:
            await store.append(realm, "d", n, "t", 0)
        assert (await store.keys(realm, "d")).keys == sorted(names)

    async def test_names_are_validated(self, store: Store, realm: str) -> None:
        bad = ["", "a/b", "keys", "x" * 256, "é" * 128, "tab\there", "nul\x00", "del\x7f"]
        for name in bad:
            with pytest.raises(InvalidInput):
                await store.append(realm, "d", name, "t", 1)
        for name in ("_system", "keys", ""):
            with pytest.raises(InvalidInput):
                await store.append(name, "d", "e", "t", 1)
        ok = ["x" * 255, "é" * 127 + "x", "with space", "'; DROP TABLE events; --", "%_*", "日本語", "🙂"]
        for name in ok:
            await store.append(realm, "d", name, "t", 1)
        assert sorted((await store.keys(realm, "d")).keys) == sorted(ok)

    async def test_invalid_values(self, store: Store, realm: str) -> None:
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, event_id="nope")
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, meta=wrong([1]))
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, expected_version=wrong("1"))
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, expected_version=-2)
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, expected_version=True)
        with pytest.raises(InvalidInput):
            await store.append(realm, "d", "e", "t", 1, expected_version=wrong(0.5))
        assert (await store.read(Scope(realm))).events == []

    async def test_reopen_keeps_everything(self, store_factory: StoreFactory, realm: str) -> None:
        async with await store_factory() as s:
            await asyncio.gather(*[s.append(realm, "d", f"e{i % 3}", "t", i) for i in range(50)])
            before = [e.to_dict() for e in (await s.read(Scope(realm))).events]
        async with await store_factory() as s:
            after = [e.to_dict() for e in (await s.read(Scope(realm))).events]
            assert after == before and len(after) == 50
            # Versions continue where they stopped, caches or not.
            r = await s.append(realm, "d", "e0", "t", "next", expected_version=16)
            assert r.first.version == 17

    async def test_close_finishes_in_flight_appends(self, store_factory: StoreFactory, realm: str) -> None:
        s = await store_factory()
        tasks = [asyncio.ensure_future(s.append(realm, "d", "e", "t", i)) for i in range(200)]
        await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await s.close()
        async with await store_factory() as s2:
            assert len((await s2.read(Scope(realm, "d", "e"))).events) == 200

    async def test_paging_under_concurrent_writers_no_gap_no_duplicate(self, store: Store, realm: str) -> None:
        acknowledged: list[str] = []
        done = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(150):
                if i % 10 == 0:
                    batch = [{"type": "t", "event": [w, i, k]} for k in range(3)]
                    r = await store.append_batch(realm, f"d{w % 2}", f"e{w}", batch)
                    acknowledged.extend(a.event_id for a in r.events)
                else:
                    r = await store.append(realm, f"d{w % 2}", f"e{w}", "t", [w, i])
                    acknowledged.append(r.first.event_id)

        async def reader(scope: Scope) -> list[str]:
            seen: list[str] = []
            following = None
            while True:
                finished = done.is_set()
                page = await store.read(scope, following=following, limit=7)
                seen.extend(e.event_id for e in page.events)
                if page.events:
                    following = page.events[-1].event_id
                elif finished:
                    return seen
                else:
                    await asyncio.sleep(0.001)

        readers = [asyncio.ensure_future(reader(Scope(realm))), asyncio.ensure_future(reader(Scope(realm, "d0")))]
        await asyncio.gather(*[writer(w) for w in range(6)])
        done.set()
        realm_seen, d0_seen = await asyncio.gather(*readers)
        assert len(realm_seen) == len(set(realm_seen)) == len(acknowledged)
        assert set(realm_seen) == set(acknowledged)
        stored = [e.event_id for e in await read_all(store, Scope(realm))]
        assert realm_seen == stored  # the live reader saw the final commit order
        assert d0_seen == [e.event_id for e in await read_all(store, Scope(realm, "d0"))]

    async def test_health(self, store: Store) -> None:
        assert await store.health()
