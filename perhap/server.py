"""Run the ASGI app under uvicorn, in one process or several sharing one listening socket."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import orjson
import uvicorn

from .backends import redact
from .http.app import PerhapApp
from .http.types import ASGIApp
from .limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_GRACEFUL_SHUTDOWN,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER,
    DEFAULT_WRITE_TIMEOUT,
)
from .listener import limited_protocol

log = logging.getLogger("perhap")


class _Config(uvicorn.Config):
    """uvicorn's configuration, plus how long a TLS handshake may take (see ``_Server.startup``)."""

    handshake_timeout: float | None = None


class _Server(uvicorn.Server):
    """uvicorn's server, plus: end open streams when asked to stop, and log one start line."""

    config: _Config

    def __init__(self, config: _Config, app: PerhapApp, worker: int | None = None) -> None:
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
        loop = self._perhap_loop = asyncio.get_running_loop()
        handshake = self.config.handshake_timeout
        if self.config.is_ssl and handshake is not None:
            # A TLS handshake comes before the listener's header deadline can start (asyncio
            # calls connection_made after it), and asyncio gives it 60 s: a client that connects
            # and sends nothing held its socket that long. The header deadline bounds it too.
            create_server = loop.create_server

            async def with_handshake_deadline(*args: Any, **kwargs: Any) -> Any:
                return await create_server(*args, **kwargs, ssl_handshake_timeout=handshake)

            loop.create_server = with_handshake_deadline  # type: ignore[method-assign]
        await super().startup(sockets=sockets)
        if self.started:
            cfg = self.config
            who = f" (worker {self.worker})" if self.worker is not None else ""
            scheme = "https" if cfg.ssl_certfile else "http"
            log.info("perhap listening on %s://%s:%d%s, store %s", scheme, url_host(cfg.host), cfg.port, who,
                     redact(self.perhap_app.store_url or ""))


def url_host(host: str) -> str:
    """``host`` as a URL writes it before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _config(app: ASGIApp, host: str, port: int, log_level: str, net: dict[str, Any] | None = None) -> _Config:
    net = net or {}
    header_timeout = net.get("header_timeout", DEFAULT_HEADER_TIMEOUT)
    body_timeout = net.get("body_timeout")
    max_connections = net.get("max_connections")
    protocol = limited_protocol(net.get("max_header", DEFAULT_MAX_HEADER), header_timeout,
                                DEFAULT_BODY_TIMEOUT if body_timeout is None else body_timeout,
                                net.get("write_timeout", DEFAULT_WRITE_TIMEOUT),
                                app.max_body if isinstance(app, PerhapApp) else None)
    config = _Config(
        app, host=host, port=port, lifespan="on", log_config=None, access_log=False,
        log_level="warning" if log_level in ("info", "debug") else log_level,
        # No WebSockets: an upgrade request is a plain HTTP request (perhap's answer, its token
        # checked first), not uvicorn's handshake with an app that has no WebSocket route (a 500).
        loop="auto", http=protocol, ws="none", timeout_graceful_shutdown=DEFAULT_GRACEFUL_SHUTDOWN, server_header=False,
        timeout_keep_alive=net.get("idle_timeout", DEFAULT_IDLE_TIMEOUT), ssl_certfile=net.get("tls_cert"),
        ssl_keyfile=net.get("tls_key"),
        # uvicorn refuses a connection once the count, the new one included, reaches its limit: +1
        # so that N connections are served and the one beyond them is the 503.
        limit_concurrency=(DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections) + 1,
    )
    config.handshake_timeout = header_timeout
    return config


class _JSONFormatter(logging.Formatter):
    """One JSON object a line; access lines carry their fields, other records their message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        access = getattr(record, "access", None)
        if access is not None:
            line.update(access)
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class _BriefLibraryWarnings(logging.Filter):
    """A library's warning with an exception (asyncpg's pool retrying its connections while the
    database is down: one each second) is logged as one line ending in the exception's summary,
    not its traceback; perhap's own records, and every error, keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None  # (exc_info=True outside an except: None)
        if exc is not None and record.levelno < logging.ERROR and not record.name.startswith("perhap"):
            record.msg, record.args = f"{record.getMessage()}: {type(exc).__name__}: {exc}", None
            record.exc_info = record.exc_text = None
        return True


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_BriefLibraryWarnings())
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":  # uvicorn's own loggers too, so every line on stderr is JSON
        for name in ("uvicorn", "uvicorn.error"):
            logging.getLogger(name).handlers = []


#: A worker's exit status when it never started serving (the store would not open, say): the
#: supervisor does not start it again, since it would fail the same way.
NEVER_STARTED = 3


def _run_worker(index: int, sock: socket.socket, options: dict[str, Any]) -> None:
    _stop_with_supervisor()
    _allow_deep_json()
    _setup_logging(options["log_level"], options["log_format"])
    app = PerhapApp(store_url=options["db"], **options["app"])
    config = _config(app, options["host"], options["port"], options["log_level"], options["net"])
    server = _Server(config, app, worker=index)
    server.run(sockets=[sock])
    sys.exit(0 if server.started else NEVER_STARTED)


#: Python frames a server process allows: the stdlib's JSON parser and writer (the exact path: long
#: integers, repeated keys, values orjson does not nest so deep) recurse once a level against the
#: interpreter's limit, 1,000 by default less the frames below them, so a body nested 977 levels
#: deep was "not valid JSON" where the docs promise bodies up to the parser's 1,024 levels (with
#: --max-depth that high). The server process is perhap's own: the limit is raised there only.
RECURSION_LIMIT = 3000


def _allow_deep_json() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))


def _stop_with_supervisor() -> None:
    """A worker whose supervisor is gone (SIGKILL, a crash) stops as on a SIGTERM: left running,
    unsupervised, it would keep the port, and a new ``perhap serve`` could not listen there."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="perhap-supervisor-watch", daemon=True).start()


