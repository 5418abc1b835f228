"""eventsourcing's recorders over a perhap store: aggregates, snapshots, notifications, tracking.

Every write is one perhap append, with an expected version for each entity it touches, so perhap's
optimistic concurrency decides every race: a stored event is never overwritten or skipped, and a
conflict the recorder cannot prove harmless becomes eventsourcing's ``IntegrityError``.

- Aggregate events: perhap's versions of an aggregate's entity follow its originator versions one for
  one, offset by a constant (the first originator version), which each recorder learns from what it
  writes and reads. A recorder that has not seen an aggregate assumes it is new; if the store says
  otherwise, it reads the entity's last event and tries again only when the new events follow it.
- Snapshots: each snapshot is appended to its aggregate's entity in a separate domain, in increasing
  originator version; the latest at or below a version is found by reading newest first.
- Tracking: a process application's tracking record is the next event of one entity per upstream
  application, appended in the same multi-entity append as the events it led to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    Notification,
    NotSupportedError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from .. import errors
from ..model import MAX_LIMIT, Appended, Event, NewEvent, Scope
from . import mapping
from .subscription import PerhapSubscription
from .transport import Transport

#: Appends tried before a recorder gives up on a conflict it keeps resolving (others keep writing).
ATTEMPTS = 4
#: Aggregates whose version offset a recorder remembers (the memory is a cache; it starts over when full).
MAX_REMEMBERED = 100_000


class _Recorder:
    """What every recorder shares: where its events go, and the one write path."""

    def __init__(self, transport: Transport, realm: str, domain: str) -> None:
        self.transport = transport
        self.realm, self.domain = realm, domain
        self.scope = Scope(realm, domain)
        # entity -> originator_version - perhap version, for aggregates seen by this recorder
        self._offsets: dict[str, int] = {}
        # tracking entity -> (perhap version, notification id) of its last record seen here
        self._trackings: dict[str, tuple[int, int]] = {}

    def _head(self, entity: str) -> Event | None:
        events = self.transport.read(Scope(self.realm, self.domain, entity), 1, order="desc")
        return events[0] if events else None

    # ----------------------------------------------------------------- writing

    def _record(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        """Append the events (and the tracking record) atomically; their positions, in order."""
        runs: dict[str, list[StoredEvent]] = {}
        pairs: list[tuple[str, NewEvent]] = []
        for stored in stored_events:
            entity = mapping.entity_name(stored.originator_id)
            run = runs.setdefault(entity, [])
            if run:
                self._check_follows(run[-1], stored)
            run.append(stored)
            pairs.append((entity, mapping.to_new_event(stored)))
        expected = {entity: self._expect(entity, run, fresh=False) for entity, run in runs.items()}
        if tracking is not None:
            entity = mapping.tracking_entity(tracking.application_name)
            expected[entity] = self._expect_tracking(entity, tracking, fresh=False)
            pairs.append((entity, mapping.tracking_event(tracking.application_name, tracking.notification_id)))
        if not pairs:
            return []
        for _ in range(ATTEMPTS):
            try:
                appended = self._append(pairs, expected)
            except errors.VersionConflict as conflict:
                failing = [c[0] for c in conflict.conflicts] or list(expected)
                for entity in failing:
                    if entity in runs:
                        expected[entity] = self._expect(entity, runs[entity], fresh=True)
                    elif tracking is not None:
                        expected[entity] = self._expect_tracking(entity, tracking, fresh=True)
                continue
            self._learn(runs, pairs, appended, tracking)
            return [a.position for a in appended[:len(stored_events)]]
        raise IntegrityError(f"other writers kept changing these entities of {self.realm}/{self.domain}: "
                             f"{', '.join(sorted(expected))[:200]}")

    def _append(self, pairs: list[tuple[str, NewEvent]], expected: dict[str, int]) -> list[Appended]:
        if len(expected) == 1:
            entity, version = next(iter(expected.items()))
            return self.transport.append(self.realm, self.domain, entity, [e for _, e in pairs], version)
        if not self.transport.supports_multi_entity:
            raise NotSupportedError(
                f"the {self.transport.name} backend has no multi-entity appends, so events of several "
                "aggregates (or events and a tracking record) cannot be stored atomically")
        return self.transport.append_many(self.realm, self.domain, pairs, expected)

    def _check_follows(self, previous: StoredEvent, stored: StoredEvent) -> None:
        if stored.originator_version != previous.originator_version + 1:
            raise IntegrityError(
                f"originator versions of {stored.originator_id} in one insert must follow each other: "
                f"{previous.originator_version} then {stored.originator_version}")

    def _expect(self, entity: str, run: list[StoredEvent], *, fresh: bool) -> int:
        """The perhap version the aggregate's entity must be at for ``run`` to be its next events."""
        first = run[0].originator_version
        offset = None if fresh else self._offsets.get(entity)
        if offset is None and not fresh:
            return -1  # never seen here: most likely a new aggregate; the store tells otherwise
        if offset is None:
            head = self._head(entity)
            if head is None:
                self._offsets.pop(entity, None)
                return -1
            last = mapping.recorded(head).originator_version
            self._remember(entity, last - head.version)
            if first != last + 1:
                raise IntegrityError(f"cannot record version {first} of {run[0].originator_id}: "
                                     f"its last recorded version is {last}")
            return head.version
        expected = first - offset - 1
        if expected < -1:
            raise IntegrityError(f"cannot record version {first} of {run[0].originator_id}: its "
                                 f"versions start at {offset}")
        return expected

    def _expect_tracking(self, entity: str, tracking: Tracking, *, fresh: bool) -> int:
        known = None if fresh else self._trackings.get(entity)
        if known is None:
            head = self._head(entity)
            known = (head.version, mapping.tracking_id(head)) if head is not None else (-1, 0)
            if head is not None:
                self._trackings[entity] = known
        version, last_id = known
        if version >= 0 and tracking.notification_id <= last_id:
            raise IntegrityError(f"notification {tracking.notification_id} of {tracking.application_name} "
                                 f"is at or below the one tracked already ({last_id})")
        return version

    def _remember(self, entity: str, offset: int) -> None:
        if len(self._offsets) >= MAX_REMEMBERED:
            self._offsets.clear()
        self._offsets[entity] = offset

    def _learn(self, runs: dict[str, list[StoredEvent]], pairs: list[tuple[str, NewEvent]],
               appended: list[Appended], tracking: Tracking | None) -> None:
        seen: set[str] = set()
        for (entity, _), result in zip(pairs, appended, strict=True):
            if entity in seen:
                continue
            seen.add(entity)
            if entity in runs:
                self._remember(entity, runs[entity][0].originator_version - result.version)
            elif tracking is not None:
                self._trackings[entity] = (result.version, tracking.notification_id)

    # ----------------------------------------------------------------- reading

    def _collect(self, entity: str, desc: bool, limit: int | None, bounds: dict[str, Any]) -> list[Event]:
        """An entity's events within version bounds, page after page, up to ``limit``."""
        scope = Scope(self.realm, self.domain, entity)
        found: list[Event] = []
        while True:
            want = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - len(found))
            page = self.transport.read(scope, want, order="desc" if desc else "asc", **bounds)
            found.extend(page)
            if len(page) < want or (limit is not None and len(found) >= limit):
                return found
            last = page[-1].version
            if desc:
                if last - 1 < bounds.get("after_version", 0):
                    return found
                bounds["until_version"] = last - 1
            else:
                if "until_version" in bounds and last >= bounds["until_version"]:
                    return found
                bounds["after_version"] = last


