"""Scope reads: a :class:`ReadQuery` turned into index walks, each bounded by the page size.

Each scope is walked in one key (see :mod:`.schema`): a realm by ``position``, a domain by
``seq``, an entity by ``entity_key`` (its id times 2**32 plus the version: its events lie side
by side in the table). Every bound of a query is first turned into that key, with one index probe
at most:

- a realm's cursors are seqs of its own events: one probe of the seq index gives the event's
  position;
- a domain's position bounds: one probe of the realm's ``(realm_id, position)`` index gives the
  seq of that position. Positions are contiguous, so a position that is not found lies beyond
  the head (``after_position`` there is an empty page; ``before_position`` bounds nothing);
- an entity's version bounds are key bounds within its range; its position bounds and its types
  are filters on its walk (bounded by the entity's size).

Several types are one walk per type, each limited to the page, merged lazily on ``seq`` (which
grows with every scope's key): the work is the page plus one row per type, however large the
scope. Reads whose statements must agree run in one transaction, so they see one snapshot.

Gap-safe in both orders: one writer assigns seqs and positions in commit order and commits a
group at once, so a WAL snapshot holds every event committed before it and none after; the newest
event a descending read starts from has every earlier one readable beside it.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

from ...model import Event, Scope
from ...store.query import ReadQuery
from .queries import DOMAIN_ID, REALM_ID, TYPE_ID, make_event
from .schema import KEY_SPAN

#: Above any key (SQLite's largest integer): "no upper bound".
NO_LIMIT = 2**63 - 1
#: An entity's walk: after version -1 and before version 2**32 (the next entity's first key).
_ENTITY_LOW, _ENTITY_HIGH = -1, KEY_SPAN

#: The key column, owner column and owner subquery of each level (1 realm, 2 domain, 3 entity).
_LEVELS = {1: ("position", "realm_id", REALM_ID), 2: ("seq", "domain_id", DOMAIN_ID)}
_INDEXES = {(1, False): "events_realm_position", (1, True): "events_realm_type",
            (2, False): "events_domain", (2, True): "events_domain_type"}

#: An entity's first key (its id times KEY_SPAN), looked up once as the outer side of its walk.
#: Its names come first in the text, so they are ?1-?3; a type's name is ?4, the order of the other
#: levels' parameters, so the walk's bounds are numbered after them.
_ENTITY_BASE = (f"(SELECT id * {KEY_SPAN} AS base FROM entities WHERE domain_id = {DOMAIN_ID} AND name = ?) x "
                "JOIN events e NOT INDEXED ON e.entity_key > x.base + ?{low} AND e.entity_key < x.base + ?{high}")

# The walks select only the names the scope does not fix (an entity's events need no join for
# their realm, domain and entity), and are built once per shape.
_SHAPES: dict[tuple[int, bool, bool, bool], str] = {}

_REALM_POSITION_OF_SEQ = f"SELECT position FROM events WHERE seq = ? AND realm_id = {REALM_ID}"
_REALM_POSITION_BELOW_SEQ = (f"SELECT position FROM events INDEXED BY events_realm_position "
                             f"WHERE realm_id = {REALM_ID} AND seq < ? ORDER BY position DESC LIMIT 1")
_SEQ_OF_POSITION = f"SELECT seq FROM events WHERE realm_id = {REALM_ID} AND position = ?"


def walk_sql(level: int, typed: bool, descending: bool, positions: bool) -> str:
    """One index walk of a scope of ``level`` between two exclusive key bounds, up to a limit;
    with ``typed``, of one type; with ``positions``, also between two exclusive positions."""
    shape = (level, typed, descending, positions)
    sql = _SHAPES.get(shape)
    if sql is None:
        names = ("d.name, n.name, ", "n.name, ", "")[level - 1]
        joins = ("JOIN domains d ON d.id = e.domain_id JOIN entities n ON n.id = e.entity_id",
                 "JOIN entities n ON n.id = e.entity_id", "")[level - 1]
        if level == 3:
            # A range of the table's own key (no index), its ends made from the entity's id.
            low = 5 if typed else 4
            key, source = "entity_key", _ENTITY_BASE.format(low=low, high=low + 1)
            where, bounds = "TRUE", ""
        else:
            key, column, owner = _LEVELS[level]
            source = f"events e INDEXED BY {_INDEXES[(level, typed)]}"
            where = f"e.{column} = {owner}"
            bounds = f" AND e.{key} > ? AND e.{key} < ?"
        if typed:
            where += f" AND e.type_id = {TYPE_ID if level < 3 else '(SELECT id FROM types WHERE name = ?4)'}"
        where += bounds
        if positions:
            where += " AND e.position > ? AND e.position < ?"
        sql = (f"SELECT e.seq, e.event_id, {names}t.name, e.version, e.ts, e.data, e.meta, e.position "
               f"FROM {source} {joins} "
               f"JOIN types t ON t.id = e.type_id WHERE {where} "
               f"ORDER BY e.{key}{' DESC' if descending else ''} LIMIT ?")
        _SHAPES[shape] = sql
    return sql


def read_events(conn: sqlite3.Connection, query: ReadQuery) -> tuple[list[Event], int]:
    """Up to ``query.limit`` events of the query's scope within all its bounds, in its order,
    and the largest seq among them (0 if none)."""
    # A domain's position bounds can say "beyond the head": that must hold in the walk's snapshot.
    # A realm's cursor probe finds an event that never changes, so it may take its own snapshot,
    # unless the cursor is not one of the realm's (then the answer depends on the snapshot).
    snapshot = len(query.types) > 1 or (query.scope.level == 2 and (
        bool(query.after_position) or query.before_position is not None))
    if not snapshot:
        try:
            return _walk(conn, query, alone=True)
        except _NeedsSnapshot:
            pass
    conn.execute("BEGIN")
    try:
        return _walk(conn, query, alone=False)
    finally:
        if conn.in_transaction:  # (a read-only transaction: ending it undoes nothing)
            conn.execute("ROLLBACK")


class _NeedsSnapshot(Exception):
    """The read needs its statements in one transaction after all."""


def _walk(conn: sqlite3.Connection, query: ReadQuery, *, alone: bool) -> tuple[list[Event], int]:
    scope = query.scope
    bounds = _key_bounds(conn, query, alone)
    if bounds is None:
        return [], 0
    level = scope.level
    positions = level == 3 and (query.after_position is not None or query.before_position is not None)
    sql = walk_sql(level, bool(query.types), query.descending, positions)
    owner: tuple[str | None, ...] = (scope.realm, scope.domain, scope.entity)[:level]
    tail: tuple[int, ...] = bounds
    if positions:
        tail += (query.after_position or 0, NO_LIMIT if query.before_position is None else query.before_position)
    tail += (query.limit,)
    # One walk per type (one in all when the read takes every type).
    walks = [(*owner, name, *tail) for name in query.types] or [(*owner, *tail)]
    if len(walks) == 1 and query.max_bytes is None:
        rows = conn.execute(sql, walks[0]).fetchall()
    else:
        cursors = [conn.execute(sql, params) for params in walks]
        try:
            # Lazily: each walk steps one row past what the page takes from it.
            merged: Iterator[tuple[Any, ...]] = heapq.merge(*cursors, key=_seq, reverse=query.descending) \
                if len(cursors) > 1 else cursors[0]
            rows = list(itertools.islice(merged, query.limit)) if query.max_bytes is None else \
                _within(merged, query.limit, query.max_bytes)
        finally:
            for cursor in cursors:
                cursor.close()  # (a walk left midway would keep its read transaction open)
    if not rows:
        return [], 0
    return scope_events(scope, rows), rows[0 if query.descending else -1][0]


def _within(rows: Iterator[tuple[Any, ...]], limit: int, max_bytes: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` rows, stepped one at a time, until their data and meta reach ``max_bytes``
    (the row that reaches it kept: one at least)."""
    kept = []
    size = 0
    for row in itertools.islice(rows, limit):
        kept.append(row)
        size += len(row[-3]) + len(row[-2])  # (data, meta: the columns before the position)
        if size >= max_bytes:
            break
    return kept


