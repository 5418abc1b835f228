"""The keyspace: its tables, their creation with a schema version, and every prepared statement."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from cassandra import InvalidRequest

from ...errors import StorageUnavailable
from .driver import Driver, Statement
from .records import Namespace
from .url import CassandraOptions

SCHEMA_VERSION = 1
ERA = 1024  # buckets per directory partition
ENTITY_SHARDS = 8
EVENT, CLIENT_ID, ATTEMPT = 0, 1, 2  # kinds of rows in an entity partition

TABLES = {
    "meta": "key text PRIMARY KEY, value text",
    "entity_log": """realm text, domain text, entity text, kind tinyint, seq bigint, id uuid,
        head bigint static, head_ts bigint static, types set<text> static,
        type text, ts bigint, stamp text, data blob, meta blob, ver bigint, aborted boolean,
        PRIMARY KEY ((realm, domain, entity), kind, seq, id)""",
    "scope_log": """realm text, scope text, bucket bigint, ts bigint, id uuid,
        domain text, entity text, type text, version bigint, stamp text, data blob, meta blob,
        txn uuid, ok boolean, PRIMARY KEY ((realm, scope, bucket), ts, id)""",
    # The directory of non-empty buckets: partition era -> its buckets; partition -1 -> the eras.
    "scope_dir": "realm text, scope text, era bigint, bucket bigint, PRIMARY KEY ((realm, scope, era), bucket)",
    "events_by_id": """shard text, id uuid, realm text, domain text, entity text, type text,
        version bigint, ts bigint, stamp text, data blob, meta blob, txn uuid, ok boolean,
        PRIMARY KEY (shard, id)""",
    # Names: realms under ('/' + namespace, '', 0), domains under (realm, '', 0), entities under
    # (realm, domain, hash shard); a stored realm never starts with '/' and a domain is never ''.
    "names": "realm text, domain text, shard int, name text, PRIMARY KEY ((realm, domain, shard), name)",
}


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
    entity_read: Statement
    entity_read_type: Statement
    index: Statement
    index_ok: Statement
    index_del: Statement
    dir_add: Statement
    buckets: Statement
    next_era: Statement
    by_id_add: Statement
    by_id_ok: Statement
    by_id_del: Statement
    by_id: Statement
    name_add: Statement
    names: Statement
    health: Statement
    #: Scope reads from a bucket's start and after a position: [untyped, with a type filter].
    scope_all: tuple[Statement, Statement]
    scope_after: tuple[Statement, Statement]


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The opened keyspace: what every part of the backend works with."""

    db: Driver
    q: Statements
    ns: Namespace
    options: CassandraOptions
    bucket_us: int  # the time bucket of the scope indexes, fixed when the keyspace was created
    stats: dict[str, int]  # outcome counters (late, retries, fenced, resolved), read by tests and metrics


def open_keyspace(session: Any, options: CassandraOptions) -> tuple[int, Statements]:
    """Create the schema if needed, check its version, prepare the statements (blocking: run it
    in a thread). Returns the keyspace's bucket size (microseconds) and the statements."""
    ks = options.keyspace
    try:
        rows = session.execute(f"SELECT key, value FROM {ks}.meta")
    except InvalidRequest:  # no keyspace or table yet
        rows = create_schema(session, options)
    meta = dict(rows)
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise StorageUnavailable(f"keyspace {ks} was written by a newer perhap "
                                 f"(schema {meta['schema_version']}); upgrade perhap")
    if "schema_version" not in meta:
        meta = dict(create_schema(session, options))
    return int(meta["bucket_us"]), prepare(session, ks)


def create_schema(session: Any, options: CassandraOptions) -> Any:
    """Create the keyspace and tables (idempotent) and return the meta table's rows."""
    s, ks = session, options.keyspace
    s.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
              f"{{'class': 'SimpleStrategy', 'replication_factor': {options.replication_factor}}}")
    for name, columns in TABLES.items():
        # A fixed table id: processes creating the schema at once on different nodes agree.
        table_id = uuid.uuid5(uuid.NAMESPACE_URL, f"perhap:{ks}.{name}")
        s.execute(f"CREATE TABLE IF NOT EXISTS {ks}.{name} ({columns}) WITH ID = {table_id}")
    # IF NOT EXISTS: the first process to get here fixes the bucket size for good.
    insert = f"INSERT INTO {ks}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS"
    s.execute(insert, ("bucket_us", str(options.bucket_seconds * 1_000_000)), execution_profile="lwt")
    s.execute(insert, ("schema_version", str(SCHEMA_VERSION)), execution_profile="lwt")
    return s.execute(f"SELECT key, value FROM {ks}.meta")


def prepare(session: Any, ks: str) -> Statements:
    p = session.prepare
    ent = "realm = ? AND domain = ? AND entity = ?"
    cols = "ts, id, domain, entity, type, version, stamp, data, meta, txn, ok"
    where = f"FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ?"
    tails = (" LIMIT ?", " AND type = ? LIMIT ? ALLOW FILTERING")
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
                f"data, meta) VALUES (?, ?, ?, {EVENT}, ?, ?, ?, ?, ?, ?, ?)"),
        versions=p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                   f"AND kind = {EVENT} AND seq IN ?"),
        entity_read=p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                      f"AND kind = {EVENT} AND seq > ? LIMIT ?"),
        entity_read_type=p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                           f"AND kind = {EVENT} AND seq > ? AND type = ? LIMIT ? ALLOW FILTERING"),
        index=p(f"INSERT INTO {ks}.scope_log (realm, scope, bucket, ts, id, domain, entity, type, "
                f"version, stamp, data, meta, txn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        index_ok=p(f"UPDATE {ks}.scope_log SET ok = true WHERE realm = ? AND scope = ? AND bucket = ? "
                   f"AND ts = ? AND id = ?"),
        index_del=p(f"DELETE FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ? "
                    f"AND ts = ? AND id = ?"),
        dir_add=p(f"INSERT INTO {ks}.scope_dir (realm, scope, era, bucket) VALUES (?, ?, ?, ?)"),
        buckets=p(f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = ? AND era = ? "
                  f"AND bucket >= ?"),
        next_era=p(f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = ? AND era = -1 "
                   f"AND bucket > ? LIMIT 1"),
        by_id_add=p(f"INSERT INTO {ks}.events_by_id (shard, id, realm, domain, entity, type, version, "
                    f"ts, stamp, data, meta, txn, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        by_id_ok=p(f"UPDATE {ks}.events_by_id SET ok = true WHERE shard = ? AND id = ?"),
        by_id_del=p(f"DELETE FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
        by_id=p(f"SELECT realm, domain, entity, type, version, ts, stamp, data, meta, txn, ok "
                f"FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
        name_add=p(f"INSERT INTO {ks}.names (realm, domain, shard, name) VALUES (?, ?, ?, ?)"),
        names=p(f"SELECT name FROM {ks}.names WHERE realm = ? AND domain = ? AND shard = ? "
                f"AND name > ? LIMIT ?"),
        health=p("SELECT release_version FROM system.local"),
        scope_all=(p(f"SELECT {cols} {where}{tails[0]}"), p(f"SELECT {cols} {where}{tails[1]}")),
        scope_after=(p(f"SELECT {cols} {where} AND (ts, id) > (?, ?){tails[0]}"),
                     p(f"SELECT {cols} {where} AND (ts, id) > (?, ?){tails[1]}")),
    )