class PerhapAggregateRecorder(_Recorder, AggregateRecorder):
    """An aggregate's events as the events of one entity, with gapless versions."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._record(stored_events, None)
        return None

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> Sequence[StoredEvent]:
        entity = mapping.entity_name(originator_id)
        if (gt is not None and lte is not None and lte <= gt) or limit == 0:
            return []
        bounds: dict[str, Any] = {}
        if gt is not None or lte is not None:
            offset = self._offsets.get(entity)
            if offset is None:
                first = self.transport.read(Scope(self.realm, self.domain, entity), 1)
                if not first:
                    return []
                offset = mapping.recorded(first[0]).originator_version - first[0].version
                self._remember(entity, offset)
            if gt is not None and gt - offset >= 0:
                bounds["after_version"] = gt - offset
            if lte is not None:
                if lte - offset < 0:
                    return []
                bounds["until_version"] = lte - offset
        events = self._collect(entity, desc, limit, bounds)
        if events and entity not in self._offsets:
            self._remember(entity, mapping.recorded(events[0]).originator_version - events[0].version)
        return [mapping.to_stored_event(e, originator_id) for e in events]


class _Superseded(Exception):
    """A snapshot below the aggregate's newest one: not stored (see PerhapSnapshotRecorder)."""


class PerhapSnapshotRecorder(_Recorder, AggregateRecorder):
    """Snapshots: an aggregate's snapshots as one entity's events, in increasing originator version.

    A snapshot at the version of one stored already raises IntegrityError (a duplicate, as in
    eventsourcing's own modules). One below the version of the aggregate's newest snapshot, and of
    no stored one, is not stored and raises nothing: the entity keeps versions in order, and such a
    snapshot is what a save whose event is stored takes while another writer of the aggregate saved
    a later event and its snapshot first, so that save must not fail. Each aggregate's snapshots
    are appended on their own.
    """

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        runs: dict[str, list[StoredEvent]] = {}
        for stored in stored_events:
            runs.setdefault(mapping.entity_name(stored.originator_id), []).append(stored)
        for run in runs.values():
            try:
                self._record(run, None)
            except _Superseded:
                pass
        return None

    def _check_follows(self, previous: StoredEvent, stored: StoredEvent) -> None:
        if stored.originator_version <= previous.originator_version:
            raise IntegrityError(f"snapshots of {stored.originator_id} must be inserted in version order")

    def _expect(self, entity: str, run: list[StoredEvent], *, fresh: bool) -> int:
        head = self._head(entity)
        if head is None:
            return -1
        last = mapping.recorded(head).originator_version
        first = run[0].originator_version
        if first > last:
            return head.version
        if first == last:
            raise IntegrityError(f"a snapshot of {run[0].originator_id} at version {first} is recorded already")
        _, found = self._last_at_or_below(Scope(self.realm, self.domain, entity), first, head.version)
        if found is not None and mapping.recorded(found).originator_version == first:
            raise IntegrityError(f"a snapshot of {run[0].originator_id} at version {first} is recorded already")
        if run[-1].originator_version >= last:
            raise IntegrityError(f"snapshots of {run[0].originator_id} from version {first} to "
                                 f"{run[-1].originator_version} straddle the newest stored one ({last})")
        raise _Superseded

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> Sequence[StoredEvent]:
        entity = mapping.entity_name(originator_id)
        scope = Scope(self.realm, self.domain, entity)
        found: list[StoredEvent] = []
        bounds: dict[str, Any] = {}
        while limit is None or len(found) < limit:
            want = MAX_LIMIT if limit is None else min(MAX_LIMIT, 2 * limit)
            page = self.transport.read(scope, want, order="desc" if desc else "asc", **bounds)
            for event in page:
                version = mapping.recorded(event).originator_version
                if (lte is not None and version > lte) if desc else (gt is not None and version <= gt):
                    continue  # not yet in range
                if (gt is not None and version <= gt) if desc else (lte is not None and version > lte):
                    return found  # past the range: versions are monotonic in the entity
                found.append(mapping.to_stored_event(event, originator_id))
                if limit is not None and len(found) == limit:
                    return found
            if len(page) < want or (desc and page[-1].version == 0):
                break
            if desc and not found and lte is not None:  # a whole page above lte: search, not scan
                start, _ = self._last_at_or_below(scope, lte, page[-1].version - 1)
                if start < 0:
                    break
                bounds = {"until_version": start}
                continue
            bounds = {"until_version": page[-1].version - 1} if desc else {"after_version": page[-1].version}
        return found

    def _last_at_or_below(self, scope: Scope, lte: int, highest: int) -> tuple[int, Event | None]:
        """The entity version of the newest snapshot at or below originator version ``lte`` among
        versions 0..``highest`` (-1: none), and that snapshot's event, by bisection: both versions
        grow together, and an entity's versions have no gaps, so each probe is one read of one event."""
        low, answer, found = 0, -1, None
        while low <= highest:
            middle = (low + highest) // 2
            event = self.transport.read(scope, 1, order="desc", until_version=middle)[0]
            if mapping.recorded(event).originator_version <= lte:
                answer, found, low = middle, event, middle + 1
            else:
                highest = middle - 1
        return answer, found


