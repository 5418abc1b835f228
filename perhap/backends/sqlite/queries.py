"""The read side's SQL for one event and for names, and the turning of rows into Events
(scope reads are :mod:`.reads`)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from ...model import Cursor, Event
from ...slotted import fast_constructor

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

#: Event's constructor for rows: every field, positionally (see perhap.slotted).
make_event: MakeEvent = fast_constructor(Event)


def row_event(row: tuple[Any, ...]) -> Event:
    """An Event from a row of :data:`SELECT_EVENT`; its cursor is its seq (realm order)."""
    seq, event_id, realm, domain, entity, type_, version, ts, data, meta, position = row
    return make_event(event_id, realm, domain, entity, type_, version, ts, data, meta, position, seq)


def find_event(conn: sqlite3.Connection, event_id: str) -> Event | None:
    row = conn.execute(f"{SELECT_EVENT} WHERE e.event_id = ?", (event_id,)).fetchone()
    return None if row is None else row_event(row)


def stored_events(conn: sqlite3.Connection, ids: list[str], variables: int = 500) -> dict[str, Event]:
    """The stored events among ``ids``, by id: 500 a statement at most, or ``variables`` (the
    connection's limit on bound parameters) if lower."""
    found: dict[str, Event] = {}
    for chunk in _chunks(ids, max(1, min(500, variables))):
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
