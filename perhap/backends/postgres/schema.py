"""The PostgreSQL schema: its versions, the steps between them, and the migration run at start-up.

Names are stored once and events carry integer ids, as in the SQLite backend; name columns use
``COLLATE "C"`` so key listings sort by code point on every server.
"""

from __future__ import annotations

import logging

import asyncpg

from ...errors import StorageUnavailable
from .connection import AnyConnection
from .known import FUNCTION, STEP_4_ARGUMENTS, STEP_6_ARGUMENTS

log = logging.getLogger("perhap.postgres")

SCHEMA_VERSION = 7
CHANNEL = "perhap_events"  # NOTIFY/LISTEN channel of commits
STATES_CHANNEL = "perhap_groups"  # NOTIFY/LISTEN channel of group state writes
LOCK_CLASS = 0x70657268  # "perh": the first key of every advisory lock we take
SCHEMA_LOCK = (LOCK_CLASS + 1, 0)
#: Seconds a migration step, and a process waiting for another's migration, may take: a step may
#: rewrite the events table (step 2: minutes for tens of millions of events), far beyond the
#: per-statement ``timeout`` of the URL.
MIGRATION_TIMEOUT = 24 * 3600.0

# Each step upgrades the schema from the version before it; a database records the last step run.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE perhap_realms (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE perhap_domains (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, realm_id int NOT NULL,
    name text COLLATE "C" NOT NULL, UNIQUE (realm_id, name));
