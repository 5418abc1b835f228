"""The keyspace: its tables, their creation with a schema version, the settings stored with the
data, the start-up checks (checks.py), and every prepared statement."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cassandra import InvalidRequest

from ...errors import StorageUnavailable
from ...model import MAX_LIMIT
from . import checks, migrate
from .driver import Driver, Statement
from .records import ATTEMPT, CLIENT_ID, EVENT, Namespace
from .url import SKEW_BELOW_SETTLE, CassandraOptions

log = logging.getLogger("perhap.cassandra")

#: 2: events_by_id.claims (the entities a client-chosen id was sent to, written before the commit).
#: 3: ``position`` in entity_log, scope_log and events_by_id (positions.py; migrate.py fills it in).
SCHEMA_VERSION = 3
CLAIMS = "claims set<frozen<tuple<text, text, text>>>"
#: The attempt that holds a client-chosen id's claim, its entity and the ts of its rows (claims.py).
#: Added to schema 3 without a new version, like ADDED_TABLES: only added, and only written by
#: Paxos rounds.
OWNER_COLUMNS = ("owner frozen<tuple<text, text, text>>", "owner_txn uuid", "owner_ts bigint")
POSITION_TABLES = ("entity_log", "scope_log", "events_by_id")
COLUMN_WAITS = 120  # half-seconds to wait for a column another process is adding
ERA = 1024  # buckets per directory partition
ENTITY_SHARDS = 8

TABLES = {
    "meta": "key text PRIMARY KEY, value text",
    "entity_log": """realm text, domain text, entity text, kind tinyint, seq bigint, id uuid,
        head bigint static, head_ts bigint static, types set<text> static,
        type text, ts bigint, stamp text, data blob, meta blob, ver bigint, aborted boolean, position bigint,
        PRIMARY KEY ((realm, domain, entity), kind, seq, id)""",
    "scope_log": """realm text, scope text, bucket bigint, ts bigint, id uuid,
        domain text, entity text, type text, version bigint, stamp text, data blob, meta blob,
        txn uuid, ok boolean, position bigint, PRIMARY KEY ((realm, scope, bucket), ts, id)""",
    # The directory of non-empty buckets: partition era -> its buckets; partition -1 -> the eras.
    "scope_dir": "realm text, scope text, era bigint, bucket bigint, PRIMARY KEY ((realm, scope, era), bucket)",
    "events_by_id": f"""shard text, id uuid, realm text, domain text, entity text, type text,
        version bigint, ts bigint, stamp text, data blob, meta blob, txn uuid, ok boolean,
        {CLAIMS}, position bigint, {", ".join(OWNER_COLUMNS)}, PRIMARY KEY (shard, id)""",
    # Names: realms under ('/' + namespace, '', 0), domains under (realm, '', 0), entities under
    # (realm, domain, hash shard); a stored realm never starts with '/' and a domain is never ''.
    "names": "realm text, domain text, shard int, name text, PRIMARY KEY ((realm, domain, shard), name)",
    # Consumer groups' state documents, one partition each, and their names by namespace
    # ('/' + namespace, as in names): states.py.
    "group_states": "realm text, name text, state_token text, data blob, gone text, PRIMARY KEY ((realm, name))",
    "group_names": "ns text, realm text, name text, PRIMARY KEY (ns, realm, name)",
}
#: Tables added without a new schema version: only added, so a keyspace of schema 3 gets them at
#: its next open (add_tables), and an older perhap of schema 3 still opens a keyspace that has them.
ADDED_TABLES = ("group_states", "group_names")


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement the backend runs, prepared once per process."""

    head: Statement
    types: Statement
    lwt_new: Statement
    lwt_next: Statement
    marker: Statement
    attempt: Statement
    event: Statement
    versions: Statement
    index: Statement
    index_ok: Statement
    index_del: Statement
    dir_add: Statement
    by_id_add: Statement
    by_id_ok: Statement
    by_id_del: Statement
    by_id: Statement
    claim: Statement
    client_id: Statement
    name_add: Statement
    names: Statement
    health: Statement
    meta_get: Statement
    meta_new: Statement
    meta_swap: Statement
    #: The bucket directory: [ascending, descending] buckets of an era from a bucket on, and the
    #: next (previous) non-empty era.
    buckets: tuple[Statement, Statement]
    eras: tuple[Statement, Statement]
    #: An entity's events between two versions, [ascending, descending] x [every event, within
    #: position bounds, within position bounds and of one type].
    entity_read: tuple[tuple[Statement, Statement, Statement], tuple[Statement, Statement, Statement]]
    #: A bucket of a scope index, [ascending, descending] x [untyped, one type]: whole, from a ts
    #: on (at or after ascending, at or before descending), and after a row (ts, id).
    scope_all: tuple[tuple[Statement, Statement], tuple[Statement, Statement]]
    scope_from: tuple[tuple[Statement, Statement], tuple[Statement, Statement]]
    scope_after: tuple[tuple[Statement, Statement], tuple[Statement, Statement]]


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The opened keyspace: what every part of the backend works with."""

    db: Driver
    q: Statements
    ns: Namespace
    options: CassandraOptions
    bucket_us: int  # the time bucket of the scope indexes, fixed when the keyspace was created
    stats: dict[str, int]  # outcome counters (late, retries, fenced, resolved), read by tests and metrics


@dataclass(frozen=True, slots=True)
class Opened:
    """What opening found: the layout and settings stored with the keyspace, and the cluster."""

    bucket_us: int  # the time bucket of the scope indexes, fixed when the keyspace was created
    floor: int  # positions of events migrated from schema 2 lie below this ts (0: none)
    statements: Statements
    options: CassandraOptions  # the URL's, with settle_us and skew_us as stored with the data
    commitlog: dict[str, str | None]  # each reachable node's commitlog_sync (None: not readable)
    clock: dict[str, tuple[int, int]]  # each reachable node's clock minus ours, and its uncertainty (µs)


def open_keyspace(session: Any, options: CassandraOptions) -> Opened:
    """Check the cluster, create the schema if needed (or bring it up to this version), adopt the
    settings stored with the data, prepare the statements. Blocking: run it in a thread."""
    ks = options.keyspace
    replication, exists = checks.replication_of(session, ks, options.replication_factor)
    warning = checks.factor_warning(replication, options.replication_factor) if exists else None
    if warning is not None and "replication_factor" in options.given:
        log.warning("keyspace %s: %s", ks, warning)
    if replication is None:
        log.warning("keyspace %s uses a replication strategy perhap does not know: it cannot check that "
                    "consistency=%s and serial_consistency=%s let every read meet every write", ks,
                    checks.level_name(options.consistency), checks.level_name(options.serial_consistency))
        scope = checks.ANY_DC
    else:
        local_dc = checks.local_datacentre(session, options.local_dc) if replication.multi_dc else None
        scope = checks.check_levels(options.consistency, options.serial_consistency, replication, local_dc)
    commitlog = checks.commitlog_modes(session)
    for warning in checks.commitlog_verdict(commitlog, options.accept_periodic_commitlog):
        log.warning("%s", warning)
    keys = ("schema_version", "bucket_us", named("settings", options), named("quorum", options), migrate.FLOOR)
    select = f"SELECT key, value FROM {ks}.meta WHERE key IN ({', '.join(['%s'] * len(keys))})"
    try:
        meta = dict(session.execute(select, keys))
    except InvalidRequest:  # no keyspace or table yet
        meta = {}
    version = int(meta.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise StorageUnavailable(f"keyspace {ks} was written by a newer perhap "
                                 f"(schema {meta['schema_version']}); upgrade perhap")
    if version < SCHEMA_VERSION:
        if version:  # an older keyspace: its stored settings bound the migration's lock as well
            options = stored_settings(session, options, meta)
        elif not options.skew_us < options.settle_us:
            # A new store: no stored window to adopt, so the URL's skew against the default window
            # is refused here, before a keyspace is made for nothing (the URL alone could not
            # tell: the skew may be meant for a window stored already).
            raise ValueError(f"{SKEW_BELOW_SETTLE}, which is {options.settle_us / 1000:g} for a new store")
        create_schema(session, options, version)
        meta = dict(session.execute(select, keys))
    else:
        add_tables(session, ks)
        for column in OWNER_COLUMNS:
            add_column(session, ks, "events_by_id", column)
    options = stored_settings(session, options, meta)
    if replication is not None and replication.multi_dc:
        pinned = first_writer(session, options, "quorum", scope, meta)
        if pinned != scope:
            raise ValueError(
                f"the processes of this store use consistency levels over {describe(pinned)}; this one would "
                f"use {describe(scope)}, and the two need not meet: use the same levels in the same datacentre")
    clock = checks.clock_offsets(session)
    for warning in checks.skew_warnings(clock, options.skew_us):
        log.warning("%s", warning)
    floor = int(meta.get(migrate.FLOOR, 0))
    return Opened(int(meta["bucket_us"]), floor, prepare(session, ks), options, commitlog, clock)


def describe(scope: str) -> str:
    return "all replicas" if scope == checks.ANY_DC else f"the replicas in datacentre {scope}"


def named(key: str, options: CassandraOptions) -> str:
    """A per-store meta key: each namespace is a store of its own."""
    return f"{key}/{options.namespace}" if options.namespace else key


def first_writer(session: Any, options: CassandraOptions, key: str, value: str, meta: dict[str, str]) -> str:
    """The value stored under a per-store meta key: the first process's (IF NOT EXISTS)."""
    key = named(key, options)
    if key in meta:
        return meta[key]
    row = session.execute(f"INSERT INTO {options.keyspace}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS",
                          (key, value), execution_profile="lwt").one()
    return value if row["[applied]"] else str(row["value"])


