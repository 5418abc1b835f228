"""Requests the server gives up on, against a real node: Paxos rounds on group state documents
(states.py), and plain reads of events. The node's CAS contention timeout (or its read timeout)
is set to 0 at run time (nodetool), so every Paxos round, serial reads included (or every read),
times out at once, as they do under contention or on a loaded machine; then set back.

A read changes nothing, so one the server timed out is sent again until the store's timeout; a
conditional write that timed out is never sent again (its outcome is settled by reading back, and
reported as unknown when it cannot be decided).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import pytest

from perhap import StorageUnavailable, open_store
from perhap.model import Scope
from perhap.store.states import new_token

pytestmark = pytest.mark.cassandra

Contention = Callable[[bool], None]
T = TypeVar("T")


def timeout_switch(cassandra: Any, timeout: str) -> Iterator[Contention]:
    """A switch for one of the node's request timeouts (nodetool's name for it): True sets it to
    0, so every such request times out at once; False sets it back (so does the teardown, whatever
    the test did)."""
    node = cassandra.node
    if node is None:
        pytest.skip("changes the node at run time: needs the session's own node, not PERHAP_TEST_CASSANDRA_HOSTS")
    found = re.search(r"(\d+) ms", node.nodetool("gettimeout", timeout))
    assert found, "nodetool gettimeout printed no timeout"
    normal = found.group(1)

    def switch(on: bool) -> None:
        node.nodetool("settimeout", timeout, "0" if on else normal)

    try:
        yield switch
    finally:
        switch(False)


@pytest.fixture
def paxos_times_out(cassandra: Any) -> Iterator[Contention]:
    """Every Paxos round of the session's node times out at once while switched on."""
    yield from timeout_switch(cassandra, "cascontention")


@pytest.fixture
def reads_time_out(cassandra: Any) -> Iterator[Contention]:
    """Every read of the session's node times out at once while switched on."""
    yield from timeout_switch(cassandra, "read")


async def still_waiting_while_requests_time_out(times_out: Contention, call: Awaitable[T],
                                                what: str) -> asyncio.Future[T]:
    """Start ``call`` while every request that ``times_out`` switches (Paxos rounds, or reads)
    times out; a second later it must still be waiting (sending its read again); then the node
    is set back. Returns the call, to be awaited."""
    times_out(True)
    try:
        future = asyncio.ensure_future(call)
        # Time passing, not a wait for a state: that nothing answers within a second is the check
        # (a negative one needs a window), and no figure counts a read sent again (the store's
        # "retries" are write attempts) that could be waited on instead.
        await asyncio.sleep(1.0)
        assert not future.done(), f"{what} was answered instead of being sent again"
    finally:
        times_out(False)
    return future


async def test_a_serial_read_the_server_timed_out_is_sent_again(cassandra: Any, paxos_times_out: Contention,
                                                                 realm: str) -> None:
    async with open_store(cassandra.new_url()) as store:
        states = store.group_states()
        token = new_token()
        assert await states.put(realm, "doc", orjson.dumps({"v": 1}), token, None)
        read = await still_waiting_while_requests_time_out(paxos_times_out, states.get(realm, "doc"),
                                                           "a serial read that timed out")
        record = await asyncio.wait_for(read, 30)
        assert record is not None and record.token == token and orjson.loads(record.data) == {"v": 1}


async def test_a_serial_read_gives_up_at_the_stores_timeout(cassandra: Any, paxos_times_out: Contention,
                                                            realm: str) -> None:
    async with open_store(cassandra.new_url() + "&timeout=1") as store:
        states = store.group_states()
        assert await states.put(realm, "doc", orjson.dumps({"v": 1}), new_token(), None)
        paxos_times_out(True)
        with pytest.raises(StorageUnavailable, match="ReadTimeout"):
            await asyncio.wait_for(states.get(realm, "doc"), 30)


async def test_a_conditional_write_that_timed_out_is_not_sent_again(cassandra: Any, paxos_times_out: Contention,
                                                                     realm: str) -> None:
    """The replace times out; its read-back (a serial read) is sent again until the node is set
    back, then finds the document unchanged: the outcome is reported unknown, and the write was
    not sent again (had it been, the document would hold it)."""
    async with open_store(cassandra.new_url()) as store:
        states = store.group_states()
        first = new_token()
        assert await states.put(realm, "doc", orjson.dumps({"v": 1}), first, None)
        replace = states.put(realm, "doc", orjson.dumps({"v": 2}), new_token(), first)
        put = await still_waiting_while_requests_time_out(paxos_times_out, replace, "the write's read-back")
        with pytest.raises(StorageUnavailable, match="may or may not have been applied"):
            await asyncio.wait_for(put, 30)
        record = await states.get(realm, "doc")
        assert record is not None and record.token == first and orjson.loads(record.data) == {"v": 1}


async def test_event_reads_the_server_timed_out_are_sent_again(cassandra: Any, reads_time_out: Contention,
                                                               realm: str) -> None:
    """An entity's events, a domain's, one event by id, and the key listings, each read while
    every read times out: still waiting a second later, then answered in full once reads resume.
    (The driver tells reads from writes by their CQL, so no read can miss the rule.)"""
    async with open_store(cassandra.new_url()) as store:
        stored = await store.append_batch(realm, "d", "e", [{"type": "t", "event": {"i": i}} for i in range(5)])
        ids = [e.event_id for e in stored.events]

        async def read(scope: Scope) -> list[str]:
            return [e.event_id for e in (await store.read(scope)).events]

        async def by_id(event_id: str) -> list[str]:
            return [(await store.get_event(realm, "d", event_id)).event_id]

        async def keys(*names: str) -> list[str]:
            return list((await store.keys(*names)).keys)

        reads: list[tuple[str, Awaitable[list[str]], list[str]]] = [
            ("an entity read", read(Scope(realm, "d", "e")), ids),
            ("a domain read", read(Scope(realm, "d")), ids),
            ("a read by id", by_id(ids[2]), [ids[2]]),
            ("the entities of a domain", keys(realm, "d"), ["e"]),
            ("the types of an entity", keys(realm, "d", "e"), ["t"]),
        ]
        for what, call, expected in reads:
            waiting = await still_waiting_while_requests_time_out(reads_time_out, call, what)
            assert await asyncio.wait_for(waiting, 30) == expected, what


async def test_an_event_read_gives_up_at_the_stores_timeout(cassandra: Any, reads_time_out: Contention,
                                                            realm: str) -> None:
    async with open_store(cassandra.new_url() + "&timeout=1") as store:
        await store.append(realm, "d", "e", "t", {"i": 1})
        reads_time_out(True)
        with pytest.raises(StorageUnavailable, match="ReadTimeout"):
            await asyncio.wait_for(store.read(Scope(realm, "d", "e")), 30)


def test_reads_are_told_from_writes_by_their_cql() -> None:
    from cassandra.query import BatchStatement, SimpleStatement

    from perhap.backends.cassandra.driver import reads_only

    assert reads_only("SELECT head FROM ks.entity_log WHERE realm = ?")
    assert reads_only(SimpleStatement("  select * from ks.meta"))
    assert not reads_only(SimpleStatement("INSERT INTO ks.meta (key, value) VALUES (?, ?) IF NOT EXISTS"))
    assert not reads_only("UPDATE ks.meta SET value = ? WHERE key = ? IF value = ?")
    assert not reads_only(BatchStatement())
