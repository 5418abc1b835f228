"""Client-chosen event ids: an id is stored in one entity at most, whatever the number of processes
and however the appends that carry it race ("Client-chosen ids: claims" in docs/backends/cassandra.md).

An entity's Paxos round sees only its own partition, so it alone cannot stop one id being stored
in two entities at once. Before an attempt with client-chosen ids commits, it therefore takes
each id's *claim*: a Paxos round on the id's ``events_by_id`` row that makes the attempt its
owner, ``IF`` the owner is still the one it last saw. An owner is replaced only once it is known
never to commit: this append's own earlier attempts (abandoned, fenced or not applied), or another
writer's attempt after fencing it (``Settler.resolve``, the readers' fence). So the owners of an id
form a chain in which every attempt but the last was fenced before it was replaced: only the last
can commit, and an id is committed at most once, in one entity. The claim also adds the entity to
``claims``, the set by-id readers follow to find an event whose row is not written yet.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import NamedTuple

from ...errors import StorageUnavailable
from .driver import gather
from .records import EntityKey
from .schema import Keyspace
from .settle import Settler


class Taken(NamedTuple):
    """A client id is committed already, in this entity (a twin of the write) or another."""

    entity: EntityKey


class Claims:
    def __init__(self, ks: Keyspace, settler: Settler) -> None:
        self.ks, self.settler = ks, settler

    async def take(self, key: EntityKey, txn: uuid.UUID, ids: list[uuid.UUID], mine: set[uuid.UUID],
                   deadline: float) -> Taken | None:
        """Make attempt ``txn`` of entity ``key`` the owner of each id; ``mine`` holds the earlier
        attempts of the same append (none of which can commit any more). None when every id is
        ours; Taken when one of them is committed already."""
        found = await gather([self.take_one(key, txn, u, mine, deadline) for u in ids])
        return next((taken for taken in found if taken is not None), None)

    async def take_one(self, key: EntityKey, txn: uuid.UUID, u: uuid.UUID, mine: set[uuid.UUID],
                       deadline: float) -> Taken | None:
        ks = self.ks
        shard = ks.ns.shard(u)
        loop = asyncio.get_running_loop()
        owner: EntityKey | None = None  # the owner we expect: none at first
        owner_txn: uuid.UUID | None = None
        while True:
            rows = await ks.db.run(ks.q.claim, (key, txn, {key}, shard, u, owner, owner_txn), lwt=True)
            if rows[0]["[applied]"]:
                return None
            owner, owner_txn = rows[0]["owner"], rows[0]["owner_txn"]
            if owner_txn == txn:  # an earlier send of this very request applied (the driver re-sends)
                return None
            if owner_txn not in mine and owner is not None and owner_txn is not None:
                # Another writer's attempt holds it: committed, the id is stored there; else it is
                # fenced now, and can never commit, so its claim may be taken over.
                entity = (owner[0], owner[1], owner[2])
                if await self.settler.resolve(entity, owner_txn):
                    return Taken(entity)
            if loop.time() > deadline:
                raise StorageUnavailable("could not claim the event id in time "
                                         "(a slow cluster, or writers racing for it)")
