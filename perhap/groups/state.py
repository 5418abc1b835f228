"""A consumer group's state and its transitions: pure data, no I/O, one JSON document when stored.

Every event of the group's scope up to ``scanned`` (a position) is in exactly one place:

- settled: acknowledged, or parked (``parked`` keeps those until replayed);
- ``leases``: delivered to a consumer, until it acknowledges, nacks or the lease runs out;
- ``pending``: known and waiting for delivery: never delivered yet because an earlier event of
  its entity was in flight, or returned by a nack or an expired lease, or replayed;
- ``deferred``: an entity's events from a position on (and how many), not held one by one: once
  ``pending`` is full, the events of entities that could not go out anyway (one of theirs is in
  flight or waiting) are counted here rather than listed, so the scan goes on to other entities.
  They are read back from the store, in order, when nothing of their entity is leased or pending.

Events after ``scanned`` are read from the store when a consumer asks for more. So the document
holds only what is in flight or waiting, never the history: its size follows the work in
progress, not the scope. Positions key everything, since they give the scope's order; an entity's
events are in version order within it.

Per-entity order: an event is leased only when no event of its entity is leased and none before
it is pending (or deferred). A parked event holds nothing back (else one poison event would stop
its entity).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import LeaseConflict
from ..model import Event
from .settings import GroupSettings

#: Events a group lists as pending at most; past that the events of busy entities are deferred
#: (counted, not listed), so one entity's backlog does not stop the others.
MAX_PENDING = 2_000
#: Entities with deferred events at most; past that the group reads no further until some are
#: delivered.
MAX_DEFERRED = 2_000
#: A consumer without leases, unseen this long, is forgotten.
FORGET_CONSUMER = 86_400.0

Key = tuple[str, str]  # (domain, entity)


@dataclass(slots=True)
class Lease:
    event_id: str
    domain: str
    entity: str
    consumer: str
    until: float  # wall-clock seconds: several servers judge one lease
    delivery: int


@dataclass(slots=True)
class Waiting:
    event_id: str
    domain: str
    entity: str
    deliveries: int  # made so far
    released: bool = False  # given back unhandled (nack "release"): its next lease is no new delivery
    replayed: bool = False  # parked, then replayed: its next lease is delivery 1 again, and a repeat


@dataclass(slots=True)
class Parked:
    event_id: str
    domain: str
    entity: str
    deliveries: int
    at: float
    reason: str  # "nack" or "max_deliveries"


@dataclass(slots=True)
class Deferred:
    """An entity's events not held one by one: from the first's position on, ``count`` of them."""

    first: int
    count: int


@dataclass(slots=True)
class GroupState:
    settings: GroupSettings
    created: float
    scanned: int  # every event of the scope up to this position is accounted for
    floor: int  # where the group started (scanned when it was made): kept in the stored state for the
    #             release before, which reads it; the checkpoint no longer does (it reads the scope)
    leases: dict[int, Lease] = field(default_factory=dict)
    pending: dict[int, Waiting] = field(default_factory=dict)
    parked: dict[int, Parked] = field(default_factory=dict)
    consumers: dict[str, float] = field(default_factory=dict)  # last seen
    delivered: int = 0
    redeliveries: int = 0
    acknowledged: int = 0
    deferred: dict[Key, Deferred] = field(default_factory=dict)

    # ----------------------------------------------------------------- figures

    def oldest_open(self) -> int | None:
        """The position of the oldest event leased or waiting (every scope event before it, from
        the floor on, is acknowledged or parked); None when there is none."""
        return min((*self.leases, *self.pending, *(d.first for d in self.deferred.values())), default=None)

    def waiting(self) -> int:
        """Events read and not yet delivered: pending and deferred."""
        return len(self.pending) + sum(d.count for d in self.deferred.values())

    def held_by(self, consumer: str, running_at: float = 0.0) -> int:
        """Leases ``consumer`` holds (with ``running_at``, only those still running then)."""
        return sum(1 for lease in self.leases.values() if lease.consumer == consumer and lease.until > running_at)

    def next_expiry(self) -> float | None:
        return min((lease.until for lease in self.leases.values()), default=None)

    # ----------------------------------------------------------------- transitions

    def seen(self, consumer: str, now: float, every: float) -> bool:
        """Note a consumer's activity; True when the stored time should change (new, or ``every``
        seconds old: an idle poll does not rewrite the document)."""
        last = self.consumers.get(consumer)
        if last is not None and now - last < every:
            return False
        self.consumers[consumer] = now
        busy = {lease.consumer for lease in self.leases.values()}
        for name, when in list(self.consumers.items()):
            if now - when > FORGET_CONSUMER and name not in busy:
                del self.consumers[name]
        return True

    def expire(self, now: float) -> bool:
        """Take back the leases that ran out: waiting again, or parked after max_deliveries."""
        late = [pos for pos, lease in self.leases.items() if lease.until <= now]
        for pos in late:
            lease = self.leases.pop(pos)
            self._return(pos, lease, lease.until)  # parked (if it is) when the lease ran out
        return bool(late)

    def _return(self, pos: int, lease: Lease, now: float) -> bool:
        """A lease given back unacknowledged at ``now``; True when that parked its event."""
        if lease.delivery >= self.settings.max_deliveries:
            self.parked[pos] = Parked(lease.event_id, lease.domain, lease.entity, lease.delivery, now,
                                      "max_deliveries")
            return True
        self.pending[pos] = Waiting(lease.event_id, lease.domain, lease.entity, lease.delivery)
        return False

    def busy_entities(self, running_at: float = 0.0) -> set[Key]:
        """Entities with a lease out (with ``running_at``, one still running then)."""
        return {(lease.domain, lease.entity) for lease in self.leases.values() if lease.until > running_at}

    def choose_pending(self, limit: int, busy: set[Key]) -> list[int]:
        """Pending events that may go out now, oldest first; their entities join ``busy``."""
        chosen: list[int] = []
        for pos in sorted(self.pending):
            if len(chosen) >= limit:
                break
            w = self.pending[pos]
            key = (w.domain, w.entity)
            if key not in busy:
                chosen.append(pos)
            busy.add(key)  # taken now, or held back by an earlier event of its entity
        return chosen

    def admit(self, events: Sequence[Event], limit: int, busy: set[Key], chosen: list[int]) -> int:
        """Account for events read after ``scanned``, in order: each goes out now (into ``chosen``,
        up to ``limit``) or waits behind its entity. Returns how many were taken in; the rest are
        left for a later read."""
        taken = 0
        deferred = self.deferred
        for event in events:
            if len(chosen) >= limit:
                break
            key = (event.domain, event.entity)
            pos = event.position
            if key in deferred:  # its earlier events are deferred: so is it, to keep its order
                deferred[key].count += 1
            elif key not in busy:
                self.pending[pos] = Waiting(event.event_id, event.domain, event.entity, 0)
                chosen.append(pos)
                busy.add(key)
            elif len(self.pending) < MAX_PENDING:
                self.pending[pos] = Waiting(event.event_id, event.domain, event.entity, 0)
            elif len(deferred) < MAX_DEFERRED:
                deferred[key] = Deferred(pos, 1)
            else:
                break
            self.scanned = pos
            taken += 1
        return taken

    def ready_deferred(self) -> list[Key]:
        """Entities whose deferred events are next: none of theirs is leased or pending."""
        if not self.deferred:
            return []
        held = self.busy_entities() | {(w.domain, w.entity) for w in self.pending.values()}
        return [key for key in self.deferred if key not in held]

    def take_back(self, key: Key, events: Sequence[Event], following: int | None) -> None:
        """An entity's events read from the store from its first deferred position on, in order,
        and the position of its event that follows them (None: none does): those up to
        ``scanned`` wait in ``pending`` again (the rest are the scan's); the entity stays deferred
        from that next position on (exactly: the oldest open event, for the checkpoint), or leaves
        ``deferred`` once none of its events is left."""
        deferred = self.deferred[key]
        count = deferred.count
        for event in events:
            if event.position > self.scanned:
                following = None
                break
            self.pending[event.position] = Waiting(event.event_id, event.domain, event.entity, 0)
            count -= 1
        if following is None or following > self.scanned or count <= 0:
            del self.deferred[key]
        else:
            deferred.first, deferred.count = following, count

    def lease(self, positions: Iterable[int], consumer: str, now: float) -> list[Lease]:
        leases = []
        until = now + self.settings.ack_timeout
        for pos in positions:
            w = self.pending.pop(pos)
            if not w.released:  # (a released delivery did not count: given again, it still does not)
                if w.deliveries or w.replayed:
                    self.redeliveries += 1
                self.delivered += 1
            lease = self.leases[pos] = Lease(w.event_id, w.domain, w.entity, consumer, until, w.deliveries + 1)
            leases.append(lease)
        return leases

    def _held(self, consumer: str, event_ids: Sequence[str]) -> list[int]:
        """The positions of these leases, all held by ``consumer``; else a 409 and nothing changes."""
        by_id = {lease.event_id: pos for pos, lease in self.leases.items()}
        found = []
        for event_id in dict.fromkeys(event_ids):
            pos = by_id.get(event_id)
            if pos is None:
                raise LeaseConflict(f"event {event_id} is not leased to {consumer!r}: its lease ran out and went "
                               "back to the group, or it was acknowledged, or never delivered",
                               event_id=event_id)
            holder = self.leases[pos].consumer
            if holder != consumer:
                raise LeaseConflict(f"event {event_id} is leased to another consumer, not to {consumer!r}",
                               event_id=event_id)
            found.append(pos)
        return found

    def ack(self, consumer: str, event_ids: Sequence[str]) -> int:
        positions = self._held(consumer, event_ids)
        for pos in positions:
            del self.leases[pos]
        self.acknowledged += len(positions)
        return len(positions)

    def nack(self, consumer: str, event_ids: Sequence[str], action: str, now: float) -> tuple[int, int]:
        """Give leases back: "retry" (delivered again; parked if that was the last delivery
        allowed), "park" (now), or "release" (unhandled, as a worker stopping gives back what it
        did not start: the delivery does not count). Returns (back in the group, parked)."""
        positions = self._held(consumer, event_ids)
        parked = 0
        for pos in positions:
            lease = self.leases.pop(pos)
            if action == "park":
                self.parked[pos] = Parked(lease.event_id, lease.domain, lease.entity, lease.delivery, now, "nack")
                parked += 1
            elif action == "release":
                self.pending[pos] = Waiting(lease.event_id, lease.domain, lease.entity, lease.delivery - 1, True)
            else:
                parked += self._return(pos, lease, now)
        return len(positions) - parked, parked

    def replay(self, event_ids: Sequence[str] | None) -> int:
        """Parked events (all, or these) back to be delivered, their delivery count from zero."""
        if event_ids is None:
            chosen = list(self.parked)
        else:
            wanted = set(event_ids)
            chosen = [pos for pos, p in self.parked.items() if p.event_id in wanted]
        for pos in chosen:
            p = self.parked.pop(pos)
            self.pending[pos] = Waiting(p.event_id, p.domain, p.entity, 0, replayed=True)
        return len(chosen)

    # ----------------------------------------------------------------- the stored form

    @classmethod
    def size_expired(cls, data: bytes, now: float) -> int:
        """The size of the document ``data`` once its leases that ran out by ``now`` are expired."""
        state = cls.from_bytes(data)
        state.expire(now)
        return len(state.to_bytes())

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "settings": self.settings.to_json(), "created": self.created, "scanned": self.scanned,
            "floor": self.floor,
            "leases": [[p, x.event_id, x.domain, x.entity, x.consumer, x.until, x.delivery]
                       for p, x in self.leases.items()],
            # (the flag of a release only when set: state written before it had none)
            "pending": [[p, x.event_id, x.domain, x.entity, x.deliveries, *((True,) if x.released else ())]
                        for p, x in self.pending.items()],
            # Replayed events apart, only when there are some: a perhap before them reads the rest.
            **({"replayed": replayed} if (replayed := [p for p, x in self.pending.items() if x.replayed]) else {}),
            "parked": [[p, x.event_id, x.domain, x.entity, x.deliveries, x.at, x.reason]
                       for p, x in self.parked.items()],
            "consumers": self.consumers, "delivered": self.delivered, "redeliveries": self.redeliveries,
            "acknowledged": self.acknowledged,
            "deferred": [[d, e, x.first, x.count] for (d, e), x in self.deferred.items()],
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupState:
        d: dict[str, Any] = orjson.loads(data)
        state = cls(
            # (the first release of groups stored no floor: what the release before reads of it
            # only lowers a checkpoint it shows, so the scope's beginning is safe)
            GroupSettings.from_json(d["settings"]), d["created"], d["scanned"], d.get("floor", 0),
            {r[0]: Lease(*r[1:]) for r in d["leases"]},
            {r[0]: Waiting(*r[1:]) for r in d["pending"]},
            {r[0]: Parked(*r[1:]) for r in d["parked"]},
            d["consumers"], d["delivered"], d["redeliveries"], d["acknowledged"],
            {(r[0], r[1]): Deferred(r[2], r[3]) for r in d.get("deferred", ())})
        for pos in d.get("replayed", ()):
            state.pending[pos].replayed = True
        return state
