"""Scope events read for a lease before the group's state is taken, not while it is held.

A lease is a compare-and-set of the group's state (:mod:`.service`): it fails when another
process writes the state between its read and its write. A lease that must look for new events
reads the scope in that interval, and on Cassandra such a read near the head waits out the settle
window (300 ms by default): so long an attempt loses to every faster write of the other
processes, again and again, while their consumers take all the work. Where processes share a
store, the events a lease will look for are therefore read first (:func:`read_ahead`), and the
lease's look for new events (:func:`scan`, run within the compare-and-set) takes them from that
page, reading the scope itself only when the page does not cover the state it finds.

Every read here stops once its events hold READ_BYTES (one event at least; the next read goes on
from there), and the events read are kept for the deliveries in :class:`Bodies`, bounded in bytes
as well as in count.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..ids import utc_timestamp
from ..model import Event, Page, Scope
from ..store.base import Store
from ..store.query import event_bytes, read_query
from .settings import BODY_CACHE, BODY_CACHE_BYTES, READ_BYTES, GroupSettings
from .state import MAX_PENDING, GroupState, Key

#: Events read beyond those still wanted, in case some wait behind their entity.
SCAN_SLACK = 16
#: Events read from the scope at once when looking for new work.
SCAN_BATCH = 1000
#: A page read ahead holds this many times what one lease wants (several leases may be
#: stored together, and events of busy entities are passed over).
AHEAD = 4
#: Deferred events of one entity read back at once (one only while ``pending`` is full).
TAKE_BACK = 64
#: Parked events whose bodies a page of them reads at once.
PARKED_READS = 32


class Bodies:
    """Events the group's reads came across, kept for their deliveries (a leased event is then
    not read again by id): the newest BODY_CACHE events, holding at most BODY_CACHE_BYTES of data
    and meta (by count alone, 20,000 events of 900 KB that a group had read were 18 GB kept)."""

    def __init__(self) -> None:
        self.events: OrderedDict[str, Event] = OrderedDict()
        self.size = 0

    def remember(self, event: Event) -> None:
        events = self.events
        old = events.pop(event.event_id, None)
        if old is not None:
            self.size -= event_bytes(old)
        events[event.event_id] = event
        self.size += event_bytes(event)
        while len(events) > BODY_CACHE or (self.size > BODY_CACHE_BYTES and len(events) > 1):
            self.size -= event_bytes(events.popitem(last=False)[1])

    def get(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    def size_of(self, state: GroupState, chosen: list[int]) -> int:
        """The data and meta of the chosen pending events kept here (a lease's scan stops once
        they reach its bound; :func:`lease_cut` then counts every one)."""
        found = (self.events.get(state.pending[pos].event_id) for pos in chosen)
        return sum(event_bytes(event) for event in found if event is not None)


async def lease_cut(chosen: list[int], state: GroupState, max_bytes: int,
                    body: Callable[[str, str], Awaitable[Event]]) -> int:
    """How many of the chosen pending events, in order, a lease of ``max_bytes`` takes: up to the
    one whose data and meta reach it (one at least). A body not kept (read by another process, or
    let go since) is read by id with ``body(domain, event_id)``: the delivery needs it anyway."""
    size = 0
    for n, pos in enumerate(chosen, 1):
        waiting = state.pending[pos]
        size += event_bytes(await body(waiting.domain, waiting.event_id))
        if size >= max_bytes:
            return n
    return len(chosen)


async def parked_page(state: GroupState, after: int, limit: int, max_bytes: int | None,
                      body: Callable[[str, str], Awaitable[Event]]) -> tuple[list[dict[str, Any]], str | None]:
    """The parked events after position ``after``, in position order, up to ``limit`` of them or
    up to the one whose data and meta reach ``max_bytes``; and the last one's id when more follow
    (the ``following`` of the next page). Each is the event with its delivery count, ``parked_at``
    and ``reason``. Bodies not kept are read PARKED_READS at a time (one by one, 2,000 took 2.1-2.9 s
    on the test Cassandra node, 0.8-0.9 s so), so a page may read up to that many more than it
    holds: they are kept for the next page."""
    later = sorted(pos for pos in state.parked if pos > after)
    page: list[dict[str, Any]] = []
    size = 0
    start = 0
    while start < min(limit, len(later)) and (max_bytes is None or size < max_bytes):
        chosen = [state.parked[pos] for pos in later[start:min(start + PARKED_READS, limit)]]
        start += len(chosen)
        for parked, event in zip(chosen, await asyncio.gather(*(body(p.domain, p.event_id) for p in chosen)),
                                 strict=True):
            if max_bytes is not None and size >= max_bytes:
                break
            page.append({**event.to_json_dict(), "delivery": parked.deliveries,
                         "parked_at": utc_timestamp(parked.at), "reason": parked.reason})
            size += event_bytes(event)
    return page, (page[-1]["event_id"] if len(page) < len(later) else None)


@dataclass(slots=True)
class ReadAhead:
    """Every event of a group's scope after ``after`` up to the last of ``events``, in order;
    ``ended``: no other was there when they were read. ``settings``: the group's when read (a
    group deleted and made again may choose other events)."""

    settings: GroupSettings
    after: int
    events: list[Event]
    ended: bool

    def take(self, state: GroupState, wanted: int) -> tuple[list[Event], bool] | None:
        """Up to ``wanted`` events after ``state.scanned``, and whether they were the last ones;
        None when this page cannot say (another group's, it starts later, or it ends at
        ``scanned`` with more to come)."""
        scanned = state.scanned
        if scanned < self.after or state.settings != self.settings:
            return None
        start = bisect.bisect_right(self.events, scanned, key=lambda e: e.position)
        rest = self.events[start:]
        if not rest and not self.ended:
            return None
        return rest[:wanted], self.ended and len(rest) <= wanted


async def read_ahead(store: Store, realm: str, name: str, known: tuple[int, GroupState] | None, consumer: str,
                     limit: int, remember: Callable[[Event], None]) -> ReadAhead | None:
    """The events a lease of up to ``limit`` events to ``consumer`` will look for, each also
    given to ``remember``; None when its pending events are enough, or when no other process can
    write the group (nothing races the lease). ``known``: the group's stored ``scanned`` and its
    state, as this process last saw them (None: read them now)."""
    if not store.shared_across_processes:
        return None
    if known is None:
        record = await store.group_states().get(realm, name)
        if record is None:
            return None
        state = GroupState.from_bytes(record.data)
        state.expire(time.time())  # (a copy of its own) as the lease will find it
        known = state.scanned, state
    after, state = known
    # Judged on the leases still running: the compare-and-set will take back those that ran out
    # (a cached state is not changed here), so they hold no room and no entity.
    now = time.time()
    room = min(limit, state.settings.max_in_flight - state.held_by(consumer, now))
    # Leases stored together take from the same pending events: skip the read only when they
    # are plenty.
    if room <= 0 or len(state.choose_pending(AHEAD * room, state.busy_entities(now))) >= AHEAD * room:
        return None
    # Events waiting behind busy entities are taken in too, so read well past what is wanted.
    page = await _read(store, state.settings.scope(realm), state.settings, after,
                       min(SCAN_BATCH, AHEAD * (room + SCAN_SLACK)), remember)
    return ReadAhead(state.settings, after, list(page.events), page.next is None)


async def scan(store: Store, realm: str, state: GroupState, room: int, busy: set[Key], chosen: list[int],
               ahead: ReadAhead | None, remember: Callable[[Event], None],
               full: Callable[[], bool] | None = None) -> None:
    """A lease's look for new events: take the scope's events after ``state.scanned`` into the
    state until ``room`` are chosen, ``full()`` says the chosen are enough, or none is left, from
    ``ahead`` where it covers them, else read (each event read is given to ``remember``)."""
    settings = state.settings
    while len(chosen) < room and not (full is not None and full()):
        # Read about what is still wanted: events read past the last one taken in are dropped.
        wanted = min(SCAN_BATCH, room - len(chosen) + SCAN_SLACK)
        found = ahead.take(state, wanted) if ahead is not None else None
        if found is None:
            page = await _read(store, settings.scope(realm), settings, state.scanned, wanted, remember)
            found = page.events, page.next is None
        events, last = found
        taken = state.admit(events, room, busy, chosen)
        if last or taken < len(events):
            return


async def take_back_deferred(store: Store, realm: str, state: GroupState, room: int,
                             remember: Callable[[Event], None]) -> bool:
    """Read back the deferred events of up to ``room`` entities that have nothing leased or
    pending, oldest deferral first, into ``pending``: an entity's next events, in its order.
    Whether any was (the state changed)."""
    settings = state.settings
    ready = state.ready_deferred()[:room]
    for key in ready:
        scope, first = Scope(realm, *key), state.deferred[key].first
        limit = TAKE_BACK if len(state.pending) < MAX_PENDING else 1
        # One event more than taken, so the entity stays deferred from its next event's position.
        page = await _read(store, scope, settings, first - 1, limit + 1, remember)
        events = page.events
        if page.next is None:
            state.take_back(key, events, None)
            continue
        if len(events) == 1:  # one event filled the read's bytes: the next one is read alone
            after = await _read(store, scope, settings, events[0].position, 1, remember)
            if not after.events:
                state.take_back(key, events, None)
                continue
            events = [*events, after.events[0]]
        state.take_back(key, events[:-1], events[-1].position)
    return bool(ready)


async def _read(store: Store, scope: Scope, settings: GroupSettings, after: int, limit: int,
                remember: Callable[[Event], None]) -> Page:
    """``scope`` (the group's, or one entity of it) after position ``after``, of the group's
    types, each event also given to ``remember``."""
    page = await store.read_page(read_query(scope, after_position=after, limit=limit, types=settings.types,
                                            max_bytes=READ_BYTES))
    for event in page.events:
        remember(event)
    return page
