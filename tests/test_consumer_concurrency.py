"""Concurrency of the consumer API: 8 writers (two of them in another process on PostgreSQL) make
single, batch and multi-entity appends to overlapping entities while a consumer pages the realm by
``after_position``. Every acknowledged event is read exactly once, in position order (contiguous on
SQLite and PostgreSQL), and each contest of equal expectations on overlapping entities has exactly
one winner.

Run as a module (``python -m tests.test_consumer_concurrency URL REALM FIRST COUNT``) it is the
other process: it opens its own store on the same database, waits for ``go`` on stdin, runs writers
FIRST .. FIRST+COUNT-1 and prints what was acknowledged as one JSON line.
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from perhap.backends import open_store
from perhap.errors import VersionConflict
from perhap.model import Event, Scope
from perhap.store.base import Store
from tests.helpers import read_all

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 8
ELSEWHERE = 2  # writers in another process, on backends several processes may share
STEPS = 80  # per writer; every fourth is a contest
SHARED = ["s0", "s1", "s2", "s3", "s4"]  # entities every writer appends to, without expectations
CONTESTED = ["c0", "c1", "c2"]  # entities only contests write to, always with expectations


@dataclass
class Outcome:
    """What one process's writers were told: acknowledged appends and each contest attempt."""

    acknowledged: list[list[str]] = field(default_factory=list)  # event ids of each append, in send order
    contests: list[tuple[int, int, bool]] = field(default_factory=list)  # (round, writer, won)

    def merge(self, other: dict[str, Any]) -> None:
        self.acknowledged += other["acknowledged"]
        self.contests += [(int(r), int(w), bool(won)) for r, w, won in other["contests"]]


async def contest(store: Store, realm: str, round_: int, writer: int) -> list[str] | None:
    """Try to win contest ``round_``: the contested entities must all be at version round_ - 1.

    Every contender expects the same versions and writes to all contested entities, so exactly one
    attempt per round can win, and the winner leaves them at version ``round_`` for the next.
    """
    order = CONTESTED[writer % 3:] + CONTESTED[:writer % 3]
    try:
        if store.supports_multi_entity:
            r = await store.append_many(realm, "d", [{"entity": e, "type": "won", "event": [round_, writer]}
                                                     for e in order],
                                        expected_versions=dict.fromkeys(CONTESTED, round_ - 1))
        else:  # one entity, one expectation: the single-entity form of the same race
            r = await store.append(realm, "d", "c0", "won", [round_, writer], expected_version=round_ - 1)
    except VersionConflict as lost:
        assert lost.current_version >= round_ and lost.expected_version == round_ - 1
        if store.supports_multi_entity:
            assert {e for e, _, _ in lost.conflicts} == set(CONTESTED)
        return None
    return [a.event_id for a in r.events]


