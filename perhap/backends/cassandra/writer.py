"""Appending: claims of client-chosen ids, pending index rows, then ONE conditional batch on
the entity partition (a Paxos round), then names; after the answer, the rows by id and marking the
rows ok (steps 1-4 in docs/backends/cassandra.md).

The batch is ``IF head = v`` plus ``IF NOT EXISTS`` on its markers: a Paxos round makes versions
gapless, batches atomic and client ids unique within the entity, whatever the number of writing
processes. The domain and realm index rows are written *before* the commit, marked pending with
their attempt id; a writer whose pending rows were not acknowledged within ``settle - clock_skew``
of their position abandons that attempt (Lemma 1: every row a reader could ever see at or below
its horizon was visible when it read).
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cassandra.query import BatchStatement

from ...errors import InvalidInput, StorageUnavailable, VersionConflict
from ...model import MAX_VERSION, Appended, AppendResult, Event, NewEvent, replay_or_conflict
from . import clock
from .claims import Claims, Stale, Taken
from .coalesce import Coalescer
from .driver import gather, quiet
from .names import Names
from .positions import Positions, position
from .reader import Reader
from .records import ATTEMPT, CLIENT_ID, Attempt, EntityKey, Head, Placed, attempt_id, cell
from .schema import ERA, Keyspace
from .settle import Settler

MAX_BATCH_BYTES = 12 << 20  # one Paxos mutation must stay under Cassandra's max_mutation_size
#: What a row adds to its event's JSON in the batch's message (ids, stamps, positions, names):
#: counted, so that a batch under MAX_BATCH_BYTES also fits a node's 13.4 MB message cap.
ROW_OVERHEAD = 160
#: Partitions of events_by_id an append's client-chosen ids may lie in (random ids: one each; ids
#: made together as UUIDv7: one per 16 ms). Each is claimed by a Paxos round before the commit,
#: and the claims count against the attempt's lead (at most clock.MAX_LEAD_US): a batch whose
#: claims outlast it would be placed again for ever (found with 3,000 random ids: a 503 after 16 s,
#: and again at every retry). 1,000 took 3 s on the loaded test node.
MAX_CLAIMED_PARTITIONS = 1000
#: Seconds an append's deadline grows by for each of those partitions (a Paxos round at 100 a second).
CLAIM_SECONDS = 0.01
MAX_HEADS = 100_000  # entity heads remembered
STEP1_SAMPLES = 2048  # pending-row timings kept for the statistics
SMALL_BATCH = 20  # attempts smaller than this teach the fixed cost of pending rows, others the per-row one

Rows = list[tuple[Hashable, Sequence[Any]]]  # (partition, arguments) pairs for Driver.batch
KEY_BYTES = 64  # about what a row that carries only its key (marking it ok) weighs in a batch


async def written_at(jobs: list[Awaitable[Any]]) -> float:
    """When (event loop time) every one of ``jobs`` was acknowledged."""
    await gather(jobs)
    return asyncio.get_running_loop().time()


def payload(p: Attempt) -> int:
    """The bytes of events an attempt carries (what each of its index rows repeats)."""
    return sum(len(e.event.data_json) + len(e.event.meta_json) for e in p.events)


class Outcome(enum.Enum):
    COMMITTED = "committed"
    FENCED = "fenced"  # a reader fenced this attempt off: try again


@dataclass(frozen=True, slots=True)
class TakenIds:
    """Client ids already stored in this entity (id -> version): a racing twin's write, to replay."""

    ids: dict[uuid.UUID, int]


Commit = Outcome | TakenIds | Head  # a Head: the entity is elsewhere, the batch was not applied


