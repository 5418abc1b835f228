"""Adversarial durability: a server SIGKILLed during a flood of appends loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from perhap.backends import open_store
from perhap.model import Scope
from tests.helpers import read_all, wait_until
from tests.servers import ProcessServer


async def _flood(c: int, url: str, realm: str, acknowledged: dict[str, list[str]], stop: asyncio.Event) -> None:
    """Append singles and 5-event batches until the server dies; record what got a 201."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        n = 0
        while not stop.is_set():
            n += 1
            entity = f"e{random.randrange(20)}"
            try:
                if n % 4 == 0:
                    batch = [{"type": "t", "event": {"c": c, "n": n, "k": k}} for k in range(5)]
                    r = await http.post(f"/{realm}/d/{entity}", json={"events": batch})
                    if r.status_code == 201:
                        acknowledged[f"batch-{c}-{n}"] = [e["event_id"] for e in r.json()["events"]]
                else:
                    r = await http.post(f"/{realm}/d/{entity}/t", json={"event": {"c": c, "n": n}})
                    if r.status_code == 201:
                        acknowledged[f"one-{c}-{n}"] = [r.json()["event_id"]]
            except httpx.TransportError:
                return  # the server is gone


async def test_sigkill_during_flood_loses_no_acknowledged_event(store_url: str, realm: str, tmp_path: Any) -> None:
    acknowledged: dict[str, list[str]] = {}
    server = ProcessServer(store_url, cwd=tmp_path).start()
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(_flood(c, server.url, realm, acknowledged, stop)) for c in range(16)]
    try:
        # Kill once plenty is acknowledged, so the kill lands among in-flight appends.
        await wait_until(lambda: len(acknowledged) >= 1000, "1000 acknowledged appends", timeout=120)
    finally:
        server.kill()
        stop.set()
        await asyncio.gather(*clients)

    async with open_store(store_url) as store:
        stored = await read_all(store, Scope(realm, "d"), limit=10_000)
    ids = {e.event_id for e in stored}
    missing = [key for key, eids in acknowledged.items() if not set(eids) <= ids]
    assert not missing, f"acknowledged but lost after SIGKILL: {missing[:5]}"
    # No partial batch is visible: each batch's events are all there or none are.
    by_n: dict[tuple[int, int], int] = {}
    for e in stored:
        if "k" in e.event:
            key = (e.event["c"], e.event["n"])
            by_n[key] = by_n.get(key, 0) + 1
    assert all(count == 5 for count in by_n.values()), by_n
    # Positions stay increasing after the crash, and without a gap where the backend promises it.
    numbers = [e.position for e in stored]
    assert all(a < b for a, b in zip(numbers, numbers[1:], strict=False))
    if not store_url.startswith("cassandra"):
        assert numbers == list(range(1, len(stored) + 1)), "a position gap after SIGKILL"
    # Versions stay gapless per entity after the crash.
    for entity in {e.entity for e in stored}:
        versions = [e.version for e in stored if e.entity == entity]
        assert versions == list(range(len(versions)))

    # And the store keeps working after a restart.
    with ProcessServer(store_url, cwd=tmp_path) as again:
        r = httpx.post(f"{again.url}/{realm}/d/e0/t", json={"event": "after"})
        assert r.status_code == 201


async def test_sigterm_finishes_in_flight_appends(store_url: str, realm: str, tmp_path: Any) -> None:
    server = ProcessServer(store_url, cwd=tmp_path).start()
    acknowledged: dict[str, list[str]] = {}
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(_flood(c, server.url, realm, acknowledged, stop)) for c in range(8)]
    try:
        await wait_until(lambda: len(acknowledged) >= 100, "100 acknowledged appends", timeout=120)
        code, output = await asyncio.get_running_loop().run_in_executor(None, server.terminate)
    finally:
        server.kill()  # only if it is still running
        stop.set()
        await asyncio.gather(*clients)
    assert code == 0, output
    assert "Traceback" not in output
    async with open_store(store_url) as store:
        ids = {e.event_id for e in (await store.read(Scope(realm, "d"), limit=10_000)).events}
    assert all(set(eids) <= ids for eids in acknowledged.values())
