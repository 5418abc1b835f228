"""Positions: ``ts * 1024 + slot``, unique in a realm whatever the number of writing processes.

``ts`` is the settle window's microsecond, taken from the writer's clock; two processes (or two
appends of one process) may pick the same one. So each store instance holds a *writer slot*
``s`` in [0, 1024) under a lease kept in ``meta`` (key ``slot/<s>[/<namespace>]``, value
``{"holder", "expires"}``, changed only by Paxos rounds conditioned on the value read), and:

- it hands out a ts under slot ``s`` only below the lease's expiry E it knows;
- a slot is taken over only from an expired lease (the taker's clock past E + clock_skew), or
  from one its holder released, and the taker hands out only ts at or above that E;
- within the instance, the ranges handed out never overlap (``Allocator``).

Two holders of one slot thus use disjoint ts (below E, at or above E): positions never repeat.
The proof is in docs/backends/cassandra.md ("Positions").
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import uuid
from dataclasses import dataclass

from ...errors import StorageUnavailable
from . import clock
from .records import SLOT_BITS
from .schema import Keyspace

SLOTS = 1 << SLOT_BITS
LEASE_US = 30_000_000  # a lease's length; renewed by appends once less than half of it is left


def position(ts: int, slot: int) -> int:
    """The position of the event at ``ts`` written under ``slot``."""
    return ts << SLOT_BITS | slot


@dataclass(frozen=True, slots=True)
class Lease:
    slot: int
    expires: int  # E: no ts at or above it is handed out under this lease
    value: str  # the stored value: the condition of the next change


class Allocator:
    """The ts ranges this instance handed out: a new range never overlaps an earlier one.

    Not simply increasing: a big batch placed seconds ahead of the clock must not push the small
    appends running beside it that far ahead, so a new range takes the first free place at or
    after its start. Ranges that end before the clock are forgotten (no later range starts below
    the clock: positions are placed ahead of it); ``low`` keeps every later range above them,
    and above the positions a migration gave the events of an older release (schema.py).
    """

    def __init__(self, low: int) -> None:
        self.low = low
        self.ranges: list[tuple[int, int]] = []  # (first, last), sorted
        self.top = 0  # the highest ts handed out

    def take(self, start: int, count: int) -> int:
        """The first ``ts0 >= start`` such that ``ts0 .. ts0 + count - 1`` is free; now taken."""
        now = clock.now_us()
        if self.ranges and self.ranges[0][0] < now:  # some may have ended: forget those
            ended = [last for _, last in self.ranges if last < now]
            if ended:
                self.low = max(self.low, max(ended) + 1)
                self.ranges = [r for r in self.ranges if r[1] >= now]
        ts0 = max(start, self.low)
        for first, last in self.ranges:
            if last < ts0:
                continue
            if first > ts0 + count - 1:
                break
            ts0 = last + 1
        bisect.insort(self.ranges, (ts0, ts0 + count - 1))
        self.top = max(self.top, ts0 + count - 1)
        return ts0


class Positions:
    """This instance's writer slot and its lease, and the allocator of its ts."""

    def __init__(self, ks: Keyspace, floor: int) -> None:
        self.ks = ks
        self.holder = uuid.uuid4().hex  # this instance, as lease holders are named
        self.lease: Lease | None = None
        self.allocator = Allocator(floor)
        self.changing: asyncio.Task[Lease] | None = None  # a renewal or acquisition under way

    async def place(self, start: int, count: int) -> tuple[int, int]:
        """``count`` consecutive ts from the first free one at or after ``start`` (see Allocator),
        and the slot they are written under. Waits for a lease that covers them: a lease that
        cannot be renewed is a 503, never a position another process may also give."""
        for _ in range(3):
            lease = self.lease
            if lease is not None and start + count <= lease.expires:
                ts0 = self.allocator.take(start, count)
                if ts0 + count <= lease.expires:  # else pushed past it by other ranges: renew first
                    if lease.expires - clock.now_us() < LEASE_US // 2:
                        self.ks.db.spawn(self._quietly_change())  # renew before it is needed
                    return ts0, lease.slot
            await self._change()
        raise StorageUnavailable("could not keep a writer slot (contention on the meta table or a slow cluster)")

    async def _quietly_change(self) -> None:
        try:
            await self._change()
        except StorageUnavailable:
            pass  # the next append that needs the lease tries again, and fails if it must

    async def _change(self) -> Lease:
        """Renew the lease (or take a slot when there is none): one change at a time, shared."""
        if self.changing is None or self.changing.done():
            self.changing = asyncio.ensure_future(self._renew_or_acquire())
        return await asyncio.shield(self.changing)

    async def _renew_or_acquire(self) -> Lease:
        lease = self.lease
        if lease is not None:
            # Expiries never go down (a clock stepped back must not shorten a lease others rely on).
            expires = max(clock.now_us() + LEASE_US, lease.expires)
            renewed = await self._swap(lease.slot, lease.value, self._value(expires))
            if renewed is not None:
                self.lease = renewed
                return renewed
        self.lease = await self._acquire()
        return self.lease

    def _key(self, slot: int) -> str:
        ns = self.ks.ns.name
        return f"slot/{slot}/{ns}" if ns else f"slot/{slot}"

    def _value(self, expires: int, *, free: bool = False) -> str:
        return json.dumps({"holder": self.holder, "expires": expires, "free": free}, sort_keys=True)

    async def _swap(self, slot: int, old: str, new: str, *, again: bool = True) -> Lease | None:
        """Replace a slot's value with ``new`` if it is still ``old`` (a Paxos round); else None.
        A value that names this instance is ours (an earlier change whose answer was lost)."""
        ks = self.ks
        rows = await ks.db.run(ks.q.meta_swap, (new, self._key(slot), old), lwt=True)
        if rows[0]["[applied]"]:
            return Lease(slot, json.loads(new)["expires"], new)
        current = rows[0].get("value")
        if again and current is not None and json.loads(current)["holder"] == self.holder:
            wanted = json.loads(new)
            # Expiries never go down while held; a release names the highest ts handed out instead.
            expires = wanted["expires"] if wanted["free"] else max(wanted["expires"], json.loads(current)["expires"])
            return await self._swap(slot, current, self._value(expires, free=wanted["free"]), again=False)
        return None

    async def _acquire(self) -> Lease:
        """A free slot: one never used, one whose lease expired more than clock_skew ago (by this
        clock), or one released. Probed from a random slot on."""
        ks = self.ks
        first = random.randrange(SLOTS)
        for i in range(SLOTS):
            slot = (first + i) % SLOTS
            key = self._key(slot)
            rows = await ks.db.run(ks.q.meta_get, (key,))
            now = clock.now_us()
            if not rows:
                value = self._value(now + LEASE_US)
                created = await ks.db.run(ks.q.meta_new, (key, value), lwt=True)
                if created[0]["[applied]"]:
                    return Lease(slot, now + LEASE_US, value)
                current = str(created[0]["value"])
            else:
                current = str(rows[0][0])
            held = json.loads(current)
            if not held["free"] and now <= held["expires"] + ks.options.skew_us:
                continue  # a live lease (or one that may still be in use by a clock behind ours)
            # Every ts of the earlier holder lies below its expiry: ours start there.
            self.allocator.low = max(self.allocator.low, held["expires"])
            taken = await self._swap(slot, current, self._value(max(now, held["expires"]) + LEASE_US))
            if taken is not None:
                return taken
        raise StorageUnavailable(f"all {SLOTS} writer slots of this store are held by live processes")

    async def release(self) -> None:
        """Give the slot back at close: its next holder may take it at once, and starts above
        every ts handed out here (best effort: unreleased, it expires)."""
        lease = self.lease
        if lease is None:
            return
        self.lease = None
        done = self._value(min(lease.expires, self.allocator.top + 1), free=True)
        try:
            await self._swap(lease.slot, lease.value, done)
        except StorageUnavailable:
            pass