def _seq(row: tuple[Any, ...]) -> int:
    seq: int = row[0]
    return seq


def _key_bounds(conn: sqlite3.Connection, query: ReadQuery, alone: bool) -> tuple[int, int] | None:
    """The query's bounds as exclusive bounds on its scope's key; None: nothing can match."""
    scope = query.scope
    low, high = -1, NO_LIMIT
    after, before = query.after, query.before
    if isinstance(after, tuple) or isinstance(before, tuple):
        raise TypeError("a SQLite cursor is an integer")
    if scope.level == 3:  # versions, within the entity's range of keys; positions are filtered on the walk
        return (_ENTITY_LOW if after is None else max(_ENTITY_LOW, min(after, _ENTITY_HIGH)),
                _ENTITY_HIGH if before is None else max(_ENTITY_LOW, min(before, _ENTITY_HIGH)))
    realm = scope.realm
    if scope.level == 1:  # positions; cursors are seqs of the realm's events
        if query.after_position is not None:
            low = query.after_position
        if query.before_position is not None:
            high = query.before_position
        if after is not None:
            low = max(low, _realm_position(conn, realm, after, after=True, alone=alone))
        if before is not None:
            high = min(high, _realm_position(conn, realm, before, after=False, alone=alone))
        return low, high
    # A domain: seqs. A position not found lies beyond the realm's head (positions are contiguous).
    if after is not None:
        low = after
    if before is not None:
        high = before
    if query.after_position:  # (0: every event)
        seq = _seq_of_position(conn, realm, query.after_position)
        if seq is None:
            return None
        low = max(low, seq)
    if query.before_position is not None:
        if query.before_position <= 1:  # (no position below 1)
            return None
        seq = _seq_of_position(conn, realm, query.before_position)
        if seq is not None:
            high = min(high, seq)
    return low, high