#: Settings the proof needs every process of a store to share: (meta field, URL option).
SHARED_SETTINGS = (("settle_us", "settle_ms"), ("clock_skew_us", "clock_skew_ms"))


def stored_settings(session: Any, options: CassandraOptions, meta: dict[str, str]) -> CassandraOptions:
    """The settle window and clock skew bound are stored with the store's data by its first process.
    A process whose URL does not name them adopts them; one whose URL names other values refuses
    to start (a process that believes in another window than the one in force is a mistake)."""
    mine = {"settle_us": options.settle_us, "clock_skew_us": options.skew_us}
    if named("settings", options) not in meta and not options.skew_us < options.settle_us:
        raise ValueError(SKEW_BELOW_SETTLE)  # never stored: no process could use them
    stored = json.loads(first_writer(session, options, "settings", json.dumps(mine, sort_keys=True), meta))
    for field, option in SHARED_SETTINGS:
        if stored[field] != mine[field] and option in options.given:
            raise ValueError(
                f"this store's {option} is {stored[field] / 1000:g}, fixed by the first process that opened it; "
                f"the URL says {option}={mine[field] / 1000:g}. Every process must use the same value: drop "
                f"{option} from the URL to use the stored one (changing it: docs/backends/cassandra.md)")
    adopted = dataclasses.replace(options, settle_us=int(stored["settle_us"]), skew_us=int(stored["clock_skew_us"]))
    if not adopted.skew_us < adopted.settle_us:
        raise ValueError(f"{SKEW_BELOW_SETTLE}, this store's settle_ms is {adopted.settle_us / 1000:g}")
    return adopted


