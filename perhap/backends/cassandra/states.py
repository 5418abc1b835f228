"""Group state on Cassandra: lightweight transactions, one partition per document
(:mod:`perhap.store.states`).

Tables (schema.py): ``group_states`` keeps each document in a partition of its own, (stored realm,
name), since a Paxos round covers one partition: documents never contend with one another.
``group_names`` lists the names of a namespace in one partition, for ``names()``.

Writes are Paxos rounds on the document's partition:

- create: ``UPDATE ... SET state_token, data, gone = null IF state_token = null`` (no row, or a
  deleted one);
- replace: ``UPDATE ... SET state_token, data IF state_token = expected``;
- delete: ``UPDATE ... USING TTL SET state_token = null, data = null, gone = <fresh id>
  IF state_token = expected``.

(``state_token``: ``token`` is a reserved word of CQL.)

A document is read at the serial consistency level (``serial_consistency``: SERIAL or
LOCAL_SERIAL): a Paxos read, which first completes any round left half done, so it sees every write
answered before it started, and nothing that could still be undone. One process sends one
round per document at a time (a lock per document): its own requests never contend. Rounds of
other processes do: a serial read the server timed out (it gave up on the contention, or the node
was slow) is sent again after a random pause, until the store's timeout, since a read changes
nothing (the round it may complete is completed by any later round just the same).

Unknown outcomes. A CAS that gets no answer (a WriteTimeout of type CAS, a lost connection) may
have been applied, or may still be by the next round on the partition. The document is then read
back serially, which settles that round one way or the other, and the outcome decided by what
the write stored that no other write stores: its token for a put, its ``gone`` id for a delete.
Found: the write was applied, True. Not found: StorageUnavailable (503), since either the write was
not applied, or it was and another writer has replaced it since; the two cannot be told apart. The
driver also re-sends a request whose connection broke; a re-sent CAS that finds its own token (or
``gone`` id) in place reports the first try's success the same way.

Why a delete leaves ``gone`` rather than running a DELETE: a removed row would not say whose
delete removed it, so a delete with an unknown outcome (or re-sent) could never be decided. The
marker expires after a day (TTL), long after any re-send or read-back of its delete.

Listing. ``names()`` reads the namespace's ``group_names`` partition (sorted by realm and name)
and keeps the names whose document exists, read at the store's consistency level (which the
start-up checks make meet every write that was answered). A name is listed before each create of
its document is tried, and never unlisted: listing rows carry no condition, so removing one could
race a create of the same name in another process. The list thus keeps every name ever created.

``?namespace=``: stored realms are ``namespace/realm`` (records.Namespace); ``group_names`` is
partitioned by the namespace, and holds realms as the caller knows them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ...errors import StorageUnavailable, store_closed
from ...store.states import StateRecord, StateTable, check_size, new_token
from .driver import Driver, Statement, gather
from .records import Namespace

GONE_TTL = 86_400  # seconds a deleted document's marker is kept (see the module's docstring)
NAMES_PER_READ = 100  # names whose documents one read looks up (IN on the partition key)

Key = tuple[str, str]  # (stored realm, name): one group_states partition


@dataclass(frozen=True, slots=True)
class StateStatements:
    get: Statement  # token, data; serial
    check: Statement  # token, gone; serial
    create: Statement
    replace: Statement
    delete: Statement
    list_add: Statement
    listed: Statement  # every name of a namespace
    listed_in: Statement  # the names of one realm of a namespace
    live: Statement  # which of some names of a realm have a document


def prepare_states(session: Any, ks: str, serial_consistency: int) -> StateStatements:
    """Prepare the statements (blocking: at open, in its thread)."""
    p = session.prepare
    key = "WHERE realm = ? AND name = ?"
    get = p(f"SELECT state_token, data FROM {ks}.group_states {key}")
    check = p(f"SELECT state_token, gone FROM {ks}.group_states {key}")
    for serial in (get, check):
        serial.consistency_level = serial_consistency
    return StateStatements(
        get=get, check=check,
        create=p(f"UPDATE {ks}.group_states SET state_token = ?, data = ?, gone = null {key} "
                 "IF state_token = null"),
        replace=p(f"UPDATE {ks}.group_states SET state_token = ?, data = ? {key} IF state_token = ?"),
        delete=p(f"UPDATE {ks}.group_states USING TTL {GONE_TTL} SET state_token = null, data = null, "
                 f"gone = ? {key} IF state_token = ?"),
        list_add=p(f"INSERT INTO {ks}.group_names (ns, realm, name) VALUES (?, ?, ?)"),
        listed=p(f"SELECT realm, name FROM {ks}.group_names WHERE ns = ?"),
        listed_in=p(f"SELECT realm, name FROM {ks}.group_names WHERE ns = ? AND realm = ?"),
        live=p(f"SELECT name, state_token FROM {ks}.group_states WHERE realm = ? AND name IN ?"),
    )


class CassandraStates(StateTable):
    """The state documents of one Cassandra store (one namespace of a keyspace)."""

    def __init__(self, db: Driver, q: StateStatements, ns: Namespace) -> None:
        self.db, self.q, self.ns = db, q, ns
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}

    async def get(self, realm: str, name: str) -> StateRecord | None:
        key = (self.ns.stored(realm), name)
        async with self._lock(key):
            rows = await self.db.run(self.q.get, key)
        if not rows or rows[0][0] is None:  # none, or deleted
            return None
        return StateRecord(rows[0][0], rows[0][1] or b"")

    async def names(self, realm: str | None) -> list[tuple[str, str]]:
        q, run = self.q, self.db.run
        if realm is None:
            listed = await run(q.listed, (self.ns.realms,))
        else:
            listed = await run(q.listed_in, (self.ns.realms, realm))
        by_realm: dict[str, list[str]] = {}
        for r, n in listed:
            by_realm.setdefault(r, []).append(n)
        reads = [(r, run(q.live, (self.ns.stored(r), names[i:i + NAMES_PER_READ])))
                 for r, names in by_realm.items() for i in range(0, len(names), NAMES_PER_READ)]
        found = await gather(rows for _, rows in reads)
        live = {(r, n) for (r, _), rows in zip(reads, found, strict=True) for n, token in rows if token is not None}
        return [(r, n) for r, n in listed if (r, n) in live]

    async def put(self, realm: str, name: str, data: bytes, token: str, expected: str | None,
                  limit: int | None = None) -> bool:
        check_size(data, limit)
        key = (self.ns.stored(realm), name)
        if expected is None:
            # Listed before the document may exist: names() never misses a document.
            await self.db.run(self.q.list_add, (self.ns.realms, realm, name))
            return await self._cas(key, self.q.create, (token, data, *key), token=token)
        return await self._cas(key, self.q.replace, (token, data, *key, expected), token=token)

    async def delete(self, realm: str, name: str, expected: str) -> bool:
        key = (self.ns.stored(realm), name)
        gone = new_token()
        return await self._cas(key, self.q.delete, (gone, *key, expected), gone=gone)

    async def _cas(self, key: Key, stmt: Statement, args: tuple[Any, ...], *,
                   token: str | None = None, gone: str | None = None) -> bool:
        """One Paxos round; whether it was applied (decided as the module's docstring says)."""
        if self.db.closed:
            raise store_closed()
        async with self._lock(key):
            try:
                rows = await self.db.run(stmt, args, lwt=True)
            except StorageUnavailable as exc:
                if await self._wrote(key, token, gone):
                    return True
                raise StorageUnavailable(f"{exc.detail} (the write may or may not have been applied)") from None
            row = rows[0]
            if row["[applied]"]:
                return True
            if token is not None:  # a re-sent put whose first try was applied finds its own token
                return bool(row.get("state_token") == token)
            # A delete finding no document: its own first try (re-sent), or another's delete.
            return row.get("state_token") is None and await self._wrote(key, None, gone)

    async def _wrote(self, key: Key, token: str | None, gone: str | None) -> bool:
        """Whether the document holds this write's token or ``gone`` id, read serially."""
        rows = await self.db.run(self.q.check, key)
        stored_token, stored_gone = rows[0] if rows else (None, None)
        if token is not None:
            return bool(stored_token == token)
        return stored_token is None and stored_gone == gone

    @asynccontextmanager
    async def _lock(self, key: Key) -> AsyncIterator[None]:
        """One request per document at a time from this process: its own never contend."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
