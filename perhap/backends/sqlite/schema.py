"""The SQLite schema, its version, and opening a database file with the right settings.

Names are stored once (realms, domains, entities, types tables) and events carry integer ids, so
the indexes that make every read O(log n + page) stay small. In SQLite an index on ``(x)`` is
ordered by ``(x, rowid)``, and ``seq`` is the rowid: ``INDEX(domain_id)`` already serves "domain
events after seq N in seq order".

Each scope is walked in one key: a realm by ``position`` (its unique ``(realm_id, position)``
index also gives the writer a realm's head in one probe), a domain by ``seq``, an entity by
``version``; the typed indexes end in the same key, so a type filter is an index walk too. All
three keys grow with ``seq`` inside their scope, since one writer assigns them all in commit order.

``perhap_groups`` holds the consumer groups' state documents (:mod:`.states`). It came after
schema 2 without a new version: every open runs ``CREATE TABLE IF NOT EXISTS``, so a file of
schema 2 gains the table when it is opened, and a perhap that does not know the table still opens
a file that has it (a version bump would lock that older perhap out for nothing).
"""

from __future__ import annotations

import os
import sqlite3

from ...errors import StorageUnavailable

SCHEMA_VERSION = 2

SCHEMA_TABLES = """
CREATE TABLE IF NOT EXISTS perhap_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS realms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY, realm_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE (realm_id, name));
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY, domain_id INTEGER NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE IF NOT EXISTS types (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS entity_types (
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    PRIMARY KEY (entity_id, type_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    realm_id INTEGER NOT NULL, domain_id INTEGER NOT NULL,
    entity_id INTEGER NOT NULL, type_id INTEGER NOT NULL,
    version INTEGER NOT NULL, ts TEXT NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL,
    position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS perhap_groups (
    realm TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (realm, name));
"""

# Schema 1 had events_realm (realm_id), events_realm_type (realm_id, type_id) and
# events_entity_type (entity_id, type_id): ordered by seq. The realm's position index replaces
# the first (one index write less per event), and the typed ones end in their scope's key.
SCHEMA_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS events_entity ON events (entity_id, version);
CREATE INDEX IF NOT EXISTS events_entity_type ON events (entity_id, type_id, version);
CREATE INDEX IF NOT EXISTS events_domain ON events (domain_id);
CREATE INDEX IF NOT EXISTS events_domain_type ON events (domain_id, type_id);
CREATE UNIQUE INDEX IF NOT EXISTS events_realm_position ON events (realm_id, position);
CREATE INDEX IF NOT EXISTS events_realm_type ON events (realm_id, type_id, position);
"""

SCHEMA = SCHEMA_TABLES + SCHEMA_INDEXES

#: Indexes of schema 1 that schema 2 drops or redefines.
_SCHEMA1_INDEXES = ("events_realm", "events_realm_type", "events_entity_type")

SYNCHRONOUS = frozenset({"FULL", "NORMAL", "EXTRA", "OFF"})


def connect(path: str, *, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers never wait for the writer), in autocommit mode."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def check_directory(path: str) -> None:
    """StorageUnavailable naming the directory when the one that should hold ``path`` is missing."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StorageUnavailable(f"the directory {directory} does not exist")


def open_database(path: str, *, synchronous: str) -> sqlite3.Connection:
    """The writer's connection to ``path``, the schema created, migrated or its version checked."""
    check_directory(path)
    try:
        conn = connect(path, synchronous=synchronous)
        conn.executescript(SCHEMA_TABLES.split(";", 1)[0])  # perhap_meta, to read the version
        row = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StorageUnavailable(f"{path} was written by a newer perhap (schema {row[0]}); upgrade perhap")
        if row is not None and int(row[0]) == 1:
            migrate_from_schema1(conn)
        conn.executescript(SCHEMA)
        if row is None:
            conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot open {path}: {exc}") from None
    return conn


def migrate_from_schema1(conn: sqlite3.Connection) -> None:
    """Give a schema-1 file its positions, in place and in one transaction (all or nothing).

    Each realm's events are numbered 1..n in seq order, which was the realm's read order: every
    read keeps its answer, and the writer goes on at n + 1.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Checked again inside the write lock: another process may have migrated meanwhile.
        row = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
        if int(row[0]) != 1:
            conn.execute("ROLLBACK")
            return
        for name in _SCHEMA1_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        # ADD COLUMN ... NOT NULL needs a default; every row gets its number before the commit.
        conn.execute("ALTER TABLE events ADD COLUMN position INTEGER NOT NULL DEFAULT 0")
        # A numbering table keyed by seq, not UPDATE ... FROM: that needs SQLite 3.33.
        conn.execute("CREATE TEMP TABLE numbering (seq INTEGER PRIMARY KEY, position INTEGER NOT NULL)")
        conn.execute("INSERT INTO numbering SELECT seq, row_number() OVER (PARTITION BY realm_id ORDER BY seq)"
                     " FROM events")
        conn.execute("UPDATE events SET position = (SELECT n.position FROM numbering n WHERE n.seq = events.seq)")
        conn.execute("DROP TABLE temp.numbering")
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
