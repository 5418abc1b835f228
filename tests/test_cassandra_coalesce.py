"""Cassandra: plain writes of concurrent appends go out together (perhap/backends/cassandra/coalesce.py),
and nothing about the appends changes: every event stored once, in order, settled, on every scope."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from perhap import Scope, open_store
from perhap.backends.cassandra import CassandraStore
from perhap.backends.cassandra.coalesce import DIRECT_BYTES

pytestmark = pytest.mark.cassandra


async def read_all(store: Any, scope: Scope) -> list[Any]:
    events, following = [], None
    while True:
        page = await store.read(scope, following=following, limit=1000)
        events += page.events
        if page.next is None:
            return events
        following = page.next


async def test_concurrent_appends_share_requests_and_stay_exact(cassandra: Any, realm: str) -> None:
    url = cassandra.new_url()
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        coalescer = store.writer.coalescer
        await store.append(realm, "d0", "warm", "t", {"n": -1})  # names known, statements prepared
        await store.writer.ks.db.drain()  # and its follow-ups have run: their rounds are not counted below
        before = coalescer.rounds
        results = await asyncio.gather(*(
            store.append(realm if i % 2 else realm + "-b", f"d{i % 3}", f"e{i}", "t", {"n": i})
            for i in range(64)))
        assert all(r.created for r in results)
        await store.writer.ks.db.drain()  # the follow-ups (marking ok) have run
        # 64 appends, each with pending rows and rows to mark ok: far fewer rounds than requests
        # they would have sent alone (three plain requests each, besides the Paxos round).
        assert coalescer.rounds - before < 32, coalescer.rounds - before
    async with open_store(url) as other:  # another process: reads only what is settled
        for r in (realm, realm + "-b"):
            events = await read_all(other, Scope(r))
            wanted = sorted(i for i in range(64) if (i % 2 == 1) == (r == realm))
            assert sorted(e.event["n"] for e in events if e.event["n"] >= 0) == wanted
            positions = [e.position for e in events]
            assert positions == sorted(positions) and len(set(positions)) == len(positions)
        by_domain = await asyncio.gather(*(read_all(other, Scope(realm, f"d{k}")) for k in range(3)))
        assert sum(len([e for e in evs if e.event["n"] >= 0]) for evs in by_domain) == 32
        first = results[5].first
        assert (await other.get_event(realm, "d2", first.event_id)).event == {"n": 5}


async def test_a_large_append_writes_its_rows_itself(cassandra: Any, realm: str) -> None:
    async with open_store(cassandra.new_url()) as store:
        assert isinstance(store, CassandraStore)
        coalescer = store.writer.coalescer
        await store.append(realm, "d", "warm", "t", {"n": 0})
        await store.writer.ks.db.drain()
        before = coalescer.rounds
        big = {"blob": "x" * (DIRECT_BYTES + 1)}
        await store.append(realm, "d", "big", "t", big)  # pending rows: sent directly, no round
        assert coalescer.rounds == before
        await store.writer.ks.db.drain()
        assert coalescer.rounds == before + 1  # marking ok carries keys only: coalesced
        assert (await store.read(Scope(realm, "d", "big"))).events[0].event == big
        assert [e.event for e in await read_all(store, Scope(realm, "d"))][-1] == big
