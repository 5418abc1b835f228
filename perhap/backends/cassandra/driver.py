"""cassandra-driver bridged to asyncio: the connection, statements run on the driver's I/O thread
with their results handed to the event loop, unlogged batches, and the follow-up tasks a store
waits for before it closes."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Coroutine, Hashable, Iterable, Sequence
from typing import Any, TypeVar, cast

from cassandra import (
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    RequestExecutionException,
    WriteTimeout,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement, BatchType, dict_factory, tuple_factory

from ...errors import InvalidInput, StorageUnavailable, store_closed
from ...store.job import settle_future
from .url import CassandraOptions

T = TypeVar("T")
#: A row from the driver: a tuple (the default profile) or a dict (the "lwt" profile, whose
#: conditional results name their columns).
Row = Any
#: A statement the driver runs: prepared, a batch, or CQL text.
Statement = Any

BUSY_PAUSE = 0.005  # seconds before sending again a request a busy connection refused
#: Seconds before sending again a serial read the server timed out: a Paxos read contends with the
#: rounds of other proposers on its partition, so a random pause lets one of them finish first.
CONTENDED_PAUSE = (0.01, 0.05)
ROWS_PER_BATCH = 500  # pending index rows per unlogged single-partition batch
#: What a request may fail with: a 503 for the caller. ErrorMessage is the server's own error when
#: the driver has no class for its code, notably 0x1700 (Cassandra 5: a Paxos round's outcome is
#: unknown, its proposal accepted by fewer replicas than a quorum); a later round may still complete
#: it, so it must be handled as a timeout is (the writer settles its attempt), never as a bug.
DRIVER_ERRORS = (RequestExecutionException, DriverException, NoHostAvailable, ConnectionException, OSError,
                 ErrorMessage)


class _QuietNegotiation(logging.Filter):
    """The driver warns each time it negotiates the protocol version down (Cassandra 5 speaks v5,
    ScyllaDB v4): that is expected here, since we let it pick."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Downgrading core protocol version")


logging.getLogger("cassandra.cluster").addFilter(_QuietNegotiation())