async def writer(store: Store, realm: str, w: int, outcome: Outcome, barrier: asyncio.Barrier) -> None:
    rng = random.Random(w)
    for step in range(STEPS):
        kind = step % 4
        if kind == 0:
            r = await store.append(realm, "d" if w % 2 else "other", rng.choice(SHARED), "one", [w, step])
        elif kind == 1:
            batch = [{"type": "batch", "event": [w, step, k]} for k in range(rng.randint(2, 4))]
            r = await store.append_batch(realm, "d", rng.choice(SHARED), batch)
        elif kind == 2 and store.supports_multi_entity:
            entities = rng.sample(SHARED, rng.randint(2, 4)) + [rng.choice(SHARED)]  # one entity twice
            r = await store.append_many(realm, "d", [{"entity": e, "type": "many", "event": [w, step, k]}
                                                     for k, e in enumerate(entities)])
            assert all(a.position < b.position for a, b in zip(r.events, r.events[1:], strict=False))
        elif kind == 2:
            r = await store.append_batch(realm, "d", rng.choice(SHARED), [{"type": "batch", "event": [w, step]}])
        else:
            await barrier.wait()  # this process's writers start each contest together
            won = await contest(store, realm, step // 4, w)
            outcome.contests.append((step // 4, w, won is not None))
            if won is not None:
                outcome.acknowledged.append(won)
            continue
        outcome.acknowledged.append([a.event_id for a in r.events])


async def run_writers(store: Store, realm: str, first: int, count: int) -> Outcome:
    outcome = Outcome()
    barrier = asyncio.Barrier(count)
    await asyncio.gather(*[writer(store, realm, w, outcome, barrier) for w in range(first, first + count)])
    return outcome


async def consume(store: Store, realm: str, done: asyncio.Event) -> list[Event]:
    """Page the realm by after_position as a projector would, until the writers are done and read."""
    seen: list[Event] = []
    checkpoint = 0
    while True:
        await asyncio.sleep(0)  # a read may finish without suspending: let the writers run
        finished = done.is_set()
        page = (await store.read(Scope(realm), after_position=checkpoint, limit=25)).events
        seen += page
        if page:
            checkpoint = page[-1].position
        elif finished:
            return seen
        else:
            await asyncio.sleep(0.002)


async def elsewhere(url: str, realm: str) -> asyncio.subprocess.Process:
    """Start the writers of the other process; they begin once told ``go``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.test_consumer_concurrency", url, realm, str(WRITERS - ELSEWHERE),
        str(ELSEWHERE), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready == b"ready\n", ready
    return proc


async def test_writers_and_a_position_consumer(store: Store, store_url: str, realm: str) -> None:
    other = await elsewhere(store_url, realm) if store.backend_name == "postgres" else None
    here = WRITERS - (ELSEWHERE if other else 0)
    done = asyncio.Event()
    consumer = asyncio.ensure_future(consume(store, realm, done))
    if other is not None:
        assert other.stdin is not None
        other.stdin.write(b"go\n")
        await other.stdin.drain()
    outcome = await run_writers(store, realm, 0, here)
    if other is not None:
        out, _ = await asyncio.wait_for(other.communicate(), 120)
        assert other.returncode == 0, out
        outcome.merge(orjson.loads(out.splitlines()[-1]))
    done.set()
    seen = await asyncio.wait_for(consumer, 120)

    acknowledged = [i for ids in outcome.acknowledged for i in ids]
    ids = [e.event_id for e in seen]
    assert len(ids) == len(set(ids)), "an event was read twice"
    assert set(ids) == set(acknowledged) and len(acknowledged) == len(set(acknowledged))
    assert all(a.position < b.position for a, b in zip(seen, seen[1:], strict=False))
    if store.backend_name in ("sqlite", "postgres"):
        assert [e.position for e in seen] == list(range(1, len(seen) + 1))
    assert ids == [e.event_id for e in await read_all(store, Scope(realm))]
    # Each append's events are in send order, and each entity's versions have no gap.
    place = {e.event_id: n for n, e in enumerate(seen)}
    assert all([place[i] for i in eids] == sorted(place[i] for i in eids) for eids in outcome.acknowledged)
    for entity in {(e.domain, e.entity) for e in seen}:
        versions = [e.version for e in seen if (e.domain, e.entity) == entity]
        assert versions == list(range(len(versions))), entity
    # Every contest had exactly one winner, whichever process it was in.
    rounds = STEPS // 4
    winners = {r: [w for r_, w, won in outcome.contests if r_ == r and won] for r in range(rounds)}
    assert all(len(ws) == 1 for ws in winners.values()), winners
    assert len(outcome.contests) == rounds * WRITERS
    assert any(not won for _, _, won in outcome.contests)
    for entity in CONTESTED if store.supports_multi_entity else ["c0"]:
        assert [e.event for e in seen if e.entity == entity] == [[r, winners[r][0]] for r in range(rounds)]


async def main(url: str, realm: str, first: int, count: int) -> None:
    async with open_store(url) as store:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        outcome = await run_writers(store, realm, first, count)
    print(orjson.dumps({"acknowledged": outcome.acknowledged, "contests": outcome.contests}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
