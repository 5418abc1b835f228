"""The read side's SQL for one event and for names, and the turning of rows into Events
(scope reads are :mod:`.reads`)."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from ...model import Cursor, Event

#: Builds an Event from its fields in declaration order (see :func:`event_maker`).
MakeEvent = Callable[[str, str, str, str, str, int, str, bytes, bytes, int, Cursor | None], Event]

SELECT_EVENT = """SELECT e.seq, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta,
e.position FROM events e
JOIN entities n ON n.id = e.entity_id JOIN domains d ON d.id = e.domain_id
JOIN realms r ON r.id = e.realm_id JOIN types t ON t.id = e.type_id"""

REALM_ID = "(SELECT id FROM realms WHERE name = ?)"
DOMAIN_ID = f"(SELECT id FROM domains WHERE realm_id = {REALM_ID} AND name = ?)"
ENTITY_ID = f"(SELECT id FROM entities WHERE domain_id = {DOMAIN_ID} AND name = ?)"
TYPE_ID = "(SELECT id FROM types WHERE name = ?)"

_EVENT_FIELDS = ("event_id", "realm", "domain", "entity", "type", "version", "timestamp",
                 "data_json", "meta_json", "position", "cursor")


def event_maker() -> MakeEvent:
    """A constructor of Events that skips the frozen dataclass's __init__ (half the cost per row).

    Event has no __post_init__, so setting its slots directly builds the same object; should
    its fields ever change, this falls back to the dataclass constructor.
    """
    if tuple(f.name for f in dataclasses.fields(Event)) != _EVENT_FIELDS or hasattr(Event, "__post_init__"):
        return Event
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = (Event.__dict__[f].__set__ for f in _EVENT_FIELDS)

    def make(event_id: str, realm: str, domain: str, entity: str, type_: str, version: int,
             ts: str, data: bytes, meta: bytes, position: int, cursor: Cursor | None) -> Event:
        e = new(Event)
        s0(e, event_id), s1(e, realm), s2(e, domain), s3(e, entity), s4(e, type_)
        s5(e, version), s6(e, ts), s7(e, data), s8(e, meta), s9(e, position), s10(e, cursor)
        return e

    return make


make_event = event_maker()


def row_event(row: tuple[Any, ...]) -> Event:
    """An Event from a row of :data:`SELECT_EVENT`; its cursor is its seq (realm order)."""
    seq, event_id, realm, domain, entity, type_, version, ts, data, meta, position = row
    return make_event(event_id, realm, domain, entity, type_, version, ts, data, meta, position, seq)


def find_event(conn: sqlite3.Connection, event_id: str) -> Event | None:
    row = conn.execute(f"{SELECT_EVENT} WHERE e.event_id = ?", (event_id,)).fetchone()
    return None if row is None else row_event(row)


def stored_events(conn: sqlite3.Connection, ids: list[str]) -> dict[str, Event]:
    """The stored events among ``ids``, by id."""
    found: dict[str, Event] = {}
    for chunk in _chunks(ids, 500):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{SELECT_EVENT} WHERE e.event_id IN ({marks})", chunk):
            event = row_event(row)
            found[event.event_id] = event
    return found


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def names_query(realm: str | None, domain: str | None, entity: str | None) -> tuple[str, list[str]]:
    """SQL and its leading parameters listing the names one level below; ``after`` and ``limit``
    are its last two parameters."""
    if realm is None:
        sql, params = "SELECT name FROM realms WHERE name > ?", []
    elif domain is None:
        sql, params = f"SELECT name FROM domains WHERE realm_id = {REALM_ID} AND name > ?", [realm]
    elif entity is None:
        sql = f"SELECT name FROM entities WHERE domain_id = {DOMAIN_ID} AND name > ?"
        params = [realm, domain]
    else:
        sql = (f"SELECT t.name FROM entity_types x JOIN types t ON t.id = x.type_id "
               f"WHERE x.entity_id = {ENTITY_ID} AND t.name > ?")
        params = [realm, domain, entity]
    return sql + " ORDER BY name LIMIT ?", params
