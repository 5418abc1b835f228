"""Row 8: from an append's 201 to the event's arrival at each of 100 subscribers of its domain.

A fresh ``perhap serve``; :mod:`bench.subscribers` holds the streams in a process of its own; this
process appends at a steady rate (default 1,000 events/s) over 16 keep-alive connections (paced,
so more connections only help when the server is slow to answer) and notes the monotonic time
each 201 arrives. Latency per delivery = arrival - acknowledgement (0 when the event reached the
subscriber before its writer heard back).

Both measuring processes run with the cyclic garbage collector off while the events flow: a
collection pausing either one would count as the server's latency, or hide some of it.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .servers import perhap_server

PATH = "/bench/live"
APPEND_CONNECTIONS = 16


async def _appender(url: str, rate: int, total: int, acks: dict[str, float], start: float,
                    counter: Any) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    try:
        while True:
            j = next(counter)
            if j >= total:
                return
            due = start + j / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = b'{"event":{"n":%d,"text":"hello from the benchmark"}}' % j
            writer.write((f"POST {PATH}/e{j % 100}/happened HTTP/1.1\r\nHost: {host}:{port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                         + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            t = time.monotonic()
            if head[9:12] != b"201":
                raise RuntimeError(f"append failed: {head[:100]!r} {payload[:200]!r}")
            acks[json.loads(payload)["event_id"]] = t
    finally:
        writer.close()


async def _append_all(url: str, rate: int, total: int) -> dict[str, float]:
    acks: dict[str, float] = {}
    counter = itertools.count()
    start = asyncio.get_running_loop().time() + 0.05
    await asyncio.gather(*(_appender(url, rate, total, acks, start, counter) for _ in range(APPEND_CONNECTIONS)))
    return acks


def measure(db_url: str, workdir: Path, subscribers: int, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    with perhap_server(db_url, workdir / "latency-server.log") as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.subscribers", server.url, PATH, str(subscribers), str(total)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"subscribers did not start: {line!r}")
            gc.disable()
            try:
                import uvloop

                acks = uvloop.run(_append_all(server.url, rate, total))
            except ImportError:
                acks = asyncio.run(_append_all(server.url, rate, total))
            finally:
                gc.enable()
            times = sorted(acks.values())
            # The rate the appends were acknowledged at, first to last (the offered rate when the
            # server keeps up).
            achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
            line = proc.stdout.readline().strip()
            if line != "done":
                raise RuntimeError(f"subscribers failed: {line!r}")
            proc.stdin.write(json.dumps(acks) + "\n")
            proc.stdin.flush()
            summary = json.loads(proc.stdout.readline())
        finally:
            if proc.poll() is None:
                proc.wait(30)
    summary.update(appended=total, rate_achieved=achieved, subscribers=subscribers)
    return summary
