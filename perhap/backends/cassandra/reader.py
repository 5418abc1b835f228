"""Reading: an event by id, an entity's slice, and domain and realm scopes through the bucket
directory, settled behind the horizon; identical reads running at once share one query.

Readers of domains and realms return only positions at least ``settle`` older than their clock
(the horizon); a pending row at or below it is settled (see settle.py), so the set of events at or
below a horizon is final: pages never skip nor repeat an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass

from ...errors import StorageUnavailable
from ...model import Cursor, Event, Scope
from . import clock
from .driver import Row, gather, quiet
from .records import EntityKey, IndexRow
from .schema import ERA, Keyspace
from .settle import Settler

#: No writer can have reached an era that starts this far after now (big batches sit seconds ahead).
ERA_HORIZON_US = 600_000_000

Position = tuple[int, uuid.UUID]  # (ts, event id): the order of domains and realms
ReadKey = tuple[Scope, Position | None, int]


@dataclass(slots=True)
class SharedRead:
    """Identical reads: the one running, and the one the callers who came later wait for."""

    running: asyncio.Task[list[Event]] | None = None
    waiting: asyncio.Future[list[Event]] | None = None


class Reader:
    def __init__(self, ks: Keyspace, settler: Settler) -> None:
        self.ks, self.settler = ks, settler
        self.reads: dict[ReadKey, SharedRead] = {}

    # ----------------------------------------------------------------- by id

    async def by_id(self, event_id: str) -> Event | None:
        """The committed event with this id, its realm as stored, its cursor its position."""
        ks = self.ks
        u = uuid.UUID(event_id)
        shard = ks.ns.shard(u)
        rows = await ks.db.run(ks.q.by_id, (shard, u))
        if not rows:
            return None
        realm, domain, entity, type_, version, ts, stamp, data, meta, txn, ok, claims = rows[0]
        if realm is None or not ok and not await self.settler.is_committed((realm, domain, entity), txn):
            # A client-chosen id whose row is not written yet (it is, after the acknowledgement) or
            # never will be (its writer failed after the commit): the entities it was sent to know.
            return await self.claimed(u, claims) if claims else None
        if not ok:
            ks.db.spawn(quiet(ks.db.run(ks.q.by_id_ok, (shard, u))))
        return Event(event_id, realm, domain, entity, type_, version, clock.stamp(ts, stamp), data, meta, (ts, u))

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
            v, _, t, ts, st, d, m = rows[0]
            shard = ks.ns.shard(u)
            ks.db.spawn(quiet(ks.db.run(ks.q.by_id_add, (shard, u, *key, t, v, ts, st, d, m, None, True))))
            return Event(str(u), key[0], key[1], key[2], t, v, clock.stamp(ts, st), d, m, (ts, u))
        return None

    async def stored(self, ids: list[str]) -> dict[str, Event]:
        found = await gather([self.by_id(i) for i in ids])
        return {e.event_id: e for e in found if e is not None}

    # ----------------------------------------------------------------- scopes

    async def read(self, scope: Scope, after: Cursor | None, limit: int) -> list[Event]:
        """Up to ``limit`` events of the scope after the cursor."""
        if scope.entity is not None:
            assert after is None or isinstance(after, int)
            return await self.read_entity(scope, after, limit)
        assert after is None or isinstance(after, tuple)
        # Identical reads running at once (many subscribers of one scope) share one query. A caller
        # never joins a read that started before it (it might miss what was acknowledged meanwhile):
        # it joins the one that starts next.
        key = (scope, after, limit)
        slot = self.reads.get(key)
        if slot is None:
            slot = self.reads[key] = SharedRead()
        if slot.running is None:
            running = slot.running = asyncio.ensure_future(self._shared_read(key, slot))
            return list(await asyncio.shield(running))
        if slot.waiting is None:
            slot.waiting = asyncio.get_running_loop().create_future()
        return list(await asyncio.shield(slot.waiting))

    async def _shared_read(self, key: ReadKey, slot: SharedRead) -> list[Event]:
        try:
            return await self.read_scope(*key)
        finally:
            waiting, slot.waiting = slot.waiting, None
            if waiting is None:
                slot.running = None
                self.reads.pop(key, None)
            else:
                slot.running = asyncio.ensure_future(self._shared_read(key, slot))
                slot.running.add_done_callback(functools.partial(_copy_result, waiting))

    def close(self) -> None:
        """Fail the reads still waiting for their turn."""
        for slot in self.reads.values():
            if slot.waiting is not None and not slot.waiting.done():
                slot.waiting.set_exception(StorageUnavailable("the store is closed"))

    async def read_entity(self, scope: Scope, after: int | None, limit: int) -> list[Event]:
        ks = self.ks
        assert scope.domain is not None and scope.entity is not None
        realm, domain, entity = scope.realm, scope.domain, scope.entity
        stored = (ks.ns.stored(realm), domain, entity)
        start = -1 if after is None else after
        if scope.type is None:
            rows = await ks.db.run(ks.q.entity_read, (*stored, start, limit))
        else:
            rows = await ks.db.run(ks.q.entity_read_type, (*stored, start, scope.type, limit))
        return [Event(str(u), realm, domain, entity, t, v, clock.stamp(ts, st), d, m, v)
                for v, u, t, ts, st, d, m in rows]

    async def read_scope(self, scope: Scope, after: Position | None, limit: int) -> list[Event]:
        """Settled events after ``after``. When the page is not full and rows above the horizon are
        visible, waits once until they settle (settle + their lead, at most 10 s more) and reads
        on: so a read after an acknowledgement includes the acknowledged events."""
        options = self.ks.options
        out: list[Event] = []
        waited = False
        while True:
            horizon = clock.now_us() - options.settle_us
            want = limit - len(out)
            rows = await self.scope_rows(scope, after, want)
            settled = [r for r in rows if r.ts <= horizon]  # a prefix: rows come in position order
            if settled:
                after = (settled[-1].ts, settled[-1].id)
                out += await self.settler.settle_rows(scope.realm, scope.domain or "", settled)
            if len(out) >= limit:
                return out[:limit]
            if len(settled) == len(rows):
                if len(rows) < want:
                    return out  # the end of the scope
                continue  # aborted attempts were dropped: fill the page
            if waited:
                return out
            # Unsettled rows exist: wait until the newest we saw is behind the horizon (bounded, in
            # case a writer's clock runs far ahead), then read on from where we are.
            now = clock.now_us()
            target = min(rows[-1].ts, now + options.skew_us + clock.MAX_LEAD_US)
            await asyncio.sleep(max(0, target + options.settle_us - now) / 1e6 + 0.001)
            waited = True

    async def scope_rows(self, scope: Scope, after: Position | None, limit: int) -> list[IndexRow]:
        """Up to ``limit`` index rows after ``after`` in position order, settled or not."""
        ks = self.ks
        realm, key = ks.ns.stored(scope.realm), scope.domain or ""
        typed = scope.type is not None
        type_args = (scope.type,) if typed else ()
        start = None if after is None else after[0] // ks.bucket_us
        rows: list[Row] = []
        async with contextlib.aclosing(self.buckets(realm, key, start)) as buckets:
            async for bucket in buckets:
                if after is not None and bucket == start:
                    args = (realm, key, bucket, after[0], after[1], *type_args, limit - len(rows))
                    rows += await ks.db.run(ks.q.scope_after[typed], args)
                else:
                    args = (realm, key, bucket, *type_args, limit - len(rows))
                    rows += await ks.db.run(ks.q.scope_all[typed], args)
                if len(rows) >= limit:
                    break
        return [IndexRow._make(r) for r in rows]

    async def buckets(self, realm: str, key: str, start: int | None) -> AsyncGenerator[int, None]:
        """The scope's non-empty buckets from ``start`` on, in order, from the directory."""
        ks = self.ks
        era = None if start is None else start // ERA
        first = start is not None
        horizon = clock.now_us() + ERA_HORIZON_US
        while True:
            if not first:
                if era is not None and (era + 1) * ERA * ks.bucket_us > horizon:
                    return  # no writer can have reached a later era yet
                rows = await ks.db.run(ks.q.next_era, (realm, key, -1 if era is None else era))
                if not rows:
                    return
                era = rows[0][0]
            first = False
            assert era is not None
            for (bucket,) in await ks.db.run(ks.q.buckets, (realm, key, era, start or era * ERA)):
                yield bucket


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
