"""The page a lease reads before taking its group's state (perhap.groups.ahead): it answers only
for what it covers, so a lease that uses it chooses from exactly the events a read of the scope
at that moment would have given. Pure: no store. The two-server tests (tests/test_groups_chaos.py)
check leases through it on PostgreSQL and Cassandra."""

from __future__ import annotations

from perhap.groups.ahead import ReadAhead
from perhap.groups.settings import GroupSettings
from perhap.groups.state import GroupState
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
