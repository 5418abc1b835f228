"""The Apache Cassandra (and ScyllaDB) backend: partitioned, replicated, no single writer.

The design, proved in docs/backends/cassandra.md:

- An entity is one partition of ``entity_log``: its events (kind 0, clustered by version), a
  marker per client-chosen event id (kind 1) and a marker per write attempt (kind 2), with the
  head version, the head's position and the entity's types in static columns. An append is ONE
  conditional batch on that partition (``IF head = v`` plus ``IF NOT EXISTS`` on its markers): a
  Paxos round makes versions gapless, batches atomic and client ids unique within the entity,
  whatever the number of writing processes.
- Domain and realm order is the position ``(ts, event_id)`` in ``scope_log``, partitioned by
  (realm, domain or '' for the realm, time bucket); a two-level directory (eras, buckets) lists
  the non-empty buckets, so reads walk bounded partitions. The rows are written *before* the
  Paxos commit, marked pending with their attempt id; after the commit they are marked ok.
- Readers of domains and realms return only positions at least ``settle`` older than their clock.
  A writer whose pending rows were not acknowledged within ``settle - clock_skew`` of their
  position abandons that attempt, so every row a reader could ever see at or below its horizon was
  visible when it read. A pending row at or below the horizon is resolved: committed attempt ->
  returned, otherwise the reader *fences* the attempt (inserts its marker as aborted, IF NOT
  EXISTS), so it can never commit later. The set of events at or below a horizon is thus final:
  pages never skip nor repeat an event.
- ``events_by_id`` finds an event by id in one read (partitioned by the id's top 44 bits: a
  UUIDv7's 16 ms window). Names live in ``names`` (a domain's entities hashed into 8 shards).
- ``?namespace=`` keeps several stores in one keyspace: stored realms are ``namespace/realm``
  ('/' never occurs in a realm name), converted back at the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cassandra import (
    ConsistencyLevel,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    RequestExecutionException,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BatchStatement, BatchType, dict_factory, tuple_factory

from .store import (
    CommitSignal,
    DEFAULT_LIMIT,
    Appended,
    AppendResult,
    Event,
    InvalidInput,
    KeysPage,
    NewEvent,
    NotFound,
    Scope,
    StorageUnavailable,
    Store,
    VersionConflict,
    check_event_id,
    check_limit,
    replay_or_conflict,
)

SCHEMA_VERSION = 1
ERA = 1024  # buckets per directory partition
ENTITY_SHARDS = 8
EVENT, CLIENT_ID, ATTEMPT = 0, 1, 2  # kinds of rows in an entity partition
ROWS_PER_BATCH = 500  # pending index rows per unlogged single-partition batch
MAX_LEAD_US = 10_000_000  # how far ahead of its clock a writer may place a position
MAX_BATCH_BYTES = 12 << 20  # one Paxos mutation must stay under Cassandra's max_mutation_size
_DRIVER_ERRORS = (RequestExecutionException, DriverException, NoHostAvailable, ConnectionException, OSError)

_TABLES = {
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

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OPTIONS = {"namespace", "replication_factor", "consistency", "serial_consistency", "settle_ms", "clock_skew_ms",
            "timeout", "bucket_seconds", "local_dc", "poll_ms"}


class _QuietNegotiation(logging.Filter):
    """The driver warns each time it negotiates the protocol version down (Cassandra 5 speaks v5,
    ScyllaDB v4): that is expected here, since we let it pick."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Downgrading core protocol version")


logging.getLogger("cassandra.cluster").addFilter(_QuietNegotiation())


def _now_us() -> int:
    return time.time_ns() // 1000


