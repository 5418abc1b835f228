"""PostgreSQL for the conformance suite: a private server in the session's work directory, or the
server PERHAP_TEST_POSTGRES_URL names; each test gets a database of its own."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from perhap.testing.postgres import PostgresServer, existing_server_url


def _run(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when an event loop runs in this thread."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class PostgresProvider:
    name = "postgres"

    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self.base_url: str | None = None
        self.created: list[str] = []
        self.counter = itertools.count()
        self.prefix = f"perhap_t{os.getpid()}_"

    def start(self, workdir: Path) -> None:
        self.base_url = existing_server_url()
        if self.base_url is None:
            # PostgresError (with the server log tail) propagates: a server that cannot start is
            # a failure, never a skip. The cluster lives in a directory of its own under the
            # system temp dir, not in workdir: any pytest session starting meanwhile resets
            # pytest's temp root to mode 0700, which would lock out the postgres user we run as.
            self.server = PostgresServer()
            self.server.start()
            self.base_url = self.server.url()

    def new_url(self) -> str:
        assert self.base_url is not None, "start() first"
        name = f"{self.prefix}{next(self.counter)}"
        if self.server is not None:
            url = self.server.create_database(name)
        else:
            _run(_sql(self.base_url, f'CREATE DATABASE "{name}"'))
            url = _with_database(self.base_url, name)
        self.created.append(name)
        return url

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
        elif self.base_url is not None and self.created:
            # A shared server outlives us: leave it as we found it.
            _run(_sql(self.base_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in self.created)))
        self.created.clear()


def provider() -> PostgresProvider:
    return PostgresProvider()
