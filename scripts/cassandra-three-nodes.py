#!/usr/bin/env python3
"""Three Cassandra nodes on loopback (127.0.0.1-3), replication factor 3, QUORUM: one node is
killed in the middle of a flood of appends. Appends must go on, and nothing acknowledged is lost.

    python scripts/cassandra-three-nodes.py [--dir DIR] [--seconds 30] [--writers 16] [--keep]

Needs Java 17 and Maven like perhap.testing.cassandra (the jars are shared with its cache), Linux
(all of 127.0.0.0/8 is loopback) and about 2.5 GB of memory. Prints figures per phase and exits
non-zero if an acknowledged event is missing, a version has a gap, or a paging reader that ran all
along saw an event twice or out of the final order.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perhap import Scope, StorageUnavailable, Store, open_store
from perhap.testing.cassandra import CassandraNode

NATIVE, STORAGE = 19142, 17100  # the same ports on each address
TOKENS = (-9223372036854775808, -3074457345618258603, 3074457345618258602)


class LoopbackNode(CassandraNode):
    """A harness node on its own loopback address, joining the cluster seeded by 127.0.0.1."""

    def __init__(self, directory: Path, index: int) -> None:
        super().__init__(directory, port=NATIVE)
        self.host = f"127.0.0.{index + 1}"
        self.index = index
        self._state.update(storage_port=STORAGE, ssl_storage_port=STORAGE + 1)

    def _write_config(self) -> None:
        super()._write_config()
        path = self.dir / "cassandra.yaml"
        text = path.read_text()
        text = text.replace("listen_address: 127.0.0.1", f"listen_address: {self.host}")
        text = text.replace("rpc_address: 127.0.0.1", f"rpc_address: {self.host}")
        text += f"auto_bootstrap: false\ninitial_token: {TOKENS[self.index]}\n"
        path.write_text(text)


async def open_with_retries(url: str) -> Store:
    """A cluster that has just formed may time out its first schema changes and Paxos rounds."""
    for attempt in range(5):
        try:
            return await open_store(url)
        except StorageUnavailable as exc:
            print(f"opening the store failed ({exc.detail[:100]}...), retrying")
            await asyncio.sleep(2 + attempt * 2)
    return await open_store(url)


async def flood(url: str, seconds: float, writers: int, kill_at: float, node: CassandraNode) -> int:
    async with await open_with_retries(url) as store:
        realm = f"three{int(time.time())}"
        acknowledged: list[str] = []
        log: list[tuple[float, str, float]] = []  # (when, outcome, latency)
        t0 = time.monotonic()
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = await store.append(realm, f"d{w % 4}", f"e{w}", "t", {"w": w, "i": i})
                    acknowledged.append(r.first.event_id)
                    log.append((started - t0, "ok", time.monotonic() - started))
                    i += 1
                except StorageUnavailable as exc:
                    log.append((started - t0, "503", time.monotonic() - started))
                    print(f"  {started - t0:6.1f}s writer {w}: {exc.detail[:120]}")
                    await asyncio.sleep(0.1)

        async def reader() -> list[str]:
            seen: list[str] = []
            following = None
            while True:
                finished = stop.is_set()
                try:
                    page = await store.read(Scope(realm), following=following, limit=50)
                except StorageUnavailable:
                    await asyncio.sleep(0.2)
                    continue
                seen += [e.event_id for e in page.events]
                if page.events:
                    following = page.events[-1].event_id
                elif finished:
                    return seen
                else:
                    await asyncio.sleep(0.05)

        tasks = [asyncio.ensure_future(writer(w)) for w in range(writers)]
        paging = asyncio.ensure_future(reader())
        await asyncio.sleep(kill_at)
        print(f"{time.monotonic() - t0:6.1f}s: killing node {node.host} (SIGKILL)")
        killed_at = time.monotonic() - t0
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(max(0.0, seconds - kill_at))
        stop.set()
        await asyncio.gather(*tasks)
        seen = await paging
        ended = time.monotonic() - t0

        def phase(name: str, start: float, end: float) -> None:
            rows = [x for x in log if start <= x[0] < end]
            ok = [x[2] for x in rows if x[1] == "ok"]
            if not ok:
                print(f"{name}: no acknowledged appends")
                return
            q = statistics.quantiles(ok, n=100)
            print(f"{name}: {len(ok) / (end - start):7.1f} appends/s, p50 {q[49] * 1000:.0f} ms, "
                  f"p99 {q[98] * 1000:.0f} ms, {len(rows) - len(ok)} failed")

        phase("three nodes ", 0, killed_at)
        phase("two nodes   ", killed_at, ended)
        stored = []
        following = None
        while True:
            page = await store.read(Scope(realm), following=following, limit=5000)
            stored += page.events
            if page.next is None:
                break
            following = page.next
        ids = [e.event_id for e in stored]
        problems = []
        if missing := set(acknowledged) - set(ids):
            problems.append(f"{len(missing)} acknowledged events missing")
        if len(set(seen)) != len(seen) or seen != ids:
            problems.append("the paging reader's sequence differs from the final order")
        for w in range(writers):
            versions = [e.version for e in stored if e.entity == f"e{w}"]
            if versions != list(range(len(versions))):
                problems.append(f"entity e{w} has gaps: {versions[:5]}...")
        print(f"acknowledged {len(acknowledged)}, stored {len(ids)} (committed but unacknowledged: "
              f"{len(ids) - len(set(acknowledged))}), reader saw {len(seen)}; store statistics "
              f"{ {s.name: s.value for s in store.statistics()} }")
        for p in problems:
            print("PROBLEM:", p)
        return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where the nodes live (default: a temporary directory)")
    parser.add_argument("--seconds", type=float, default=30, help="length of the flood")
    parser.add_argument("--kill-at", type=float, default=10, help="when node 3 is killed")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="leave the nodes running")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="perhap-3nodes-"))
    nodes = [LoopbackNode(root / f"node{i + 1}", i) for i in range(3)]
    try:
        for node in nodes:  # one at a time: each joins through the seed
            started = time.monotonic()
            node.start(timeout=300)
            print(f"node {node.host} up in {time.monotonic() - started:.1f}s")
        hosts = ",".join(n.host for n in nodes)
        url = (f"cassandra://{hosts}:{NATIVE}/perhap3?replication_factor=3&consistency=QUORUM"
               f"&serial_consistency=SERIAL&timeout=5")
        print(f"flooding {url} for {args.seconds:.0f}s with {args.writers} writers")
        return asyncio.run(flood(url, args.seconds, args.writers, args.kill_at, nodes[2]))
    finally:
        if not args.keep:
            for node in nodes:
                node.stop()
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
