"""Paxos rounds the server gives up on, against a real node: group state documents on Cassandra
(states.py). The node's CAS contention timeout is set to 0 at run time (nodetool), so every Paxos
round, serial reads included, times out at once, as rounds do under contention on a loaded
machine; then set back.

A serial read changes nothing, so one the server timed out is sent again until the store's
timeout; a conditional write that timed out is never sent again (its outcome is settled by reading
back, and reported as unknown when it cannot be decided).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import orjson
import pytest

from perhap import StorageUnavailable, open_store
from perhap.store.states import new_token

pytestmark = pytest.mark.cassandra

Contention = Callable[[bool], None]
T = TypeVar("T")


@pytest.fixture
def paxos_times_out(cassandra: Any) -> Iterator[Contention]:
    """A switch: True makes every Paxos round of the session's node time out at once, False sets
    the node back (so does the teardown, whatever the test did)."""
    node = cassandra.node
    if node is None:
        pytest.skip("changes the node at run time: needs the session's own node, not PERHAP_TEST_CASSANDRA_HOSTS")
    found = re.search(r"(\d+) ms", node.nodetool("gettimeout", "cascontention"))
    assert found, "nodetool gettimeout printed no timeout"
    normal = found.group(1)

    def switch(on: bool) -> None:
        node.nodetool("settimeout", "cascontention", "0" if on else normal)

    try:
        yield switch
    finally:
        switch(False)


async def still_waiting_while_rounds_time_out(paxos_times_out: Contention, call: Awaitable[T],
                                              what: str) -> asyncio.Future[T]:
    """Start ``call`` while every Paxos round times out; a second later it must still be waiting
    (sending its serial read again); then rounds resume. Returns the call, to be awaited."""
    paxos_times_out(True)
    try:
        future = asyncio.ensure_future(call)
        await asyncio.sleep(1.0)
        assert not future.done(), f"{what} was answered instead of being sent again"
    finally:
        paxos_times_out(False)
    return future


async def test_a_serial_read_the_server_timed_out_is_sent_again(cassandra: Any, paxos_times_out: Contention,
                                                                 realm: str) -> None:
    async with open_store(cassandra.new_url()) as store:
        states = store.group_states()
        token = new_token()
        assert await states.put(realm, "doc", orjson.dumps({"v": 1}), token, None)
        read = await still_waiting_while_rounds_time_out(paxos_times_out, states.get(realm, "doc"),
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
        put = await still_waiting_while_rounds_time_out(paxos_times_out, replace, "the write's read-back")
        with pytest.raises(StorageUnavailable, match="may or may not have been applied"):
            await asyncio.wait_for(put, 30)
        record = await states.get(realm, "doc")
        assert record is not None and record.token == first and orjson.loads(record.data) == {"v": 1}
