"""Connecting to PostgreSQL: the URL options of ours, how each connection is set up, and which
driver errors mean the database is away rather than an answer from it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..options import plain_number

log = logging.getLogger("perhap.postgres")

POOL_SIZE = 10  # read connections
POLL_INTERVAL = 1.0  # seconds a subscriber waits for a notification before reading anyway
TIMEOUT = 10.0  # seconds for a connect, a pool acquire or one statement

# Errors that mean "the database is not there", as opposed to an answer from it.
LOST = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
        # A connection cut in the middle of a statement (its server process terminated) can leave
        # asyncpg's protocol in a state it refuses to leave: "cannot switch to state ...".
        asyncpg.InternalClientError)
DB_ERRORS = (*LOST, asyncpg.PostgresError)

# asyncpg's classes are generic only in its stubs, hence the quotes.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
#: A connection of our own or one lent by the pool: both run statements alike.
AnyConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

_OURS: dict[str, type[int] | type[float]] = {"pool_size": int, "poll_interval": float, "timeout": float}


@dataclass(frozen=True, slots=True)
class Options:
    """What a PostgreSQL store URL asks for: the DSN for asyncpg and the options of ours.

    Options of ours in the URL query: ``pool_size`` (read connections), ``poll_interval``
    (seconds a subscriber waits for a notification before reading anyway), ``timeout`` (seconds
    for a connect or a statement); everything else goes to asyncpg (sslmode, ...).
    """

    dsn: str
    pool_size: int = POOL_SIZE
    poll_interval: float = POLL_INTERVAL
    timeout: float = TIMEOUT
    #: Sent at connect: perhap's name in pg_stat_activity, unless the URL gives its own (asyncpg
    #: lets server_settings win over the DSN's application_name, which was then lost).
    named: bool = True

    @classmethod
    def from_url(cls, url: str) -> Options:
        """Split ``url`` into our options and asyncpg's DSN; ValueError naming a bad option."""
        parts = urlsplit(url)
        _check_ports(parts.netloc.rpartition("@")[2])
        ours: dict[str, float] = {}
        theirs: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OURS:
                if key in ours:
                    raise ValueError(f"{key} is given more than once in the PostgreSQL URL: give it once")
                # Above zero and finite: a zero poll_interval would read in a busy loop.
                kind = "a whole number" if _OURS[key] is int else "a number of seconds"
                ours[key] = plain_number(value, integer=_OURS[key] is int) or 0
                if not 0 < ours[key] < float("inf"):
                    raise ValueError(f"{key} in a PostgreSQL URL must be {kind} above 0, not {value!r}")
            else:
                if key == "port" and value:
                    for port in value.split(","):
                        _check_port(port)
                theirs.append((key, value))
        scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
        dsn = urlunsplit(parts._replace(scheme=scheme, query=urlencode(theirs)))
        return cls(dsn, int(ours.get("pool_size", POOL_SIZE)), ours.get("poll_interval", POLL_INTERVAL),
                   ours.get("timeout", TIMEOUT), named=all(key != "application_name" for key, _ in theirs))

    @property
    def server_settings(self) -> dict[str, str] | None:
        return {"application_name": "perhap"} if self.named else None

    async def connect(self) -> Connection:
        """One connection of our own (the writer's, the listener's)."""
        return await asyncpg.connect(self.dsn, timeout=self.timeout, command_timeout=self.timeout,
                                     server_settings=self.server_settings)

    async def create_pool(self) -> Pool:
        """The read pool: connections set up by :func:`init_reader`, kept without a reset."""
        return await asyncpg.create_pool(
            self.dsn, timeout=self.timeout, command_timeout=self.timeout,
            server_settings=self.server_settings, min_size=1, max_size=self.pool_size,
            init=init_reader, reset=_no_reset)


def _check_ports(hosts: str) -> None:
    """Each host of a URL's ``host[:port][,host[:port]...]`` (IPv6 as ``[::1]:port``) with a port
    asyncpg can use; ValueError in words otherwise (asyncpg's own is int()'s, at connect time)."""
    if not hosts:
        return
    for spec in hosts.split(","):
        if not spec:
            raise ValueError(f"a PostgreSQL URL has an empty host in its host list {hosts!r}")
        if spec.startswith("/"):  # a Unix socket's directory
            continue
        if spec.startswith("["):
            match = re.fullmatch(r"\[[^\]]+\](?::(.*))?", spec)
            if match is None:
                raise ValueError(f"a PostgreSQL URL has a bad IPv6 host {spec!r}: write it as [::1] or [::1]:5432")
            port = match.group(1)
        else:
            port = spec.partition(":")[2] if ":" in spec else None
        if port is not None:
            _check_port(unquote(port))


def _check_port(port: str) -> None:
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port of a PostgreSQL URL must be a whole number from 1 to 65535, not {port!r}")


async def init_connection(conn: Connection) -> None:
    # JSON goes through as the bytes orjson made and the server stored: no decode, no re-encode.
    await conn.set_type_codec("json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")
    # READ COMMITTED whatever the database's default: the writer's proof (docs/backends/
    # postgresql.md) has each statement after a realm's lock read a snapshot that includes the
    # previous holder's commit. Under a default of REPEATABLE READ or SERIALIZABLE the snapshot
    # came before the lock, and two processes collided on positions: 503s on a healthy database.
    # (A SET, not a startup parameter, which pgbouncer would refuse; the writer's transactions
    # also name their level, which holds through pgbouncer's transaction pooling.)
    await conn.execute("SET default_transaction_isolation = 'read committed'")


async def init_reader(conn: Connection) -> None:
    await init_connection(conn)
    # A page must be a walk along the scope's index, never "fetch the whole scope, sort, keep
    # 1000": the planner picks the latter whenever it underestimates a scope (a big realm among
    # many small ones, or tables not analysed yet), making a page cost O(scope). With sorting
    # priced out, the index walk is the only plan left for scope reads; key listings walk their
    # unique indexes the same way. (A SET, not a startup parameter, which pgbouncer would refuse.)
    await conn.execute("SET enable_sort = off")


async def warn_if_not_durable(conn: AnyConnection) -> None:
    """Warn (at open) when the server does not flush its WAL at all (``fsync = off``): then a
    commit, and so a 201, does not survive a crash of the database's machine. Only a warning:
    throwaway test and CI servers run so on purpose."""
    if await conn.fetchval("SELECT current_setting('fsync')") != "on":
        log.warning("the PostgreSQL server runs with fsync = off: an acknowledged append (201) is "
                    "lost if the database's machine crashes; set fsync = on for data that matters")


async def _no_reset(conn: Connection) -> None:
    """Pool connections keep no session state of ours, so skip asyncpg's reset round trip."""


async def rollback(conn: AnyConnection) -> None:
    """Roll back an open transaction; a connection that cannot is ended (never reused half-way)."""
    if conn.is_in_transaction():
        try:
            await conn.execute("ROLLBACK")
        except DB_ERRORS:
            conn.terminate()
