"""The SQLite schema, its version, and opening a database file with the right settings.

Names are stored once (realms, domains, entities, types tables) and events carry integer ids, so
the indexes that make every read O(log n + page) stay small. In SQLite an index on ``(x)`` is
ordered by ``(x, rowid)``, and ``seq`` is the rowid: ``INDEX(domain_id)`` already serves "domain
events after seq N in seq order".
"""

from __future__ import annotations

import os
import sqlite3

from ...errors import StorageUnavailable

SCHEMA_VERSION = 1

SCHEMA = """
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
    version INTEGER NOT NULL, ts TEXT NOT NULL, data BLOB NOT NULL, meta BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_entity ON events (entity_id, version);
CREATE INDEX IF NOT EXISTS events_entity_type ON events (entity_id, type_id);
CREATE INDEX IF NOT EXISTS events_domain ON events (domain_id);
CREATE INDEX IF NOT EXISTS events_domain_type ON events (domain_id, type_id);
CREATE INDEX IF NOT EXISTS events_realm ON events (realm_id);
CREATE INDEX IF NOT EXISTS events_realm_type ON events (realm_id, type_id);
"""

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
    """The writer's connection to ``path``, the schema created or its version checked."""
    check_directory(path)
    try:
        conn = connect(path, synchronous=synchronous)
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM perhap_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StorageUnavailable(f"{path} was written by a newer perhap (schema {row[0]}); upgrade perhap")
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot open {path}: {exc}") from None
    return conn


def last_seq(conn: sqlite3.Connection) -> int:
    """The seq of the last event stored (0 when there is none)."""
    seq: int = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    return seq