def serve(*, db: str, host: str, port: int, workers: int = 1, log_level: str = "info",
          log_format: str = "text", net: dict[str, Any] | None = None, **app_options: Any) -> int:
    """Serve until SIGINT/SIGTERM; in-flight appends finish before the store closes.

    ``app_options`` go to :class:`PerhapApp` (max_body, heartbeat, auth, limits, cors_origins...);
    ``net`` holds the listener's options (tls_cert, tls_key, idle_timeout, max_header, ...).
    """
    _allow_deep_json()
    _setup_logging(log_level, log_format)
    app_options.setdefault("access_log", log_format == "json")
    # A stream's write timeout (the app's) is also the listener's for every other response.
    net = {**(net or {}), "write_timeout": app_options.get("write_timeout", DEFAULT_WRITE_TIMEOUT)}
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

    def start(i: int) -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_run_worker, args=(i, sock, options), name=f"perhap-worker-{i}")
        p.start()
        return p

    procs = {i: start(i) for i in range(workers)}
    stopping = False
    status = 0

    def forward(sig: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.pid is not None and p.is_alive():
                p.terminate() if sig == signal.SIGTERM else _signal(p.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Supervise: a worker that dies while the server runs (killed, out of memory, a crash) is
    # started again, so --workers N stays N processes; one that never started is not (its start
    # would fail again), and the server stops once none is left.
    while procs:
        multiprocessing.connection.wait([p.sentinel for p in procs.values()])
        for i, p in list(procs.items()):
            if p.is_alive():
                continue
            p.join()
            del procs[i]
            if stopping or p.exitcode == NEVER_STARTED:
                status = status or (0 if p.exitcode == 0 else 3)
                continue
            log.error("worker %d (pid %s) exited with status %s; starting it again", i, p.pid, p.exitcode)
            time.sleep(0.5)  # a worker that dies at once must not spin
            if not stopping:
                procs[i] = start(i)
    sock.close()
    return status


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
