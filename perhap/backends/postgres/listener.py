"""Live streaming across processes: one connection LISTENs for the commits of every process.

Every writer NOTIFYs inside its transaction, so a notification arrives when, and only if, the
commit is visible. Subscribers also poll every ``poll_interval``, so nothing depends on a
notification arriving (pgbouncer in transaction mode drops them, a connection can be lost).
The same connection hears of consumer group state written by other processes (:mod:`.states`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from .connection import Connection, Options
from .schema import CHANNEL, STATES_CHANNEL

log = logging.getLogger("perhap.postgres")


class Wake(Protocol):
    """Wakes this process's subscribers; also called as asyncpg's LISTEN callback."""

    def __call__(self, *_: object) -> None: ...


class Listener:
    """Keeps one connection LISTENing; reconnects with back-off while the database is away."""

    def __init__(self, options: Options, wake: Wake, states_heard: Callable[[str | None], None]) -> None:
        self._options = options
        self._wake = wake
        self._states_heard = states_heard  # a state notification's payload; None: some missed
        self.listening = False
        self._delay = 0.2  # before reconnecting: doubles while the database stays away

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            conn: Connection | None = None
            try:
                conn = await self._options.connect()
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection: %r", exc)
            finally:
                self.listening = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, 5.0)

    async def _listen(self, conn: Connection) -> None:
        """LISTEN on ``conn`` until it is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._wake)
        await conn.add_listener(STATES_CHANNEL, lambda _conn, _pid, _channel, payload: self._states_heard(payload))
        self.listening, self._delay = True, 0.2
        self._wake()  # commits while we were not listening: make readers look
        self._states_heard(None)
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), 15)
            except TimeoutError:  # an idle socket can die silently: check it now and then
                await conn.fetchval("SELECT 1", timeout=self._options.timeout)
