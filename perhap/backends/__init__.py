"""Choose a backend from a URL: the one factory every entry point (CLI, tests, bench) goes through.

Each backend is a package beside this module (``sqlite``, ``postgres``, ``cassandra``), imported
only when a URL names it, so a driver that is not installed costs nothing until it is needed.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Generator
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, unquote_plus, urlsplit

from ..store import Store

SCHEMES = ("sqlite", "postgresql", "cassandra")
SCHEME_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "cassandra": "Cassandra"}


class UnknownScheme(ValueError):
    pass


#: Query options that carry a secret: asyncpg's password and sslpassword, and anything named so
#: (matched on the decoded name: ``%70assword`` is the password option to the backends too).
_SECRET_OPTION = re.compile(r"(?i)password|secret|token")
#: A secret in a ``key=value`` string (libpq's form): the key, then its value, quoted or not.
_KEY_VALUE_SECRET = re.compile(r"(?i)(\b\w*(?:password|secret|token)\w*\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(url: str) -> str:
    """The store URL with every credential replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if "://" not in url:
        # Not a URL: maybe a libpq "host=... password=..." string, which no backend takes but
        # whose secret must not reach a log or an error message either.
        return _KEY_VALUE_SECRET.sub(lambda m: f"{m.group(1)}***", url)
    netloc, query = parts.netloc, parts.query
    if parts.password:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}"
    if query:
        query = "".join(_redacted_option(piece) for piece in re.split(r"([&;])", query))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    query = f"?{query}" if query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"  # (urlunsplit drops an empty host's //)


def _redacted_option(piece: str) -> str:
    name, equals, _ = piece.partition("=")
    return f"{name}=***" if equals and _SECRET_OPTION.search(unquote_plus(name)) else piece


def parse_store_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split a store URL into its scheme and backend options; ValueError with a clear text if bad."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed [
        raise ValueError(f"not a valid store URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in SCHEMES:
        raise UnknownScheme(
            f"unknown store URL scheme {parts.scheme or '(none)'!r} in {redact(url)!r}; "
            f"use one of: sqlite:///path.db, postgresql://user:pass@host:port/db, "
            f"cassandra://host[,host]:port/keyspace"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "sqlite":
        if parts.netloc:
            raise ValueError("a SQLite URL has no host: use sqlite:///relative.db or sqlite:////abs.db")
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError("a SQLite URL needs a file path, e.g. sqlite:///./perhap.db")
        # One option, given at most once: a misspelt one would be ignored in silence, and the
        # store would open with another durability than the operator asked for.
        names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
        for name in names:
            if name != "synchronous":
                raise ValueError(f"unknown SQLite URL option {name[:40]!r}: a SQLite URL takes only "
                                 "?synchronous=full|normal|extra|off")
        if len(names) > 1:
            raise ValueError("synchronous is given more than once in the SQLite URL: give it once")
        from .sqlite.schema import SYNCHRONOUS  # (stdlib only: no driver needed)

        if names and query["synchronous"].upper() not in SYNCHRONOUS:
            raise ValueError("synchronous must be FULL, NORMAL, EXTRA or OFF")
        return scheme, {"path": path, **query}
    # One host's port that is not a number: refused here, with the backend's driver or without it
    # (hosts listed: the backend's own parser judges them).
    try:
        _ = "," in parts.netloc or parts.port
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        raise ValueError(f"the port of a {SCHEME_NAMES[scheme]} URL must be a whole number from 1 to 65535, "
                         f"not {port[:20]!r}") from None
    return scheme, {"url": url, **query}


def check_store_url(url: str) -> tuple[str, dict[str, Any]]:
    """parse_store_url, and the backend's own checks of its URL (ports, options) where its driver
    is installed (without it the store cannot open anyway, and says so): ValueError in words, so
    that a malformed URL is refused before anything starts rather than when the store opens."""
    scheme, options = parse_store_url(url)
    if scheme == "postgresql":
        try:
            from .postgres.connection import Options
        except ImportError:  # asyncpg missing
            pass
        else:
            Options.from_url(url)
    elif scheme == "cassandra":
        try:
            from .cassandra.url import parse_cassandra_url
        except ImportError:  # cassandra-driver missing
            pass
        else:
            parse_cassandra_url(url)
    return scheme, options


async def _open(url: str) -> Store:
    scheme, options = parse_store_url(url)
    if scheme == "sqlite":
        from .sqlite import open_sqlite

        synchronous = options.get("synchronous", "FULL")
        return await open_sqlite(options["path"], synchronous=synchronous, url=url)
    if scheme == "postgresql":
        try:
            from .postgres import open_postgres
        except ImportError as exc:  # asyncpg missing
            raise ValueError(
                f"the PostgreSQL backend needs asyncpg ({exc}): {_install('asyncpg', 'postgres')}") from None
        return await open_postgres(url)
    try:
        from .cassandra import open_cassandra
    except ImportError as exc:
        raise ValueError(
            f"the Cassandra backend needs cassandra-driver ({exc}): {_install('cassandra-driver', 'cassandra')}"
        ) from None
    return await open_cassandra(url)


def _install(package: str, extra: str) -> str:
    """The command that installs a backend's driver into the Python running perhap (a bare
    ``pip`` may be another one: Debian's refuses, outside the virtual environment perhap is in)."""
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    return f"{pip} {package}, or {pip} '.[{extra}]' in a perhap checkout"


class open_store:
    """Open a store from a URL: ``async with open_store("sqlite:///./perhap.db") as store: ...``.

    ``store = await open_store(url)`` works too; then call ``await store.close()`` yourself.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return _open(self.url).__await__()

    async def __aenter__(self) -> Store:
        self._store = await _open(self.url)
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()
