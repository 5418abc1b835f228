"""The SQL that reads events and names, and the conversion of its rows.

Each read is one statement; the realm, domain, entity and type ids are resolved by sub-selects in
the same statement, and a page walks one index from its bound, in either direction (see
``init_reader`` for why the read connections price sorting out). A realm or domain is ordered by
``position``, an entity by ``version``.
"""

from __future__ import annotations

import asyncpg

from ...model import Cursor, Event
from ...slotted import fast_constructor
from ...store.query import ReadQuery
from .schema import LOCK_CLASS

REALM_ID = "(SELECT id FROM perhap_realms WHERE name = $1)"
DOMAIN_ID = f"(SELECT id FROM perhap_domains WHERE realm_id = {REALM_ID} AND name = $2)"
ENTITY_ID = f"(SELECT id FROM perhap_entities WHERE domain_id = {DOMAIN_ID} AND name = $3)"

# The id as text: the driver then makes the str directly, with no UUID object in between. (Each
# column named, so that a page cut by bytes can select them again from its sub-select.)
COLUMNS = ("e.position AS position, e.event_id::text AS event_id, r.name AS realm, d.name AS domain, "
           "n.name AS entity, t.name AS type_name, e.version AS version, e.ts AS ts, e.data AS data, e.meta AS meta")
NAMES = """JOIN perhap_entities n ON n.id = e.entity_id
JOIN perhap_domains d ON d.id = e.domain_id JOIN perhap_realms r ON r.id = e.realm_id
JOIN perhap_types t ON t.id = e.type_id"""
SELECT_EVENTS = f"SELECT {COLUMNS}\nFROM perhap_events e {NAMES}"
# An entity's events: the scope names the realm, domain and entity, so only the type is joined
# (fewer columns to send and decode, three joins fewer; the rows go through :func:`entity_events`).
ENTITY_COLUMNS = ("e.position AS position, e.event_id::text AS event_id, t.name AS type_name, "
                  "e.version AS version, e.ts AS ts, e.data AS data, e.meta AS meta")
ENTITY_NAMES = "JOIN perhap_types t ON t.id = e.type_id"

EVENT_BY_ID = f"{SELECT_EVENTS} WHERE e.event_id = $1"
EVENTS_BY_IDS = f"{SELECT_EVENTS} WHERE e.event_id = ANY($1::uuid[])"


def row_event(row: asyncpg.Record) -> Event:
    """An event from a row of :data:`SELECT_EVENTS` (a realm or domain read, or a look-up by id):
    its cursor is its position. An entity's rows go through :func:`entity_events`."""
    position, event_id, realm, domain, entity, type_, version, ts, data, meta = row
    return make_event(event_id, realm, domain, entity, type_, version, ts, data, meta, position, position)


#: Event's constructor for rows: every field, positionally (see perhap.slotted).
make_event = fast_constructor(Event)


def entity_events(rows: list[asyncpg.Record], realm: str, domain: str, entity: str) -> list[Event]:
    """The events of rows of an entity read (:data:`ENTITY_COLUMNS`), their cursor the version."""
    make = make_event
    return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, position, version)
            for position, event_id, type_, version, ts, data, meta in rows]


def read_sql(query: ReadQuery) -> tuple[str, list[object], bool]:
    """The statement reading ``query`` (limit included), its parameters, and whether the cursor
    is the version (an entity scope).

    Every bound becomes a bound of the walked index's last column, so a page starts with one
    probe and reads nothing outside it: in a realm or domain the cursor is the position, so
    cursor and position bounds merge; in an entity the position bounds can only filter the
    versions walked (positions grow with versions there, so they cut one end of the walk).
    In a realm or domain, several types are one limited walk of the type index per type, merged in
    order (see :func:`_union`): a single walk of the scope filtering types would read every event
    of the other types, and ``type_id = ANY(...)`` would make the planner sort the whole scope. An
    entity has no type index (schema step 5): its types filter its own walk, which the entity
    bounds, as in SQLite.
    """
    scope = query.scope
    params: list[object]
    if scope.domain is None:
        where, params = f"e.realm_id = {REALM_ID}", [scope.realm]
    elif scope.entity is None:
        where, params = f"e.domain_id = {DOMAIN_ID}", [scope.realm, scope.domain]
    else:
        where, params = f"e.entity_id = {ENTITY_ID}", [scope.realm, scope.domain, scope.entity]
    by_version = scope.entity is not None
    column = "e.version" if by_version else "e.position"
    after: Cursor | None = query.after
    before: Cursor | None = query.before
    extra: list[tuple[str, str, object]] = []  # (column, operator, value) bounds beyond the cursor's
    if by_version:
        if query.after_position is not None:
            extra.append(("e.position", ">", query.after_position))
        if query.before_position is not None:
            extra.append(("e.position", "<", query.before_position))
    else:
        after = _tighter(after, query.after_position, lower=True)
        before = _tighter(before, query.before_position, lower=False)
    for op, bound in ((">", after), ("<", before)):
        if bound is not None:
            extra.append((column, op, bound))
    for col, op, value in extra:
        params.append(value)
        where += f" AND {col} {op} ${len(params)}"
    direction = " DESC" if query.descending else ""
    params.append(query.limit)
    limit = f"${len(params)}"
    columns, names = (ENTITY_COLUMNS, ENTITY_NAMES) if by_version else (COLUMNS, NAMES)
    if query.max_bytes is not None:
        columns += f", {_SIZE}"
    if by_version and query.types:
        params.append(list(query.types))
        where += f" AND e.type_id = ANY(ARRAY(SELECT id FROM perhap_types WHERE name = ANY(${len(params)}::text[])))"
    elif len(query.types) == 1:
        params.append(query.types[0])
        where += f" AND e.type_id = (SELECT id FROM perhap_types WHERE name = ${len(params)})"
    if len(query.types) > 1 and not by_version:
        sql = _union(where, params, query.types, column, direction, limit, columns, names)
    else:
        sql = f"SELECT {columns}\nFROM perhap_events e {names} WHERE {where} ORDER BY {column}{direction} LIMIT {limit}"
    if query.max_bytes is not None:
        sql = _within_bytes(sql, params, query.max_bytes, by_version, direction)
    return sql, params, by_version


