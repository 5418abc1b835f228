"""The SQLite schema, its version, and opening a database file with the right settings.

Names are stored once (realms, domains, entities, types tables) and events carry integer ids, so
the indexes that make every read O(log n + page) stay small.

Schema 3 stores events clustered by entity: the table's rowid is ``entity_key``, the entity's id
times 2**32 plus the event's version, so an entity's events sit side by side in the table's
leaves, in version order (reading a 100-event entity touches a few pages, not a hundred, however
large the store), and the key is the entity's unique (entity, version) index as well. ``seq`` is
a plain column the writer assigns (:mod:`.writes`), with a unique index. An entity's version is
the largest key in its range (one probe): nothing else keeps it.

Each scope is walked in one key: a realm by ``position`` (its unique ``(realm_id, position)``
index also gives the writer a realm's head in one probe), a domain by ``seq`` (its indexes end in
``seq``), an entity by ``entity_key``; the realm's and domain's typed indexes end in the same key,
so a type filter there is an index walk too. An entity's type filter is a filter on the entity's
own walk: bounded by the entity, and an index for it cost more on every write than it saved
(docs/performance.md). All three keys grow with ``seq`` inside their scope, since one writer
assigns them all in commit order.

The key's split bounds a store to 2**31 - 1 entities (ids count from 1) and an entity to 2**32
events; the writer refuses beyond (the CHECK is the last line of defence).

``perhap_groups`` holds the consumer groups' state documents (:mod:`.states`). It came after
schema 2 without a new version: every open runs ``CREATE TABLE IF NOT EXISTS``, so a file gains
the table when it is opened, and a perhap that does not know the table still opens a file that
has it (a version bump would lock that older perhap out for nothing).
"""

from __future__ import annotations

import os
import sqlite3

from ...errors import StorageUnavailable

SCHEMA_VERSION = 3

#: An entity's events have keys ``entity_id * KEY_SPAN + version``.
KEY_SPAN = 2**32
#: Entity ids stay below this, so every key fits SQLite's signed 64-bit integer.
MAX_ENTITY_ID = 2**31 - 1

_EVENTS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {{name}} (
    entity_key INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    realm_id INTEGER NOT NULL, domain_id INTEGER NOT NULL,
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    version INTEGER NOT NULL, ts TEXT NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL,
    position INTEGER NOT NULL,
    CHECK (version >= 0 AND version < {KEY_SPAN} AND entity_key = entity_id * {KEY_SPAN} + version))"""

_ENTITIES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY, domain_id INTEGER NOT NULL, name TEXT NOT NULL, UNIQUE (domain_id, name))"""

SCHEMA_TABLES = f"""
CREATE TABLE IF NOT EXISTS perhap_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS realms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY, realm_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE (realm_id, name));
{_ENTITIES_TABLE.format(name="entities").strip()};
CREATE TABLE IF NOT EXISTS types (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS entity_types (
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    PRIMARY KEY (entity_id, type_id)) WITHOUT ROWID;
{_EVENTS_TABLE.format(name="events").strip()};
CREATE TABLE IF NOT EXISTS perhap_groups (
    realm TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (realm, name));
"""

