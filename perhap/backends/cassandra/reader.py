"""Reading: an event by id, an entity's slice, and domain and realm scopes through the bucket
directory, settled behind the horizon, either way; identical reads running at once share one query.

Readers of domains and realms return only positions whose ts is at least ``settle`` older than
their clock (the horizon); a pending row at or below it is settled (see settle.py), so the set of
events at or below a horizon is final: pages never skip nor repeat an event, oldest or newest
first, and a newest-first read shows exactly what an oldest-first one could.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ...errors import store_closed
from ...model import MAX_LIMIT, MAX_POSITION, Cursor, Event
from ...slotted import fast_constructor
from ...store.query import ReadQuery, event_bytes
from . import clock
from .driver import Row, gather, quiet
from .records import SLOT_BITS, EntityKey, IndexRow, cell
from .scan import MIN_FILTERED_CHUNK, ChunkSizing, IndexScan
from .schema import Keyspace
from .settle import Settler

MAX_SEQ = 2**63 - 1
#: Event's constructor on the read paths: every field, positionally (see perhap.slotted).
make_event = fast_constructor(Event)
ENTITY_CHUNK = 500  # rows per query when several types are filtered here


@dataclass(slots=True)
class SharedRead:
    """Identical reads: the one running, and the one the callers who came later wait for."""

    running: asyncio.Task[list[Event]] | None = None
    waiting: asyncio.Future[list[Event]] | None = None


class Reader:
    def __init__(self, ks: Keyspace, settler: Settler) -> None:
        self.ks, self.settler = ks, settler
        self.reads: dict[ReadQuery, SharedRead] = {}

    # ----------------------------------------------------------------- by id

    async def by_id(self, event_id: str) -> Event | None:
        """The committed event with this id, its realm as stored, its cursor its position."""
        ks = self.ks
        u = uuid.UUID(event_id)
        shard = ks.ns.shard(u)
        rows = await ks.db.run(ks.q.by_id, (shard, u))
        if not rows:
            return None
        realm, domain, entity, type_, version, ts, stamp, data, meta, txn, ok, claims, position = rows[0]
        if realm is None or not ok and not await self.settler.is_committed((realm, domain, entity), txn):
            # A client-chosen id whose row is not written yet (it is, after the acknowledgement) or
            # never will be (its writer failed after the commit): the entities it was sent to know.
            return await self.claimed(u, claims) if claims else None
        if not ok:
            ks.db.spawn(quiet(ks.db.run(ks.q.by_id_ok, (shard, u))))
        return Event(event_id, realm, domain, entity, type_, version, clock.stamp(ts, stamp), data, meta,
                     position, position)

    async def claimed(self, u: uuid.UUID, claims: Iterable[EntityKey]) -> Event | None:
        """A client-chosen id's event, found through the entities its writers claimed it for before
        their commits: the client-id marker in the entity partition is the truth (written only by a
        committed batch). Writes the id's row for the next reader."""
        ks = self.ks
        keys: list[EntityKey] = sorted(claims)
        markers = await gather([ks.db.run(ks.q.client_id, (*k, u)) for k in keys])
        for key, marker in zip(keys, markers, strict=True):
            if not marker:
                continue
            rows = await ks.db.run(ks.q.versions, (*key, [marker[0][0]]))
            if not rows:
                continue
            v, _, t, ts, st, d, m, position = rows[0]
            shard = ks.ns.shard(u)
            ks.db.spawn(quiet(ks.db.run(ks.q.by_id_add, (shard, u, *key, t, v, ts, cell(st), d, m, None, True,
                                                         position))))
            return Event(str(u), key[0], key[1], key[2], t, v, clock.stamp(ts, st), d, m, position, position)
        return None

    async def stored(self, ids: list[str]) -> dict[str, Event]:
        found = await gather([self.by_id(i) for i in ids])
        return {e.event_id: e for e in found if e is not None}

    # ----------------------------------------------------------------- scopes

    async def read(self, query: ReadQuery) -> list[Event]:
        """Up to ``query.limit`` events of the scope within the query's bounds, in its order."""
        if query.scope.entity is not None:
            return await self.read_entity(query)
        # Identical reads running at once (many subscribers of one scope) share one query. A caller
        # never joins a read that started before it (it might miss what was acknowledged meanwhile):
        # it joins the one that starts next.
        slot = self.reads.get(query)
        if slot is None:
            slot = self.reads[query] = SharedRead()
        if slot.running is None:
            running = slot.running = asyncio.ensure_future(self._shared_read(query, slot))
            return list(await asyncio.shield(running))
        if slot.waiting is None:
            slot.waiting = asyncio.get_running_loop().create_future()
        return list(await asyncio.shield(slot.waiting))

    async def _shared_read(self, query: ReadQuery, slot: SharedRead) -> list[Event]:
        try:
            if query.descending:
                return await self.newest_first(query)
            return await self.oldest_first(query)
        finally:
            waiting, slot.waiting = slot.waiting, None
            if waiting is None:
                slot.running = None
                self.reads.pop(query, None)
            else:
                slot.running = asyncio.ensure_future(self._shared_read(query, slot))
                slot.running.add_done_callback(functools.partial(_copy_result, waiting))

    def close(self) -> None:
        """Fail the reads still waiting for their turn."""
        for slot in self.reads.values():
            if slot.waiting is not None and not slot.waiting.done():
                slot.waiting.set_exception(store_closed())

    def scan(self, query: ReadQuery) -> tuple[IndexScan, int | None, int | None]:
        """The index walk of a realm or domain query, and its exclusive position bounds."""
        scope = query.scope
        assert not isinstance(query.after, tuple) and not isinstance(query.before, tuple)  # positions here
        after = _bound(max, query.after, query.after_position)
        before = _bound(min, query.before, query.before_position)
        scan = IndexScan(self.ks, self.ks.ns.stored(scope.realm), scope.domain or "", query.types, query.descending)
        return scan, after, before

    async def oldest_first(self, query: ReadQuery) -> list[Event]:
        """Settled events after the lower bound. When the page is not full and rows above the
        horizon are visible, waits once until they settle (settle + their lead, at most 10 s more)
        and reads on: so a read after an acknowledgement includes the acknowledged events.

        A live stream's read (``query.live``) returns what has settled at once, and with nothing
        settled waits only for the oldest row above the horizon: its next read takes the rest,
        so each event reaches a stream about W after its position rather than after the newest
        event's."""
        scan, start, before = self.scan(query)
        scope, limit, live = query.scope, query.limit, query.live
        out: list[Event] = []
        left = query.max_bytes  # bytes the read may still take (None: no bound but the count)
        waited = False
        while True:
            horizon = clock.now_us() - self.ks.options.settle_us
            rows, unsettled, ended = await self.collect_oldest(scan, start, before, limit - len(out), horizon, live,
                                                               left)
            if rows:
                start = rows[-1].position
                settled = await self.settler.settle_rows(scope.realm, scope.domain or "", rows)
                out += settled
                if left is not None:
                    left -= sum(map(event_bytes, settled))
            if len(out) >= limit:
                return out[:limit]
            if left is not None and left <= 0:
                return out
            if unsettled is None:
                if ended:
                    return out
                continue  # aborted attempts were dropped: fill the page
            if waited or live and out:
                return out
            await self.until_settled(unsettled)
            waited = True

    async def newest_first(self, query: ReadQuery) -> list[Event]:
        """Settled events below the upper bound, newest first: exactly those an oldest-first read
        could return now. Rows above the horizon come first: a read that meets some waits once
        until they settle, then reads from its new horizon down (a read after an acknowledgement
        includes it, as oldest first)."""
        scan, after, start = self.scan(query)
        scope, limit = query.scope, query.limit
        out: list[Event] = []
        left = query.max_bytes  # as oldest first
        waited = False
        while True:
            horizon = clock.now_us() - self.ks.options.settle_us
            begin = _bound(min, start, (horizon + 1) << SLOT_BITS) if waited else start
            rows, newest, ended = await self.collect_newest(scan, begin, after, limit - len(out), horizon, left,
                                                            may_wait=not waited and not out)
            if newest is not None:
                await self.until_settled(newest)
                waited = True
                continue
            if rows:
                start = rows[-1].position
                settled = await self.settler.settle_rows(scope.realm, scope.domain or "", rows)
                out += settled
                if left is not None:
                    left -= sum(map(event_bytes, settled))
            if len(out) >= limit:
                return out[:limit]
            if left is not None and left <= 0:
                return out
            if ended:
                return out

    @staticmethod
    async def collect_oldest(scan: IndexScan, start: int | None, before: int | None, want: int,
                             horizon: int, first: bool = False,
                             left: int | None = None) -> tuple[list[IndexRow], int | None, bool]:
        """Up to about ``want`` rows after ``start``: those at or below the horizon, the ts of the
        newest row seen above it (rows come in ts order: all after the first such; with
        ``first``, the oldest, and the walk stops there), and whether the scope (or the bound)
        ended. With ``left``, the walk also stops at the row whose bytes reach it."""
        rows: list[IndexRow] = []
        newest = None
        seen = 0
        async with contextlib.aclosing(scan.chunks(start, want + 1, left)) as chunks:
            async for chunk in chunks:
                for row in chunk:
                    if before is not None and row.position >= before:
                        return rows, newest, True
                    if row.ts > horizon:
                        if first:
                            return rows, row.ts, False
                        newest = row.ts
                    else:
                        rows.append(row)
                        if left is not None:
                            left -= row.size
                            if left <= 0:  # (no row above the horizon yet: they come last)
                                return rows, newest, False
                    seen += 1
                if seen >= want:
                    return rows, newest, False
        return rows, newest, True

    @staticmethod
    async def collect_newest(scan: IndexScan, start: int | None, after: int | None, want: int, horizon: int,
                             left: int | None = None, *, may_wait: bool) -> tuple[list[IndexRow], int | None, bool]:
        """Up to about ``want`` rows at or below the horizon before ``start``, newest first; or,
        when ``may_wait``, the ts of the first row above the horizon (the newest); and whether
        the scope (or the bound) ended. With ``left``, the walk also stops at the row whose bytes
        reach it."""
        rows: list[IndexRow] = []
        async with contextlib.aclosing(scan.chunks(start, want + 1, left)) as chunks:
            async for chunk in chunks:
                for row in chunk:
                    if after is not None and row.position <= after:
                        return rows, None, True
                    if row.ts > horizon:
                        if may_wait:
                            return rows, row.ts, False
                        continue  # arrived after the read began: an oldest-first read could not see it
                    rows.append(row)
                    if left is not None:
                        left -= row.size
                        if left <= 0:
                            return rows, None, False
                if len(rows) >= want:
                    return rows, None, False
        return rows, None, True

    async def until_settled(self, ts: int) -> None:
        """Sleep until the row at ``ts`` is behind the horizon (bounded, in case a writer's clock
        runs far ahead): when this returns, ``clock.now_us() - settle`` is past it.

        Checked against the clock the horizon is taken from, and slept again if need be: the event
        loop's timers may fire early by that clock (uvloop counts whole milliseconds from the time
        it cached when its iteration began). A read that woke early and read on from a horizon
        still short of the row would skip the acknowledged event it had just waited for."""
        options = self.ks.options
        until = min(ts, clock.now_us() + options.skew_us + clock.MAX_LEAD_US) + options.settle_us
        while True:
            left = until - clock.now_us()
            if left < 0:
                return
            await asyncio.sleep(left / 1e6 + 0.001)

    async def read_entity(self, query: ReadQuery) -> list[Event]:
        """An entity's events between the version bounds, of the query's types, within its position
        bounds (positions grow with versions), from either end: one slice of its partition."""
        ks = self.ks
        scope = query.scope
        assert scope.domain is not None and scope.entity is not None
        realm, domain, entity = scope.realm, scope.domain, scope.entity
        stored = (ks.ns.stored(realm), domain, entity)
        types = query.types
        if len(types) > 1:  # the entity's own types (a static column) may narrow the filter
            found = await ks.db.run(ks.q.types, stored)
            present = set(found[0][0] or ()) if found else set()
            if not present & set(types):
                return []
            types = () if present <= set(types) else tuple(sorted(present & set(types)))
        statements = ks.q.entity_read[query.descending]
        low, high = -1 if query.after is None else query.after, MAX_SEQ if query.before is None else query.before
        # (``is None``, not ``or``: before_position=0 bounds the read to nothing, it is not "no bound")
        before = query.before_position
        positions = (query.after_position or 0, MAX_POSITION if before is None else before)
        if query.max_bytes is None and not types and positions == (0, MAX_POSITION):
            rows = await ks.db.run(statements[0], (*stored, low, high, query.limit))
        elif query.max_bytes is None and len(types) <= 1:
            rows = await ks.db.run(statements[len(types) + 1], (*stored, low, high, *positions, *types, query.limit))
        else:
            rows = await self.entity_chunks(query, stored, (low, high), positions, types)
        stamp = clock.stamp
        return [make_event(event_id, realm, domain, entity, t, v, st or stamp(ts), d, m, position, v)
                for v, event_id, t, ts, st, d, m, position in rows]

    async def entity_chunks(self, query: ReadQuery, stored: tuple[str, str, str], versions: tuple[Cursor, Cursor],
                            positions: tuple[int, int], types: tuple[str, ...]) -> list[Row]:
        """An entity's rows a chunk at a time: several types are filtered here (ENTITY_CHUNK rows a
        query), and a read bounded by bytes asks for about as many rows as the bytes left hold
        (see scan.ChunkSizing) and stops at the row that reaches them."""
        ks = self.ks
        several = len(types) > 1
        statement = ks.q.entity_read[query.descending][1 if len(types) != 1 else 2]
        type_args = () if several else types
        low, high = versions
        # (Several types filtered here: never fewer rows a query than a scope's scan asks for, or
        # each event of another type could cost a round trip once the bytes left are few.)
        sizing = None if query.max_bytes is None else \
            ChunkSizing(query.max_bytes, MIN_FILTERED_CHUNK if several else 1, MAX_LIMIT)
        rows: list[Row] = []
        while len(rows) < query.limit:
            ask = ENTITY_CHUNK if several else query.limit - len(rows)
            if sizing is not None:
                ask = min(ask, sizing.next())
            chunk = await ks.db.run(statement, (*stored, low, high, *positions, *type_args, ask))
            if sizing is not None:
                sizing.fetched(len(chunk), sum(len(r[5]) + len(r[6]) for r in chunk))
            for row in chunk:
                if several and row[2] not in types:
                    continue
                rows.append(row)
                if sizing is not None:
                    sizing.handed(len(row[5]) + len(row[6]))
                    if sizing.left <= 0:
                        return rows
            if len(chunk) < ask:
                break
            low, high = (low, chunk[-1][0]) if query.descending else (chunk[-1][0], high)
        return rows[:query.limit]


def _copy_result(future: asyncio.Future[list[Event]], task: asyncio.Task[list[Event]]) -> None:
    """Hand a shared read's result to the callers who waited for it."""
    if future.done():
        return
    if task.cancelled():
        future.cancel()
        return
    exc = task.exception()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _bound(pick: Callable[[int, int], int], a: int | None, b: int | None) -> int | None:
    """The tighter of two optional bounds (``pick``: max for lower bounds, min for upper ones)."""
    if a is None:
        return b
    return a if b is None else pick(a, b)