#: An event's data and meta in bytes, as the client gets them (json is stored as its text:
#: ``octet_length`` reads the size from a stored value's header, without fetching or decompressing it).
_SIZE = "octet_length(e.data::text) + octet_length(e.meta::text) AS size"


def _within_bytes(sql: str, params: list[object], max_bytes: int, by_version: bool, direction: str) -> str:
    """The page of ``sql`` (its columns followed by ``size``) cut at the row whose data and meta
    bring the total to ``max_bytes`` (that row kept: one at least). The rows cut off are never
    sent, nor their values read from storage."""
    params.append(min(max_bytes, 1 << 62))  # (a bigint: --max-page-bytes has no upper limit of its own)
    names = _labels(ENTITY_COLUMNS if by_version else COLUMNS)
    key = "version" if by_version else "position"
    return (f"SELECT {names} FROM (SELECT page.*, sum(page.size) OVER (ORDER BY page.{key}{direction} "
            f"ROWS UNBOUNDED PRECEDING) AS total FROM ({sql}) page) page "
            f"WHERE page.total - page.size < ${len(params)} ORDER BY page.{key}{direction}")


def _labels(columns: str) -> str:
    """The names a column list gives its columns (``a AS b, c AS d`` -> ``b, d``)."""
    return ", ".join(column.rsplit(" AS ", 1)[1] for column in columns.split(", "))


def _union(where: str, params: list[object], types: tuple[str, ...], column: str, direction: str,
           limit: str, columns: str, names: str) -> str:
    """Several types: per type, a walk of the scope's type index limited to a page, merged in
    cursor order (a Merge Append, which stops once the page is full), names joined last."""
    walks = []
    for name in types:
        params.append(name)
        walks.append(f"(SELECT e.* FROM perhap_events e WHERE {where} AND e.type_id = "
                     f"(SELECT id FROM perhap_types WHERE name = ${len(params)}) "
                     f"ORDER BY {column}{direction} LIMIT {limit})")
    merged = "\nUNION ALL\n".join(walks)
    return (f"SELECT {columns}\nFROM (SELECT * FROM ({merged}) e ORDER BY {column}{direction} "
            f"LIMIT {limit}) e {names} ORDER BY {column}{direction}")


def _tighter(cursor: Cursor | None, position: int | None, lower: bool) -> int | None:
    """The tighter of a cursor bound and a position bound (both positions in a realm or domain)."""
    assert cursor is None or isinstance(cursor, int)  # this backend's cursors are integers
    if cursor is None or position is None:
        return position if cursor is None else cursor
    return max(cursor, position) if lower else min(cursor, position)


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


async def events_by_ids(conn: asyncpg.Connection[asyncpg.Record], event_ids: list[str]) -> dict[str, Event]:
    """The stored events among these ids, by id."""
    rows = await conn.fetch(EVENTS_BY_IDS, event_ids)
    return {r[1]: row_event(r) for r in rows}


async def after_lost_call(conn: asyncpg.Connection[asyncpg.Record], lock_keys: list[int], event_ids: list[str],
                          durable: str) -> dict[str, Event]:
    """The stored events among a lost call's ids, read once the call is over: the realms' locks,
    which it holds to its end, are taken first (a call that reached the server is over once they
    are free; one that times out is not looked up, as it may not have). Found, the transaction
    writes (one of their entities' rows, unchanged: a table the writer updates anyway) and
    commits durably (``durable``: :data:`.writer.DURABLE`), so that with a synchronous standby its
    commit, after the call's, waits for the standby: the call's, committed on the primary alone
    when its session was ended while it waited, is then on the standby too. (A transaction that
    writes no WAL does not wait, an id of its own or not.)"""
    async with conn.transaction():
        await conn.fetch(f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, k) FROM unnest($1::int[]) k ORDER BY k",
                         lock_keys)
        stored = await events_by_ids(conn, event_ids)
        if stored:
            await conn.execute(durable)
            await conn.execute("UPDATE perhap_entities SET version = version WHERE id = "
                               "(SELECT entity_id FROM perhap_events WHERE event_id = $1::uuid)", next(iter(stored)))
    return stored