CREATE TABLE perhap_entities (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, domain_id int NOT NULL,
    name text COLLATE "C" NOT NULL, version bigint NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE perhap_types (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE perhap_entity_types (
    entity_id bigint NOT NULL, type_id int NOT NULL, PRIMARY KEY (entity_id, type_id));
-- pos: CACHE 1 (the default, spelled out), as positions must increase in the order they are
-- handed out across sessions, which per-session caches would break. No index on pos alone: the
-- planner cannot see which realm a read's sub-select names, and given a pos index it may walk all
-- events in pos order filtering by realm (O(table)); the composite indexes are the only way.
CREATE TABLE perhap_events (
    event_id uuid PRIMARY KEY,
    pos bigint NOT NULL GENERATED ALWAYS AS IDENTITY (CACHE 1),
    realm_id int NOT NULL, domain_id int NOT NULL, entity_id bigint NOT NULL, type_id int NOT NULL,
    version bigint NOT NULL, ts text NOT NULL, data json NOT NULL, meta json NOT NULL);
CREATE UNIQUE INDEX perhap_events_entity ON perhap_events (entity_id, version);
CREATE INDEX perhap_events_entity_type ON perhap_events (entity_id, type_id, version);
CREATE INDEX perhap_events_domain ON perhap_events (domain_id, pos);
CREATE INDEX perhap_events_domain_type ON perhap_events (domain_id, type_id, pos);
CREATE INDEX perhap_events_realm ON perhap_events (realm_id, pos);
CREATE INDEX perhap_events_realm_type ON perhap_events (realm_id, type_id, pos);
""",
    # Integer positions, contiguous per realm (1, 2, 3 ... in today's realm order), replace the
    # global pos as the realm and domain order: the unique (realm_id, position) index then serves
    # realm reads, the realm's head and the writer's next position alike, and pos (and its
    # indexes) would only cost writes. The table is rewritten once (rows in one pass, indexes
    # built afterwards) rather than updated row by row, which would leave a dead copy of every
    # row and update six indexes per row.
    2: """
CREATE TABLE perhap_events_v2 (
    event_id uuid NOT NULL, position bigint NOT NULL,
    realm_id int NOT NULL, domain_id int NOT NULL, entity_id bigint NOT NULL, type_id int NOT NULL,
    version bigint NOT NULL, ts text NOT NULL, data json NOT NULL, meta json NOT NULL);
INSERT INTO perhap_events_v2
SELECT event_id, row_number() OVER (PARTITION BY realm_id ORDER BY pos),
       realm_id, domain_id, entity_id, type_id, version, ts, data, meta
FROM perhap_events;
DROP TABLE perhap_events;
ALTER TABLE perhap_events_v2 RENAME TO perhap_events;
ALTER TABLE perhap_events ADD CONSTRAINT perhap_events_pkey PRIMARY KEY (event_id);
CREATE UNIQUE INDEX perhap_events_realm ON perhap_events (realm_id, position);
CREATE INDEX perhap_events_realm_type ON perhap_events (realm_id, type_id, position);
CREATE INDEX perhap_events_domain ON perhap_events (domain_id, position);
CREATE INDEX perhap_events_domain_type ON perhap_events (domain_id, type_id, position);
CREATE UNIQUE INDEX perhap_events_entity ON perhap_events (entity_id, version);
CREATE INDEX perhap_events_entity_type ON perhap_events (entity_id, type_id, version);
ANALYZE perhap_events;
""",
    # The consumer groups' state documents, changed by compare-and-set (.states).
    3: """
CREATE TABLE perhap_groups (
    realm text COLLATE "C" NOT NULL, name text COLLATE "C" NOT NULL,
    token text NOT NULL, data bytea NOT NULL, PRIMARY KEY (realm, name));
""",
    # The writer's one-call group for entities it remembers (.known): no data changes.
    4: FUNCTION % {"lock_class": LOCK_CLASS, "channel": CHANNEL},
    # An entity's type filter becomes a filter on the entity's own walk of (entity_id, version),
    # bounded by the entity, as in SQLite since its schema 3: the (entity_id, type_id, version)
    # index was the seventh b-tree every event wrote, for reads that never leave one entity
    # (docs/performance.md, section 17). The function again, with one argument more (a group written
    # relative to the stored heads and versions, .known), and notifying only when it stored events.
    5: "DROP INDEX IF EXISTS perhap_events_entity_type;\n"
       f"DROP FUNCTION IF EXISTS perhap_write_known({STEP_4_ARGUMENTS});\n"
       + FUNCTION % {"lock_class": LOCK_CLASS, "channel": CHANNEL},
    # The function again, its arguments unchanged: every group's positions are written relative to
    # the realms' stored heads, a group with expected versions then checking only the versions
    # (.known). A process of the release before, still running, calls it as it did and takes
    # what it returns as it would from a relative group (decided again from the stored values).
    6: FUNCTION % {"lock_class": LOCK_CLASS, "channel": CHANNEL},
    # The function with four arguments more, and one more answer: the entities a group's jobs
    # expect to be new, checked absent and created by the call (.known), so that an append to a
    # new entity in a domain the writer knows is one call too. The step-6 function goes: a process
    # of the release before, still running, then finds no function to call and takes its look-up
    # path for every group (correct, slower) until it is restarted.
    7: f"DROP FUNCTION IF EXISTS perhap_write_known({STEP_6_ARGUMENTS});\n"
       + FUNCTION % {"lock_class": LOCK_CLASS, "channel": CHANNEL},
}


async def migrate(conn: AnyConnection) -> None:
    """Create or upgrade the schema, once, even when several processes start together."""
    encoding = await conn.fetchval("SHOW server_encoding")
    if encoding != "UTF8":
        raise StorageUnavailable(f"the database encoding is {encoding}; perhap needs UTF8")
    version = await schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    # A session lock taken before the migration's transaction (not inside it): that transaction's
    # start then sees the catalog as another process's migration left it. Its wait is a
    # transaction of its own, without a server or role default's statement_timeout or
    # lock_timeout: a process that starts while another migrates waits for it, not fails.
    async with conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        await conn.execute("SELECT pg_advisory_lock($1, $2)", *SCHEMA_LOCK, timeout=MIGRATION_TIMEOUT)
    try:
        async with conn.transaction():
            # Nor may a server or role default cut a long step short.
            await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            version = await schema_version(conn)  # another process may have just done it
            if version == SCHEMA_VERSION:
                return  # (the lock is let go below; nothing to write, nothing to log)
            if version > SCHEMA_VERSION:
                raise StorageUnavailable(
                    f"the database has perhap schema {version}, newer than this perhap's "
                    f"{SCHEMA_VERSION}; upgrade perhap")
            try:
                if version == 0:
                    await conn.execute("CREATE TABLE perhap_meta (key text PRIMARY KEY, value text NOT NULL)")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[step], timeout=MIGRATION_TIMEOUT)
            except asyncpg.InsufficientPrivilegeError as exc:  # (the transaction undoes every step)
                raise StorageUnavailable(_no_privilege(version, exc)) from None
            await conn.execute(
                "INSERT INTO perhap_meta VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", str(SCHEMA_VERSION))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *SCHEMA_LOCK)
    if version:
        log.info("upgraded the perhap schema from version %d to %d", version, SCHEMA_VERSION)


def _no_privilege(version: int, exc: Exception) -> str:
    """Why a role that may not change the schema cannot open a store that needs it changed."""
    if version == 0:
        return (f"this role may not create perhap's tables in this database ({exc}); run perhap once as a role "
                "that may (docs/backends/postgresql.md), then this one can use them")
    return (f"the database has perhap schema {version} and this perhap needs {SCHEMA_VERSION}: the upgrade "
            f"changes tables and functions, which this role may not do ({exc}); run this perhap once as "
            "the role that owns perhap's tables, and the upgrade is done for every role (nothing changed)")


async def schema_version(conn: AnyConnection) -> int:
    """The schema version the database records; 0 for a database perhap has not used yet."""
    if await conn.fetchval("SELECT to_regclass('perhap_meta')") is None:
        return 0
    value = await conn.fetchval("SELECT value FROM perhap_meta WHERE key = 'schema_version'")
    try:
        return int(value or 0)
    except ValueError:
        raise StorageUnavailable(f"perhap_meta's schema_version is {value!r}, not a whole number: the table "
                                 "was changed by something other than perhap") from None