@dataclass(slots=True)
class EntityLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Writer:
    def __init__(self, ks: Keyspace, names: Names, reader: Reader, settler: Settler, positions: Positions,
                 notify: Callable[[], None]) -> None:
        self.ks, self.names, self.reader, self.settler, self.notify = ks, names, reader, settler, notify
        self.positions = positions
        self.locks: dict[EntityKey, EntityLock] = {}
        self.heads: OrderedDict[EntityKey, Head] = OrderedDict()
        self.fixed_us, self.row_us = 5000.0, 200.0  # learnt cost of pending rows (microseconds)
        self.floor = 0  # the last position this process acknowledged: later appends come after it
        # Plain writes of appends in flight at once go out together, one batch per partition.
        self.coalescer = Coalescer(ks.db)
        self.claims = Claims(ks, settler)
        #: How long the last attempts' pending rows took to be acknowledged (microseconds): what the
        #: settle window must cover (statistics for operators choosing W, docs "Choosing W").
        self.step1_us: deque[int] = deque(maxlen=STEP1_SAMPLES)

    async def write(self, key: EntityKey, batch: list[NewEvent], expected: int | None) -> AppendResult:
        """Append a batch to an entity (its realm as stored)."""
        if sum(len(e.data_json) + len(e.meta_json) + ROW_OVERHEAD for e in batch) > MAX_BATCH_BYTES:
            raise InvalidInput(f"a batch may hold at most {MAX_BATCH_BYTES >> 20} MiB of events here "
                               f"(each event's JSON and meta, and {ROW_OVERHEAD} bytes of its row)")
        slot = self.locks.setdefault(key, EntityLock())
        slot.users += 1
        try:
            async with slot.lock:  # one write per entity at a time in this process: no self-contention
                result = await self.append(key, batch, expected)
                if not result.created:
                    # A retry of a write that may have failed between its commit and its names (a
                    # 503): the retry lists the entity, or fails as well (cheap when remembered).
                    await self.names.write(key)
                return result
        finally:
            slot.users -= 1
            if not slot.users:
                del self.locks[key]

    async def append(self, key: EntityKey, batch: list[NewEvent], expected: int | None) -> AppendResult:
        ks, spawn = self.ks, self.ks.db.spawn
        realm, domain, entity = key
        client_ids = [e.event_id for e in batch if e.client_id]
        partitions = len({ks.ns.shard(uuid.UUID(i)) for i in client_ids}) if client_ids else 0
        if partitions > MAX_CLAIMED_PARTITIONS:
            raise InvalidInput(
                f"the batch's client-chosen event ids lie in {partitions} partitions of events_by_id; Cassandra "
                f"takes at most {MAX_CLAIMED_PARTITIONS} in one append (each is a Paxos round before the "
                "commit): send fewer events with ids of your own at a time, or ids made together as UUIDv7, "
                "which share a partition for every 16 ms")
        if client_ids:  # a retry of an acknowledged write is answered from events_by_id
            stored = await self.reader.stored(client_ids)
            replay = replay_or_conflict(batch, stored, realm, domain, entity)
            if replay is not None:
                return replay
        head = self.heads.get(key)
        if head is not None and expected is not None and head.version > expected:
            # Versions only grow: refused without a Paxos round. The 409 tells the version now
            # (another process may have moved it past what this one remembers), so a client that
            # retries at it is not refused again for a version it was told.
            rows = await ks.db.run(ks.q.head, key)
            if rows and rows[0][0] is not None and rows[0][0] > head.version:
                head = Head(rows[0][0], rows[0][1])
                self.remember_head(key, head)
            raise VersionConflict(head.version, expected)
        beyond = expected if expected is not None and expected > MAX_VERSION else None  # never a guess
        if head is None or beyond is not None:
            if expected is None or beyond is not None:
                rows = await ks.db.run(ks.q.head, key)
                head = Head(-1, 0) if not rows or rows[0][0] is None else Head(rows[0][0], rows[0][1])
                if beyond is not None:  # no entity reaches a version above MAX_VERSION
                    raise VersionConflict(head.version, beyond)
            else:
                head = Head(expected, 0)  # the condition checks it; a wrong guess costs one retry
        lead = self.lead(len(batch))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ks.options.timeout + len(batch) / 1000 + partitions * CLAIM_SECONDS
        written: Attempt | None = None
        mine: set[uuid.UUID] = set()  # this append's attempts: the claims of client ids may pass between them
        above = 0  # every ts of the next attempt lies above this (claims.py: an id's owners' ts only grow)
        started = clock.now_us()  # in each attempt's id: the older of two racing appends claims first
        try:
            while True:
                version, head_ts = head if expected is None else (expected, head.ts)
                if written is not None:
                    above = max(above, written.events[-1].ts)
                    spawn(self.forget(written, keep_ids=True))
                    ks.stats["retries"] += 1
                if loop.time() > deadline:
                    raise StorageUnavailable("could not commit the append in time (contention or a slow cluster)")
                placed, took = await self.pending(key, batch, version, head_ts, lead, mine, deadline, started, above)
                if isinstance(placed, Stale):  # an earlier owner of a client id used a ts at or above ours
                    written = None
                    above = max(above, placed.ts)
                    continue
                if isinstance(placed, Taken):  # a client id is committed already: a replay, or a 409
                    written = None
                    replay = replay_or_conflict(batch, await self.reader.stored(client_ids), realm, domain, entity)
                    if replay is not None:
                        return replay
                    continue  # its event is not readable yet: try again
                written = placed
                if written is None:  # too slow to be safe behind the settle window: try again
                    lead = min(clock.MAX_LEAD_US, max(lead, 2 * took))
                    continue
                outcome = await self.commit(key, written, version)
                if outcome is Outcome.COMMITTED:
                    break
                if isinstance(outcome, TakenIds):  # client ids already in this entity: a replay
                    spawn(self.forget(written, keep_ids=False))
                    written = None
                    return await self.replay(key, batch, outcome.ids)
                if isinstance(outcome, Head):
                    head = outcome
                    self.remember_head(key, head)
                    if expected is not None and head.version != expected:
                        raise VersionConflict(head.version, expected)
        except BaseException:
            if written is not None and not written.unknown:
                spawn(self.forget(written, keep_ids=False))
            if client_ids:
                # This append's attempts may hold claims of its ids: decided now (fenced, unless
                # one committed), so that a retry, or another writer of an id, takes them over at
                # once instead of waiting for the older attempt to commit or go (claims.py).
                for txn in mine:
                    spawn(quiet(self.settler.resolve(key, txn)))
            raise
        last = written.events[-1]
        self.remember_head(key, Head(last.version, last.ts))
        self.settler.remember(written.txn, True)
        self.settler.own.add(written.txn)  # until mark_ok is done with it
        try:
            await self.after_commit(key, written)
        except BaseException:
            self.settler.own.discard(written.txn)  # no mark_ok then: let readers repair its rows
            raise
        self.notify()
        early = self.early(last.ts)
        if early > 0:  # a big batch: its position is still far ahead of the clock
            await asyncio.sleep(early)
        self.floor = max(self.floor, last.ts)
        return AppendResult([Appended(str(p.id), p.version, p.position, clock.stamp(p.ts, p.event.timestamp))
                             for p in written.events], created=True)

    def lead(self, events: int) -> int:
        """How far ahead of the clock to place an attempt (microseconds). Its pending rows must be
        acknowledged within lead + settle - clock_skew of its position: allow twice the time they are
        expected to take (learnt: a fixed part and a part per event), and at least twice the fixed
        part ahead. Not more: positions that run far ahead of the acknowledgement delay everything."""
        o = self.ks.options
        expected = self.fixed_us + events * self.row_us
        return int(min(clock.MAX_LEAD_US, max(2 * self.fixed_us, 2 * expected - (o.settle_us - o.skew_us))))

    def early(self, ts: int) -> float:
        """How long (seconds) to wait before acknowledging an append whose last position is ``ts``:
        until it is at most the lead of an ordinary append (settle - clock_skew, or twice the fixed
        cost when that is more) ahead of the clock. Appends that start after an acknowledgement come
        after it (``floor``): a big batch, placed seconds ahead, would otherwise push every later
        append of this process as far; it waits instead (an ordinary append never does)."""
        o = self.ks.options
        return (ts - clock.now_us() - max(o.settle_us - o.skew_us, 2 * self.fixed_us)) / 1e6

    async def pending(self, key: EntityKey, batch: list[NewEvent], version: int, head_ts: int, lead: int,
                      mine: set[uuid.UUID], deadline: float, started_us: int,
                      above: int) -> tuple[Attempt | Taken | Stale | None, int]:
        """Claim an attempt's client ids, then write its index rows (pending), before its commit;
        None when the rows were late, Taken when a client id is committed already, Stale when an
        earlier owner of a client id used a ts at or above this attempt's. Also returns how long
        the claims and rows took (microseconds)."""
        ks = self.ks
        realm, domain, entity = key
        loop = asyncio.get_running_loop()
        # Positions grow along the entity's versions, and an append that starts after another was
        # acknowledged by this process comes after it (across processes see the docs). The ts are
        # this instance's alone, and its writer slot makes the positions the realm's alone.
        least = max(head_ts, self.floor, above) + 1
        now = clock.now_us()
        ts0, slot = await self.positions.place(max(now + lead, least), len(batch))
        if clock.now_us() - now > lead // 2:  # it waited for its lease: place it from the clock as it is now
            now = clock.now_us()
            ts0, slot = await self.positions.place(max(now + lead, least), len(batch))
        started = loop.time()
        attempt = Attempt(key, [Placed(e, uuid.UUID(e.event_id), version + 1 + i, ts0 + i, position(ts0 + i, slot))
                                for i, e in enumerate(batch)], attempt_id(started_us))
        mine.add(attempt.txn)
        index: Rows = []
        by_id: Rows = []
        claims: dict[uuid.UUID, int] = {}  # client id -> the ts of its rows
        directory: list[tuple[str, str, int]] = []
        for e, u, v, ts, pos in attempt.events:
            bucket = ts // ks.bucket_us
            for scope in ("", domain):
                index.append(((realm, scope, bucket), (realm, scope, bucket, ts, u, domain, entity, e.type, v,
                                                cell(e.timestamp), e.data_json, e.meta_json, attempt.txn, pos)))
                if (realm, scope, bucket) not in self.names.known:
                    directory.append((realm, scope, bucket))
            shard = ks.ns.shard(u)
            if e.client_id:  # its row is written after the commit; until then readers follow its claim
                claims[u] = ts
            else:
                by_id.append((shard, (shard, u, realm, domain, entity, e.type, v, ts,
                                      cell(e.timestamp), e.data_json, e.meta_json, attempt.txn, None, pos)))
        directory = list(dict.fromkeys(directory))
        # Client ids are claimed before any row is written. An index row is keyed by (ts, id) alone,
        # and two processes may place the same ts: two attempts of one id there would share a row,
        # and the loser's clean-up would delete the winner's. A claim records the ts of its id's
        # rows and is taken over only by a later ts (claims.py), so each attempt's rows are its own.
        if claims:
            claimed = await self.claims.take(key, attempt.txn, claims, mine, deadline)
            if claimed is not None:  # no row written: none to forget
                return claimed, 0
        size = payload(attempt)
        jobs: list[Awaitable[Any]] = [self.coalescer.write(ks.q.index, index, 2 * size),
                                      self.coalescer.write(ks.q.by_id_add, by_id, size)]
        if directory:  # a new bucket: every append then in flight adds it, in one round together
            listed: Rows = []
            for r, s, b in directory:
                listed += [((r, s, b // ERA), (r, s, b // ERA, b)), ((r, s, -1), (r, s, -1, b // ERA))]
            jobs.append(self.coalescer.write(ks.q.dir_add, listed, KEY_BYTES * len(listed)))
        try:
            acked = await written_at(jobs)
        except BaseException:
            ks.db.spawn(self.forget(attempt, keep_ids=False))  # never committed: its rows need no fence
            raise
        took = int(acked * 1e6 - started * 1e6)
        self.step1_us.append(took)
        self.names.known.update(directory)
        if len(batch) < SMALL_BATCH:
            self.fixed_us = 0.9 * self.fixed_us + 0.1 * took
        else:
            self.row_us = 0.8 * self.row_us + 0.2 * max(0, took - self.fixed_us) / len(batch)
        # Readers trust that any row at or below their horizon (their clock - settle) is visible. Our
        # rows are, if acknowledged within settle - clock_skew of their position by our clock.
        if clock.now_us() - int((loop.time() - acked) * 1e6) > ts0 + ks.options.settle_us - ks.options.skew_us:
            ks.stats["late"] += 1
            ks.db.spawn(self.forget(attempt, keep_ids=True))
            return None, took
        return attempt, took

    async def commit(self, key: EntityKey, p: Attempt, version: int) -> Commit:
        """The Paxos round. COMMITTED, FENCED when a reader fenced us off, the client ids already
        stored here, or the entity's head when it has moved on. The attempt's marker (IF NOT
        EXISTS) makes the batch idempotent: applied at most once."""
        q = self.ks.q
        b = BatchStatement()
        last = p.events[-1]
        types = {e.event.type for e in p.events}
        if version < 0:
            b.add(q.lwt_new, (last.version, last.ts, types, *key))
        else:
            b.add(q.lwt_next, (last.version, last.ts, types, *key, version, p.events[0].ts))
        b.add(q.marker, (*key, ATTEMPT, p.txn, version + 1, False))
        for e, u, v, ts, pos in p.events:
            if e.client_id:
                b.add(q.marker, (*key, CLIENT_ID, u, v, None))
            b.add(q.event, (*key, v, u, e.type, ts, cell(e.timestamp), e.data_json, e.meta_json, pos))
        try:
            rows = await self.ks.db.run(b, lwt=True)
        except StorageUnavailable:
            # The outcome is unknown: settle it ourselves, as a reader would.
            try:
                committed = await self.settler.resolve(key, p.txn)
            except BaseException:  # (the cluster, or cancelled) readers will settle it once it answers
                p.unknown = True
                raise
            # Fenced by us now, or before by a reader: it can never commit, so try again, as after
            # any fence (the append's deadline bounds the tries).
            return Outcome.COMMITTED if committed else Outcome.FENCED
        except BaseException:
            # Cancelled while the round was in flight, which may still apply: the attempt's rows
            # stay for readers to settle. (Forgotten, a committed event was missing from its
            # domain's and realm's reads, and a retry acknowledged it.)
            p.unknown = True
            raise
        if rows[0]["[applied]"]:
            return Outcome.COMMITTED
        for r in rows:
            if r.get("kind") == ATTEMPT:
                # Our attempt's marker exists already. Aborted: a reader fenced us off. Not aborted:
                # this very batch was applied by an earlier try of the same request (the driver
                # re-sends a request whose connection broke): it is committed. (Checked first: its
                # client-id markers are then ours, not a twin's.)
                return Outcome.FENCED if r["aborted"] else Outcome.COMMITTED
        ids = {r["id"]: r["ver"] for r in rows if r.get("kind") == CLIENT_ID}
        if ids:
            return TakenIds(ids)
        head = rows[0].get("head")
        return Head(-1, 0) if head is None else Head(head, rows[0]["head_ts"])

    async def after_commit(self, key: EntityKey, p: Attempt) -> None:
        """Names before the acknowledgement; the rows by id and marking the index rows ok after it
        (until then, readers find a client-chosen id through its claim, a server id by its attempt)."""
        await self.names.write(key)
        self.ks.db.spawn(self.mark_ok(key, p))

    async def mark_ok(self, key: EntityKey, p: Attempt) -> None:
        ks = self.ks
        realm, domain, _ = key
        rows: Rows = []
        ids: Rows = []
        clients: Rows = []
        for e, u, v, ts, pos in p.events:
            bucket = ts // ks.bucket_us
            rows += [((realm, s, bucket), (realm, s, bucket, ts, u)) for s in ("", domain)]
            shard = ks.ns.shard(u)
            if e.client_id:
                clients.append((shard, (shard, u, *key, e.type, v, ts, cell(e.timestamp), e.data_json, e.meta_json,
                                        p.txn, True, pos)))
            else:
                ids.append((shard, (shard, u)))
        write = self.coalescer.write
        jobs = [write(ks.q.index_ok, rows, KEY_BYTES * len(rows)), write(ks.q.by_id_ok, ids, KEY_BYTES * len(ids))]
        if clients:
            jobs.append(write(ks.q.by_id_add, clients, payload(p)))
        try:
            await gather(jobs)
        except (StorageUnavailable, InvalidInput):
            pass  # readers resolve pending rows themselves
        finally:
            self.settler.own.discard(p.txn)

    async def forget(self, p: Attempt, *, keep_ids: bool) -> None:
        """Remove an abandoned attempt's rows (best effort: readers fence leftovers anyway).
        ``keep_ids``: the next attempt of this write rewrites the same events_by_id rows."""
        ks = self.ks
        realm, domain, _ = p.key
        index: Rows = []
        ids: Rows = []
        for e, u, _v, ts, _pos in p.events:
            bucket = ts // ks.bucket_us
            index += [((s, bucket), (realm, s, bucket, ts, u)) for s in ("", domain)]
            if not e.client_id:
                ids.append((ks.ns.shard(u), (ks.ns.shard(u), u)))
        await quiet(ks.db.batch(ks.q.index_del, index))
        if not keep_ids:
            await quiet(ks.db.batch(ks.q.by_id_del, ids))

    async def replay(self, key: EntityKey, batch: list[NewEvent], ids: dict[uuid.UUID, int]) -> AppendResult:
        """Some client ids were committed in this entity already (by a racing twin of this write)."""
        ks = self.ks
        realm, domain, entity = key
        rows = await ks.db.run(ks.q.versions, (*key, sorted(set(ids.values()))))
        stored = {str(u): Event(str(u), realm, domain, entity, t, v, clock.stamp(ts, st), d, m, pos, v)
                  for v, u, t, ts, st, d, m, pos in rows}
        result = replay_or_conflict(batch, stored, realm, domain, entity)
        assert result is not None
        # The twin that stored them writes their events_by_id rows; in case it died, so do we.
        ks.db.spawn(quiet(ks.db.batch(ks.q.by_id_add, [
            (ks.ns.shard(u), (ks.ns.shard(u), u, *key, t, v, ts, cell(st), d, m, None, True, pos))
            for v, u, t, ts, st, d, m, pos in rows])))
        return result

    def remember_head(self, key: EntityKey, head: Head) -> None:
        self.heads[key] = head
        self.heads.move_to_end(key)
        if len(self.heads) > MAX_HEADS:
            self.heads.popitem(last=False)
