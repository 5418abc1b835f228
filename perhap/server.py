"""Run the ASGI app under uvicorn, in one process or several sharing one listening socket."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from .app import PerhapApp

log = logging.getLogger("perhap")


def redact(url: str) -> str:
    """The store URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class _Server(uvicorn.Server):
    """uvicorn's server, plus: end open streams when asked to stop, and log one start line."""

    def __init__(self, config: uvicorn.Config, app: PerhapApp, worker: int | None = None) -> None:
        super().__init__(config)
        self.perhap_app = app
        self.worker = worker

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Streams never end on their own; without this, a graceful shutdown would wait on them.
        loop = getattr(self, "_perhap_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.perhap_app.stop_streams)
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down; a clean stop should exit with 0.
        self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._perhap_loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            cfg = self.config
            who = f" (worker {self.worker})" if self.worker is not None else ""
            log.info("perhap listening on http://%s:%d%s, store %s", cfg.host, cfg.port, who,
                     redact(self.perhap_app.store_url or ""))


def _config(app: PerhapApp, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_config=None, access_log=False,
        log_level="warning" if log_level in ("info", "debug") else log_level,
        loop="auto", http="auto", timeout_graceful_shutdown=30, server_header=False,
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_worker(index: int, sock: socket.socket, options: dict[str, Any]) -> None:
    _setup_logging(options["log_level"])
    app = PerhapApp(store_url=options["db"], max_body=options["max_body"], heartbeat=options["heartbeat"])
    config = _config(app, options["host"], options["port"], options["log_level"])
    _Server(config, app, worker=index).run(sockets=[sock])


def serve(*, db: str, host: str, port: int, workers: int = 1, max_body: int = 1024 * 1024,
          heartbeat: float = 15.0, log_level: str = "info") -> int:
    """Serve until SIGINT/SIGTERM; in-flight appends finish before the store closes."""
    _setup_logging(log_level)
    options = dict(db=db, host=host, port=port, max_body=max_body, heartbeat=heartbeat, log_level=log_level)
    if workers == 1:
        app = PerhapApp(store_url=db, max_body=max_body, heartbeat=heartbeat)
        server = _Server(_config(app, host, port, log_level), app)
        server.run()
        return 0 if server.started else 3
    # Several processes accept on one socket bound here, as uvicorn's own supervisor does, but
    # each runs our _Server so streams still end cleanly on shutdown.
    sock = _config(PerhapApp(store_url=db), host, port, log_level).bind_socket()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(i, sock, options), name=f"perhap-worker-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()

    def forward(sig: int, frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate() if sig == signal.SIGTERM else _signal(p.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    sock.close()
    return 0 if all(p.exitcode == 0 for p in procs) else 3


def _signal(pid: int, sig: int) -> None:
    import os

    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
