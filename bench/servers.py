"""Server processes for the HTTP rows: ``perhap serve`` as a user runs it, and the raw ASGI baseline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server child process on 127.0.0.1; ``url`` is its base URL, ``pid`` its process id."""

    def __init__(self, argv: list[str], ready_path: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.ready_path = ready_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> Server:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(timeout)
        except BaseException:  # not ready, or the run stopped meanwhile (Ctrl-C, SIGTERM): no server left
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.argv} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.argv} did not answer in {timeout}s; see {self.log_path}")
            time.sleep(0.05)

    def wait_for_workers(self, workers: int, timeout: float = 30) -> None:
        """With ``--workers N``: return once every worker process has accepted a connection.

        The supervisor binds the socket before its workers have started, so the first answer to
        ``start``'s probe only says that one worker serves. Connections are accepted only by
        workers that finished starting; a worker holding an established connection on the port
        is serving.
        """
        import psutil

        parent = psutil.Process(self.pid)
        deadline = time.monotonic() + timeout
        request = f"GET {self.ready_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        while True:
            clients = [socket.create_connection(("127.0.0.1", self.port), timeout=5) for _ in range(4 * workers)]
            try:
                for c in clients:
                    c.sendall(request)
                for c in clients:
                    c.recv(65536)  # answered, and kept alive: the worker still holds it
                serving = sum(1 for child in parent.children()
                              if any(conn.status == psutil.CONN_ESTABLISHED and conn.laddr
                                     and conn.laddr.port == self.port for conn in child.net_connections("tcp")))
            finally:
                for c in clients:
                    c.close()
            if serving >= workers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {serving} of {workers} workers of {self.argv} serve after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def perhap_server(db_url: str, log_path: Path, *extra: str) -> Server:
    """``perhap serve --db db_url`` on a free port; ``extra`` adds options (``--workers 2``)."""
    argv = [sys.executable, "-m", "perhap.cli", "serve", "--db", db_url, "--port", "{port}",
            "--log-level", "warning", *extra]
    return Server(argv, "/_health", log_path)


def raw_server(log_path: Path) -> Server:
    return Server([sys.executable, "-m", "bench.rawapp", "{port}"], "/", log_path)
