"""The page a lease reads before taking its group's state (perhap.groups.ahead): it answers only
for what it covers, so a lease that uses it chooses from exactly the events a read of the scope
at that moment would have given. Pure but for the last test (a SQLite file). The two-server tests
(tests/test_groups_chaos.py) check leases through it on PostgreSQL and Cassandra."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from perhap import open_store
from perhap.groups import state as group_state
from perhap.groups.ahead import ReadAhead, read_ahead
from perhap.groups.settings import GroupSettings
from perhap.groups.state import Deferred, GroupState, Lease
from perhap.model import Event

SETTINGS = GroupSettings()


def event(position: int) -> Event:
    return Event(f"id{position}", "r", "d", f"e{position}", "t", 0, "", b"{}", b"{}", position)


def state(scanned: int, settings: GroupSettings = SETTINGS) -> GroupState:
    return GroupState(settings, 0.0, scanned, 0)


def page(after: int, positions: list[int], ended: bool) -> ReadAhead:
    return ReadAhead(SETTINGS, after, [event(p) for p in positions], ended)


def positions(found: tuple[list[Event], bool] | None) -> tuple[list[int], bool] | None:
    return None if found is None else ([e.position for e in found[0]], found[1])


def test_events_after_the_state_s_position_up_to_the_wanted_count() -> None:
    ahead = page(10, [12, 15, 20, 21], ended=True)
    assert positions(ahead.take(state(10), 10)) == ([12, 15, 20, 21], True)
    assert positions(ahead.take(state(15), 10)) == ([20, 21], True)
    assert positions(ahead.take(state(13), 10)) == ([15, 20, 21], True)  # between two events
    # More than wanted: not the last ones.
    assert positions(ahead.take(state(10), 2)) == ([12, 15], False)
    assert positions(ahead.take(state(10), 4)) == ([12, 15, 20, 21], True)


def test_a_page_that_was_not_the_end_says_so() -> None:
    ahead = page(10, [12, 15], ended=False)
    assert positions(ahead.take(state(10), 5)) == ([12, 15], False)
    assert ahead.take(state(15), 5) is None  # read on from the store
    assert ahead.take(state(30), 5) is None


def test_the_end_of_the_scope_is_nothing_more() -> None:
    assert positions(page(10, [12], ended=True).take(state(12), 5)) == ([], True)
    assert positions(page(10, [], ended=True).take(state(10), 5)) == ([], True)
    assert positions(page(10, [], ended=True).take(state(40), 5)) == ([], True)


def test_a_state_before_the_page_or_of_other_settings_is_not_answered() -> None:
    ahead = page(10, [12, 15], ended=True)
    assert ahead.take(state(9), 5) is None  # events at or below 10 were not read
    assert ahead.take(state(10, GroupSettings(types=("placed",))), 5) is None  # the group was made again


async def test_leases_that_ran_out_hold_no_room_and_the_cached_state_is_left_alone(tmp_path: Path) -> None:
    """A consumer at max_in_flight whose leases ran out: its lease will take them back inside the
    compare-and-set, so the page is read ahead for it (not left to a read inside the
    compare-and-set); while they run, it has no room and nothing is read."""
    async with open_store(f"sqlite:///{tmp_path}/ahead.db") as store:
        store.shared_across_processes = True  # type: ignore[misc]  # as PostgreSQL's and Cassandra's
        for i in range(4):
            await store.append("r", "d", f"e{i}", "t", {"i": i})
        cached = GroupState(GroupSettings(max_in_flight=2), 0.0, 0, 0)

        def hold(until: float) -> None:
            cached.leases = {p: Lease(f"id{p}", "d", f"x{p}", "c", until, 1) for p in (1, 2)}

        hold(time.time() + 60)
        assert await read_ahead(store, "r", "g", (0, cached), "c", 2, lambda e: None) is None
        hold(time.time() - 1)
        remembered: list[Event] = []
        ahead = await read_ahead(store, "r", "g", (0, cached), "c", 2, remembered.append)
        assert ahead is not None
        assert [e.entity for e in ahead.events] == ["e0", "e1", "e2", "e3"] == [e.entity for e in remembered]
        assert len(cached.leases) == 2  # judged, not expired: the cache is this process's record


def test_past_the_pending_cap_a_busy_entity_s_events_are_deferred_and_taken_back_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred events (perhap.groups.state): counted per entity from its first, never listed;
    the group's oldest open event and its waiting count include them; they survive the stored
    form; read back, those up to ``scanned`` wait again in order and the rest are the scan's."""
    monkeypatch.setattr(group_state, "MAX_PENDING", 2)
    s = state(0)
    hot = [Event(f"h{p}", "r", "d", "hot", "t", v, "", b"{}", b"{}", p) for v, p in enumerate((1, 2, 3, 5, 6))]
    cold = Event("c4", "r", "d", "cold", "t", 0, "", b"{}", b"{}", 4)
    chosen: list[int] = []
    busy: set[tuple[str, str]] = set()
    assert s.admit([*hot[:3], cold, *hot[3:]], 10, busy, chosen) == 6
    assert chosen == [1, 4]  # the cold event is not stopped by the hot entity's backlog
    assert sorted(s.pending) == [1, 2, 4] and s.deferred == {("d", "hot"): Deferred(3, 3)}
    assert (s.scanned, s.oldest_open(), s.waiting()) == (6, 1, 6)
    s.lease(chosen, "a", 0.0)
    s = GroupState.from_bytes(s.to_bytes())
    assert s.deferred == {("d", "hot"): Deferred(3, 3)} and s.ready_deferred() == []  # hot's 1 and 2 first
    s.ack("a", ["h1", "c4"])
    s.lease([2], "a", 0.0)
    s.ack("a", ["h2"])
    assert s.ready_deferred() == [("d", "hot")] and s.oldest_open() == 3
    s.take_back(("d", "hot"), hot[2:4], 6)  # two of the three deferred; the next one is at 6
    assert sorted(s.pending) == [3, 5] and s.deferred == {("d", "hot"): Deferred(6, 1)}
    s.take_back(("d", "hot"), [hot[4], Event("h9", "r", "d", "hot", "t", 5, "", b"{}", b"{}", 9)], 10)
    assert sorted(s.pending) == [3, 5, 6] and s.deferred == {}  # 9 is past scanned: the scan's
    # A state stored before deferral existed reads as none deferred.
    old = orjson.loads(state(0).to_bytes())
    del old["deferred"]
    assert GroupState.from_bytes(orjson.dumps(old)).deferred == {}