def create_schema(session: Any, options: CassandraOptions, version: int) -> None:
    """Create the keyspace and tables (idempotent), or bring a keyspace of an older version up to
    this one, and record the version and the bucket size."""
    s, ks = session, options.keyspace
    s.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
              f"{{'class': 'SimpleStrategy', 'replication_factor': {options.replication_factor}}}")
    create_tables(s, ks, TABLES)
    add_column(s, ks, "events_by_id", CLAIMS)  # a keyspace of schema 1
    for table in POSITION_TABLES:  # a keyspace of schema 1 or 2
        add_column(s, ks, table, "position bigint")
    for column in OWNER_COLUMNS:
        add_column(s, ks, "events_by_id", column)
    # IF NOT EXISTS: the first process to get here fixes the bucket size for good.
    insert = f"INSERT INTO {ks}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS"
    s.execute(insert, ("bucket_us", str(options.bucket_seconds * 1_000_000)), execution_profile="lwt")
    if version:
        # Events written by the older release get their positions before any process of this one
        # may read or write (they wait for the version below).
        migrate.give_positions(s, options, str(version), str(SCHEMA_VERSION))
    else:
        s.execute(insert, ("schema_version", str(SCHEMA_VERSION)), execution_profile="lwt")


def create_tables(session: Any, ks: str, names: Iterable[str]) -> None:
    for name in names:
        # A fixed table id: processes creating the schema at once on different nodes agree.
        table_id = uuid.uuid5(uuid.NAMESPACE_URL, f"perhap:{ks}.{name}")
        session.execute(f"CREATE TABLE IF NOT EXISTS {ks}.{name} ({TABLES[name]}) WITH ID = {table_id}")


