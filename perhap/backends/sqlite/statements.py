"""The SQLite writer's statements: multi-row INSERTs sized so few texts cover every group, and the
look-up of many entities at once.

Each call into SQLite lets go of the GIL, and under load the writer thread waits for the event
loop to give it back after each one (docs/performance.md, sections 11 and 15): so a group's rows go
in as few statements as SQLite's limit on bound parameters allows. The texts are few and fixed
(powers of two, and every size up to ONE_STATEMENT_ROWS for the events), so they stay in the
connection's statement cache. Every statement fits the connection's limit on bound parameters,
read once when the writer opens it: a SQLite library built with a lower
``SQLITE_MAX_VARIABLE_NUMBER`` than the default (32,766; 999 before 3.32) takes fewer rows a
statement, never "too many SQL variables".
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

from .schema import KEY_SPAN

INSERT_EVENTS = ("INSERT INTO events (entity_key, seq, event_id, realm_id, domain_id, entity_id, type_id,"
                 " version, ts, data, meta, position) VALUES ")
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ROW_PARAMETERS = 12
#: Rows per multi-row INSERT at most. 1,024 against 128: a 1,000-event batch in 6 statements
#: instead of 10, 0-33 % more events/s in five alternating pairs of row 4's batches
#: (docs/performance.md, section 7).
MAX_CHUNK_ROWS = 1024
#: Rows a group writes in one INSERT of exactly its size (more: in chunks of powers of two). Up to
#: 64 rows take 64 statement texts, which stay in the connection's statement cache with the rest.
#: Fewer when the connection's limit on bound parameters allows fewer (Statements.one_statement_rows).
ONE_STATEMENT_ROWS = 64
#: Rows of new entities and of their types, and names looked up, per statement at most.
SMALL_CHUNK_ROWS = 64

#: entity_key, seq, event_id, realm_id, domain_id, entity_id, type_id, version, ts, data, meta, position
EventRow = tuple[int, int, str, int, int, int, int, int, str, bytes, bytes, int]

#: An entity's version: the largest key in its range, one probe backwards.
_VERSION = (f"coalesce((SELECT e.version FROM events e WHERE e.entity_key >= n.id * {KEY_SPAN}"
            f" AND e.entity_key < (n.id + 1) * {KEY_SPAN} ORDER BY e.entity_key DESC LIMIT 1), -1)")
#: An entity's id and version.
SELECT_ENTITY = f"SELECT n.id, {_VERSION} FROM entities n WHERE n.domain_id = ? AND n.name = ?"
_SELECT_ENTITIES = f"SELECT n.id, n.name, {_VERSION} FROM entities n WHERE n.domain_id = ? AND n.name IN "


def insert_chunks(variable_limit: int) -> tuple[int, ...]:
    """Rows per multi-row INSERT: powers of two, so a handful of statement texts cover every group
    (and stay in the connection's statement cache), the largest within ``variable_limit`` bound
    parameters (999 on SQLite builds before 3.32: 64 rows of 12 parameters) and MAX_CHUNK_ROWS."""
    rows = 1
    while rows * 2 <= MAX_CHUNK_ROWS and rows * 2 * _ROW_PARAMETERS <= variable_limit:
        rows *= 2
    chunks = []
    while rows:
        chunks.append(rows)
        rows //= 2
    return tuple(chunks)


def _power_of_two(n: int) -> int:
    """The largest power of two up to ``n`` (at least 1)."""
    return 1 << (max(n, 1).bit_length() - 1)


class Statements:
    """One connection's multi-row statements, their texts made once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: Bound parameters a statement may hold on this connection (a constant of the connection).
        self.variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self.chunks = insert_chunks(self.variables)
        #: Event rows a group writes in one statement of its size (ONE_STATEMENT_ROWS, or fewer).
        self.one_statement_rows = max(1, min(ONE_STATEMENT_ROWS, self.variables // _ROW_PARAMETERS))
        self._events = {n: INSERT_EVENTS + ", ".join([_ROW_MARKS] * n)
                        for n in (*self.chunks, *range(1, self.one_statement_rows + 1))}
        self._texts: dict[tuple[str, str, int], str] = {}

    def insert_events(self, rows: list[EventRow]) -> None:
        """A group of up to one_statement_rows rows in one statement of its size; more in chunks."""
        if len(rows) <= self.one_statement_rows:
            if rows:
                self.conn.execute(self._events[len(rows)], list(itertools.chain.from_iterable(rows)))
            return
        start = 0
        while start < len(rows):
            n = next(c for c in self.chunks if c <= len(rows) - start)
            self.conn.execute(self._events[n], list(itertools.chain.from_iterable(rows[start:start + n])))
            start += n

    def insert_small(self, insert: str, width: int, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of ``width`` values (``insert`` ends with VALUES) in statements of 64, 32 ... 1 rows
        (fewer when the connection allows fewer parameters)."""
        most = _power_of_two(min(SMALL_CHUNK_ROWS, self.variables // width))
        start = 0
        while start < len(rows):
            n = _power_of_two(min(most, len(rows) - start))
            sql = self._text(insert, "(" + ", ".join("?" * width) + ")", n)
            self.conn.execute(sql, list(itertools.chain.from_iterable(rows[start:start + n])))
            start += n

    def select_entities(self, domain_id: int, names: list[str]) -> list[tuple[int, str, int]]:
        """The id, name and version of each of ``names`` stored in the domain (absent ones left out),
        64 names a statement at most, fewer when the connection allows fewer parameters (a chunk
        padded to a power of two with its last name)."""
        found: list[tuple[int, str, int]] = []
        most = _power_of_two(min(SMALL_CHUNK_ROWS, self.variables - 1))  # (and the domain's id)
        for start in range(0, len(names), most):
            chunk = names[start:start + most]
            n = _power_of_two(len(chunk))
            if n < len(chunk):
                n *= 2
            sql = self._text(_SELECT_ENTITIES + "(", "?", n, ")")
            found += self.conn.execute(sql, (domain_id, *chunk, *[chunk[-1]] * (n - len(chunk)))).fetchall()
        return found

    def _text(self, head: str, row: str, n: int, tail: str = "") -> str:
        """``head``, then ``row`` n times with commas, then ``tail``: made once for each n."""
        sql = self._texts.get((head, row, n))
        if sql is None:
            sql = self._texts[(head, row, n)] = head + ", ".join([row] * n) + tail
        return sql