def _stamp(ts: int, stamp: str | None = None) -> str:
    """An event's timestamp: the one it was imported with, else its position (microseconds) in
    RFC 3339, computed exactly (no float rounding)."""
    return stamp or (_EPOCH + timedelta(microseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entity_shard(name: str) -> int:
    return zlib.crc32(name.encode()) % ENTITY_SHARDS


def parse_cassandra_url(url: str) -> dict[str, Any]:
    """``cassandra://[user:pass@]host1,host2[:port]/keyspace?option=value...`` -> options."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "cassandra":
        raise ValueError(f"not a cassandra:// URL: {url!r}")
    netloc = parts.netloc.rsplit("@", 1)
    user = password = None
    if len(netloc) == 2:
        user, _, password = (unquote(p) for p in netloc[0].partition(":"))
    hostpart, port = netloc[-1], 9042
    if ":" in hostpart.rsplit(",", 1)[-1]:
        hostpart, port_text = hostpart.rsplit(":", 1)
        port = int(port_text)
    hosts = [h for h in hostpart.split(",") if h]
    keyspace = parts.path.strip("/")
    if not hosts:
        raise ValueError("a Cassandra URL needs at least one host")
    if not keyspace.replace("_", "a").isalnum() or not keyspace.isascii() or len(keyspace) > 48 \
            or keyspace[0].isdigit():
        raise ValueError("a Cassandra URL needs a keyspace: 1-48 letters, digits or '_', e.g. /perhap")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown Cassandra URL options: {', '.join(sorted(unknown))}")
    namespace = query.get("namespace", "")
    if namespace and not (namespace.replace("_", "a").replace("-", "a").isalnum() and namespace.isascii()
                          and len(namespace) <= 64):
        raise ValueError("namespace must be 1-64 letters, digits, '_' or '-'")

    def level(name: str, default: str) -> int:
        text = query.get(name, default).upper()
        if text not in ConsistencyLevel.name_to_value:
            raise ValueError(f"{name} must be a consistency level such as LOCAL_QUORUM, not {text!r}")
        return ConsistencyLevel.name_to_value[text]  # type: ignore[no-any-return]

    settle_ms = float(query.get("settle_ms", 300))
    skew_ms = float(query.get("clock_skew_ms", 50))
    if not 0 <= skew_ms < settle_ms:
        raise ValueError("clock_skew_ms must be at least 0 and less than settle_ms")
    return {
        "hosts": hosts, "port": port, "keyspace": keyspace, "namespace": namespace, "user": user, "password": password,
        "replication_factor": int(query.get("replication_factor", 1)),
        "consistency": level("consistency", "LOCAL_ONE"),
        "serial_consistency": level("serial_consistency", "LOCAL_SERIAL"),
        "settle_us": int(settle_ms * 1000), "skew_us": int(skew_ms * 1000),
        "timeout": float(query.get("timeout", 10)),
        "bucket_seconds": int(query.get("bucket_seconds", 60)),
        "local_dc": query.get("local_dc"),
        "poll": float(query.get("poll_ms", 100)) / 1000,
    }


class _Pending:
    """The rows of one write attempt (all events of one batch), as written before its commit."""

    def __init__(self, key: tuple[str, str, str], events: list[tuple[NewEvent, uuid.UUID, int, int]]) -> None:
        self.key, self.events, self.txn = key, events, uuid.uuid4()  # events: (event, uuid, version, ts)
        self.unknown = False  # the commit's outcome could not be learnt: its rows must stay


class CassandraStore(CommitSignal, Store):
    """Events in a Cassandra keyspace; any number of perhap processes may share it."""

    shared_across_processes = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.conf = parse_cassandra_url(url)
        self.poll_interval = self.conf["poll"]
        self.settle_us, self.skew_us = self.conf["settle_us"], self.conf["skew_us"]
        self._ns = self.conf["namespace"]  # several stores in one keyspace, each its own namespace
        self._closed = self._closing = False
        self._cluster: Cluster | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # writes and their follow-ups: close() waits
        self._locks: dict[tuple[str, str, str], list[Any]] = {}  # entity -> [lock, users]
        self._heads: OrderedDict[tuple[str, str, str], tuple[int, int]] = OrderedDict()
        self._txns: OrderedDict[uuid.UUID, bool] = OrderedDict()  # resolved attempts: committed?
        self._own: set[uuid.UUID] = set()  # committed here, rows being marked ok by this process
        self._known: set[tuple[Any, ...]] = set()  # key and directory rows already written
        self._reads: dict[Any, list[Any]] = {}  # shared reads: key -> [running, next]
        self._fixed_us, self._row_us = 5000.0, 200.0  # learnt cost of pending rows (microseconds)
        self._last_ts = 0  # the last position this process gave out
        # Outcome counters, read by tests and benchmarks.
        self.stats = {"late": 0, "retries": 0, "fenced": 0, "resolved": 0}

    # ----------------------------------------------------------------- opening

    async def open(self) -> CassandraStore:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._connect)
        except _DRIVER_ERRORS as exc:
            if self._cluster is not None:
                await asyncio.to_thread(self._cluster.shutdown)
            raise StorageUnavailable(f"cannot reach Cassandra at {self.conf['hosts']}: {exc}") from None
        return self

    def _connect(self) -> None:
        c = self.conf
        policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c["local_dc"]))
        profile = ExecutionProfile(load_balancing_policy=policy, consistency_level=c["consistency"],
                                   serial_consistency_level=c["serial_consistency"],
                                   request_timeout=c["timeout"], row_factory=tuple_factory)
        lwt = ExecutionProfile(load_balancing_policy=policy, consistency_level=c["consistency"],
                               serial_consistency_level=c["serial_consistency"],
                               request_timeout=c["timeout"], row_factory=dict_factory)
        auth = PlainTextAuthProvider(c["user"], c["password"]) if c["user"] else None
        self._cluster = Cluster(
            c["hosts"], port=c["port"], auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile, "lwt": lwt},
            # Reconnect within a second or two once a node is back (the default backs off to 10 min).
            reconnection_policy=ExponentialReconnectionPolicy(0.25, 2.0, max_attempts=None),
            connect_timeout=c["timeout"], control_connection_timeout=c["timeout"])
        self._session = self._cluster.connect()
        ks = c["keyspace"]
        try:
            rows = self._session.execute(f"SELECT key, value FROM {ks}.meta")
        except InvalidRequest:  # no keyspace or table yet
            rows = self._create_schema(ks)
        meta = dict(rows)
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StorageUnavailable(f"keyspace {ks} was written by a newer perhap "
                                     f"(schema {meta['schema_version']}); upgrade perhap")
        if "schema_version" not in meta:
            meta = dict(self._create_schema(ks))
        self.bucket_us = int(meta["bucket_us"])
        self._prepare(ks)

    def _create_schema(self, ks: str) -> Any:
        s, rf = self._session, self.conf["replication_factor"]
        s.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
                  f"{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
        for name, columns in _TABLES.items():
            # A fixed table id: processes creating the schema at once on different nodes agree.
            table_id = uuid.uuid5(uuid.NAMESPACE_URL, f"perhap:{ks}.{name}")
            s.execute(f"CREATE TABLE IF NOT EXISTS {ks}.{name} ({columns}) WITH ID = {table_id}")
        # IF NOT EXISTS: the first process to get here fixes the bucket size for good.
        insert = f"INSERT INTO {ks}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS"
        s.execute(insert, ("bucket_us", str(self.conf["bucket_seconds"] * 1_000_000)), execution_profile="lwt")
        s.execute(insert, ("schema_version", str(SCHEMA_VERSION)), execution_profile="lwt")
        return s.execute(f"SELECT key, value FROM {ks}.meta")

    def _prepare(self, ks: str) -> None:
        p = self._session.prepare
        ent = "realm = ? AND domain = ? AND entity = ?"
        self.q = {
            "head": p(f"SELECT head, head_ts FROM {ks}.entity_log WHERE {ent} LIMIT 1"),
            "types": p(f"SELECT types FROM {ks}.entity_log WHERE {ent} LIMIT 1"),
            "lwt_new": p(f"UPDATE {ks}.entity_log SET head = ?, head_ts = ?, types = types + ? "
                         f"WHERE {ent} IF head = null"),
            "lwt_next": p(f"UPDATE {ks}.entity_log SET head = ?, head_ts = ?, types = types + ? "
                          f"WHERE {ent} IF head = ? AND head_ts < ?"),
            "marker": p(f"INSERT INTO {ks}.entity_log (realm, domain, entity, kind, seq, id, ver, aborted) "
                        f"VALUES (?, ?, ?, ?, 0, ?, ?, ?) IF NOT EXISTS"),
            "attempt": p(f"SELECT ver, aborted FROM {ks}.entity_log WHERE {ent} AND kind = {ATTEMPT} "
                         f"AND seq = 0 AND id = ?"),
            "event": p(f"INSERT INTO {ks}.entity_log (realm, domain, entity, kind, seq, id, type, ts, stamp, "
                       f"data, meta) VALUES (?, ?, ?, {EVENT}, ?, ?, ?, ?, ?, ?, ?)"),
            "versions": p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                          f"AND kind = {EVENT} AND seq IN ?"),
            "entity_read": p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                             f"AND kind = {EVENT} AND seq > ? LIMIT ?"),
            "entity_read_type": p(f"SELECT seq, id, type, ts, stamp, data, meta FROM {ks}.entity_log WHERE {ent} "
                                  f"AND kind = {EVENT} AND seq > ? AND type = ? LIMIT ? ALLOW FILTERING"),
            "index": p(f"INSERT INTO {ks}.scope_log (realm, scope, bucket, ts, id, domain, entity, type, "
                       f"version, stamp, data, meta, txn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            "index_ok": p(f"UPDATE {ks}.scope_log SET ok = true WHERE realm = ? AND scope = ? AND bucket = ? "
                          f"AND ts = ? AND id = ?"),
            "index_del": p(f"DELETE FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ? "
                           f"AND ts = ? AND id = ?"),
            "dir_add": p(f"INSERT INTO {ks}.scope_dir (realm, scope, era, bucket) VALUES (?, ?, ?, ?)"),
            "buckets": p(f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = ? AND era = ? "
                         f"AND bucket >= ?"),
            "next_era": p(f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = ? AND era = -1 "
                          f"AND bucket > ? LIMIT 1"),
            "by_id_add": p(f"INSERT INTO {ks}.events_by_id (shard, id, realm, domain, entity, type, version, "
                           f"ts, stamp, data, meta, txn, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            "by_id_ok": p(f"UPDATE {ks}.events_by_id SET ok = true WHERE shard = ? AND id = ?"),
            "by_id_del": p(f"DELETE FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
            "by_id": p(f"SELECT realm, domain, entity, type, version, ts, stamp, data, meta, txn, ok "
                       f"FROM {ks}.events_by_id WHERE shard = ? AND id = ?"),
            "name_add": p(f"INSERT INTO {ks}.names (realm, domain, shard, name) VALUES (?, ?, ?, ?)"),
            "names": p(f"SELECT name FROM {ks}.names WHERE realm = ? AND domain = ? AND shard = ? "
                          f"AND name > ? LIMIT ?"),
            "health": p("SELECT release_version FROM system.local"),
        }
        cols = "ts, id, domain, entity, type, version, stamp, data, meta, txn, ok"
        where = f"FROM {ks}.scope_log WHERE realm = ? AND scope = ? AND bucket = ?"
        for typed in (False, True):
            tail = " AND type = ? LIMIT ? ALLOW FILTERING" if typed else " LIMIT ?"
            self.q[f"scope_all{typed:d}"] = p(f"SELECT {cols} {where}{tail}")
            self.q[f"scope_after{typed:d}"] = p(f"SELECT {cols} {where} AND (ts, id) > (?, ?){tail}")

    # ----------------------------------------------------------------- the driver, bridged to asyncio

    def _exec(self, stmt: Any, args: Any = None, *, lwt: bool = False) -> Awaitable[list[Any]]:
        """Run one statement on the driver's I/O thread; every page is collected (queries carry LIMITs)."""
        if self._closed:
            raise StorageUnavailable("the store is closed")
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        try:
            rf = self._session.execute_async(stmt, args, execution_profile="lwt" if lwt else EXEC_PROFILE_DEFAULT)
        except _DRIVER_ERRORS as exc:
            future.set_exception(_unavailable(exc))
            return future

        # A ResponseFuture sits in reference cycles (its timer, our callbacks) that only the cyclic
        # garbage collector frees: take the rows out of the page it holds, and drop our callbacks,
        # so that reading a long scope page by page runs in constant memory.
        def done(page: Any) -> None:
            if page:
                rows.extend(page)
                if isinstance(page, list):
                    page.clear()
            if rf.has_more_pages:
                rf.start_fetching_next_page()
            else:
                rf.clear_callbacks()
                loop.call_soon_threadsafe(_settle, future, rows, None)

        def failed(exc: BaseException) -> None:
            rf.clear_callbacks()
            loop.call_soon_threadsafe(_settle, future, None, exc)

        rf.add_callbacks(done, failed)
        return future

    async def _run(self, stmt: Any, args: Any = None, *, lwt: bool = False) -> list[Any]:
        try:
            return await self._exec(stmt, args, lwt=lwt)
        except InvalidRequest as exc:
            if "too large" in str(exc).lower() or "mutation" in str(exc).lower():
                raise InvalidInput(f"the batch is too large for Cassandra: {exc}") from None
            raise
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from None

    async def _batch(self, stmt: Any, rows: Iterable[Any]) -> None:
        """Unlogged batches of rows that share one partition (a single mutation each)."""
        groups: dict[Any, list[Any]] = {}
        for partition, args in rows:
            groups.setdefault(partition, []).append(args)
        jobs = []
        for group in groups.values():
            for i in range(0, len(group), ROWS_PER_BATCH):
                if len(group) == 1:
                    jobs.append(self._run(stmt, group[0]))
                    continue
                b = BatchStatement(BatchType.UNLOGGED)
                for args in group[i:i + ROWS_PER_BATCH]:
                    b.add(stmt, args)
                jobs.append(self._run(b))
        await _gather(jobs)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- writing

    async def _write(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                     expected_version: int | None) -> AppendResult:
        if self._closing:
            raise StorageUnavailable("the store is closed")
        if sum(len(e.data_json) + len(e.meta_json) for e in batch) > MAX_BATCH_BYTES:
            raise InvalidInput(f"a batch may hold at most {MAX_BATCH_BYTES >> 20} MiB of events here")
        # Shielded: a client that goes away must not cut a write between its steps.
        task = self._spawn(self._write_locked(self._r(realm), domain, entity, batch, expected_version))
        return await asyncio.shield(task)

    async def _write_locked(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                            expected: int | None) -> AppendResult:
        key = (realm, domain, entity)
        slot = self._locks.setdefault(key, [asyncio.Lock(), 0])
        slot[1] += 1
        try:
            async with slot[0]:  # one write per entity at a time in this process: no self-contention
                return await self._append(key, batch, expected)
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self._locks[key]

    async def _append(self, key: tuple[str, str, str], batch: list[NewEvent], expected: int | None) -> AppendResult:
        realm, domain, entity = key
        client_ids = [e.event_id for e in batch if e.client_id]
        if client_ids:  # a retry of an acknowledged write is answered from events_by_id
            stored = await self._stored(client_ids)
            replay = replay_or_conflict(batch, stored, realm, domain, entity)
            if replay is not None:
                return replay
        head = self._heads.get(key)
        if head is not None and expected is not None and head[0] > expected:
            raise VersionConflict(head[0], expected)  # versions only grow: no need to ask Paxos
        if head is None:
            if expected is None:
                rows = await self._run(self.q["head"], key)
                head = (-1, 0) if not rows or rows[0][0] is None else (rows[0][0], rows[0][1])
            else:
                head = (expected, 0)  # the condition checks it; a wrong guess costs one retry
        # Pending rows must be acknowledged within settle - clock_skew of their position. A loaded
        # cluster or a big batch takes a while: place the position twice the time we expect to need
        # ahead of now (learnt as fixed + per-event cost), and twice what it took after a late try.
        lead = min(MAX_LEAD_US, int(2 * (self._fixed_us + len(batch) * self._row_us)))
        deadline = self._loop.time() + self.conf["timeout"] + len(batch) / 1000
        written: _Pending | None = None
        try:
            while True:
                version, head_ts = head if expected is None else (expected, head[1])
                if written is not None:
                    self._spawn(self._forget(written, keep_ids=True))
                    self.stats["retries"] += 1
                if self._loop.time() > deadline:
                    raise StorageUnavailable("could not commit the append in time (contention or a slow cluster)")
                written, took = await self._pending(key, batch, version, head_ts, lead)
                if written is None:  # too slow to be safe behind the settle window: try again
                    lead = min(MAX_LEAD_US, max(lead, 2 * took))
                    continue
                outcome = await self._commit(key, written, version)
                if outcome is True:
                    break
                if isinstance(outcome, dict):  # client ids already in this entity: a replay
                    self._spawn(self._forget(written, keep_ids=False))
                    written = None
                    return await self._replay(key, batch, outcome)
                if outcome is not None:
                    head = outcome
                    self._remember_head(key, head)
                    if expected is not None and head[0] != expected:
                        raise VersionConflict(head[0], expected)
        except BaseException:
            if written is not None and not written.unknown:
                self._spawn(self._forget(written, keep_ids=False))
            raise
        last = written.events[-1]
        self._remember_head(key, (last[2], last[3]))
        self._remember_txn(written.txn, True)
        self._own.add(written.txn)  # until _mark_ok is done with it
        try:
            await self._after_commit(key, written)
        except BaseException:
            self._own.discard(written.txn)  # no _mark_ok then: let readers repair its rows
            raise
        self._notify_commit()
        return AppendResult([Appended(str(u), v, _stamp(ts, _imported(e))) for e, u, v, ts in written.events],
                            created=True)

    async def _pending(self, key: tuple[str, str, str], batch: list[NewEvent], version: int,
                       head_ts: int, lead: int) -> tuple[_Pending | None, int]:
        """Write an attempt's index rows (pending) before its commit; None when they were late.
        Also returns how long that took (microseconds)."""
        realm, domain, entity = key
        started = self._loop.time()
        now = _now_us()
        # Positions grow along the entity's versions, and along this process's appends (so one that
        # starts after another was acknowledged comes after it; across processes see the docs).
        ts0 = max(now + lead, head_ts + 1, self._last_ts + 1)
        self._last_ts = ts0 + len(batch) - 1
        pending = _Pending(key, [(e, uuid.UUID(e.event_id), version + 1 + i, ts0 + i)
                                 for i, e in enumerate(batch)])
        index, directory, by_id = [], [], []
        for e, u, v, ts in pending.events:
            bucket = ts // self.bucket_us
            for scope in ("", domain):
                index.append(((scope, bucket), (realm, scope, bucket, ts, u, domain, entity, e.type, v,
                                                 _imported(e), e.data_json, e.meta_json, pending.txn)))
                if (realm, scope, bucket) not in self._known:
                    directory.append((realm, scope, bucket))
            if not e.client_id:  # client ids get theirs after the commit: a racing twin must not clobber it
                by_id.append((self._shard(u), (self._shard(u), u, realm, domain, entity, e.type, v, ts,
                                             _imported(e), e.data_json, e.meta_json, pending.txn, None)))
        directory = list(dict.fromkeys(directory))
        jobs: list[Awaitable[Any]] = [self._batch(self.q["index"], index), self._batch(self.q["by_id_add"], by_id)]
        for r, s, b in directory:
            jobs.append(self._run(self.q["dir_add"], (r, s, b // ERA, b)))
            jobs.append(self._run(self.q["dir_add"], (r, s, -1, b // ERA)))
        await _gather(jobs)
        self._known.update(directory)
        # Readers trust that any row at or below their horizon (their clock - settle) is visible. Our
        # rows are, if acknowledged within settle - clock_skew of their position by our clock.
        took = int((self._loop.time() - started) * 1e6)
        if len(batch) < 20:
            self._fixed_us = 0.9 * self._fixed_us + 0.1 * took
        else:
            self._row_us = 0.8 * self._row_us + 0.2 * max(0, took - self._fixed_us) / len(batch)
        if took > ts0 - now + self.settle_us - self.skew_us:
            self.stats["late"] += 1
            self._spawn(self._forget(pending, keep_ids=True))
            return None, took
        return pending, took

    async def _commit(self, key: tuple[str, str, str], p: _Pending, version: int) -> Any:
        """The Paxos round. True when committed; else the entity's (head, head_ts), a dict of
        client ids already stored here (id -> version), or None when a reader fenced us off.
        The attempt's marker (IF NOT EXISTS) makes the batch idempotent: applied at most once."""
        q = self.q
        b = BatchStatement()
        last = p.events[-1]
        types = {e.type for e, *_ in p.events}
        if version < 0:
            b.add(q["lwt_new"], (last[2], last[3], types, *key))
        else:
            b.add(q["lwt_next"], (last[2], last[3], types, *key, version, p.events[0][3]))
        b.add(q["marker"], (*key, ATTEMPT, p.txn, version + 1, False))
        for e, u, v, ts in p.events:
            if e.client_id:
                b.add(q["marker"], (*key, CLIENT_ID, u, v, None))
            b.add(q["event"], (*key, v, u, e.type, ts, _imported(e), e.data_json, e.meta_json))
        try:
            rows = await self._run(b, lwt=True)
        except StorageUnavailable:
            # The outcome is unknown: settle it ourselves, as a reader would.
            try:
                committed = await self._resolve_txn(key, p.txn)
            except StorageUnavailable:
                p.unknown = True  # readers will settle it once the cluster answers
                raise
            if committed:
                return True
            raise
        if rows[0]["[applied]"]:
            return True
        for r in rows:
            if r.get("kind") == ATTEMPT:
                # Our attempt's marker exists already. Aborted: a reader fenced us off. Not aborted:
                # this very batch was applied by an earlier try of the same request (the driver
                # re-sends a request whose connection broke): it is committed. (Checked first: its
                # client-id markers are then ours, not a twin's.)
                return None if r["aborted"] else True
        ids = {r["id"]: r["ver"] for r in rows if r.get("kind") == CLIENT_ID}
        if ids:
            return ids
        head = rows[0].get("head")
        return (-1, 0) if head is None else (head, rows[0]["head_ts"])

    async def _after_commit(self, key: tuple[str, str, str], p: _Pending) -> None:
        """Keys and client ids before the acknowledgement; marking the index rows ok after it."""
        await self._write_keys(key)
        clients = [(e, u, v, ts) for e, u, v, ts in p.events if e.client_id]
        if clients:
            await self._batch(self.q["by_id_add"], [
                (self._shard(u), (self._shard(u), u, *key, e.type, v, ts, _imported(e), e.data_json, e.meta_json,
                                p.txn, True))
                for e, u, v, ts in clients])
        self._spawn(self._mark_ok(key, p))

    async def _mark_ok(self, key: tuple[str, str, str], p: _Pending) -> None:
        realm, domain, _ = key
        rows = []
        for e, u, _v, ts in p.events:
            bucket = ts // self.bucket_us
            rows += [((s, bucket), (realm, s, bucket, ts, u)) for s in ("", domain)]
        try:
            await _gather([self._batch(self.q["index_ok"], rows), self._batch(
                self.q["by_id_ok"], [(self._shard(u), (self._shard(u), u)) for e, u, _, _ in p.events
                                     if not e.client_id])])
        except (StorageUnavailable, InvalidInput):
            pass  # readers resolve pending rows themselves
        finally:
            self._own.discard(p.txn)

    async def _forget(self, p: _Pending, *, keep_ids: bool) -> None:
        """Remove an abandoned attempt's rows (best effort: readers fence leftovers anyway).
        ``keep_ids``: the next attempt of this write rewrites the same events_by_id rows."""
        realm, domain, _ = p.key
        index, ids = [], []
        for e, u, _v, ts in p.events:
            bucket = ts // self.bucket_us
            index += [((s, bucket), (realm, s, bucket, ts, u)) for s in ("", domain)]
            if not e.client_id:
                ids.append((self._shard(u), (self._shard(u), u)))
        await self._quiet(self._batch(self.q["index_del"], index))
        if not keep_ids:
            await self._quiet(self._batch(self.q["by_id_del"], ids))

    async def _replay(self, key: tuple[str, str, str], batch: list[NewEvent],
                      ids: dict[uuid.UUID, int]) -> AppendResult:
        """Some client ids were committed in this entity already (by a racing twin of this write)."""
        rows = await self._run(self.q["versions"], (*key, sorted(set(ids.values()))))
        stored = {str(u): Event(str(u), *key, t, v, _stamp(ts, st), d, m, v) for v, u, t, ts, st, d, m in rows}
        result = replay_or_conflict(batch, stored, *key)
        assert result is not None
        # The twin that stored them writes their events_by_id rows; in case it died, so do we.
        self._spawn(self._quiet(self._batch(self.q["by_id_add"], [
            (self._shard(u), (self._shard(u), u, *key, t, v, ts, st, d, m, None, True))
            for v, u, t, ts, st, d, m in rows])))
        return result

    async def _write_keys(self, key: tuple[str, str, str]) -> None:
        realm, domain, entity = key
        jobs = []
        for known, args in ((("r", realm), ("/" + self._ns, "", 0, self._x(realm))),
                            (("d", realm, domain), (realm, "", 0, domain)),
                            (("e", *key), (realm, domain, _entity_shard(entity), entity))):
            if known not in self._known:
                jobs.append(self._run(self.q["name_add"], args))
        await _gather(jobs)
        self._known.update({("r", realm), ("d", realm, domain), ("e", *key)})
        if len(self._known) > 200_000:
            self._known.clear()

    def _shard(self, event_id: uuid.UUID) -> str:
        """The events_by_id partition: the namespace, and the id's top 44 bits (a UUIDv7's
        millisecond clock / 16, so a batch of server ids shares a few partitions; random otherwise)."""
        return f"{self._ns}/{event_id.int >> 84:x}"

    def _r(self, realm: str) -> str:
        """A realm as stored: prefixed by the namespace ('/' never occurs in a realm name)."""
        return f"{self._ns}/{realm}" if self._ns else realm

    def _x(self, realm: str) -> str:
        """A realm as the caller knows it."""
        return realm[len(self._ns) + 1:] if self._ns else realm

    def _out(self, event: Event) -> Event:
        return dataclasses.replace(event, realm=self._x(event.realm)) if self._ns else event

    def _remember_head(self, key: tuple[str, str, str], head: tuple[int, int]) -> None:
        self._heads[key] = head
        self._heads.move_to_end(key)
        if len(self._heads) > 100_000:
            self._heads.popitem(last=False)

    def _remember_txn(self, txn: uuid.UUID, committed: bool) -> None:
        self._txns[txn] = committed
        if len(self._txns) > 100_000:
            self._txns.popitem(last=False)

    # ----------------------------------------------------------------- settling attempts

    async def _resolve_txn(self, key: tuple[str, str, str], txn: uuid.UUID) -> bool:
        """Whether an attempt committed; if it has not, make sure it never will (fence it)."""
        known = self._txns.get(txn)
        if known is not None:
            return known
        rows = await self._run(self.q["attempt"], (*key, txn))
        if rows:
            committed = not rows[0][1]
        else:
            fence = await self._run(self.q["marker"], (*key, ATTEMPT, txn, None, True), lwt=True)
            committed = not fence[0]["[applied]"] and not fence[0]["aborted"]
            self.stats["fenced" if fence[0]["[applied]"] else "resolved"] += 1
        self._remember_txn(txn, committed)
        return committed

    async def _is_committed(self, key: tuple[str, str, str], txn: uuid.UUID) -> bool:
        """Like _resolve_txn but without fencing: an attempt not found yet counts as not committed."""
        known = self._txns.get(txn)
        if known is not None:
            return known
        rows = await self._run(self.q["attempt"], (*key, txn))
        committed = bool(rows) and not rows[0][1]
        if committed:
            self._remember_txn(txn, True)
        return committed

    # ----------------------------------------------------------------- reading by id

    async def _by_id(self, event_id: str) -> Event | None:
        u = uuid.UUID(event_id)
        rows = await self._run(self.q["by_id"], (self._shard(u), u))
        if not rows:
            return None
        realm, domain, entity, type_, version, ts, stamp, data, meta, txn, ok = rows[0]
        if not ok and not await self._is_committed((realm, domain, entity), txn):
            return None
        if not ok:
            self._spawn(self._quiet(self._run(self.q["by_id_ok"], (self._shard(u), u))))
        return Event(event_id, realm, domain, entity, type_, version, _stamp(ts, stamp), data, meta, (ts, u))

    async def _stored(self, ids: list[str]) -> dict[str, Event]:
        found = await _gather([self._by_id(i) for i in ids])
        return {e.event_id: e for e in found if e is not None}

    async def _position_of(self, scope: Scope, event_id: str) -> Any:
        event = await self._by_id(event_id)
        if event is None or event.realm != self._r(scope.realm) or (
                scope.domain is not None and event.domain != scope.domain) or (
                scope.entity is not None and event.entity != scope.entity):
            raise NotFound(f"no event {event_id} in {scope}")
        return event.version if scope.entity is not None else event.position

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        event_id = check_event_id(event_id)
        event = await self._by_id(event_id)
        if event is None or event.realm != self._r(realm) or event.domain != domain:
            raise NotFound(f"no event {event_id} in {realm}/{domain}")
        return self._out(event)

    # ----------------------------------------------------------------- reading scopes

    async def _read_after(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        if self._closed:
            raise StorageUnavailable("the store is closed")
        if scope.entity is not None:
            return await self._read_entity(scope, after, limit)
        # Identical reads running at once (many subscribers of one scope) share one query. A caller
        # never joins a read that started before it (it might miss what was acknowledged meanwhile):
        # it joins the one that starts next.
        key = (scope, after, limit)
        slot = self._reads.get(key)
        if slot is None:
            slot = self._reads[key] = [None, None]
        if slot[0] is None:
            running = slot[0] = asyncio.ensure_future(self._shared_read(key, slot))
            return list(await asyncio.shield(running))
        if slot[1] is None:
            slot[1] = self._loop.create_future()
        waiting: asyncio.Future[list[Event]] = slot[1]
        return list(await asyncio.shield(waiting))

    async def _shared_read(self, key: Any, slot: list[Any]) -> list[Event]:
        try:
            return await self._read_scope(*key)
        finally:
            waiting, slot[1] = slot[1], None
            if waiting is None:
                slot[0] = None
                self._reads.pop(key, None)
            else:
                slot[0] = asyncio.ensure_future(self._shared_read(key, slot))
                slot[0].add_done_callback(lambda t, f=waiting: _copy_result(t, f))

    async def _read_entity(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        key = (scope.realm, scope.domain, scope.entity)
        stored = (self._r(scope.realm), scope.domain, scope.entity)
        start = -1 if after is None else after
        if scope.type is None:
            rows = await self._run(self.q["entity_read"], (*stored, start, limit))
        else:
            rows = await self._run(self.q["entity_read_type"], (*stored, start, scope.type, limit))
        return [Event(str(u), *key, t, v, _stamp(ts, st), d, m, v)  # type: ignore[arg-type]
                for v, u, t, ts, st, d, m in rows]

    async def _read_scope(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        """Settled events after ``after``. When the page is not full and rows above the horizon are
        visible, waits once until they settle (settle + their lead, at most 10 s more) and reads
        on: so a read after an acknowledgement includes the acknowledged events."""
        out: list[Event] = []
        waited = False
        while True:
            horizon = _now_us() - self.settle_us
            want = limit - len(out)
            rows = await self._scope_rows(scope, after, want)
            settled = [r for r in rows if r[0] <= horizon]  # a prefix: rows come in position order
            if settled:
                after = (settled[-1][0], settled[-1][1])
                out += await self._settle_rows(scope.realm, scope.domain or "", settled)
            if len(out) >= limit:
                return out[:limit]
            if len(settled) == len(rows):
                if len(rows) < want:
                    return out  # the end of the scope
                continue  # aborted attempts were dropped: fill the page
            if waited:
                return out
            # Unsettled rows exist: wait until the newest we saw is behind the horizon (bounded, in
            # case a writer's clock runs far ahead), then read on from where we are.
            now = _now_us()
            target = min(rows[-1][0], now + self.skew_us + MAX_LEAD_US)
            await asyncio.sleep(max(0, target + self.settle_us - now) / 1e6 + 0.001)
            waited = True

    async def _scope_rows(self, scope: Scope, after: Any, limit: int) -> list[Any]:
        """Up to ``limit`` index rows after ``after`` in position order, settled or not."""
        realm, key = self._r(scope.realm), scope.domain or ""
        typed = scope.type is not None
        type_args = (scope.type,) if typed else ()
        start = None if after is None else after[0] // self.bucket_us
        rows: list[Any] = []
        async with contextlib.aclosing(self._buckets(realm, key, start)) as buckets:
            async for bucket in buckets:
                if bucket == start:
                    args = (realm, key, bucket, after[0], after[1], *type_args, limit - len(rows))
                    rows += await self._run(self.q[f"scope_after{typed:d}"], args)
                else:
                    args = (realm, key, bucket, *type_args, limit - len(rows))
                    rows += await self._run(self.q[f"scope_all{typed:d}"], args)
                if len(rows) >= limit:
                    break
        return rows

    async def _buckets(self, realm: str, key: str, start: int | None) -> Any:
        """The scope's non-empty buckets from ``start`` on, in order, from the directory."""
        era = None if start is None else start // ERA
        first = start is not None
        # No writer can have reached an era that starts well after now (big batches sit seconds ahead).
        horizon = _now_us() + 600_000_000
        while True:
            if not first:
                if era is not None and (era + 1) * ERA * self.bucket_us > horizon:
                    return  # no writer can have reached a later era yet
                rows = await self._run(self.q["next_era"], (realm, key, -1 if era is None else era))
                if not rows:
                    return
                era = rows[0][0]
            first = False
            assert era is not None
            for (bucket,) in await self._run(self.q["buckets"], (realm, key, era, start or era * ERA)):
                yield bucket

    async def _settle_rows(self, realm: str, key: str, rows: list[Any]) -> list[Event]:
        """Events of index rows at or below the horizon; pending ones are resolved (or fenced)."""
        stored = self._r(realm)
        unknown = {(r[2], r[3], r[9]) for r in rows if not r[10]}
        if unknown:
            outcomes = await _gather([self._resolve_txn((stored, d, e), t) for d, e, t in unknown])
            committed = {k for k, ok in zip(unknown, outcomes) if ok}
            self._spawn(self._repair(stored, key, [r for r in rows if not r[10]], committed))
        else:
            committed = set()
        return [Event(str(u), realm, d, e, t, v, _stamp(ts, st), data, meta, (ts, u))
                for ts, u, d, e, t, v, st, data, meta, txn, ok in rows
                if ok or (d, e, txn) in committed]

    async def _repair(self, realm: str, key: str, rows: list[Any], committed: set[Any]) -> None:
        """Finish what a writer left undone: ids and keys, then mark ok (or delete aborted rows)."""
        done, dropped, ids, keys = [], [], [], set()
        for ts, u, d, e, t, v, st, data, meta, txn, _ok in rows:
            bucket = ts // self.bucket_us
            if (d, e, txn) not in committed:
                dropped.append(((key, bucket), (realm, key, bucket, ts, u)))
            elif txn not in self._own:  # else this process's writer is marking them right now
                keys.add((realm, d, e))
                ids.append((self._shard(u), (self._shard(u), u, realm, d, e, t, v, ts, st, data, meta, txn, True)))
                done.append(((key, bucket), (realm, key, bucket, ts, u)))
        try:
            await _gather([*(self._write_keys(k) for k in keys), self._batch(self.q["by_id_add"], ids)])
            await _gather([self._batch(self.q["index_ok"], done), self._batch(self.q["index_del"], dropped)])
        except (StorageUnavailable, InvalidInput):
            pass

    # ----------------------------------------------------------------- keys, health, closing

    async def keys(self, realm: str | None = None, domain: str | None = None,
                   entity: str | None = None, *, after: str | None = None,
                   limit: int = DEFAULT_LIMIT) -> KeysPage:
        limit = check_limit(limit)
        start = after or ""
        if realm is not None:
            realm = self._r(realm)
        if realm is None:
            names = [r[0] for r in await self._run(self.q["names"], ("/" + self._ns, "", 0, start, limit + 1))]
        elif domain is None:
            names = [r[0] for r in await self._run(self.q["names"], (realm, "", 0, start, limit + 1))]
        elif entity is None:
            shards = await _gather([self._run(self.q["names"], (realm, domain, s, start, limit + 1))
                                    for s in range(ENTITY_SHARDS)])
            names = [r[0] for r in heapq.merge(*shards)][:limit + 1]
        else:
            rows = await self._run(self.q["types"], (realm, domain, entity))
            names = sorted(n for n in (rows[0][0] or ()) if n > start)[:limit + 1] if rows else []
        if len(names) > limit:
            return KeysPage(names[:limit], names[limit - 1])
        return KeysPage(names, None)

    async def health(self) -> bool:
        if self._closed:
            return False
        try:
            await asyncio.wait_for(self._run(self.q["health"]), 5)
            return True
        except (StorageUnavailable, asyncio.TimeoutError):
            return False

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        while self._tasks:  # writes in flight, then their follow-ups
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._closed = True
        for slot in self._reads.values():
            if slot[1] is not None and not slot[1].done():
                slot[1].set_exception(StorageUnavailable("the store is closed"))
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)

    # ----------------------------------------------------------------- small helpers

    @staticmethod
    async def _quiet(job: Awaitable[Any]) -> None:
        try:
            await job
        except (StorageUnavailable, InvalidInput):
            pass


def _imported(e: NewEvent) -> str | None:
    """The timestamp an imported event keeps (NewEvent.timestamp), if any."""
    return getattr(e, "timestamp", None)


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _copy_result(task: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())


def _unavailable(exc: BaseException) -> StorageUnavailable:
    if isinstance(exc, StorageUnavailable):
        return exc
    kind = "timed out" if isinstance(exc, (OperationTimedOut, TimeoutError)) else "failed"
    return StorageUnavailable(f"Cassandra request {kind}: {type(exc).__name__}: {exc}"[:500])


async def _gather(jobs: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run jobs at once; if one fails, still wait for the others (no orphaned requests), then raise."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def open_cassandra(url: str) -> CassandraStore:
    return await CassandraStore(url).open()

