"""Walking a domain's or the realm's index (scope_log) in position order, either way.

Rows are clustered by (ts, id) in buckets listed by a two-level directory (scope_dir). A position
is ``ts * 1024 + slot`` (positions.py), so position order is ts order, and within one ts the
slot's: the rows of one ts (a *run*: as many as processes that picked that microsecond) are
reordered by position, and a chunk handed out always holds whole runs, so that a reader that
stops after any row of a chunk resumes correctly from that row's position.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ...errors import StorageUnavailable
from . import clock
from .driver import Row
from .records import SLOT_BITS, IndexRow
from .schema import ERA, Keyspace

#: No writer can have reached an era that starts this far after now (big batches sit seconds ahead).
ERA_HORIZON_US = 600_000_000
MAX_CHUNK = 1000  # rows per query
UNNUMBERED = ("an event without a position in this store: a process of a perhap older than schema 3 is "
              "still writing to it; stop it (docs/backends/cassandra.md, \"Upgrading to positions\")")
MIN_FILTERED_CHUNK = 200  # rows per query when several types are filtered here (few may be kept)
#: Rows of a read's first query when the read is bounded by bytes (a JSON page, a live stream, a
#: group's read): later queries ask for about as many rows as the bytes left hold at the average
#: size of the rows fetched so far. So a read of large events fetches about its bound (16 events
#: of 1 MiB, the default --max-body, are the default page's 16 MiB), not its count of them (up to
#: 10,000); a read of small events asks twice.
FIRST_BOUNDED_CHUNK = 16

log = logging.getLogger("perhap.cassandra")
_hollow_seen = False  # a row without content was met (warned once)
ENTITY = IndexRow._fields.index("entity")


@dataclass(frozen=True, slots=True)
class IndexScan:
    """A scope index read from an exclusive position on (None: from its first or, descending, its
    last row), keeping rows of ``types`` (empty: all)."""

    ks: Keyspace
    realm: str  # as stored
    key: str  # the domain, or '' for the realm index
    types: tuple[str, ...]
    descending: bool

    async def chunks(self, start: int | None, chunk: int,
                     max_bytes: int | None = None) -> AsyncGenerator[list[IndexRow], None]:
        """Rows after ``start`` in reading order, in lists of whole runs; ``chunk`` rows per query,
        or with ``max_bytes``, as many as the bytes not yet handed out hold (see FIRST_BOUNDED_CHUNK)."""
        ks, desc = self.ks, self.descending
        one_type = len(self.types) == 1  # filtered by the node; several: filtered here
        least = 2 if len(self.types) < 2 else MIN_FILTERED_CHUNK
        most = chunk = max(least, min(chunk, MAX_CHUNK))
        sizing = None if max_bytes is None else ChunkSizing(max_bytes, least, most)
        if sizing is not None:
            chunk = sizing.next()
        wanted = frozenset(self.types)
        type_args = self.types if one_type else ()
        if start is None:
            first_ts = clock.now_us() + ERA_HORIZON_US if desc else None
        else:  # the ts of the first position after (before) start
            first_ts = (start - 1 if desc else start + 1) >> SLOT_BITS
        if first_ts is not None and first_ts < 0:
            return  # before position 1 (or 0): nothing
        first_bucket = None if first_ts is None else first_ts // ks.bucket_us
        async for bucket in self.buckets(first_bucket):
            carry: list[IndexRow] = []
            last: tuple[int, object] | None = None
            while True:
                head = (self.realm, self.key, bucket)
                args: tuple[object, ...]
                if last is not None:
                    stmt, args = ks.q.scope_after[desc][one_type], (*head, *last)
                elif bucket == first_bucket:
                    stmt, args = ks.q.scope_from[desc][one_type], (*head, first_ts)
                else:
                    stmt, args = ks.q.scope_all[desc][one_type], head
                raw = await ks.db.run(stmt, (*args, *type_args, chunk))
                full = len(raw) == chunk
                if raw:
                    last = raw[-1][0], raw[-1][1]  # (ts, id): where the next query goes on
                rows = [row for row in map(_numbered, raw) if row is not None]
                if sizing is not None:
                    sizing.fetched(len(raw), sum(r.size for r in rows))
                batch = carry + rows
                carry = []
                if full:  # the last run may go on in the next query: hold it back
                    cut = len(batch)
                    while cut and batch[cut - 1].ts == batch[-1].ts:
                        cut -= 1
                    batch, carry = batch[:cut], batch[cut:]
                kept = [r for r in batch if self.after(r, start) and (one_type or not wanted or r.type in wanted)]
                if sizing is not None:
                    sizing.handed(sum(r.size for r in kept))
                    chunk = sizing.next()
                if kept:
                    kept.sort(key=_position, reverse=desc)
                    yield kept
                if not full:
                    break

    def after(self, row: IndexRow, start: int | None) -> bool:
        """Whether the row comes after ``start`` in reading order."""
        if start is None:
            return True
        return row.position < start if self.descending else row.position > start

    async def buckets(self, first: int | None) -> AsyncGenerator[int, None]:
        """The scope's non-empty buckets from ``first`` on (None: all), in reading order."""
        ks, desc = self.ks, self.descending
        era = None if first is None else first // ERA
        opening = first is not None
        horizon = clock.now_us() + ERA_HORIZON_US
        while True:
            if not opening:
                if not desc and era is not None and (era + 1) * ERA * ks.bucket_us > horizon:
                    return  # no writer can have reached a later era yet
                rows = await ks.db.run(ks.q.eras[desc], (self.realm, self.key, -1 if era is None else era))
                if not rows:
                    return
                era = rows[0][0]
            assert era is not None
            if opening:
                bound = first
            else:
                bound = (era + 1) * ERA - 1 if desc else era * ERA
            opening = False
            for (bucket,) in await ks.db.run(ks.q.buckets[desc], (self.realm, self.key, era, bound)):
                yield bucket