def _realm_position(conn: sqlite3.Connection, realm: str, seq: int, *, after: bool, alone: bool) -> int:
    """The exclusive position bound in ``realm`` equal to the exclusive seq bound ``seq``."""
    row = conn.execute(_REALM_POSITION_OF_SEQ, (seq, realm)).fetchone()
    if row is not None:  # the usual case: a cursor is the seq of one of the realm's events
        position: int = row[0]
        return position
    if alone:
        raise _NeedsSnapshot
    # Not one of the realm's events: the realm's last position below that seq bounds the same.
    row = conn.execute(_REALM_POSITION_BELOW_SEQ, (realm, seq)).fetchone()
    below: int = 0 if row is None else row[0]
    return below if after else below + 1


def _seq_of_position(conn: sqlite3.Connection, realm: str, position: int) -> int | None:
    row = conn.execute(_SEQ_OF_POSITION, (realm, position)).fetchone()
    return None if row is None else int(row[0])


def scope_events(scope: Scope, rows: list[tuple[Any, ...]]) -> list[Event]:
    """Events from the rows of :func:`walk_sql`, the scope's own names filled in; an event's
    cursor is its version in an entity, its seq elsewhere."""
    make, realm, domain = make_event, scope.realm, scope.domain
    if scope.entity is not None:
        assert domain is not None  # Scope guarantees it: an entity scope has a domain
        entity = scope.entity
        return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, position, version)
                for seq, event_id, type_, version, ts, data, meta, position in rows]
    if domain is not None:
        return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, position, seq)
                for seq, event_id, entity, type_, version, ts, data, meta, position in rows]
    return [make(event_id, realm, domain, entity, type_, version, ts, data, meta, position, seq)
            for seq, event_id, domain, entity, type_, version, ts, data, meta, position in rows]
