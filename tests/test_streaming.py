"""Live subscriptions: the streaming contract on every backend, and `perhap serve` / `perhap tail`."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from perhap.testing.conformance import SSEReader, StreamingContract
from tests.helpers import PerhapBackends
from tests.servers import ProcessServer


class TestStreaming(PerhapBackends, StreamingContract):
    pass


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_server_shutdown_closes_streams(backend: Any, store_url: str, realm: str, tmp_path: Any) -> None:
    with ProcessServer(store_url, cwd=tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await http.post(f"/{realm}/d/e/t", json={"event": 1})
            async with http.stream("GET", f"/{realm}/d", headers={"accept": "text/event-stream"}) as r:
                reader = SSEReader(r)
                await reader.events(1)
                started = time.monotonic()
                assert server.proc is not None
                server.proc.terminate()
                with pytest.raises(StopAsyncIteration):
                    while True:
                        await reader.next(10)
                assert time.monotonic() - started < 10
        assert server.proc.wait(20) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_tail_command_reconnects_with_last_event_id(backend: Any, tmp_path: Any, realm: str) -> None:
    db = f"sqlite:///{tmp_path}/tail.db"
    server = ProcessServer(db).start()
    tail = subprocess.Popen([sys.executable, "-m", "perhap.cli", "tail", f"{realm}/d", "--url", server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(3):
            httpx.post(f"{server.url}/{realm}/d/e/t", json={"event": i})
        lines = [tail.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        server.kill()  # the connection drops
        server = ProcessServer(db, server.port).start()
        for i in range(3, 6):
            httpx.post(f"{server.url}/{realm}/d/e/t", json={"event": i})
        lines += [tail.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        events = [orjson.loads(line) for line in lines]
        assert [e["event"] for e in events] == [0, 1, 2, 3, 4, 5]
        assert all(e["realm"] == realm for e in events)
    finally:
        tail.kill()
        tail.wait()
        server.kill()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_stream_whose_client_stopped_reading_does_not_hold_the_shutdown(backend: Any, store_url: str,
                                                                         realm: str, tmp_path: Any) -> None:
    """A stream whose client reads nothing while megabytes of events wait for it: SIGTERM still
    stops the server in seconds, with no error logged (its last write waited for uvicorn's 30 s
    graceful limit, then ended in a CancelledError traceback)."""
    import socket

    with ProcessServer(store_url, cwd=tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            conn.sendall(f"GET /{realm} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            assert conn.recv(1024).startswith(b"HTTP/1.1 200")  # open; from now on nothing is read
            pad = "x" * 4000
            for b in range(12):
                events = [{"type": "t", "event": {"n": b * 200 + i, "pad": pad}} for i in range(200)]
                assert httpx.post(f"{server.url}/{realm}/d/e", json={"events": events}, timeout=60).status_code == 201
            # The stream has filled the socket's buffers and waits on its client: what it sent
            # lies unread in this end's small buffer.
            deadline = time.monotonic() + 30
            while _unread(conn) < 2048:
                assert time.monotonic() < deadline, "the stream sent nothing"
                time.sleep(0.02)
            started = time.monotonic()
            code, log = server.terminate()
            assert time.monotonic() - started < 10, log
            assert code == 0 and "Traceback" not in log and "ERROR" not in log, log
        finally:
            conn.close()


def _unread(conn: Any) -> int:
    """Bytes received on a socket and not read yet."""
    import array
    import fcntl
    import termios

    count = array.array("i", [0])
    fcntl.ioctl(conn.fileno(), termios.FIONREAD, count)
    return count[0]
