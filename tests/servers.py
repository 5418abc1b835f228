"""Real servers for tests that need sockets: uvicorn in a thread, or `perhap serve` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from perhap.app import PerhapApp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """uvicorn serving a PerhapApp in a background thread with its own event loop."""

    def __init__(self, store_url: str, **app_options: Any) -> None:
        self.app = PerhapApp(store_url=store_url, **app_options)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on",
                                log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def task_count(self) -> int:
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(_count_tasks(), self.loop)
        return fut.result(10)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.app.stop_streams)
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


class ProcessServer:
    """`perhap serve` in a child process, as a user runs it."""

    def __init__(self, db: str, port: int | None = None, *extra: str, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.db = db
        self.port = port or free_port()
        self.extra = extra
        self.cwd = cwd
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, timeout: float = 30) -> ProcessServer:
        cmd = [sys.executable, "-m", "perhap.cli", "serve", "--db", self.db, "--port", str(self.port), *self.extra]
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"perhap serve exited with {self.proc.returncode}: {out}")
            try:
                if httpx.get(f"{self.url}/_health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("perhap serve did not become healthy in time")
            time.sleep(0.05)

    def terminate(self, timeout: float = 30) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(15)
            except subprocess.TimeoutExpired:
                self.kill()
