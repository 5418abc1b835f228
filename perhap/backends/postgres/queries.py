"""The SQL that reads events and names, and the conversion of its rows.

Each read is one statement; the realm, domain, entity and type ids are resolved by sub-selects in
the same statement, and a page walks one index from the cursor (see ``init_reader`` for why the
read connections price sorting out).
"""

from __future__ import annotations

import asyncpg

from ...model import Event, Scope

REALM_ID = "(SELECT id FROM perhap_realms WHERE name = $1)"
DOMAIN_ID = f"(SELECT id FROM perhap_domains WHERE realm_id = {REALM_ID} AND name = $2)"
ENTITY_ID = f"(SELECT id FROM perhap_entities WHERE domain_id = {DOMAIN_ID} AND name = $3)"

SELECT_EVENTS = """SELECT e.pos, e.event_id, r.name, d.name, n.name, t.name, e.version, e.ts, e.data, e.meta
FROM perhap_events e JOIN perhap_entities n ON n.id = e.entity_id
JOIN perhap_domains d ON d.id = e.domain_id JOIN perhap_realms r ON r.id = e.realm_id
JOIN perhap_types t ON t.id = e.type_id"""

EVENT_BY_ID = f"{SELECT_EVENTS} WHERE e.event_id = $1"
EVENTS_BY_IDS = f"{SELECT_EVENTS} WHERE e.event_id = ANY($1::uuid[])"


def row_event(row: asyncpg.Record, by_version: bool) -> Event:
    """An event from a row of :data:`SELECT_EVENTS`; its cursor is the version or the position."""
    pos, event_id, realm, domain, entity, type_, version, ts, data, meta = row
    return Event(str(event_id), realm, domain, entity, type_, version, ts, data, meta,
                 version if by_version else pos)


def scope_query(scope: Scope) -> tuple[str, list[str], bool]:
    """SQL selecting a scope's events after a cursor ($n) with a limit ($n+1), its parameters
    before those two, and whether the cursor is the version (an entity scope)."""
    params: list[str]
    if scope.domain is None:
        where, params, pos = f"e.realm_id = {REALM_ID}", [scope.realm], "pos"
    elif scope.entity is None:
        where, params, pos = f"e.domain_id = {DOMAIN_ID}", [scope.realm, scope.domain], "pos"
    else:
        where, params, pos = f"e.entity_id = {ENTITY_ID}", [scope.realm, scope.domain, scope.entity], "version"
    if scope.type is not None:
        params.append(scope.type)
        where += f" AND e.type_id = (SELECT id FROM perhap_types WHERE name = ${len(params)})"
    n = len(params)
    sql = f"{SELECT_EVENTS} WHERE {where} AND e.{pos} > ${n + 1} ORDER BY e.{pos} LIMIT ${n + 2}"
    return sql, params, pos == "version"


def names_query(realm: str | None, domain: str | None, entity: str | None) -> tuple[str, list[str]]:
    """SQL listing the names one level below the given one after a name ($n) with a limit ($n+1),
    and its parameters before those two."""
    if realm is None:
        sql, params = "SELECT name FROM perhap_realms WHERE name > $1", []
    elif domain is None:
        sql, params = f"SELECT name FROM perhap_domains WHERE realm_id = {REALM_ID} AND name > $2", [realm]
    elif entity is None:
        sql, params = (f"SELECT name FROM perhap_entities WHERE domain_id = {DOMAIN_ID} AND name > $3",
                       [realm, domain])
    else:
        sql = (f"SELECT t.name FROM perhap_entity_types x JOIN perhap_types t ON t.id = x.type_id "
               f"WHERE x.entity_id = {ENTITY_ID} AND t.name > $4")
        params = [realm, domain, entity]
    return f"{sql} ORDER BY name LIMIT ${len(params) + 2}", params
