"""A real server for the streaming contract: uvicorn in a thread, over a store from the hook.

Server-Sent Events need a socket (httpx's in-process transport buffers whole responses), and the
store must be opened on the server's own event loop, so the server thread calls the factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn

from ...http.app import PerhapApp
from .base import StoreFactory


class LiveServer:
    """uvicorn serving a PerhapApp on 127.0.0.1 in a background thread with its own loop."""

    def __init__(self, store_factory: StoreFactory, **app_options: Any) -> None:
        self.store_factory = store_factory
        self.app_options = app_options
        # Bound now and handed to uvicorn, so no other process can take the port in between.
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port: int = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self._app: PerhapApp | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"perhap-live-{self.port}", daemon=True)

    @property
    def app(self) -> PerhapApp:
        assert self._app is not None, "the server has not started"
        return self._app

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start() or stop() in the test's thread
            self._error = exc
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        store = await self.store_factory()
        try:
            self._app = PerhapApp(store, **self.app_options)
            config = uvicorn.Config(self._app, lifespan="on", log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=5)
            self.server = uvicorn.Server(config)
            await self.server.serve(sockets=[self.socket])
        finally:
            await store.close()

    def start(self, timeout: float = 30) -> LiveServer:
        """Start serving; return once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while self.server is None or not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.socket.close()
                raise RuntimeError(f"the live server did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def task_count(self) -> int:
        """How many asyncio tasks the server's loop has (leaks show here)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(_count_tasks(), self.loop).result(10)

    def stop(self) -> None:
        """End open streams, stop the server and close the store."""
        if self.loop is not None and self._app is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self.loop.call_soon_threadsafe(self._app.stop_streams)
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()
        if self.thread.is_alive():
            raise RuntimeError("the live server did not stop within 30 s")
        if self._error is not None:
            raise RuntimeError("the live server failed") from self._error

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())