class ChunkSizing:
    """How many rows a read bounded by ``max_bytes`` asks for next: FIRST_BOUNDED_CHUNK at first,
    then as many as the bytes not yet handed out hold at the average size fetched so far, within
    [``least``, ``most``]."""

    __slots__ = ("left", "least", "most", "rows", "size")

    def __init__(self, max_bytes: int, least: int, most: int) -> None:
        self.left, self.least, self.most = max_bytes, least, most
        self.rows = self.size = 0

    def fetched(self, rows: int, size: int) -> None:
        self.rows += rows
        self.size += size

    def handed(self, size: int) -> None:
        self.left -= size

    def next(self) -> int:
        if not self.rows:
            want = FIRST_BOUNDED_CHUNK
        else:
            want = max(self.left, 0) * self.rows // max(self.size, 1) + 1
        return max(self.least, min(self.most, want))


def _position(row: IndexRow) -> int:
    return row.position


def _numbered(raw: Row) -> IndexRow | None:
    """The row, with a position. The upgrade to schema 3 numbered every row of the realm indexes
    and theirs in the domains; a pending domain row without one lost its realm row (its writer
    died between the two), so it never committed: any position will do, readers drop it. A
    settled row without one was written by a process of the older release: refused. None for a
    row with no content."""
    if raw[-1] is not None:
        return IndexRow._make(raw)
    if raw[ENTITY] is None:
        # Keys and ``ok`` alone: the row's content was deleted, then it was marked ok (an UPDATE
        # makes the row it names). No writer does that now, but one damaged row must not make
        # every read of its realm fail: the scan drops it, and says so once.
        global _hollow_seen
        if not _hollow_seen:
            _hollow_seen = True
            log.warning("skipping a scope_log row that has no content (ts %d, id %s); this warning "
                        "is given once per process", raw[0], raw[1])
        return None
    row = IndexRow._make(raw)
    if row.ok:
        raise StorageUnavailable(UNNUMBERED)
    return row._replace(position=row.ts << SLOT_BITS | ((1 << SLOT_BITS) - 1))
