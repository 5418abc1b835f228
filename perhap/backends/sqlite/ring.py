"""The ring of recently committed events that live subscribers of realms and domains read.

Without it each subscriber would query the database once per commit; with it a commit costs
one list extension, and a subscriber a bisect and a scan (docs/performance.md). The ring lives on
the store's event loop; the writer thread only builds the events it is handed (and only while
someone reads the ring).
"""

from __future__ import annotations

import bisect
import itertools
import time
from typing import cast

from ...model import Event, Scope
from ...store.query import ReadQuery, event_bytes

#: The ring keeps at most this many events and bytes of event data (module globals, read at
#: each trim, so tests can make them small).
RING_EVENTS = 4096
RING_BYTES = 8 * 1024 * 1024
RING_IDLE = 30.0  # seconds without a ring read after which the writer stops filling it


def _seq(event: Event) -> int:
    return cast(int, event.cursor)


class Ring:
    """Every event committed with seq in (``lo``, last seq in the ring], in seq order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lo: int | None = None  # None: no ring (until the store opens)
        self.size = 0  # bytes of data and meta in ``events``
        #: time.monotonic() until which the writer builds ring events (read by the writer thread)
        self.wanted = 0.0
        #: (scope, types, after_position, cursor) -> a seq up to which that read has no events
        #: after that cursor
        self.scanned: dict[tuple[Scope, tuple[str, ...], int | None, int], int] = {}
        self.last_commit = 0.0  # time.monotonic() of the last commit notification
        #: The largest seq a database read has shown: the ring answers only once it holds that
        #: commit too, so no read shows less than one before it (the writer's commit notices
        #: reach the ring a moment after the commit is readable).
        self.seen = 0
        #: Answers given since the last commit, by query: the hundred subscribers of one domain
        #: woken by a commit ask the same question, so the ring is scanned once for them all.
        #: Emptied whenever the ring changes (committed, start).
        self.answers: dict[tuple[Scope, tuple[str, ...], int | None, object, int], list[Event]] = {}

    def start(self, last: int) -> None:
        """Begin empty after the last seq stored when the store opens."""
        self.lo = last
        self.answers.clear()

    def wants_events(self) -> bool:
        """Whether the writer should build the events of its commits (someone read lately)."""
        return time.monotonic() <= self.wanted

    def known(self) -> int | None:
        """The last seq the ring vouches for: every commit notified so far."""
        return _seq(self.events[-1]) if self.events else self.lo

    def committed(self, events: list[Event] | None, last: int | None) -> None:
        """After each commit (in commit order): extend the ring, or reset it after ``last``."""
        self.last_commit = time.monotonic()
        self.answers.clear()
        ring = self.events
        if (events and self.lo is not None and last is not None
                and _seq(events[0]) == (_seq(ring[-1]) if ring else self.lo) + 1):
            ring += events
            self.size += sum(event_bytes(e) for e in events)
            if len(ring) > RING_EVENTS or self.size > RING_BYTES:
                # Drop the oldest down to three quarters (deleting from a list's front is O(n)).
                cut = 0
                while cut < len(ring) and (len(ring) - cut > RING_EVENTS * 3 // 4
                                           or self.size > RING_BYTES * 3 // 4):
                    self.size -= event_bytes(ring[cut])
                    cut += 1
                self.lo = _seq(ring[cut - 1])
                del ring[:cut]
        else:  # the writer built no events (nobody reads the ring) or could not vouch for seqs
            ring.clear()
            self.size = 0
            self.lo = last
            self.scanned.clear()

    def read(self, query: ReadQuery, fresh: float) -> list[Event] | None:
        """A realm or domain read's events from the ring; None if it cannot say.

        The ring holds every event committed after ``lo``, so for a cursor at or past it the
        answer is complete and in order, exactly what the database would return at the ring's
        last commit. The ring answers ascending reads bounded below only (a cursor, a position),
        of any types; descending or upper-bounded reads, earlier cursors (and entity scopes,
        positioned by version) go to the database, as do reads ``fresh`` seconds after the last
        commit heard of (another process may have written meanwhile). ``scanned`` remembers
        stretches a read has no events in, so a subscriber of a quiet domain does not rescan the
        ring on every commit; ``answers`` remembers what each read found since the last commit.
        Each caller gets a list of its own.
        """
        now = time.monotonic()
        self.wanted = now + RING_IDLE
        lo = self.lo
        if (lo is None or now - self.last_commit > fresh or not self.may_serve(query)
                or cast(int, self.known()) < self.seen):
            return None
        scope = query.scope
        after = query.after
        memo = (scope, query.types, query.after_position, after, query.limit)
        answer = self.answers.get(memo)
        if answer is not None:
            return answer.copy()
        start = 0 if after is None else cast(int, after)
        key = (scope, query.types, query.after_position, start)
        start = max(start, self.scanned.get(key, start))
        if start < lo:
            return None
        ring = self.events
        i = bisect.bisect_right(ring, start, key=_seq)
        found: list[Event] = []
        contains, types, limit = scope.contains, query.types, query.limit
        low = -1 if query.after_position is None else query.after_position
        for e in itertools.islice(ring, i, None):
            if contains(e) and e.position > low and (not types or e.type in types):
                found.append(e)
                if len(found) >= limit:
                    break
        if not found:
            if len(self.scanned) > 10_000:
                self.scanned.clear()
            self.scanned[key] = _seq(ring[-1]) if ring else lo
        if len(self.answers) > 10_000:
            self.answers.clear()
        self.answers[memo] = found
        return found.copy()

    @staticmethod
    def may_serve(query: ReadQuery) -> bool:
        """Whether the ring can answer reads of this shape (when it holds their cursor)."""
        return (query.scope.entity is None and not query.descending and query.before is None
                and query.before_position is None)

    def saw(self, seq: int) -> None:
        """A database read showed the event of this seq (see ``seen``)."""
        if seq > self.seen:
            self.seen = seq

    def nothing_after(self, query: ReadQuery, known: int) -> None:
        """Note that the database had nothing for ``query`` after its cursor up to at least ``known``."""
        start = 0 if query.after is None else cast(int, query.after)
        self.scanned[(query.scope, query.types, query.after_position, start)] = known