# Every index but the event ids' grows at its end as events are appended (seq, and each domain's
# and realm's keys, grow with commit order): the entity-keyed table is the one b-tree an append
# writes in the middle. Schema 2 had (entity_id, version) and (entity_id, type_id, version)
# indexes (the key replaces both), (domain_id) and (domain_id, type_id) ordered by the rowid, which
# was seq (now spelt out).
SCHEMA_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id);
CREATE UNIQUE INDEX IF NOT EXISTS events_seq ON events (seq);
CREATE INDEX IF NOT EXISTS events_domain ON events (domain_id, seq);
CREATE INDEX IF NOT EXISTS events_domain_type ON events (domain_id, type_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_realm_position ON events (realm_id, position);
CREATE INDEX IF NOT EXISTS events_realm_type ON events (realm_id, type_id, position);
"""

SCHEMA = SCHEMA_TABLES + SCHEMA_INDEXES

SYNCHRONOUS = frozenset({"FULL", "NORMAL", "EXTRA", "OFF"})


#: How long a connection waits for a lock another connection holds (only another process's can
#: be held long: a write transaction left open in the sqlite3 shell, say) before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 30_000


def connect(path: str, *, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers never wait for the writer), in autocommit mode."""
    # 256 statements cached: the writer's INSERT of each group size up to 64 rows, and the rest.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
                           cached_statements=256)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def is_busy(exc: BaseException) -> bool:
    """Whether a SQLite error is another connection's lock outlasting the busy timeout."""
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def check_directory(path: str) -> None:
    """StorageUnavailable naming the directory when the one that should hold ``path`` is missing,
    or ``path`` itself when it is a directory (before a lock file is made beside it for nothing)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageUnavailable(f"the directory {directory} does not exist")
    if os.path.isdir(path):
        raise StorageUnavailable(f"{path} is a directory, not a database file")


def open_database(path: str, *, synchronous: str) -> sqlite3.Connection:
    """The writer's connection to ``path``, the schema created, migrated or its version checked."""
    check_directory(path)
    try:
        conn = connect(path, synchronous=synchronous)
        conn.executescript(SCHEMA_TABLES.split(";", 1)[0])  # perhap_meta, to read the version
        row = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            conn.close()
            raise StorageUnavailable(f"{path} was written by a newer perhap (schema {row[0]}, this perhap "
                                     f"knows up to {SCHEMA_VERSION}); upgrade perhap")
        if row is not None and int(row[0]) < SCHEMA_VERSION:
            migrate(conn)
        conn.executescript(SCHEMA)
        if row is None:
            conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot open {path}: {exc}") from None
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a schema-1 or schema-2 file to schema 3, in place and in one transaction (all or
    nothing: a failure or a crash midway leaves the file as it was, migrated again at next open).

    The events are copied into a table of schema 3 in key order (each row appended to it), the old
    table and its indexes dropped, the new one renamed and its indexes built from the rows: every
    event keeps its seq, version, id, time, data and meta. Schema 2's positions are kept; a
    schema-1 file (before positions) gets each realm numbered 1..n in seq order, which was the
    realm's read order, so every read keeps its answer. ``entities`` loses its version column,
    which nothing keeps any more.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Checked again inside the write lock: another process may have migrated meanwhile.
        version = int(conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()[0])
        if version >= SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            return
        position = "position" if version == 2 else "row_number() OVER (PARTITION BY realm_id ORDER BY seq)"
        conn.execute(_EVENTS_TABLE.format(name="events_v3"))
        conn.execute("INSERT INTO events_v3 (entity_key, seq, event_id, realm_id, domain_id, entity_id, type_id,"
                     " version, ts, data, meta, position)"
                     f" SELECT entity_id * {KEY_SPAN} + version, seq, event_id, realm_id, domain_id, entity_id,"
                     f" type_id, version, ts, data, meta, {position} FROM events ORDER BY entity_id, version")
        conn.execute("DROP TABLE events")  # (its indexes with it)
        conn.execute("ALTER TABLE events_v3 RENAME TO events")
        conn.execute(_ENTITIES_TABLE.format(name="entities_v3"))
        conn.execute("INSERT INTO entities_v3 (id, domain_id, name) SELECT id, domain_id, name FROM entities")
        conn.execute("DROP TABLE entities")
        conn.execute("ALTER TABLE entities_v3 RENAME TO entities")
        # executescript would commit first: the indexes go in one by one, inside the transaction.
        for statement in SCHEMA_INDEXES.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("UPDATE perhap_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def last_seq(conn: sqlite3.Connection) -> int:
    """The seq of the last event stored (0 when there is none)."""
    seq: int = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return seq
