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
