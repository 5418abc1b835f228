"""Settling write attempts: whether one committed, fencing one that has not so that it never will,
and repairing what a writer left undone (see "the settle window" in docs/backends/cassandra.md).

A reader that sees a pending row at or below its horizon decides it for good (Lemma 2): the
attempt's marker present and not aborted, the event is committed (returned, and the reader
finishes the writer's follow-ups); otherwise the reader *fences* the attempt with a Paxos round of
its own (``INSERT marker (aborted) IF NOT EXISTS``). Paxos orders the writer's batch and the fence
on the entity partition: exactly one applies.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from ...errors import InvalidInput, StorageUnavailable
from ...model import Event
from ...slotted import fast_constructor
from . import clock
from .driver import gather
from .names import Names
from .records import ATTEMPT, EntityKey, IndexRow, cell
from .schema import Keyspace

MAX_TXNS = 100_000
make_event = fast_constructor(Event)  # every field, positionally (see perhap.slotted)  # resolved attempts remembered

#: A pending attempt of an index row: (domain, entity, attempt id).
AttemptKey = tuple[str, str, uuid.UUID]


class Settler:
    """Decides attempts, remembers the outcomes, and finishes committed attempts' rows."""

    def __init__(self, ks: Keyspace, names: Names) -> None:
        self.ks, self.names = ks, names
        self.txns: OrderedDict[uuid.UUID, bool] = OrderedDict()  # resolved attempts: committed?
        self.own: set[uuid.UUID] = set()  # committed here, rows being marked ok by this process
        #: Attempts being decided here: one decision for every caller who asks meanwhile (the
        #: claims of one attempt's thousand ids ask about it a thousand times at once).
        self.deciding: dict[uuid.UUID, asyncio.Future[bool]] = {}

    def remember(self, txn: uuid.UUID, committed: bool) -> None:
        self.txns[txn] = committed
        if len(self.txns) > MAX_TXNS:
            self.txns.popitem(last=False)

    async def resolve(self, key: EntityKey, txn: uuid.UUID) -> bool:
        """Whether an attempt committed; if it has not, make sure it never will (fence it)."""
        known = self.txns.get(txn)
        if known is not None:
            return known
        deciding = self.deciding.get(txn)
        if deciding is None:
            deciding = self.deciding[txn] = asyncio.ensure_future(self._decide(key, txn))
            deciding.add_done_callback(functools.partial(self._decided, txn))
        return await asyncio.shield(deciding)  # (a caller cancelled leaves the decision to the others)

    def _decided(self, txn: uuid.UUID, future: asyncio.Future[bool]) -> None:
        del self.deciding[txn]
        if not future.cancelled():
            future.exception()  # (retrieved: every caller may have left)

    async def _decide(self, key: EntityKey, txn: uuid.UUID) -> bool:
        ks = self.ks
        rows = await ks.db.run(ks.q.attempt, (*key, txn))
        if rows:
            committed = not rows[0][1]
        else:
            fence = await ks.db.run(ks.q.marker, (*key, ATTEMPT, txn, None, True), lwt=True)
            committed = not fence[0]["[applied]"] and not fence[0]["aborted"]
            ks.stats["fenced" if fence[0]["[applied]"] else "resolved"] += 1
        self.remember(txn, committed)
        return committed

    async def is_committed(self, key: EntityKey, txn: uuid.UUID) -> bool:
        """Like resolve but without fencing: an attempt not decided yet counts as not committed."""
        return await self.outcome(key, txn) is True

    async def outcome(self, key: EntityKey, txn: uuid.UUID) -> bool | None:
        """Whether an attempt committed (True), is known never to (False: fenced, or aborted by
        its writer), or neither yet (None), as its marker says; without fencing."""
        known = self.txns.get(txn)
        if known is not None:
            return known
        rows = await self.ks.db.run(self.ks.q.attempt, (*key, txn))
        if not rows:
            return None
        committed = not rows[0][1]
        self.remember(txn, committed)
        return committed

    async def settle_rows(self, realm: str, scope: str, rows: list[IndexRow]) -> list[Event]:
        """Events of index rows at or below the horizon; pending ones are resolved (or fenced).
        ``realm`` as the caller knows it, ``scope`` the domain or '' for the realm index."""
        stored = self.ks.ns.stored(realm)
        unknown: list[AttemptKey] = list({(r.domain, r.entity, r.txn) for r in rows if not r.ok})
        committed: set[AttemptKey] = set()
        if unknown:
            outcomes = await gather([self.resolve((stored, d, e), t) for d, e, t in unknown])
            committed = {k for k, ok in zip(unknown, outcomes, strict=True) if ok}
            self.ks.db.spawn(self.repair(stored, scope, [r for r in rows if not r.ok], committed))
        stamp = clock.stamp
        return [make_event(str(r.id), realm, r.domain, r.entity, r.type, r.version, r.stamp or stamp(r.ts),
                           r.data, r.meta, r.position, r.position)
                for r in rows if r.ok or (r.domain, r.entity, r.txn) in committed]

    async def repair(self, realm: str, scope: str, rows: list[IndexRow], committed: set[AttemptKey]) -> None:
        """Finish what a writer left undone: ids and keys, then mark ok (or delete aborted rows)."""
        ks = self.ks
        done: list[tuple[Hashable, Sequence[Any]]] = []
        dropped: list[tuple[Hashable, Sequence[Any]]] = []
        ids: list[tuple[Hashable, Sequence[Any]]] = []
        keys: set[EntityKey] = set()
        for r in rows:
            bucket = r.ts // ks.bucket_us
            if (r.domain, r.entity, r.txn) not in committed:
                dropped.append(((scope, bucket), (realm, scope, bucket, r.ts, r.id)))
            elif r.txn not in self.own:  # else this process's writer is marking them right now
                keys.add((realm, r.domain, r.entity))
                shard = ks.ns.shard(r.id)
                ids.append((shard, (shard, r.id, realm, r.domain, r.entity, r.type, r.version, r.ts, cell(r.stamp),
                                    r.data, r.meta, r.txn, True, r.position)))
                done.append(((scope, bucket), (realm, scope, bucket, r.ts, r.id)))
        try:
            await gather([*(self.names.write(k) for k in keys), ks.db.batch(ks.q.by_id_add, ids)])
            await gather([ks.db.batch(ks.q.index_ok, done), ks.db.batch(ks.q.index_del, dropped)])
        except (StorageUnavailable, InvalidInput):
            pass
