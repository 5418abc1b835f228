"""A built-in HTTP/1.1 load generator, used when wrk is not installed.

``python -m bench.loadgen URL --method POST --connections 32 --seconds 5 [--processes 2]`` keeps
``connections`` keep-alive connections busy (one request in flight on each, as wrk does) and prints
one JSON object: requests, requests per second, non-2xx responses, errors, and the latencies' p50
and p99 in milliseconds (each request timed from its write to the last byte of its answer, as wrk
times them). POSTs go to 2,000 entities, as wrk's script sends them (bench.httpbench): each
connection cycles through its own share. It runs in its own processes, never in the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from typing import Any
from urllib.parse import urlsplit

ENTITIES = 2000  # what the POSTs of one run are spread over, all connections together


def post_request(host: str, path_prefix: str, worker: int, n: int, share: int = ENTITIES) -> bytes:
    """Request ``n`` of connection ``worker``, which cycles through ``share`` entities of its own."""
    entity = f"g{worker}-{n % share}"
    body = b'{"event":{"n":%d,"text":"hello from the benchmark"}}' % n
    return (f"POST {path_prefix}/{entity}/happened HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def _connection(host: str, port: int, method: str, path: str, worker: int, share: int,
                      deadline: float, stats: dict[str, int], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    fixed = get_request(f"{host}:{port}", path) if method == "GET" else None
    clock = time.perf_counter
    n = 0
    try:
        while (sent := clock()) < deadline:
            writer.write(fixed or post_request(f"{host}:{port}", path, worker, n, share))
            n += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(clock() - sent)
            stats["requests"] += 1
            if not 200 <= status < 300:
                stats["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError):
        stats["errors"] += 1
    finally:
        writer.close()


async def _run(url: str, method: str, connections: int, seconds: float, offset: int,
               share: int) -> dict[str, Any]:
    parts = urlsplit(url)
    stats = {"requests": 0, "non2xx": 0, "errors": 0}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(parts.hostname or "127.0.0.1", parts.port or 80, method,
                                       parts.path, offset + i, share, deadline, stats, latencies)
                           for i in range(connections)))
    return {**stats, "latencies": latencies}


def _process(args: tuple[str, str, int, float, int, int]) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_run(*args))
    except ImportError:
        return asyncio.run(_run(*args))


def run(url: str, method: str, connections: int, seconds: float, processes: int = 1) -> dict[str, float]:
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    share = max(1, ENTITIES // connections)
    start = time.perf_counter()
    if processes == 1:
        results = [_process((url, method, per[0], seconds, 0, share))]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_process, [(url, method, n, seconds, sum(per[:i]), share)
                                          for i, n in enumerate(per)])
    elapsed = time.perf_counter() - start
    total = {k: sum(r[k] for r in results) for k in ("requests", "non2xx", "errors")}
    figures: dict[str, float] = {**total, "seconds": elapsed, "rps": total["requests"] / seconds}
    latencies = sorted(x for r in results for x in r["latencies"])
    if latencies:
        figures["p50_ms"] = 1000 * latencies[len(latencies) // 2]
        figures["p99_ms"] = 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("url")
    parser.add_argument("--method", default="GET", choices=["GET", "POST"])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    json.dump(run(args.url, args.method, args.connections, args.seconds, args.processes), sys.stdout)
    print()


if __name__ == "__main__":
    main()