def add_tables(session: Any, ks: str) -> None:
    """Create the ADDED_TABLES a keyspace of this schema version lacks."""
    present = {r[0] for r in session.execute("SELECT table_name FROM system_schema.tables WHERE "
                                             "keyspace_name = %s", (ks,))}
    create_tables(session, ks, [name for name in ADDED_TABLES if name not in present])


def add_column(session: Any, ks: str, table: str, column: str) -> None:
    """ALTER TABLE ADD unless the column is there (or another process added it at the same time)."""
    name = column.split()[0]
    present = {r[0] for r in session.execute("SELECT column_name FROM system_schema.columns WHERE "
                                             "keyspace_name = %s AND table_name = %s", (ks, table))}
    if name not in present:
        try:
            session.execute(f"ALTER TABLE {ks}.{table} ADD {column}")
        except InvalidRequest as exc:  # another process added it first
            if "conflicts" not in str(exc) and "exist" not in str(exc):
                raise
    # Another process's ALTER may still be under way (the column listed, or conflicting, before the
    # table takes it): wait until a statement naming the column is accepted.
    for _ in range(COLUMN_WAITS):
        try:
            session.execute(f"SELECT {name} FROM {ks}.{table} LIMIT 1")
            return
        except InvalidRequest:
            time.sleep(0.5)
    raise StorageUnavailable(f"the column {table}.{name} did not appear in keyspace {ks}; start again")


