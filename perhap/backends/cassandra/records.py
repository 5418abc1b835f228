"""The records the backend passes between its parts, and the namespace mapping."""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cassandra.query import UNSET_VALUE

from ...model import Event, NewEvent

EVENT, CLIENT_ID, ATTEMPT = 0, 1, 2  # kinds of rows in an entity partition
SLOT_BITS = 10  # a position is ts * 2**SLOT_BITS + the writer slot (positions.py)

#: An entity as stored: (realm with its namespace, domain, entity), one entity_log partition.
EntityKey = tuple[str, str, str]


def cell(value: Any) -> Any:
    """A value to bind to an optional column (an event's imported ``stamp``): unset when absent.
    A bound null is written as a tombstone cell, and a read that filters rows (by type, by
    position) counts every tombstone it passes: at 100,000 (Cassandra's default
    tombstone_failure_threshold) it fails, so such reads of a large entity or a busy bucket failed."""
    return UNSET_VALUE if value is None else value


@dataclass(frozen=True, slots=True)
class Namespace:
    """``?namespace=`` keeps several stores in one keyspace: stored realms are ``namespace/realm``
    ('/' never occurs in a realm name), converted back at the edges."""

    name: str

    def stored(self, realm: str) -> str:
        """A realm as stored: prefixed by the namespace."""
        return f"{self.name}/{realm}" if self.name else realm

    def shown(self, realm: str) -> str:
        """A realm as the caller knows it."""
        return realm[len(self.name) + 1:] if self.name else realm

    def out(self, event: Event) -> Event:
        """An event read with its stored realm, as the caller knows it."""
        return dataclasses.replace(event, realm=self.shown(event.realm)) if self.name else event

    @property
    def realms(self) -> str:
        """The ``names`` partition that lists this namespace's realms (no stored realm starts with '/')."""
        return "/" + self.name

    def shard(self, event_id: uuid.UUID) -> str:
        """The events_by_id partition: the namespace, and the id's top 44 bits (a UUIDv7's
        millisecond clock / 16, so a batch of server ids shares a few partitions; random otherwise)."""
        return f"{self.name}/{event_id.int >> 84:x}"


class Head(NamedTuple):
    """An entity's head as the Paxos condition sees it: its last version and that event's position."""

    version: int
    ts: int


class Placed(NamedTuple):
    """One event of a write attempt: its id, version, ts (microseconds: the settle window's clock)
    and position (``ts * 1024 + writer slot``, see positions.py)."""

    event: NewEvent
    id: uuid.UUID
    version: int
    ts: int
    position: int


def attempt_id(started_us: int) -> uuid.UUID:
    """A write attempt's id: its append's start (microseconds) in the top 64 bits, random below.
    Ids so order appends oldest first, and all attempts of one append alike: of two appends racing
    for the claims of the same client ids, the older goes first (claims.py)."""
    return uuid.UUID(int=(started_us & (2**64 - 1)) << 64 | int.from_bytes(os.urandom(8), "big"))


@dataclass(slots=True)
class Attempt:
    """The rows of one write attempt (all events of one batch), as written before its commit."""

    key: EntityKey
    events: list[Placed]
    txn: uuid.UUID = field(default_factory=uuid.uuid4)
    unknown: bool = False  # the commit's outcome could not be learnt: its rows must stay


class IndexRow(NamedTuple):
    """A scope_log row (the domain or realm index), settled or pending; clustered by (ts, id),
    read in position order (scan.py)."""

    ts: int
    id: uuid.UUID
    domain: str
    entity: str
    type: str
    version: int
    stamp: str | None
    data: bytes
    meta: bytes
    txn: uuid.UUID  # the write attempt that wrote it
    ok: bool | None  # true once its attempt is known committed; None while pending
    position: int

    @property
    def size(self) -> int:
        """Its data and meta: what it weighs against a read's byte bound (as store.query.event_bytes)."""
        return len(self.data) + len(self.meta)
