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

A claim also records ``owner_ts``, the ts of its attempt's index rows for the id, and is taken
over only by an attempt whose ts is above it; an attempt writes those rows only once it holds the
claim. The rows are keyed by (ts, id), and two processes may place the same ts (only the position,
ts * 1024 + slot, is theirs alone): two attempts of one id at one ts would share a row, and the
loser's clean-up (or a reader's repair of it) would delete the winner's. Along an id's chain of
owners the ts only grow, so every attempt's rows are its own.
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


class Stale(NamedTuple):
    """An earlier owner of a client id placed its rows at ``ts``, at or above this attempt's: the
    id's next attempt must be placed above it."""

    ts: int


Owner = tuple[EntityKey | None, uuid.UUID | None, int | None]  # entity, attempt id, ts of its rows


def _owner(row: Any) -> Owner:
    """The owner a claim's row names, from the answer to a claim that was not applied."""
    return row.get("owner"), row.get("owner_txn"), row.get("owner_ts")


class Claims:
    def __init__(self, ks: Keyspace, settler: Settler) -> None:
        self.ks, self.settler = ks, settler

    async def take(self, key: EntityKey, txn: uuid.UUID, ids: dict[uuid.UUID, int], mine: set[uuid.UUID],
                   deadline: float) -> Taken | Stale | None:
        """Make attempt ``txn`` of entity ``key`` the owner of each id (id -> the ts of its index
        rows); ``mine`` holds the earlier attempts of the same append (none of which can commit any
        more). None when every id is ours; Taken when one of them is committed already; Stale when
        an owner to replace placed its rows at or above this attempt's ts.

        The ids of one ``events_by_id`` partition are claimed together, in one conditional batch
        (one Paxos round: a batch's UUIDv7 ids share a few partitions); separate rounds on one
        partition would contend with each other. Partitions are claimed PARALLEL_CLAIMS at a time."""
        shards: dict[str, dict[uuid.UUID, int]] = {}
        for u, ts in ids.items():
            shards.setdefault(self.ks.ns.shard(u), {})[u] = ts
        limit = asyncio.Semaphore(PARALLEL_CLAIMS)

        async def claim(shard: str, members: dict[uuid.UUID, int]) -> Taken | Stale | None:
            async with limit:
                return await self.take_shard(key, txn, shard, members, mine, deadline)

        found = await gather([claim(shard, members) for shard, members in shards.items()])
        taken = next((f for f in found if isinstance(f, Taken)), None)
        stale = [f.ts for f in found if isinstance(f, Stale)]
        return taken or (Stale(max(stale)) if stale else None)

    async def take_shard(self, key: EntityKey, txn: uuid.UUID, shard: str, members: dict[uuid.UUID, int],
                         mine: set[uuid.UUID], deadline: float) -> Taken | Stale | None:
        ks = self.ks
        loop = asyncio.get_running_loop()
        ids = list(members)
        # The owner each row is expected to have: none at first, then what the last round saw.
        expected: dict[uuid.UUID, Owner] = dict.fromkeys(ids, (None, None, None))
        yield_until = loop.time() + (deadline - loop.time()) / 2  # waiting for an older append: until then
        rounds = 0
        while True:
            # Taking over an owner whose rows lie at or above ours would put two attempts' rows
            # of one id on one key: the next attempt is placed above it instead.
            above = [o_ts for u, (_, o_txn, o_ts) in expected.items()
                     if o_ts is not None and o_txn != txn and o_ts >= members[u]]
            if above:
                return Stale(max(above))
            if len(ids) == 1:
                statement: Any = ks.q.claim
                args: Any = (key, txn, members[ids[0]], {key}, shard, ids[0], *expected[ids[0]])
            else:
                statement, args = BatchStatement(), None
                for u in ids:
                    statement.add(ks.q.claim, (key, txn, members[u], {key}, shard, u, *expected[u]))
            rows = await ks.db.run(statement, args, lwt=True)
            if rows[0]["[applied]"]:
                return None
            # Not applied: the owners the rows have. A single statement answers with the columns of
            # its condition; a batch with each row's key too (a row not listed has no owner).
            if len(ids) == 1:
                current = {ids[0]: _owner(rows[0])}
            else:
                current = {r["id"]: _owner(r) for r in rows if r.get("id") is not None}
            # A row may be taken over (expected as it is) only from no owner, from this append's own
            # attempts, or from another writer's attempt once that is known never to commit.
            foreign: dict[uuid.UUID, EntityKey] = {}
            held: dict[uuid.UUID, Owner] = {}  # id -> another writer's attempt
            for u in ids:
                owner, owner_txn, owner_ts = current.get(u, (None, None, None))
                if owner is not None and owner_txn is not None and owner_txn != txn and owner_txn not in mine:
                    entity = (owner[0], owner[1], owner[2])
                    foreign[owner_txn] = entity
                    held[u] = (entity, owner_txn, owner_ts)
                else:
                    expected[u] = (owner, owner_txn, owner_ts)
            if not held and all(owner_txn == txn for _, owner_txn, _ in expected.values()):
                return None  # an earlier send of this very request applied (the driver re-sends)
            # Other writers' attempts hold some. Committed: the id is stored there. Else each is
            # fenced (it can never commit) and its claims taken over; but two appends racing for
            # ids of several partitions would fence each other over and over: the younger (its
            # attempt id is larger, see records.attempt_id) waits for the older to commit or go,
            # for up to half the time it has left, then fences it too. An older attempt decided
            # already (its writer gave up and fenced it, or a reader did) is not waited for.
            stronger = [(t, e) for t, e in foreign.items() if t < txn]
            waiting = False
            if stronger and loop.time() < yield_until:
                seen = await gather([self.settler.outcome(e, t) for t, e in stronger])
                for (_, entity), done in zip(stronger, seen, strict=True):
                    if done:
                        return Taken(entity)
                waiting = None in seen
            if waiting:
                await asyncio.sleep(min(0.1, 0.005 * 2 ** min(rounds, 5)))
            else:
                owners = list(foreign.items())
                committed = await gather([self.settler.resolve(e, t) for t, e in owners])
                for (_, entity), done in zip(owners, committed, strict=True):
                    if done:
                        return Taken(entity)
                expected.update(held)  # fenced: theirs may be taken over now
            rounds += 1
            if loop.time() > deadline:
                raise StorageUnavailable("could not claim the event id in time "
                                         "(a slow cluster, or writers racing for it)")