def prepare(session: Any, ks: str) -> Statements:
    p = session.prepare
    ent = "realm = ? AND domain = ? AND entity = ?"
    event_cols = "seq, id, type, ts, stamp, data, meta, position"
    cols = "ts, id, domain, entity, type, version, stamp, data, meta, txn, ok, position"
    where = f"FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ?"

    def scope(ascending: str, descending: str) -> tuple[tuple[Statement, Statement], tuple[Statement, Statement]]:
        asc, desc = ((f"{where}{ascending}", ""), (f"{where}{descending}", " ORDER BY ts DESC, id DESC"))
        return tuple(  # type: ignore[return-value]
            (p(f"SELECT {cols} {body}{order} LIMIT ?"),
             p(f"SELECT {cols} {body} AND type = ?{order} LIMIT ? ALLOW FILTERING"))
            for body, order in (asc, desc))

    def entity(descending: bool) -> tuple[Statement, Statement, Statement]:
        # The id as text, made by the node: the driver would build a uuid.UUID per row (most of a
        # row's decoding) only for perhap to turn it into text again.
        cols = event_cols.replace("id,", "CAST(id AS text),", 1)
        base = (f"SELECT {cols} FROM {ks}.entity_log WHERE {ent} AND kind = {EVENT} "
                f"AND seq > ? AND seq < ?")
        order = " ORDER BY kind DESC, seq DESC" if descending else ""
        bounded = f"{base} AND position > ? AND position < ?"
        statements = (p(f"{base}{order} LIMIT ?"), p(f"{bounded}{order} LIMIT ? ALLOW FILTERING"),
                      p(f"{bounded} AND type = ?{order} LIMIT ? ALLOW FILTERING"))
        for statement in statements:  # a page in one round trip, not in the driver's pages of 5,000
            statement.fetch_size = MAX_LIMIT
        return statements

    def directory(descending: bool) -> tuple[Statement, Statement]:
        dirs = f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = ? AND era = ?"
        if descending:
            return (p(f"{dirs} AND bucket <= ? ORDER BY bucket DESC"),
                    p(f"{dirs.replace('era = ?', 'era = -1')} AND bucket < ? ORDER BY bucket DESC LIMIT 1"))
        return p(f"{dirs} AND bucket >= ?"), p(f"{dirs.replace('era = ?', 'era = -1')} AND bucket > ? LIMIT 1")

    asc_dir, desc_dir = directory(False), directory(True)
    return Statements(
        head=p(f"SELECT head, head_ts FROM {ks}.entity_log WHERE {ent} LIMIT 1"),
        types=p(f"SELECT types FROM {ks}.entity_log WHERE {ent} LIMIT 1"),
        lwt_new=p(f"UPDATE {ks}.entity_log SET head = ?, head_ts = ?, types = types + ? "
                  f"WHERE {ent} IF head = null"),
        lwt_next=p(f"UPDATE {ks}.entity_log SET head = ?, head_ts = ?, types = types + ? "
                   f"WHERE {ent} IF head = ? AND head_ts < ?"),
        marker=p(f"INSERT INTO {ks}.entity_log (realm, domain, entity, kind, seq, id, ver, aborted) "
                 f"VALUES (?, ?, ?, ?, 0, ?, ?, ?) IF NOT EXISTS"),
        attempt=p(f"SELECT ver, aborted FROM {ks}.entity_log WHERE {ent} AND kind = {ATTEMPT} "
                  f"AND seq = 0 AND id = ?"),
        event=p(f"INSERT INTO {ks}.entity_log (realm, domain, entity, kind, seq, id, type, ts, stamp, "
                f"data, meta, position) VALUES (?, ?, ?, {EVENT}, ?, ?, ?, ?, ?, ?, ?, ?)"),
        versions=p(f"SELECT {event_cols} FROM {ks}.entity_log WHERE {ent} AND kind = {EVENT} AND seq IN ?"),
        index=p(f"INSERT INTO {ks}.scope_log (realm, scope, bucket, ts, id, domain, entity, type, "
                f"version, stamp, data, meta, txn, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        index_ok=p(f"UPDATE {ks}.scope_log SET ok = true WHERE realm = ? AND scope = ? AND bucket = ? "
                   f"AND ts = ? AND id = ?"),
        index_del=p(f"DELETE FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ? "
                    f"AND ts = ? AND id = ?"),
        dir_add=p(f"INSERT INTO {ks}.scope_dir (realm, scope, era, bucket) VALUES (?, ?, ?, ?)"),
        by_id_add=p(f"INSERT INTO {ks}.events_by_id (shard, id, realm, domain, entity, type, version, "
                    f"ts, stamp, data, meta, txn, ok, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        by_id_ok=p(f"UPDATE {ks}.events_by_id SET ok = true WHERE shard = ? AND id = ?"),
        by_id_del=p(f"DELETE FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
        by_id=p(f"SELECT realm, domain, entity, type, version, ts, stamp, data, meta, txn, ok, claims, position "
                f"FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
        claim=p(f"UPDATE {ks}.events_by_id SET owner = ?, owner_txn = ?, owner_ts = ?, claims = claims + ? "
                f"WHERE shard = ? AND id = ? IF owner = ? AND owner_txn = ? AND owner_ts = ?"),
        client_id=p(f"SELECT ver FROM {ks}.entity_log WHERE {ent} AND kind = {CLIENT_ID} AND seq = 0 AND id = ?"),
        name_add=p(f"INSERT INTO {ks}.names (realm, domain, shard, name) VALUES (?, ?, ?, ?)"),
        names=p(f"SELECT name FROM {ks}.names WHERE realm = ? AND domain = ? AND shard = ? "
                f"AND name > ? LIMIT ?"),
        health=p("SELECT release_version FROM system.local"),
        meta_get=p(f"SELECT value FROM {ks}.meta WHERE key = ?"),
        meta_new=p(f"INSERT INTO {ks}.meta (key, value) VALUES (?, ?) IF NOT EXISTS"),
        meta_swap=p(f"UPDATE {ks}.meta SET value = ? WHERE key = ? IF value = ?"),
        buckets=(asc_dir[0], desc_dir[0]),
        eras=(asc_dir[1], desc_dir[1]),
        entity_read=(entity(False), entity(True)),
        scope_all=scope("", ""),
        scope_from=scope(" AND ts >= ?", " AND ts <= ?"),
        scope_after=scope(" AND (ts, id) > (?, ?)", " AND (ts, id) < (?, ?)"),
    )
