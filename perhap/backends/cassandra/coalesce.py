"""Group commit of plain writes: rows that concurrent appends send to the same partitions go out
together, one unlogged single-partition batch per partition, instead of a few requests per append.

Appends in flight at once write into the same few partitions: every event of a realm goes to its
index bucket for the minute, every event of a domain to the domain's, and server ids of the same
16 ms share an ``events_by_id`` shard. Each append used to send its own rows (pending index rows,
the rows by id, then marking them ok: five requests around its Paxos round), so the node applied
five small mutations per append. Here the first writer's rows go at once; whatever is queued while
they are in flight goes in the next round, all together (the same pattern as the SQLite writer's
group commit). A writer's ``await`` returns when the requests holding its rows are acknowledged,
so step 1's timing argument (docs/backends/cassandra.md, "the settle window") measures what it did.

Bounded: an append's rows over ``DIRECT_BYTES`` go out on their own, as before, and one round takes
at most ``ROUND_BYTES`` of payload, so no coalesced mutation nears Cassandra's ``max_mutation_size``.
A failed request fails every writer whose rows it held (they answer 503, as when their own request
failed; readers settle pending rows either way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any

from .driver import Driver, Statement

Rows = list[tuple[Hashable, Sequence[Any]]]  # (partition, arguments) pairs, as for Driver.batch

#: An append whose rows carry more payload than this writes them itself.
DIRECT_BYTES = 256 << 10
#: The most payload one round sends (a round's rows of one partition form one or a few mutations).
ROUND_BYTES = 4 << 20


class Coalescer:
    """Writes queued by many tasks of one event loop, sent in rounds (see the module docstring)."""

    def __init__(self, db: Driver) -> None:
        self.db = db
        self.queued: list[tuple[Statement, Rows, int, asyncio.Future[None]]] = []
        self.sending = False
        self.rounds = 0  # rounds sent (for tests and the capacity model)

    async def write(self, stmt: Statement, rows: Rows, size: int) -> None:
        """Write ``rows`` of ``stmt`` (``size``: their payload in bytes); return once acknowledged."""
        if not rows:
            return
        if size > DIRECT_BYTES:
            await self.db.batch(stmt, rows)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append((stmt, rows, size, future))
        if not self.sending:
            self.sending = True
            self.db.spawn(self._send())
        await future

    async def _send(self) -> None:
        try:
            while self.queued:
                taken = 0
                for i, item in enumerate(self.queued):
                    taken += item[2]
                    if taken > ROUND_BYTES and i:
                        break
                else:
                    i = len(self.queued)
                round_, self.queued = self.queued[:i], self.queued[i:]
                await self._round(round_)
        finally:
            self.sending = False

    async def _round(self, round_: list[tuple[Statement, Rows, int, asyncio.Future[None]]]) -> None:
        by_stmt: dict[int, tuple[Statement, Rows, list[asyncio.Future[None]]]] = {}
        for stmt, rows, _, future in round_:
            entry = by_stmt.setdefault(id(stmt), (stmt, [], []))
            entry[1].extend(rows)
            entry[2].append(future)
        self.rounds += 1
        results = await asyncio.gather(*(self.db.batch(stmt, rows) for stmt, rows, _ in by_stmt.values()),
                                       return_exceptions=True)
        for (_, _, futures), result in zip(by_stmt.values(), results):
            for future in futures:
                if future.done():  # its writer was cancelled: the rows were written all the same
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                    future.exception()  # retrieved: a cancelled writer must not leave a warning
                else:
                    future.set_result(None)
