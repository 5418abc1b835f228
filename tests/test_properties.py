"""Property-based tests (hypothesis): names, bodies and paging through the HTTP app in process, and
the consumer's reads (newest first, by position) over random interleavings of writes in the store."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perhap.errors import InvalidInput, NotSupported
from perhap.model import Scope, check_name
from perhap.store.base import Store
from perhap.testing.conformance import read_by_position, read_every

# Every property runs once per backend with the same store: each example uses a fresh realm.
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

valid_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1, max_size=60
).filter(lambda s: s not in ("keys", ".", "..") and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


def fresh_realm() -> str:
    return "p" + uuid.uuid4().hex[:10]


@SETTINGS
@given(name=valid_names)
async def test_any_valid_name_round_trips(client: httpx.AsyncClient, name: str) -> None:
    realm = fresh_realm()
    seg = quote(name, safe="")
    r = await client.post(f"/{realm}/{seg}/{seg}/{seg}", json={"event": name})
    assert r.status_code == 201, r.text
    events = (await client.get(f"/{realm}/{seg}/{seg}")).json()["events"]
    assert [(e["domain"], e["entity"], e["type"], e["event"]) for e in events] == [(name, name, name, name)]
    assert (await client.get(f"/{realm}/keys")).json()["keys"] == [name]
    assert (await client.get(f"/{realm}/{seg}/{seg}/keys")).json()["keys"] == [name]


@SETTINGS
@given(name=st.text(max_size=300))
async def test_names_are_accepted_exactly_when_valid(client: httpx.AsyncClient, name: str) -> None:
    try:
        check_name(name, "entity")
        valid = True
    except InvalidInput:
        valid = False
    realm = fresh_realm()
    r = await client.post(f"/{realm}/d/{quote(name, safe='', errors='surrogatepass')}/t", json={"event": 1})
    if name == "":
        assert r.status_code in (400, 405)  # an empty segment changes the route's shape
    else:
        assert r.status_code == (201 if valid else 400), r.text
    assert r.status_code < 500


@SETTINGS
@given(event=json_values, meta=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
async def test_any_json_body_round_trips(client: httpx.AsyncClient, event: Any, meta: dict[str, Any]) -> None:
    realm = fresh_realm()
    r = await client.post(f"/{realm}/d/e/t", json={"event": event, "meta": meta})
    assert r.status_code == 201, r.text
    stored = (await client.get(f"/{realm}/d/e")).json()["events"][0]
    assert stored["event"] == event and stored["meta"] == meta


@SETTINGS
@given(body=st.binary(max_size=200))
async def test_arbitrary_bytes_never_500(client: httpx.AsyncClient, body: bytes) -> None:
    realm = fresh_realm()
    r = await client.post(f"/{realm}/d/e/t", content=body)
    assert r.status_code in (201, 400), r.text
    r = await client.post(f"/{realm}/d/e", content=body)
    assert r.status_code in (201, 400), r.text


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(count=st.integers(0, 40), limit=st.integers(1, 12), entities=st.integers(1, 4))
async def test_paging_returns_each_event_once_in_order(client: httpx.AsyncClient, count: int, limit: int,
                                                       entities: int) -> None:
    realm = fresh_realm()
    for i in range(count):
        assert (await client.post(f"/{realm}/d/e{i % entities}/t", json={"event": i})).status_code == 201
    for url, expected in [(f"/{realm}/d", list(range(count))), (f"/{realm}", list(range(count))),
                          (f"/{realm}/d/e0", list(range(0, count, entities)))]:
        seen: list[int] = []
        params: dict[str, Any] = {"limit": limit}
        pages = 0
        while True:
            page = (await client.get(url, params=params)).json()
            pages += 1
            seen += [e["event"] for e in page["events"]]
            assert len(page["events"]) <= limit
            if page["next"] is None:
                break
            params["following"] = page["next"]
        assert seen == expected
        assert pages <= len(expected) // limit + 1


@pytest.mark.parametrize("limit", ["1", "10000"])
async def test_limit_bounds_are_inclusive(client: httpx.AsyncClient, realm: str, limit: str) -> None:
    assert (await client.get(f"/{realm}", params={"limit": limit})).status_code == 200


# --------------------------------------------------------------------------- the consumer's reads

# One write of a random interleaving: ("one", entity, type), ("batch", entity, types) or
# ("many", [(entity, type), ...]); entities and types are drawn from small pools so they overlap.
ENTITIES = st.sampled_from(["a", "b", "c", "d"])
TYPES = st.sampled_from(["x", "y", "z"])
writes = st.one_of(
    st.tuples(st.just("one"), st.sampled_from(["d1", "d2"]), ENTITIES, TYPES),
    st.tuples(st.just("batch"), st.sampled_from(["d1", "d2"]), ENTITIES, st.lists(TYPES, min_size=1, max_size=4)),
    st.tuples(st.just("many"), st.sampled_from(["d1", "d2"]), st.lists(st.tuples(ENTITIES, TYPES), min_size=1,
                                                                        max_size=5)),
)
CONSUMER_SETTINGS = settings(max_examples=20, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


async def apply(store: Store, realm: str, write: tuple[Any, ...], n: int) -> int:
    """Make one write; the number of events it stored (a refused multi-entity append stores none)."""
    kind, domain = write[0], write[1]
    if kind == "one":
        await store.append(realm, domain, write[2], write[3], n)
        return 1
    if kind == "batch":
        batch = [{"type": t, "event": [n, k]} for k, t in enumerate(write[3])]
        await store.append_batch(realm, domain, write[2], batch)
        return len(write[3])
    events = [{"entity": e, "type": t, "event": [n, k]} for k, (e, t) in enumerate(write[2])]
    if not store.supports_multi_entity:
        with pytest.raises(NotSupported):
            await store.append_many(realm, domain, events)
        return 0
    await store.append_many(realm, domain, events)
    return len(events)


@CONSUMER_SETTINGS
@given(plan=st.lists(writes, min_size=1, max_size=10), concurrently=st.booleans(), limit=st.integers(1, 7),
       types=st.lists(TYPES, max_size=2, unique=True))
async def test_desc_and_position_paging_agree_with_asc(store: Store, plan: list[tuple[Any, ...]],
                                                       concurrently: bool, limit: int, types: list[str]) -> None:
    realm = fresh_realm()
    if concurrently:
        counts = await asyncio.gather(*[apply(store, realm, w, n) for n, w in enumerate(plan)])
    else:
        counts = [await apply(store, realm, w, n) for n, w in enumerate(plan)]
    everything = await read_every(store, Scope(realm))
    assert len(everything) == sum(counts)
    if store.backend_name in ("sqlite", "postgres"):
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    else:
        assert all(a.position < b.position for a, b in zip(everything, everything[1:], strict=False))
    for scope in (Scope(realm), Scope(realm, "d1"), Scope(realm, "d2", "a"), Scope(realm, "d1", "b")):
        params: dict[str, Any] = {"types": types} if types else {}
        asc = [e.event_id for e in await read_every(store, scope, limit=limit, **params)]
        assert asc == [e.event_id for e in everything if scope.contains(e) and (not types or e.type in types)]
        desc = [e.event_id for e in await read_every(store, scope, limit=limit, order="desc", **params)]
        assert desc == asc[::-1], scope
        by_position = [e.event_id for e in await read_by_position(store, scope, limit=limit, **params)]
        assert by_position == asc, scope
        backwards: list[str] = []
        before = 2**63 - 1
        while page := (await store.read(scope, order="desc", before_position=before, limit=limit, **params)).events:
            backwards += [e.event_id for e in page]
            before = page[-1].position
        assert backwards == desc, scope
