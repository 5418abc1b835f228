"""Row 10: consumer-group delivery against a plain live stream of the same events, same server.

A SQLite store is filled in process with a realm of many entities, their events interleaved as
many writers would leave them. One ``perhap serve`` on it, then, alternating:

- the group: a new group of the realm (from the beginning); three consumer processes, each one
  connection leasing ``max`` events (``GET /_groups/.../events``) and acknowledging the whole
  batch in one ``POST .../ack``, until a long poll finds nothing. Events/s = events acknowledged
  / (last acknowledgement's answer - the moment the consumers were told to go);
- the stream: one ``GET /{realm}`` with ``Accept: text/event-stream`` from the start, read on a
  raw socket until the last event's ``id:`` line. Events/s = events / (that moment - the request).

The ratio is what a group costs over reading: a compare-and-set of the group's state per lease
and per acknowledgement, two requests per batch, and the per-entity rule (one event of an entity
in flight at a time).

``python -m bench.groups URL REALM GROUP CONSUMER MAX`` is one consumer process: it prints
``ready``, waits for a line on stdin, works until a long poll comes back empty, and prints one
JSON line ``{"count", "last", "leases", "lease_ms", "ack_ms"}`` (``last`` on ``time.monotonic()``,
one clock for every process of the machine; the others the time each request took).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from .common import median, remove_sqlite, rounds
from .servers import perhap_server

#: (events, entities) of the realm by mode: the events are interleaved over the entities.
SIZES = {"full": (20_000, 500), "quick": (10_000, 500), "tiny": (1_000, 50)}
REALM = "bench10"
CONSUMERS = 3
#: Events leased per request.
LEASE_MAX = 100


async def _fill(url: str, events: int, entities: int) -> None:
    from perhap import open_store

    async with open_store(url) as store:
        for k in range(events // entities):
            await store.append_many(REALM, "g", [{"entity": f"e{e}", "type": "happened",
                                                  "event": {"k": k, "text": "hello from the benchmark"}}
                                                 for e in range(entities)])


def _stream(url: str, expected: int) -> float:
    """Seconds from sending the stream's request to the arrival of its ``expected``-th event."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with socket.create_connection((host, port), timeout=120) as sock:
        started = time.monotonic()
        sock.sendall(f"GET /{REALM} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        seen, tail = 0, b""
        while seen < expected:
            data = sock.recv(262144)
            if not data:
                raise RuntimeError(f"the stream ended after {seen} of {expected} events")
            chunk = tail + data
            seen += chunk.count(b"\nid: ")
            tail = chunk[-4:]  # shorter than the marker: nothing is counted twice
        return time.monotonic() - started


def _group(url: str, name: str, expected: int) -> dict[str, Any]:
    r = httpx.put(f"{url}/_groups/{REALM}/{name}", json={"start": "beginning", "ack_timeout": 60}, timeout=60)
    r.raise_for_status()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.groups", url, REALM, name, f"w{i}", str(LEASE_MAX)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(CONSUMERS)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a consumer did not start: {line!r}")
        started = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a consumer failed (exit {p.wait(30)})")
            results.append(json.loads(line))
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    count = sum(r["count"] for r in results)
    info = httpx.get(f"{url}/_groups/{REALM}/{name}", timeout=60).json()
    if count != expected or info["lag"] != 0 or info["redeliveries"] != 0:
        raise RuntimeError(f"the group acknowledged {count} of {expected} events: {info}")
    seconds = max(r["last"] for r in results) - started
    return {"events_per_s": count / seconds, "seconds": seconds, "leases": sum(r["leases"] for r in results),
            "per_consumer": [r["count"] for r in results],
            "lease_ms_p50": median([x for r in results for x in r["lease_ms"]]),
            "ack_ms_p50": median([x for r in results for x in r["ack_ms"]])}


def measure(workdir: Path, mode: str, repeats: int) -> dict[str, Any]:
    events, entities = SIZES[mode]
    path = workdir / "groups.db"
    remove_sqlite(path)
    url = f"sqlite:///{path}"
    try:
        import uvloop

        uvloop.run(_fill(url, events, entities))
    except ImportError:
        asyncio.run(_fill(url, events, entities))
    groups: list[dict[str, Any]] = []
    streams: list[float] = []
    with perhap_server(url, workdir / "groups-server.log") as server:
        _stream(server.url, events)  # once first, so both sides find the store in the page cache
        for i in rounds(repeats, "row 10"):
            # Alternating which goes first, so neither always finds the machine fresher.
            if i % 2:
                groups.append(_group(server.url, f"g{i}", events))
            streams.append(events / _stream(server.url, events))
            if not i % 2:
                groups.append(_group(server.url, f"g{i}", events))
    best = max(groups, key=lambda g: g["events_per_s"])
    return {"events": events, "entities": entities, "consumers": CONSUMERS, "lease_max": LEASE_MAX,
            "group_events_per_s": best["events_per_s"], "stream_events_per_s": max(streams),
            "group_runs": groups, "stream_runs": streams}


def consumer_main(url: str, realm: str, group: str, consumer: str, lease_max: int) -> None:
    count = leases = 0
    last = 0.0
    lease_ms: list[float] = []
    ack_ms: list[float] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        http.get("/_health").raise_for_status()  # the connection is open before the clock starts
        print("ready", flush=True)
        sys.stdin.readline()
        events_path, ack_path = f"/_groups/{realm}/{group}/events", f"/_groups/{realm}/{group}/ack"
        params = {"consumer": consumer, "max": str(lease_max), "wait": "1"}
        while True:
            t0 = time.monotonic()
            r = http.get(events_path, params=params)
            r.raise_for_status()
            t1 = time.monotonic()
            ids = [e["event_id"] for e in orjson.loads(r.content)["events"]]
            if not ids:
                break
            t2 = time.monotonic()
            a = http.post(ack_path, content=orjson.dumps({"consumer": consumer, "event_ids": ids}),
                          headers={"content-type": "application/json"})
            a.raise_for_status()
            last = time.monotonic()
            lease_ms.append((t1 - t0) * 1000)
            ack_ms.append((last - t2) * 1000)
            count += len(ids)
            leases += 1
    print(json.dumps({"count": count, "last": last, "leases": leases, "lease_ms": lease_ms, "ack_ms": ack_ms}),
          flush=True)


if __name__ == "__main__":
    consumer_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
