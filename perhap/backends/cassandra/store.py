"""CassandraStore: the Store template over a Cassandra keyspace, wiring the backend's parts.

The design, proved in docs/backends/cassandra.md:

- An entity is one partition of ``entity_log``: its events (kind 0, clustered by version), a
  marker per client-chosen event id (kind 1) and a marker per write attempt (kind 2), with the
  head version, the head's ts and the entity's types in static columns. An append is ONE
  conditional batch on that partition (``IF head = v`` plus ``IF NOT EXISTS`` on its markers): a
  Paxos round makes versions gapless, batches atomic and client ids unique within the entity,
  whatever the number of writing processes (writer.py).
- Domain and realm order is the position ``ts * 1024 + writer slot``: ``ts`` (microseconds)
  from the writer's clock, unique within the store instance, and a slot in [0, 1024) that the
  instance holds under a lease (positions.py), so that no two events of a realm share one. The
  index ``scope_log`` is partitioned by (realm, domain or '' for the realm, time bucket) and
  clustered by (ts, id); a two-level directory (eras, buckets) lists the non-empty buckets, so
  reads walk bounded partitions, either way (scan.py). The rows are written *before* the
  Paxos commit, marked pending with their attempt id; after the commit they are marked ok.
- Readers of domains and realms return only events whose ts is at least ``settle`` older than
  their clock. A writer whose pending rows were not acknowledged within ``settle - clock_skew`` of
  their ts abandons that attempt, so every row a reader could ever see at or below its horizon was
  visible when it read. A pending row at or below the horizon is resolved: committed attempt ->
  returned, otherwise the reader *fences* the attempt (inserts its marker as aborted, IF NOT
  EXISTS), so it can never commit later (settle.py). The set of events at or below a horizon is
  thus final: pages never skip nor repeat an event, oldest or newest first (reader.py).
- ``events_by_id`` finds an event by id in one read (partitioned by the id's top 44 bits: a
  UUIDv7's 16 ms window). A client-chosen id is *claimed* there before the commit, by a Paxos
  round that makes the attempt its one owner (claims.py): an id is stored in one entity at most,
  and a reader by id, or a retry, finds the entity whose marker is the truth even when the writer
  failed after its commit. Names live in ``names`` (a domain's entities hashed into 8 shards).
- At start-up (checks.py): consistency levels that let a read miss a write, and a commit log that
  acknowledges before it syncs, are refused; W and δ are stored with the data (first process wins);
  the clock is compared with the nodes'.
- Multi-entity appends are not offered (501): one Paxos round covers one entity partition, and an
  atomic commit across partitions is a protocol of its own (docs/backends/cassandra.md).
- Consumer groups' state documents: lightweight transactions, one partition per document, read
  at the serial consistency level (states.py).
- ``?namespace=`` keeps several stores in one keyspace: stored realms are ``namespace/realm``
  ('/' never occurs in a realm name), converted back at the edges (records.Namespace).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ...errors import StorageUnavailable
from ...model import AppendResult, Event
from ...store.base import Statistic, Store
from ...store.job import WriteJob
from ...store.query import ReadQuery
from ...store.states import StateTable
from .driver import DRIVER_ERRORS, Driver
from .names import Names
from .positions import Positions
from .reader import Reader
from .records import EntityKey, Namespace
from .schema import Keyspace, Opened, open_keyspace
from .settle import Settler
from .states import CassandraStates, StateStatements, prepare_states
from .url import parse_cassandra_url
from .writer import Writer

log = logging.getLogger("perhap.cassandra")
#: Opening a keyspace another process is creating: tries, and the errors that say so.
_OPEN_ATTEMPTS = 6
_SCHEMA_SETTLING = ("Unknown CF", "unconfigured table")

HEALTH_TIMEOUT = 5.0  # seconds


class CassandraStore(Store):
    """Events in a Cassandra keyspace; any number of perhap processes may share it."""

    shared_across_processes = True
    #: One Paxos round is one entity partition: see "Multi-entity appends" in docs/backends/cassandra.md.
    supports_multi_entity = False

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.options = parse_cassandra_url(url)
        self.poll_interval = self.options.poll
        self.settle_us, self.skew_us = self.options.settle_us, self.options.skew_us
        self.ns = Namespace(self.options.namespace)
        self.db = Driver(self.options)
        # Outcome counters, read by tests, benchmarks and statistics().
        self.stats = {"late": 0, "retries": 0, "fenced": 0, "resolved": 0}

    async def open(self) -> CassandraStore:
        self.db.loop = asyncio.get_running_loop()
        doing = "reach"
        try:
            session = await asyncio.to_thread(self.db.connect)
            doing = f"open keyspace {self.options.keyspace} on"
            opened = await asyncio.to_thread(self._open, session)
        except BaseException as exc:  # unreachable, or a cluster or URL it refuses: let the driver go
            await self.db.shutdown()
            if isinstance(exc, DRIVER_ERRORS):
                raise StorageUnavailable(f"cannot {doing} Cassandra at {self.options.hosts}: {exc}") from None
            raise
        self._wire(*opened)
        return self

    def _open(self, session: Any) -> tuple[Opened, StateStatements]:
        for attempt in range(1, _OPEN_ATTEMPTS + 1):
            try:
                opened = open_keyspace(session, self.options)
                return opened, prepare_states(session, self.options.keyspace, self.options.serial_consistency)
            except DRIVER_ERRORS as exc:
                # Another process creating this keyspace at the same moment: a node may answer for
                # a table whose creation it is still applying ("Unknown CF <id>"); one started
                # with it in a loop died so (1 in 32). Opening again finds the schema made.
                if attempt == _OPEN_ATTEMPTS or not any(sign in str(exc) for sign in _SCHEMA_SETTLING):
                    raise
                log.info("keyspace %s is being created by another process (%s); opening again", self.options.keyspace,
                         exc)
                time.sleep(0.25 * attempt)
        raise AssertionError("unreachable")

    def _wire(self, opened: Opened, states: StateStatements) -> None:
        self.bucket_us = opened.bucket_us
        self.options = options = opened.options  # settle and skew as stored with the data
        self.settle_us, self.skew_us = options.settle_us, options.skew_us
        self.commitlog, self.clock_offsets = opened.commitlog, opened.clock
        self.keyspace = ks = Keyspace(self.db, opened.statements, self.ns, options, opened.bucket_us, self.stats)
        self.names = Names(ks)
        self.settler = Settler(ks, self.names)
        self.reader = Reader(ks, self.settler)
        self.positions = Positions(ks, opened.floor)
        self.writer = Writer(ks, self.names, self.reader, self.settler, self.positions, self._notify_commit)
        self.states = CassandraStates(self.db, states, self.ns)

    # ----------------------------------------------------------------- the template's primitives

    def _submit(self, job: WriteJob) -> None:
        # A task of its own: a client that goes away must not cut a write between its steps.
        key = (self.ns.stored(job.realm), job.domain, job.entity)
        self.db.spawn(self._write(job, key))

    async def _write(self, job: WriteJob, key: EntityKey) -> None:
        try:
            outcome: AppendResult | BaseException = await self.writer.write(key, job.batch, job.expected)
        except Exception as exc:
            outcome = exc
        except BaseException as exc:  # cancelled or stopping: tell the caller, then stop too
            job.settle(exc)
            raise
        job.settle(outcome)

    async def _read(self, query: ReadQuery) -> list[Event]:
        return await self.reader.read(query)

    async def _find_event(self, event_id: str) -> Event | None:
        event = await self.reader.by_id(event_id)
        return None if event is None else self.ns.out(event)

    async def _names(self, realm: str | None, domain: str | None, entity: str | None,
                     after: str, limit: int) -> list[str]:
        return await self.names.read(realm, domain, entity, after, limit)

    def group_states(self) -> StateTable:
        if not hasattr(self, "states"):
            raise StorageUnavailable("the store is not open: await its open() first")
        return self.states

    async def _ping(self) -> bool:
        await asyncio.wait_for(self.db.run(self.keyspace.q.health), HEALTH_TIMEOUT)
        return True

    async def _close(self) -> None:
        await self.db.drain()  # writes in flight, then their follow-ups
        if hasattr(self, "reader"):  # else it was never opened
            self.reader.close()
            await self.positions.release()
        await self.db.shutdown()

    def statistics(self) -> list[Statistic]:
        s = self.stats
        return [
            Statistic("cassandra_late_attempts", s["late"],
                      "Write attempts abandoned: pending rows acknowledged too late for the settle window"),
            Statistic("cassandra_retries", s["retries"],
                      "Write attempts tried again after a fence or a moved head"),
            Statistic("cassandra_fenced_attempts", s["fenced"],
                      "Pending write attempts readers fenced off, so that they never commit"),
            Statistic("cassandra_resolved_attempts", s["resolved"],
                      "Pending write attempts readers found decided when they came to fence them"),
            *self._settle_statistics(),
        ]

    def _settle_statistics(self) -> list[Statistic]:
        """What W must cover, beside W itself: the time pending rows took to be acknowledged, over
        this process's last appends (docs/backends/cassandra.md, "Choosing W")."""
        if not hasattr(self, "writer"):
            return []
        o = self.keyspace.options
        taken = sorted(self.writer.step1_us)
        p99 = taken[min(len(taken) - 1, len(taken) * 99 // 100)] if taken else 0
        return [
            Statistic("cassandra_settle_window_seconds", o.settle_us / 1e6,
                      "The settle window W this store runs with (settle_ms)", counter=False),
            Statistic("cassandra_clock_skew_seconds", o.skew_us / 1e6,
                      "The clock skew bound this store runs with (clock_skew_ms)", counter=False),
            Statistic("cassandra_pending_rows_p99_seconds", p99 / 1e6,
                      "99th percentile of the time the last appends' pending rows took to be acknowledged",
                      counter=False),
            Statistic("cassandra_pending_rows_max_seconds", (taken[-1] if taken else 0) / 1e6,
                      "Longest time the last appends' pending rows took to be acknowledged", counter=False),
        ]


async def open_cassandra(url: str) -> CassandraStore:
    return await CassandraStore(url).open()
