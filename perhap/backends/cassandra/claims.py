"""Client-chosen event ids: an id is stored in one entity at most, whatever the number of processes
and however the appends that carry it race ("Client-chosen ids: claims" in docs/backends/cassandra.md).

An entity's Paxos round sees only its own partition, so it alone cannot stop one id being stored
in two entities at once. Before an attempt with client-chosen ids commits, it therefore takes
each id's *claim*: a Paxos round on the id's ``events_by_id`` row (the ids of one partition in
one round) that makes the attempt its owner, ``IF`` the owner is still the one it last saw. An
owner is replaced only once it is known never to commit: this append's own earlier attempts
(abandoned, fenced or not applied), or another writer's attempt after fencing it
(``Settler.resolve``, the readers' fence). So the owners of an id form a chain in which every
attempt but the last was fenced before it was replaced: only the last can commit, and an id is
committed at most once, in one entity. The claim also adds the entity to ``claims``, the set
by-id readers follow to find an event whose row is not written yet.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, NamedTuple

from cassandra.query import BatchStatement

from ...errors import StorageUnavailable
from .driver import gather
from .records import EntityKey
from .schema import Keyspace
from .settle import Settler

PARALLEL_CLAIMS = 32  # events_by_id partitions claimed at once by one append


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
        ours; Taken when one of them is committed already.

        The ids of one ``events_by_id`` partition are claimed together, in one conditional batch
        (one Paxos round: a batch's UUIDv7 ids share a few partitions); separate rounds on one
        partition would contend with each other. Partitions are claimed PARALLEL_CLAIMS at a time."""
        shards: dict[str, list[uuid.UUID]] = {}
        for u in ids:
            shards.setdefault(self.ks.ns.shard(u), []).append(u)
        limit = asyncio.Semaphore(PARALLEL_CLAIMS)

        async def claim(shard: str, members: list[uuid.UUID]) -> Taken | None:
            async with limit:
                return await self.take_shard(key, txn, shard, members, mine, deadline)

        found = await gather([claim(shard, members) for shard, members in shards.items()])
        return next((taken for taken in found if taken is not None), None)

    async def take_shard(self, key: EntityKey, txn: uuid.UUID, shard: str, ids: list[uuid.UUID],
                         mine: set[uuid.UUID], deadline: float) -> Taken | None:
        ks = self.ks
        loop = asyncio.get_running_loop()
        # The owner each row is expected to have: none at first, then what the last round saw.
        expected: dict[uuid.UUID, tuple[EntityKey | None, uuid.UUID | None]] = dict.fromkeys(ids, (None, None))
        yield_until = loop.time() + (deadline - loop.time()) / 2  # waiting for an older append: until then
        rounds = 0
        while True:
            if len(ids) == 1:
                statement: Any = ks.q.claim
                args: Any = (key, txn, {key}, shard, ids[0], *expected[ids[0]])
            else:
                statement, args = BatchStatement(), None
                for u in ids:
                    statement.add(ks.q.claim, (key, txn, {key}, shard, u, *expected[u]))
            rows = await ks.db.run(statement, args, lwt=True)
            if rows[0]["[applied]"]:
                return None
            # Not applied: the owners the rows have. A single statement answers with the columns of
            # its condition; a batch with each row's key too (a row not listed has no owner).
            if len(ids) == 1:
                current = {ids[0]: (rows[0].get("owner"), rows[0].get("owner_txn"))}
            else:
                current = {r["id"]: (r.get("owner"), r.get("owner_txn")) for r in rows if r.get("id") is not None}
            # A row may be taken over (expected as it is) only from no owner, from this append's own
            # attempts, or from another writer's attempt once that is known never to commit.
            foreign: dict[uuid.UUID, EntityKey] = {}
            held: dict[uuid.UUID, tuple[EntityKey, uuid.UUID]] = {}  # id -> another writer's attempt
            for u in ids:
                owner, owner_txn = current.get(u, (None, None))
                if owner is not None and owner_txn is not None and owner_txn != txn and owner_txn not in mine:
                    entity = (owner[0], owner[1], owner[2])
                    foreign[owner_txn] = entity
                    held[u] = (entity, owner_txn)
                else:
                    expected[u] = (owner, owner_txn)
            if not held and all(owner_txn == txn for _, owner_txn in expected.values()):
                return None  # an earlier send of this very request applied (the driver re-sends)
            # Other writers' attempts hold some. Committed: the id is stored there. Else each is
            # fenced (it can never commit) and its claims taken over; but two appends racing for
            # ids of several partitions would fence each other over and over: the younger (its
            # attempt id is larger, see records.attempt_id) waits for the older to commit or go,
            # for up to half the time it has left, then fences it too.
            stronger = [(t, e) for t, e in foreign.items() if t < txn]
            if stronger and loop.time() < yield_until:
                seen = await gather([self.settler.is_committed(e, t) for t, e in stronger])
                for (_, entity), done in zip(stronger, seen, strict=True):
                    if done:
                        return Taken(entity)
                await asyncio.sleep(min(0.1, 0.005 * 2 ** min(rounds, 5)))
            else:
                owners = list(foreign.items())
                committed = await gather([self.settler.resolve(e, t) for t, e in owners])
                for (_, entity), done in zip(owners, committed, strict=True):
                    if done:
                        return Taken(entity)
                for u, (entity, owner_txn) in held.items():  # fenced: theirs may be taken over now
                    expected[u] = (entity, owner_txn)
            rounds += 1
            if loop.time() > deadline:
                raise StorageUnavailable("could not claim the event id in time "
                                         "(a slow cluster, or writers racing for it)")
