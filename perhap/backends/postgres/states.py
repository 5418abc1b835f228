"""Group state on PostgreSQL: the ``perhap_groups`` table (:mod:`perhap.store.states`).

A write is one statement that names what it expects, so the database decides it atomically:
``INSERT ... ON CONFLICT DO NOTHING`` creates, ``UPDATE`` and ``DELETE ... WHERE token = $3``
replace and remove; the row it returns (``RETURNING``) says whether it was applied. Two processes
replacing one document meet on its row lock, and the second re-checks the token the first left.

Each write runs in a transaction of its own on a connection of the store's pool, so that it can be
made durable like an append (``synchronous_commit`` on, :data:`.writer.DURABLE`) and so that a
lost connection is understood as the append writer understands it: lost before COMMIT was sent,
nothing was written and the write is tried once more on a fresh connection; lost during COMMIT,
the outcome is unknown. The document is then read back: the token this write carried is unique,
so finding it means the write was applied (True); anything else is answered StorageUnavailable
(503), as the write may or may not have been applied.

A write that is applied also sends a notification (``pg_notify`` in its ``RETURNING``, so no extra
round trip, delivered at COMMIT and only if it commits) naming the document and the process
that wrote it: the other processes' listeners wake their consumers waiting on that group
(:meth:`StateTable.watch`) instead of leaving them to their next poll, which would let the
consumers of the process whose acknowledgements free the work take all of it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import asyncpg

from ...errors import StorageUnavailable, store_closed
from ...store.states import StateRecord, StateTable, Watcher, check_size, new_token
from .connection import LOST, Pool, rollback
from .schema import STATES_CHANNEL
from .writer import DURABLE

Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]

GET = "SELECT token, data FROM perhap_groups WHERE realm = $1 AND name = $2"


def _noticed(origin: str) -> str:
    """A RETURNING clause: a row only when the statement applied, whose pg_notify tells the other
    processes which document changed; ``origin`` is the parameter naming this process."""
    return f"RETURNING pg_notify('{STATES_CHANNEL}', json_build_array($1::text, $2::text, {origin}::text)::text)"


CREATE = ("INSERT INTO perhap_groups (realm, name, token, data) VALUES ($1, $2, $3, $4) "
          "ON CONFLICT DO NOTHING " + _noticed("$5"))
REPLACE = ("UPDATE perhap_groups SET token = $3, data = $4 WHERE realm = $1 AND name = $2 AND token = $5 "
           + _noticed("$6"))
DELETE = "DELETE FROM perhap_groups WHERE realm = $1 AND name = $2 AND token = $3 " + _noticed("$4")


class PostgresStates(StateTable):
    """The state documents of one PostgreSQL store, on the store's pool."""

    def __init__(self, pool: Callable[[], Pool | None], fetch: Fetch, timeout: float) -> None:
        self._pool, self._fetch, self._timeout = pool, fetch, timeout
        #: Names this process in its notifications, so that it does not wake itself.
        self._origin = new_token()
        self._watchers: list[Watcher] = []

    def watch(self, changed: Watcher) -> None:
        self._watchers.append(changed)

    def heard(self, payload: str | None) -> None:
        """A notification of the states channel (None: some may have been missed)."""
        key: tuple[str, str] | None = None
        if payload is not None:
            try:
                realm, name, origin = json.loads(payload)
            except (ValueError, TypeError):  # not ours: wake every waiter, which costs only a look
                pass
            else:
                if origin == self._origin:
                    return
                key = (realm, name)
        for changed in self._watchers:
            changed(key)

    async def get(self, realm: str, name: str) -> StateRecord | None:
        rows = await self._fetch(GET, realm, name)
        return StateRecord(rows[0][0], rows[0][1]) if rows else None

    async def names(self, realm: str | None) -> list[tuple[str, str]]:
        # COLLATE "C" columns: code point order, as Python sorts strings.
        if realm is None:
            rows = await self._fetch("SELECT realm, name FROM perhap_groups ORDER BY realm, name")
        else:
            rows = await self._fetch("SELECT realm, name FROM perhap_groups WHERE realm = $1 ORDER BY name", realm)
        return [(r[0], r[1]) for r in rows]

    async def put(self, realm: str, name: str, data: bytes, token: str, expected: str | None,
                  limit: int | None = None) -> bool:
        check_size(data, limit)
        if expected is None:
            return await self._write(realm, name, token, CREATE, realm, name, token, data, self._origin)
        return await self._write(realm, name, token, REPLACE, realm, name, token, data, expected, self._origin)

    async def delete(self, realm: str, name: str, expected: str) -> bool:
        return await self._write(realm, name, None, DELETE, realm, name, expected, self._origin)

    async def _write(self, realm: str, name: str, token: str | None, sql: str, *args: object) -> bool:
        """Run one conditional statement in a durable transaction; whether it changed a row.
        ``token``: the one the write stores (None for a delete), to find out an unknown outcome."""
        for attempt in range(2):
            pool = self._pool()
            if pool is None:
                raise store_closed()
            committing = False
            try:
                async with pool.acquire(timeout=self._timeout) as conn:
                    try:
                        await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED;" + DURABLE)
                        applied = bool(await conn.fetch(sql, *args))
                        committing = True
                        await conn.execute("COMMIT")
                        return applied
                    except asyncpg.PostgresError as exc:
                        if not isinstance(exc, LOST):
                            await rollback(conn)
                        raise
            except LOST as exc:
                if committing:
                    return await self._settle(realm, name, token, exc)
                # Nothing was committed: one retry takes a fresh connection (a pooled one may
                # have died with a restarted server), and fails fast if the server is away.
                if attempt:
                    raise StorageUnavailable(f"the database is unavailable: {exc!r}") from None
            except asyncpg.PostgresError as exc:
                raise StorageUnavailable(f"write failed: {exc}") from None
        raise AssertionError("unreachable")

    async def _settle(self, realm: str, name: str, token: str | None, exc: BaseException) -> bool:
        """After a connection lost during COMMIT: True if the document holds this write's token."""
        if token is not None:
            try:
                found = await self.get(realm, name)
            except StorageUnavailable:
                found = None
            if found is not None and found.token == token:
                return True
        raise StorageUnavailable(f"the outcome of the write is unknown: {exc!r}") from None
