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
from .limits import DEFAULT_MAX_HEADER, limited_protocol

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
            scheme = "https" if cfg.ssl_certfile else "http"
            log.info("perhap listening on %s://%s:%d%s, store %s", scheme, cfg.host, cfg.port, who,
                     redact(self.perhap_app.store_url or ""))


def _config(app: PerhapApp, host: str, port: int, log_level: str, net: dict[str, Any] | None = None) -> uvicorn.Config:
    net = net or {}
    protocol = limited_protocol(net.get("max_header", DEFAULT_MAX_HEADER), net.get("header_timeout", 10.0))
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_config=None, access_log=False,
        log_level="warning" if log_level in ("info", "debug") else log_level,
        loop="auto", http=protocol, timeout_graceful_shutdown=30, server_header=False,
        timeout_keep_alive=net.get("idle_timeout", 5), ssl_certfile=net.get("tls_cert"),
        ssl_keyfile=net.get("tls_key"), limit_concurrency=net.get("max_connections"),
    )


class _JSONFormatter(logging.Formatter):
    """One JSON object a line; access lines carry their fields, other records their message."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        line: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        access = getattr(record, "access", None)
        if access is not None:
            line.update(access)
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":  # uvicorn's own loggers too, so every line on stderr is JSON
        for name in ("uvicorn", "uvicorn.error"):
            logging.getLogger(name).handlers = []


def _run_worker(index: int, sock: socket.socket, options: dict[str, Any]) -> None:
    _setup_logging(options["log_level"], options["log_format"])
    app = PerhapApp(store_url=options["db"], **options["app"])
    config = _config(app, options["host"], options["port"], options["log_level"], options["net"])
    _Server(config, app, worker=index).run(sockets=[sock])


def serve(*, db: str, host: str, port: int, workers: int = 1, log_level: str = "info",
          log_format: str = "text", net: dict[str, Any] | None = None, **app_options: Any) -> int:
    """Serve until SIGINT/SIGTERM; in-flight appends finish before the store closes.

    ``app_options`` go to :class:`PerhapApp` (max_body, heartbeat, auth, limits, cors_origins...);
    ``net`` holds the listener's options (tls_cert, tls_key, idle_timeout, max_header, ...).
    """
    _setup_logging(log_level, log_format)
    app_options.setdefault("access_log", log_format == "json")
    options = dict(db=db, host=host, port=port, log_level=log_level, log_format=log_format,
                   net=net or {}, app=app_options)
    if workers == 1:
        app = PerhapApp(store_url=db, **app_options)
        server = _Server(_config(app, host, port, log_level, net), app)
        server.run()
        return 0 if server.started else 3
    # Several processes accept on one socket bound here, as uvicorn's own supervisor does, but
    # each runs our _Server so streams still end cleanly on shutdown.
    sock = _config(PerhapApp(store_url=db, metrics=False), host, port, log_level, net).bind_socket()
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
