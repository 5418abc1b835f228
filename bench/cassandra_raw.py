"""Cassandra's own ceiling on the bench's node: the raw driver doing what rows 3-5 ask of perhap.

Issue 19 judges perhap's Cassandra rows against the engine on the same node in the same run, not
against SQLite or eventsourcing: a conditional insert is one Paxos round, the least an append
that must be exact (gapless versions, no lost race) can cost with Cassandra's own tools.

- ``plain`` and ``conditional``: 64 asyncio tasks, each inserting one row at a time into its own
  partition (as row 3's tasks each append to their own entity), ``INSERT`` and ``INSERT ... IF NOT
  EXISTS``, for the row's seconds; ``hot``: the plain inserts all into one partition, as every
  append of a realm writes into its index bucket (the capacity model's hot partition);
- ``batch``: single-partition unlogged batches of 1,000 rows, one after another (row 4's shape);
- ``read``: one partition of ``count`` rows read in pages of 10,000 (row 5's shape), after
  ``flush`` (the bench's node writes its memtables to SSTables, as before perhap's read-back, so
  that both sides read SSTables; a partition still in a memtable reads 25-40 % faster).

Statements go through perhap's own :class:`~perhap.backends.cassandra.driver.Driver` (the same
cassandra-driver session settings, token-aware routing, consistency levels and the same hop to the
event loop per statement), so the only difference from perhap is what perhap does around them.
A fresh node runs 2-3x slower for its first seconds (JIT): :func:`warm` runs plain inserts first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable

from .common import rate_of

PAYLOAD = b'{"n":0,"text":"hello from the benchmark"}'  # about the size of row 3's events
WORKERS = 64
BATCH_ROWS = 1000
PAGE = 10_000
_keyspaces = itertools.count()


class Raw:
    """A keyspace of its own on the node, with one table of (partition, clustering, payload)."""

    def __init__(self, url: str) -> None:
        from perhap.backends.cassandra.driver import Driver
        from perhap.backends.cassandra.url import parse_cassandra_url

        self.options = parse_cassandra_url(url)
        self.driver = Driver(self.options)
        # A keyspace of its own, dropped at the end: never the store's (a test session shares one).
        self.ks = f"bench_raw_{os.getpid()}_{next(_keyspaces)}"
        self.partitions = itertools.count()

    async def __aenter__(self) -> Raw:
        d = self.driver
        d.loop = asyncio.get_running_loop()
        await asyncio.to_thread(d.connect)
        await d.run(f"CREATE KEYSPACE IF NOT EXISTS {self.ks} WITH replication = "
                    f"{{'class': 'SimpleStrategy', 'replication_factor': {self.options.replication_factor}}}")
        await d.run(f"CREATE TABLE IF NOT EXISTS {self.ks}.raw (p text, c int, v blob, PRIMARY KEY (p, c))")
        session = d.session
        self.insert = await asyncio.to_thread(
            session.prepare, f"INSERT INTO {self.ks}.raw (p, c, v) VALUES (?, ?, ?)")
        self.insert_if = await asyncio.to_thread(
            session.prepare, f"INSERT INTO {self.ks}.raw (p, c, v) VALUES (?, ?, ?) IF NOT EXISTS")
        self.select = await asyncio.to_thread(session.prepare, f"SELECT c, v FROM {self.ks}.raw WHERE p = ?")
        self.select.fetch_size = PAGE
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.driver.run(f"DROP KEYSPACE IF EXISTS {self.ks}")
        finally:
            await self.driver.shutdown()

    async def inserts(self, seconds: float, *, conditional: bool, one_partition: bool = False) -> float:
        """Rows per second: WORKERS tasks, each inserting one row at a time into its own partition
        (or, with ``one_partition``, all into one: a realm's index bucket under load)."""
        stmt = self.insert_if if conditional else self.insert
        run = self.driver.run
        run_id = next(self.partitions)

        async def insert(index: int, n: int) -> None:
            partition, c = (f"s{run_id}", index * 10_000_000 + n) if one_partition else (f"s{run_id}-{index}", n)
            rows = await run(stmt, (partition, c, PAYLOAD), lwt=conditional)
            if conditional:
                assert rows and rows[0]["[applied]"], rows  # a new row each time: always applied

        return await rate_of(WORKERS, seconds, insert)

    async def batches(self, count: int, max_seconds: float) -> float:
        """Rows per second: ``count`` single-partition unlogged batches of BATCH_ROWS, in sequence."""
        from cassandra.query import BatchStatement, BatchType

        run_id = next(self.partitions)
        start = time.perf_counter()
        done = 0
        for i in range(count):
            batch = BatchStatement(BatchType.UNLOGGED)
            partition = f"b{run_id}-{i}"
            for c in range(BATCH_ROWS):
                batch.add(self.insert, (partition, c, PAYLOAD))
            await self.driver.run(batch)
            done += BATCH_ROWS
            if time.perf_counter() - start > max_seconds:
                break
        return done / (time.perf_counter() - start)

    async def read(self, count: int, repeats: int = 3, flush: Callable[[], None] | None = None) -> float:
        """Rows per second reading one ``count``-row partition in pages of PAGE (best of repeats);
        ``flush`` (blocking) runs in a thread between the writes and the reads."""
        from cassandra.query import BatchStatement, BatchType

        partition = f"r{next(self.partitions)}"
        for first in range(0, count, BATCH_ROWS):
            batch = BatchStatement(BatchType.UNLOGGED)
            for c in range(first, min(first + BATCH_ROWS, count)):
                batch.add(self.insert, (partition, c, PAYLOAD))
            await self.driver.run(batch)
        if flush is not None:
            await asyncio.to_thread(flush)
        best = float("inf")
        for attempt in range(repeats + 1):
            start = time.perf_counter()
            rows = await self.driver.run(self.select, (partition,))
            took = time.perf_counter() - start
            assert len(rows) == count, (len(rows), count)
            if attempt:  # the first read only warms the node's caches
                best = min(best, took)
        return count / best


async def warm(url: str, seconds: float) -> None:
    """Give a fresh node's JIT its warm-up on the paths the rows use before any figure is taken."""
    async with Raw(url) as raw:
        await raw.inserts(seconds / 2, conditional=False)
        await raw.inserts(seconds / 2, conditional=True)


async def measure(url: str, seconds: float, batches: int, read_count: int,
                  flush: Callable[[], None] | None = None) -> dict[str, float]:
    """The baselines (the read only with a ``read_count``), on a keyspace of their own, dropped after."""
    async with Raw(url) as raw:
        plain = await raw.inserts(seconds, conditional=False)
        hot = await raw.inserts(seconds, conditional=False, one_partition=True)
        conditional = await raw.inserts(seconds, conditional=True)
        batch = await raw.batches(batches, max_seconds=2 * seconds)
        out = {"plain": plain, "hot": hot, "conditional": conditional, "batch": batch}
        if read_count:
            out.update(read=await raw.read(read_count, flush=flush), read_count=read_count)
    return out
