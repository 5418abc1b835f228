"""A built-in HTTP/1.1 load generator, used when wrk is not installed.

``python -m bench.loadgen URL --method POST --connections 32 --seconds 5 [--processes 2]`` keeps
``connections`` keep-alive connections busy (one request in flight on each, as wrk does) and prints
one JSON object: requests, requests per second, non-2xx responses and errors. POST bodies carry
distinct entities, like the wrk script. It runs in its own processes, never in the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from urllib.parse import urlsplit


def post_request(host: str, path_prefix: str, worker: int, n: int) -> bytes:
    entity = f"g{worker}-{n % 1000}"
    body = b'{"event":{"n":%d,"text":"hello from the benchmark"}}' % n
    return (f"POST {path_prefix}/{entity}/happened HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def _connection(host: str, port: int, method: str, path: str, worker: int, deadline: float,
                      stats: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    fixed = get_request(f"{host}:{port}", path) if method == "GET" else None
    n = 0
    try:
        while time.perf_counter() < deadline:
            writer.write(fixed or post_request(f"{host}:{port}", path, worker, n))
            n += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            stats["requests"] += 1
            if not 200 <= status < 300:
                stats["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError):
        stats["errors"] += 1
    finally:
        writer.close()


async def _run(url: str, method: str, connections: int, seconds: float, offset: int) -> dict[str, int]:
    parts = urlsplit(url)
    stats = {"requests": 0, "non2xx": 0, "errors": 0}
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(parts.hostname or "127.0.0.1", parts.port or 80, method,
                                       parts.path, offset + i, deadline, stats)
                           for i in range(connections)))
    return stats


def _process(args: tuple[str, str, int, float, int]) -> dict[str, int]:
    try:
        import uvloop

        return uvloop.run(_run(*args))
    except ImportError:
        return asyncio.run(_run(*args))


def run(url: str, method: str, connections: int, seconds: float, processes: int = 1) -> dict[str, float]:
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    start = time.perf_counter()
    if processes == 1:
        results = [_process((url, method, per[0], seconds, 0))]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_process, [(url, method, n, seconds, i * 1000) for i, n in enumerate(per)])
    elapsed = time.perf_counter() - start
    total = {k: sum(r[k] for r in results) for k in results[0]}
    return {**total, "seconds": elapsed, "rps": total["requests"] / seconds}


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
