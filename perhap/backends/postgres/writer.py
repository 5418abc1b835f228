"""Group commit: one writer task drains every append queued while it was busy into one transaction.

- Contiguous, gap-safe positions: every transaction that writes events first takes a
  transaction-scoped advisory lock per realm it touches, in sorted key order, and only then reads
  each realm's head (one probe of the unique (realm_id, position) index) and numbers its events
  head+1, head+2 ... in queue order. A realm's positions are therefore handed out by one
  transaction at a time, each continuing from the last committed one, and the lock is released
  only after the commit is visible: positions are 1, 2, 3 ... in commit order, a rolled-back
  transaction burns none (the next one reads the same head), and no snapshot sees n+1 without n.
  Realm and domain scopes never cross a realm, so that is all the order they need
  (docs/backends/postgresql.md has the proof).
- Multi-entity jobs are decided like the others, all or nothing: every expectation checked
  against the versions the group has reached, then one run of positions in send order.
- Outcomes (replays, version conflicts) are decided in Python from one look-up per group, then the
  accepted appends are written with a handful of array statements, whatever the group's size. A
  statement that still fails (an event id raced in by another process) sends the group down a slow
  path where each append runs in its own savepoint, so it undoes only itself.
- Nothing is acknowledged that was not committed: a connection lost before COMMIT was sent means
  nothing committed (the group is retried once on a fresh connection); lost during COMMIT, the
  outcome is unknown and the appends are answered 503. One call commits as it ends: lost around
  it, its outcome is read behind the realms' locks (:meth:`GroupWriter._after_lost_call`).
- Nothing is acknowledged before the commit is flushed to disk: a database or role whose default
  is ``synchronous_commit = off`` is overridden for each group's transaction (:data:`DURABLE`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import NamedTuple

import asyncpg

from ...errors import PerhapError, StorageUnavailable
from ...ids import utc_timestamp
from ...store.groupcommit import STOP, settle_group, take_group
from ...store.job import WriteJob
from . import decide
from .connection import DB_ERRORS, LOST, Connection, Options, init_connection, rollback
from .decide import Accepted, Decided, Ids, Key, decide_group, event_columns, keys_read, pair_columns, replay_of
from .known import CALL, EntityIds, Known, decide_known, relative
from .listener import Wake
from .queries import after_lost_call, events_by_ids
from .schema import CHANNEL, LOCK_CLASS

log = logging.getLogger("perhap.postgres")

COPY_THRESHOLD = 100  # events in a group from which COPY beats INSERT ... unnest

#: Sent with BEGIN, in the same round trip: a transaction that would commit without waiting for
#: its WAL flush (synchronous_commit = off, set for the database, the role or the server) waits for
#: it after all, so a 201 always means flushed. Per transaction (SET LOCAL), so it holds through
#: pgbouncer's transaction pooling too; only ``off`` is raised: ``local``, ``remote_write``,
#: ``on`` and ``remote_apply`` all flush locally, and an operator's stronger choice is kept.
DURABLE = ("SELECT set_config('synchronous_commit', 'on', true) "
           "WHERE current_setting('synchronous_commit') = 'off';")

#: Also sent with BEGIN. The writer reads only by key (names, ids, a realm's head) and must keep
#: doing so as its tables grow from empty: a plan made while the events table looked empty read a
#: realm's head by scanning and sorting the realm (milliseconds a group after a few thousand
#: events, until autovacuum analysed the table). With scans and sorts priced out, index probes are
#: the plans left (a statement with no other plan still runs, only costed high). SET LOCAL, like
#: DURABLE, so that it holds through pgbouncer's transaction pooling.
KEY_PLANS = "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off;"

# Look up every entity of a group at once: ids where they exist, and the current version; and
# on the first row of each realm ($4), the realm's head (last position, 0 if none): one probe of
# the unique (realm_id, position) index, read under the realm's lock. Each name is its own
# LATERAL probe (LIMIT 1 keeps the planner from flattening it into a join), so every level is
# found by its whole unique key: joined, a young table's statistics let the planner probe the
# entities by domain alone and filter the names, a cost that grows with the domain.
_LOOKUP = """SELECT k.i, r.id, d.id, n.id, n.version, CASE WHEN k.head THEN coalesce(
    (SELECT e.position FROM perhap_events e WHERE e.realm_id = r.id ORDER BY e.position DESC LIMIT 1), 0) END
FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[]) WITH ORDINALITY AS k(realm, domain, entity, head, i)
LEFT JOIN LATERAL (SELECT id FROM perhap_realms WHERE name = k.realm LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT id FROM perhap_domains WHERE realm_id = r.id AND name = k.domain LIMIT 1) d ON true
LEFT JOIN LATERAL (SELECT id, version FROM perhap_entities WHERE domain_id = d.id AND name = k.entity LIMIT 1)
    n ON true"""

_UPSERT_ENTITIES = """INSERT INTO perhap_entities (domain_id, name, version)
SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[])
ON CONFLICT (domain_id, name) DO UPDATE SET version = EXCLUDED.version
RETURNING id, domain_id, name"""

_EVENT_COLUMNS = ["event_id", "position", "realm_id", "domain_id", "entity_id", "type_id", "version", "ts",
                  "data", "meta"]
_INSERT_EVENTS = f"""INSERT INTO perhap_events ({', '.join(_EVENT_COLUMNS)})
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::int[], $5::bigint[], $6::int[],
                     $7::bigint[], $8::text[], $9::json[], $10::json[])"""


class _Found(NamedTuple):
    """What a group's look-up found of an entity's names: their ids, None where not stored yet."""

    realm_id: int | None
    domain_id: int | None


class _Isolate(Exception):
    """A statement of the shared group write failed: redo the group, one savepoint per append."""


class _Lost(Exception):
    """The connection failed before COMMIT was sent (or a lost call stored nothing): the group may be retried."""


def _realm_key(realm: str) -> int:
    """The second advisory lock key of a realm (a collision only makes two realms share a lock)."""
    return int.from_bytes(hashlib.blake2b(realm.encode(), digest_size=4).digest(), "big", signed=True)


class GroupWriter:
    """The writer task's state: its connection, its queue, the ids it knows, its statistics."""

    def __init__(self, options: Options, wake: Wake) -> None:
        self._options = options
        self._wake = wake
        #: WriteJobs, then STOP; the store puts appends here, the writer takes them in this order.
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self._conn: Connection | None = None
        self._types: dict[str, int] = {}
        self._entity_types: set[tuple[int, int]] = set()  # pairs known to be committed
        self._known = Known()
        self._entity_ids = EntityIds()  # for the entities calls create
        self.groups_committed = 0
        self.events_committed = 0

    async def run(self) -> None:
        """Commit groups until STOP; every job taken is settled, whatever happens."""
        stop = False
        while not stop:
            first = await self.queue.get()
            if first is STOP:
                break
            assert isinstance(first, WriteJob)
            jobs, stop = take_group(first, self.queue.get_nowait)
            try:
                outcomes = await self._commit_group(jobs)
            except BaseException as exc:  # never let the writer die with futures unsettled
                error = StorageUnavailable(f"write failed: {exc!r}")
                for job in jobs:
                    job.settle(error)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.exception("the PostgreSQL writer failed on a group")
                continue
            settle_group(list(zip(jobs, outcomes, strict=True)), from_thread=False)
        await self._drop_connection()

    async def _commit_group(self, jobs: list[WriteJob]) -> list[Decided]:
        """Commit a group; the outcome of each job is an AppendResult or a PerhapError."""
        for attempt in range(2):
            try:
                conn = await self._connection()
                try:
                    return await self._transaction(conn, jobs, isolate=False)
                except _Isolate:
                    return await self._transaction(conn, jobs, isolate=True)
            except _Lost as exc:
                # Nothing was committed, so one retry on a fresh connection is safe; it answers
                # 503 at once if the database is really gone.
                self._known.forget()
                await self._drop_connection()
                if attempt:
                    return [StorageUnavailable(f"the database is unavailable: {exc}") for _ in jobs]
            except StorageUnavailable as exc:
                self._known.forget()
                await self._drop_connection()
                return [StorageUnavailable(exc.detail) for _ in jobs]
            except BaseException:
                # A bug or a cancellation mid-transaction: the connection may still hold the
                # transaction and its realm locks, so it must go.
                self._known.forget()
                await self._drop_connection()
                raise
        raise AssertionError("unreachable")

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.is_closed():
            # A new connection may follow a crash of the database, which takes back whatever was
            # committed without its WAL flushed (under synchronous_commit = off as the default, a
            # type row created for a group that then did not commit), and lets the entities'
            # sequence hand out again ids this writer holds: what it remembers is read again.
            # (Whatever it learnt and then used is durable: a group's commit flushes the WAL up
            # to itself, which includes every row it read or created before.)
            self._types.clear()
            self._entity_ids.pool.clear()
            self._known.forget()
            try:
                self._conn = await self._options.connect()
                await init_connection(self._conn)
            except DB_ERRORS as exc:
                self._conn = None
                raise StorageUnavailable(f"the database is unavailable: {exc}") from None
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _transaction(self, conn: Connection, jobs: list[WriteJob], isolate: bool) -> list[Decided]:
        ts = utc_timestamp()
        committing = False
        try:
            types = await self._type_ids(conn, {e.type for job in jobs for e in job.batch})
            keys = sorted({_realm_key(realm) for realm in {job.realm for job in jobs}})  # a hash a realm
            new_pairs: set[tuple[int, int]] = set()
            called = None if isolate else await self._call_known(conn, jobs, ts, types, keys, new_pairs)
            if called is not None:  # committed by the call itself
                outcomes = called
                written = decide.written_by(jobs, outcomes)
            else:
                outcomes = await self._transaction_body(conn, jobs, ts, types, keys, new_pairs, isolate)
                written = decide.written_by(jobs, outcomes)
                committing = True
                # NOTIFY inside the transaction: it is delivered when, and only if, the commit is.
                await conn.execute(f"NOTIFY {CHANNEL}; COMMIT" if written else "COMMIT")
        except _Isolate:
            raise
        except asyncpg.PostgresError as exc:
            if not isinstance(exc, LOST):
                await rollback(conn)
            if committing or not isinstance(exc, LOST):
                raise StorageUnavailable(f"commit failed: {exc}") from None
            raise _Lost(str(exc)) from None
        except LOST as exc:
            if committing:  # the commit may or may not have happened: never acknowledge it
                raise StorageUnavailable(f"the outcome of the commit is unknown: {exc!r}") from None
            raise _Lost(repr(exc)) from None
        if isolate:  # rare: start the memory again rather than reason about each savepoint
            self._known.forget()
        else:
            self._known.committed()
        self._entity_types |= new_pairs
        if len(self._entity_types) > 500_000:
            self._entity_types.clear()
        self.groups_committed += 1
        if written:
            self.events_committed += written
            self._wake()
        return outcomes

    async def _transaction_body(self, conn: Connection, jobs: list[WriteJob], ts: str, types: dict[str, int],
                                keys: list[int], new_pairs: set[tuple[int, int]], isolate: bool) -> list[Decided]:
        """BEGIN, the realm locks, and the group decided from a look-up: all but the COMMIT."""
        # The locks are their own statements: under READ COMMITTED (named here, whatever the
        # database's default) each later statement then reads with a snapshot that includes the
        # previous lock holder's commit.
        await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED;" + DURABLE + KEY_PLANS + "".join(
            f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, {k});" for k in keys))
        if isolate:
            return [await self._apply_alone(conn, job, ts, types, new_pairs) for job in jobs]
        try:
            return await self._apply(conn, jobs, ts, types, new_pairs)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, LOST):
                raise
            # Most likely an event id another process stored meanwhile; whatever it is,
            # it belongs to one append, which the slow path finds and refuses alone.
            self._known.forget()
            await conn.execute("ROLLBACK")
            raise _Isolate() from None

    async def _type_ids(self, conn: Connection, names: set[str]) -> dict[str, int]:
        missing = sorted(names - self._types.keys())
        if missing:
            # Outside the group's transaction, in name order: types are shared by every realm, so
            # creating them under realm locks could deadlock two processes. An unused type is
            # invisible (keys list the types of an entity, not this table).
            await conn.execute("INSERT INTO perhap_types (name) SELECT unnest($1::text[]) "
                               "ON CONFLICT DO NOTHING", missing)
            rows = await conn.fetch("SELECT name, id FROM perhap_types WHERE name = ANY($1::text[])", missing)
            self._types.update((r[0], r[1]) for r in rows)
        return self._types

    async def _apply_alone(self, conn: Connection, job: WriteJob, ts: str,
                           types: dict[str, int], new_pairs: set[tuple[int, int]]) -> Decided:
        """Apply one job in its own savepoint (the slow path after a failed shared write)."""
        await conn.execute("SAVEPOINT job")
        pairs: set[tuple[int, int]] = set()
        try:
            [outcome] = await self._apply(conn, [job], ts, types, pairs)
        except asyncpg.UniqueViolationError as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
            # The id is taken by an event committed meanwhile (or raced in from this group).
            stored = await events_by_ids(conn, [e.event_id for e in job.batch])
            try:
                replay = replay_of(job, stored)
            except PerhapError as conflict:
                return conflict
            return replay or StorageUnavailable(f"write failed: {exc}")
        except asyncpg.PostgresError as exc:
            if isinstance(exc, LOST):
                raise
            await conn.execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
            return StorageUnavailable(f"write failed: {exc}")
        await conn.execute("RELEASE SAVEPOINT job")
        new_pairs |= pairs
        return outcome

    async def _apply(self, conn: Connection, jobs: list[WriteJob], ts: str,
                     types: dict[str, int], new_pairs: set[tuple[int, int]]) -> list[Decided]:
        """Decide every job from one look-up, then write the accepted ones with array statements."""
        triples = list(dict.fromkeys(k for job in jobs for k in keys_read(job)))
        seen: set[str] = set()
        first_of_realm: list[bool] = []  # ask each realm's head once
        for realm, _, _ in triples:
            first_of_realm.append(realm not in seen)
            seen.add(realm)
        rows = await conn.fetch(_LOOKUP, *map(list, zip(*triples, strict=True)), first_of_realm)
        found: dict[Key, _Found] = {}
        versions: dict[Key, int] = {}
        heads: dict[str, int] = {}  # the last position taken in each realm
        for r in rows:
            t = triples[r[0] - 1]
            found[t], versions[t] = _Found(r[1], r[2]), -1 if r[4] is None else r[4]
            if r[5] is not None:
                heads[t[0]] = r[5]
        client_ids = [e.event_id for j in jobs for e in j.batch if e.client_id]
        stored = await events_by_ids(conn, client_ids) if client_ids else {}
        outcomes, accepted = decide_group(jobs, stored, versions, heads, ts)
        ids_of = await self._store_accepted(conn, accepted, found, versions, ts, types, new_pairs) if accepted else {}
        self._known.stage(ids_of, versions, heads)
        return outcomes

    async def _call_known(self, conn: Connection, jobs: list[WriteJob], ts: str, types: dict[str, int],
                          lock_keys: list[int], new_pairs: set[tuple[int, int]]) -> list[Decided] | None:
        """Decide a group of remembered entities (and of new ones its jobs expect to be new) from
        the memory and commit it by one call that checks the remembered versions under the realm
        locks first (none when no job expects a version), checks that the new entities do not
        exist and creates them, and numbers the events from the stored heads (see :mod:`.known`).
        None, with nothing committed, when the memory does not cover the group, a client id of the
        group is stored, an entity is gone, a new one exists, the memory was stale twice, or the
        call failed: the group then goes to a transaction and the look-up."""
        known = self._known
        covered = known.covering(jobs)
        if covered is None:
            return None
        keys, new = covered
        ids_of = {k: known.ids[k] for k in keys}
        new_ids = await self._entity_ids.take(conn, len(new)) if new else []
        if new_ids is None:
            return None
        ids_of.update((k, (*known.domains[(k[0], k[1])], entity_id)) for k, entity_id in zip(new, new_ids))
        realm_ids = {k[0]: ids[0] for k, ids in ids_of.items()}
        realms = list(realm_ids)
        client_ids = [e.event_id for job in jobs for e in job.batch if e.client_id]
        as_relative = relative(jobs)
        for _ in range(2):  # the second time with the memory corrected
            check_heads = [known.heads[realm] for realm in realms]
            check_versions = [known.versions[k] for k in keys]
            outcomes, accepted, versions, heads = decide_known(jobs, keys, new, realms, known, ts)
            written = list(dict.fromkeys(k for job_keys in map(Accepted.keys, accepted) for k in job_keys))
            columns, pairs = event_columns(accepted, ids_of, types, ts)
            pairs -= self._entity_types
            updated = [k for k in written if k in known.versions]
            try:
                row = await conn.fetchrow(
                    CALL, lock_keys, list(realm_ids.values()), check_heads,
                    [ids_of[k][2] for k in keys], check_versions, client_ids, [ids_of[k][2] for k in updated],
                    [versions[k] for k in updated], *pair_columns(pairs), *columns, as_relative,
                    [ids_of[k][1] for k in new], [k[2] for k in new],
                    [ids_of[k][2] if versions[k] >= 0 else None for k in new], [versions[k] for k in new])
            except LOST as exc:  # the call commits as it ends: whether it did is read afresh
                if isinstance(exc, TimeoutError):  # it may still run, or not have reached the server yet
                    raise StorageUnavailable(f"the outcome of the commit is unknown: {exc!r}") from None
                return await self._after_lost_call(jobs, outcomes, accepted, lock_keys, exc)
            except asyncpg.PostgresError:
                # Nothing committed (an event id another process was storing, say): the look-up
                # in a transaction decides, and finds whatever that was.
                known.forget()
                return None
            assert row is not None  # the call always returns its one row
            holds, stored_heads, stored_versions, ids_stored, new_exist = row
            if holds:
                if stored_heads != check_heads or stored_versions != check_versions:
                    # Written moved by the stored heads (and, in a relative group, versions):
                    # decided from them, the group gives exactly the rows the call wrote.
                    known.correct(keys, realms, stored_versions, stored_heads)
                    outcomes, accepted, versions, heads = decide_known(jobs, keys, new, realms, known, ts)
                new_pairs |= pairs
                known.stage({k: ids_of[k] for k in written}, versions, heads)
                return outcomes
            if ids_stored or new_exist or not known.correct(keys, realms, stored_versions, stored_heads):
                return None
        return None

    async def _after_lost_call(self, jobs: list[WriteJob], outcomes: list[Decided], accepted: list[Accepted],
                               lock_keys: list[int], lost: BaseException) -> list[Decided]:
        """A call that lost its connection (killed while idle, say): its events answer if stored (see
        :func:`.queries.after_lost_call`); else nothing committed: ``_Lost`` (and client ids alone) tries again."""
        await self._drop_connection()
        event_ids = [e.event_id for a in accepted for e in a.job.batch]
        if not (ours := {e.event_id for a in accepted for e in a.job.batch if not e.client_id}):  # no one else's
            raise _Lost(repr(lost))
        try:
            stored = await after_lost_call(await self._connection(), lock_keys, event_ids, DURABLE)
        except (*DB_ERRORS, StorageUnavailable) as exc:
            await self._drop_connection()
            raise StorageUnavailable(f"the outcome of the commit is unknown: {lost!r}, then {exc!r}") from None
        if not ours & stored.keys():  # (a call is one transaction)
            raise _Lost(repr(lost))
        if len(stored) != len(event_ids):  # not this call's doing: never guess
            raise StorageUnavailable(f"the outcome of the commit is unknown: {lost!r}")
        return decide.answered_from(stored, jobs, outcomes, accepted)

    async def _store_accepted(self, conn: Connection, accepted: list[Accepted], found: dict[Key, _Found],
                              versions: dict[Key, int], ts: str, types: dict[str, int],
                              new_pairs: set[tuple[int, int]]) -> dict[Key, Ids]:
        # Sorted: row locks on entities are then taken in one order by every writer. The realm
        # lock already keeps two writers of one realm apart; this keeps the order safe without it.
        keys_of = [a.keys() for a in accepted]
        keys = sorted({k for job_keys in keys_of for k in job_keys})
        # Create missing realms and domains. Nobody else can create them meanwhile: we hold the
        # realm's lock, and every writer takes it first.
        realm_ids = {k[0]: f.realm_id for k, f in found.items() if f.realm_id is not None}
        new_realms = sorted({k[0] for k in keys if k[0] not in realm_ids})
        if new_realms:
            rows = await conn.fetch("INSERT INTO perhap_realms (name) SELECT unnest($1::text[]) "
                                    "RETURNING name, id", new_realms)
            realm_ids.update((r[0], r[1]) for r in rows)
        domain_ids = {(realm_ids[k[0]], k[1]): f.domain_id for k, f in found.items() if f.domain_id is not None}
        new_domains = sorted({(realm_ids[k[0]], k[1]) for k in keys} - domain_ids.keys())
        if new_domains:
            rows = await conn.fetch("INSERT INTO perhap_domains (realm_id, name) SELECT * FROM "
                                    "unnest($1::int[], $2::text[]) RETURNING realm_id, name, id",
                                    *map(list, zip(*new_domains, strict=True)))
            domain_ids.update(((r[0], r[1]), r[2]) for r in rows)
        domain_of = {k: domain_ids[(realm_ids[k[0]], k[1])] for k in keys}
        rows = await conn.fetch(_UPSERT_ENTITIES, [domain_of[k] for k in keys], [k[2] for k in keys],
                                [versions[k] for k in keys])
        entity_ids: dict[tuple[int, str], int] = {(r[1], r[2]): r[0] for r in rows}
        ids_of = {k: (realm_ids[k[0]], domain_of[k], entity_ids[(domain_of[k], k[2])]) for k in keys}
        columns, pairs = event_columns(accepted, ids_of, types, ts)
        pairs -= self._entity_types
        if pairs:
            await conn.execute("INSERT INTO perhap_entity_types SELECT * FROM unnest($1::bigint[], "
                               "$2::int[]) ON CONFLICT DO NOTHING", *pair_columns(pairs))
            new_pairs |= pairs
        if len(columns[0]) >= COPY_THRESHOLD:  # COPY costs a round trip more, but inserts faster
            await conn.copy_records_to_table("perhap_events", records=zip(*columns, strict=True),
                                             columns=_EVENT_COLUMNS)
        else:
            await conn.execute(_INSERT_EVENTS, *columns)
        return ids_of