class Driver:
    """One cluster connection, used from one event loop."""

    def __init__(self, options: CassandraOptions) -> None:
        self.options = options
        self.cluster: Any = None
        self.session: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False  # the session is shut down: nothing may run any more
        self.tasks: set[asyncio.Task[Any]] = set()  # writes and their follow-ups: close() waits

    def connect(self) -> Any:
        """Connect (blocking: run it in a thread) and return the driver's session."""
        c = self.options
        policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c.local_dc))
        profile = ExecutionProfile(load_balancing_policy=policy, consistency_level=c.consistency,
                                   serial_consistency_level=c.serial_consistency,
                                   request_timeout=c.timeout, row_factory=tuple_factory)
        lwt = ExecutionProfile(load_balancing_policy=policy, consistency_level=c.consistency,
                               serial_consistency_level=c.serial_consistency,
                               request_timeout=c.timeout, row_factory=dict_factory)
        auth = PlainTextAuthProvider(c.user, c.password) if c.user else None
        self.cluster = Cluster(
            c.hosts, port=c.port, auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile, "lwt": lwt},
            # Reconnect within a second or two once a node is back (the default backs off to 10 min).
            reconnection_policy=ExponentialReconnectionPolicy(0.25, 2.0, max_attempts=None),
            connect_timeout=c.timeout, control_connection_timeout=c.timeout)
        # A failure to connect is reported by the caller in one line with the driver's reason
        # (StorageUnavailable); the driver's own log would print its tracebacks first.
        driver_log = logging.getLogger("cassandra")
        level = driver_log.level
        driver_log.setLevel(logging.CRITICAL)
        try:
            self.session = self.cluster.connect()
        finally:
            driver_log.setLevel(level)
        return self.session

    async def shutdown(self) -> None:
        self.closed = True
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)

    # ----------------------------------------------------------------- statements

    def execute(self, stmt: Statement, args: Any = None, *, lwt: bool = False) -> asyncio.Future[list[Row]]:
        """Run one statement on the driver's I/O thread; every page is collected (queries carry LIMITs)."""
        if self.closed:
            # Subscriptions read without the template's check: a shut-down session must answer 503.
            raise store_closed()
        loop = self.loop
        assert loop is not None, "open the store first"
        future: asyncio.Future[list[Row]] = loop.create_future()
        rows: list[Row] = []
        try:
            rf = self.session.execute_async(stmt, args, execution_profile="lwt" if lwt else EXEC_PROFILE_DEFAULT)
        except DRIVER_ERRORS as exc:
            future.set_exception(unavailable(exc))
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
                loop.call_soon_threadsafe(settle_future, future, rows)

        def failed(exc: BaseException) -> None:
            rf.clear_callbacks()
            loop.call_soon_threadsafe(settle_future, future, exc)

        rf.add_callbacks(done, failed)
        return future

    async def run(self, stmt: Statement, args: Any = None, *, lwt: bool = False) -> list[Row]:
        """Rows of one statement; a driver failure becomes StorageUnavailable (HTTP 503).

        A connection whose socket buffer is full refuses a request at once (ConnectionBusy) rather
        than queue it: big batches in flight fill it. Such a request was never sent, so it is sent
        again after a short pause (any statement, Paxos rounds included), until the timeout.

        A read (a ``SELECT``, serial or not) changes nothing, so one the server timed out (under
        Paxos contention, or on a loaded node) is sent again after a random pause, until the
        timeout: every read, whoever sends it, without a flag at each call. A write that timed
        out is never re-sent here: its outcome is its caller's to settle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        while True:
            try:
                return await self.execute(stmt, args, lwt=lwt)
            except NoHostAvailable as exc:
                if not _never_sent(exc) or loop.time() > deadline:
                    raise unavailable(exc) from None
                await asyncio.sleep(BUSY_PAUSE)
            except (ReadTimeout, WriteTimeout) as exc:
                if not reads_only(stmt) or loop.time() > deadline:
                    raise unavailable(exc) from None
                await asyncio.sleep(random.uniform(*CONTENDED_PAUSE))
            except InvalidRequest as exc:
                text = str(exc).lower()
                # (a mutation over max_mutation_size, or a message over the node's own cap,
                # native_transport_max_message_size, which a small heap makes lower)
                if "too large" in text or "mutation" in text or "exceeds allowed maximum" in text:
                    raise InvalidInput(f"the batch is too large for Cassandra: {exc}") from None
                raise
            except DRIVER_ERRORS as exc:
                raise unavailable(exc) from None

    async def batch(self, stmt: Statement, rows: Iterable[tuple[Hashable, Sequence[Any]]]) -> None:
        """Unlogged batches of rows that share one partition (a single mutation each); ``rows`` are
        (partition, arguments) pairs."""
        groups: dict[Hashable, list[Sequence[Any]]] = {}
        for partition, args in rows:
            groups.setdefault(partition, []).append(args)
        jobs: list[Awaitable[list[Row]]] = []
        for group in groups.values():
            for i in range(0, len(group), ROWS_PER_BATCH):
                if len(group) == 1:
                    jobs.append(self.run(stmt, group[0]))
                    continue
                b = BatchStatement(BatchType.UNLOGGED)
                for args in group[i:i + ROWS_PER_BATCH]:
                    b.add(stmt, args)
                jobs.append(self.run(b))
        await gather(jobs)

    # ----------------------------------------------------------------- follow-up tasks

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` to its end whatever happens to the caller; close() waits for it."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for every spawned task, and for those they spawn in turn."""
        while self.tasks:  # writes in flight, then their follow-ups
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def reads_only(stmt: Statement) -> bool:
    """Whether a statement only reads: its CQL begins with SELECT (a batch never does)."""
    text = stmt if isinstance(stmt, str) else getattr(stmt, "query_string", None)
    return isinstance(text, str) and text.lstrip()[:6].upper() == "SELECT"


def _never_sent(exc: NoHostAvailable) -> bool:
    """Whether every host refused the request before sending it: their connections were busy."""
    errors = getattr(exc, "errors", None) or {}
    return bool(errors) and all(isinstance(e, ConnectionBusy) for e in errors.values())


def unavailable(exc: BaseException) -> StorageUnavailable:
    """A driver failure as the store's 503."""
    if isinstance(exc, StorageUnavailable):
        return exc
    kind = "timed out" if isinstance(exc, (OperationTimedOut, TimeoutError)) else "failed"
    return StorageUnavailable(f"Cassandra request {kind}: {type(exc).__name__}: {exc}"[:500])


async def gather(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Run jobs at once; if one fails, still wait for the others (no orphaned requests), then raise."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return cast(list[T], results)


async def quiet(job: Awaitable[Any]) -> None:
    """Best effort: a failed follow-up is left to readers, who settle pending rows themselves."""
    try:
        await job
    except (StorageUnavailable, InvalidInput):
        pass