class PerhapApplicationRecorder(PerhapAggregateRecorder, ApplicationRecorder):
    """Aggregate events, and the application's sequence: notification ids are perhap positions."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._record(stored_events, None)

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True,
                             ) -> Sequence[Notification]:
        after = 0 if start is None else max(0, start - 1 if inclusive_of_start else start)
        types = mapping.type_filter(topics)
        found: list[Notification] = []
        grow = 1  # tracking records share the domain: a page of them asks for more the next time
        while len(found) < limit:
            want = min(MAX_LIMIT, (limit - len(found)) * grow)
            grow *= 4
            if stop is not None:
                if stop <= after:
                    break
                want = min(want, stop - after)
            page = self.transport.read(self.scope, want, after_position=after, types=types)
            found.extend(n for n in mapping.notifications(page, topics) if stop is None or n.id <= stop)
            if len(page) < want:
                break
            after = page[-1].position
        return found[:limit]

    def max_notification_id(self) -> int | None:
        bounds: dict[str, Any] = {}
        want = 20
        while True:  # the head, past any tracking records after it (pages growing: a few reads)
            page = self.transport.read(self.scope, want, order="desc", **bounds)
            for event in page:
                if mapping.is_notification(event):
                    return event.position
            if len(page) < want:
                return None
            bounds = {"before_position": page[-1].position}
            want = min(MAX_LIMIT, want * 10)

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return PerhapSubscription(self, self.transport, self.scope, gt=gt, topics=topics)


class PerhapTrackingRecorder(_Recorder, TrackingRecorder):
    """Tracking records: one entity per upstream application, each record its next event."""

    def insert_tracking(self, tracking: Tracking) -> None:
        self._record([], tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        head = self._head(mapping.tracking_entity(application_name))
        return None if head is None else mapping.tracking_id(head)


class PerhapProcessRecorder(PerhapTrackingRecorder, PerhapApplicationRecorder, ProcessRecorder):
    """A process application's events and its tracking record, in one atomic append."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        return self._record(stored_events, tracking)

