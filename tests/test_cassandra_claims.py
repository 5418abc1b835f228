"""Client-chosen event ids on Cassandra, against a real node: one id sent at the same moment to
several entities, through several store instances (each its own driver, caches and writer slot,
as separate processes have), is stored in exactly one of them; the claim of an attempt that never
committed passes on; a keyspace of schema 3 made before the claim's owner columns gains them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra.cluster import Cluster

from perhap import EventIdConflict, InvalidInput, Scope, StorageUnavailable, VersionConflict, open_store
from perhap.backends.cassandra import CassandraStore, clock
from perhap.backends.cassandra.records import SLOT_BITS
from perhap.testing.conformance.helpers import wait_until

pytestmark = pytest.mark.cassandra


@pytest.fixture
def url(cassandra: Any) -> str:
    return cassandra.new_url()  # type: ignore[no-any-return]


async def _send(store: Any, realm: str, entity: str, event_id: str, data: Any) -> str:
    try:
        result = await store.append(realm, "d", entity, "t", data, event_id=event_id)
    except EventIdConflict:
        return "conflict"
    except StorageUnavailable:  # two racers may fence each other until the deadline: then 503
        return "unavailable"
    return "created" if result.created else "replayed"


async def test_one_id_raced_to_several_entities_is_stored_once(url: str, realm: str) -> None:
    """Three store instances send the same id at once: two to entities of their own, one to the
    first's entity (a twin). Exactly one append creates it; the other entity's answer is 409, the
    twin's 201 or 200 with the stored event; the id is in one entity, once, and found by id."""
    rounds = 25
    stores = [await open_store(url) for _ in range(3)]
    try:
        outcomes: Counter[tuple[str, ...]] = Counter()
        for i in range(rounds):
            event_id = str(uuid.uuid4())
            answers = await asyncio.gather(
                _send(stores[0], realm, f"a{i}", event_id, i), _send(stores[1], realm, f"b{i}", event_id, i),
                _send(stores[2], realm, f"a{i}", event_id, i))
            outcomes[tuple(answers)] += 1
            a = (await stores[1].read(Scope(realm, "d", f"a{i}"))).events
            b = (await stores[0].read(Scope(realm, "d", f"b{i}"))).events
            if "unavailable" in answers:  # whatever the 503s: never stored twice
                assert len(a) + len(b) <= 1, (i, answers, a, b)
                continue
            assert len(a) + len(b) == 1, (i, answers, a, b)
            stored_in = "a" if a else "b"
            assert (a + b)[0].event_id == event_id and (a + b)[0].version == 0
            if stored_in == "a":  # the twins: one created it, the other created or replayed it
                assert answers[1] == "conflict" and answers.count("created") == 1, answers
                assert {answers[0], answers[2]} == {"created", "replayed"}, answers
            else:
                assert answers == ["conflict", "created", "conflict"], answers
            found = await stores[2].get_event(realm, "d", event_id)
            assert (found.entity, found.version) == (f"{stored_in}{i}", 0)
        decided = sum(n for answers, n in outcomes.items() if "unavailable" not in answers)
        assert decided >= rounds - 3, outcomes  # a 503 is the rare outcome of a race, not the rule
    finally:
        for store in stores:
            await store.close()


async def test_a_burst_of_ids_each_stored_once(url: str, realm: str) -> None:
    """Many ids in flight together (several appends racing per id, two stores), then every entity
    read back: each id once in the whole realm, every acknowledged append's answer agrees with it."""
    async with open_store(url) as one, open_store(url) as two:
        ids = [str(uuid.uuid4()) for _ in range(40)]
        jobs = []
        for n, event_id in enumerate(ids):
            for k, store in enumerate((one, two, one)):
                jobs.append(_send(store, realm, f"e{(n + k) % 7}", event_id, n))
        answers = await asyncio.gather(*jobs)
        assert answers.count("unavailable") <= len(answers) // 10, Counter(answers)
        realm_events = []
        following = None
        while True:
            page = await two.read(Scope(realm), following=following, limit=500)
            realm_events += page.events
            if page.next is None:
                break
            following = page.next
        stored = Counter(e.event_id for e in realm_events)
        assert all(count == 1 for count in stored.values()), stored.most_common(3)
        assert set(stored) <= set(ids)
        for n, event_id in enumerate(ids):
            mine = answers[3 * n:3 * n + 3]
            if "created" in mine or "conflict" in mine or "replayed" in mine:
                assert event_id in stored, (n, mine)
            assert mine.count("created") <= 1, mine  # three different entities: one stores it
        for entity in {e.entity for e in realm_events}:
            versions = [e.version for e in (await one.read(Scope(realm, "d", entity), limit=500)).events]
            assert versions == list(range(len(versions)))


async def test_the_claim_of_an_attempt_that_never_committed_passes_on(url: str, realm: str) -> None:
    """An append refused by its expected version leaves the id's claim to an attempt that never
    committed: the id may then be stored in another entity, and is refused in the first after that.
    The refused append's writer decides (fences) its own attempt as it gives up, so that another
    writer of the id finds it decided: it neither fences it again nor waits for it to commit or go
    (it waited up to half its time, and a retry of a batch of a thousand ids then timed out)."""
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        await store.append(realm, "d", "a", "t", "first")
        event_id = str(uuid.uuid4())
        with pytest.raises(VersionConflict):
            await store.append(realm, "d", "a", "t", "late", event_id=event_id, expected_version=5)
        await wait_until(lambda: store.writer.ks.stats["fenced"] == 1, "the writer to fence its own attempt")
        async with open_store(url) as other:  # another process
            assert isinstance(other, CassandraStore)
            created = await other.append(realm, "d", "b", "t", "moved", event_id=event_id)
            assert created.created and created.first.version == 0
            assert other.writer.ks.stats["fenced"] == 0
        with pytest.raises(EventIdConflict):
            await store.append(realm, "d", "a", "t", "moved", event_id=event_id)
        assert (await store.get_event(realm, "d", event_id)).entity == "b"
        assert [e.event for e in (await store.read(Scope(realm, "d", "a"))).events] == ["first"]


@contextlib.contextmanager
def placed_at(ts: int, *stores: Any) -> Iterator[None]:
    """Every attempt of these stores placed at ``ts`` (or above, if asked for more): the rare moment
    when two processes pick the same microsecond for one id, made certain."""
    for store in stores:
        positions = store.writer.positions

        async def place(start: int, count: int, positions: Any = positions) -> tuple[int, int]:
            ts0, slot = await type(positions).place(positions, max(start, ts), count)
            return max(ts0, ts), slot  # the lease covers it: ts is a few ms ahead of the clock
        positions.place = place
    try:
        yield
    finally:
        for store in stores:
            del store.writer.positions.place


async def _scopes(store: Any, realm: str, event_id: str) -> list[list[tuple[str, int]]]:
    """Where the id's event is found: the realm's events, the domain's, each as (entity, version)."""
    return [[(e.entity, e.version) for e in (await store.read(scope, limit=500)).events if e.event_id == event_id]
            for scope in (Scope(realm), Scope(realm, "d"))]


async def test_one_id_placed_at_one_ts_by_two_stores_keeps_its_index_rows(url: str, realm: str) -> None:
    """Two processes place the same ts for one id (index rows are keyed by ts and id): only the
    claim's owner writes rows there, so the loser's clean-up cannot delete the winner's, and the
    realm and domain reads show the stored event once, in the entity that stored it."""
    async with open_store(url) as one, open_store(url) as two:
        await asyncio.gather(one.append(realm, "d", "w1", "t", 0), two.append(realm, "d", "w2", "t", 0))
        for i in range(8):
            event_id = str(uuid.uuid4())
            with placed_at(clock.now_us() + 150_000, one, two):
                answers = await asyncio.gather(_send(one, realm, f"a{i}", event_id, i),
                                               _send(two, realm, f"b{i}", event_id, i))
            assert sorted(answers) == ["conflict", "created"], answers
            stored = await one.get_event(realm, "d", event_id)
            await asyncio.sleep(0.4)  # past the settle window: the forgotten rows' clean-up is done
            assert await _scopes(two, realm, event_id) == [[(stored.entity, 0)]] * 2, (i, answers)


async def test_an_id_taken_over_is_placed_above_its_last_owner(url: str, realm: str) -> None:
    """The claim of an attempt that never committed passes to another process's attempt only at a
    later ts than the first one's rows: at the same ts, the new attempt is placed again, above it."""
    async with open_store(url) as one, open_store(url) as two:
        assert isinstance(one, CassandraStore) and isinstance(two, CassandraStore)
        await one.append(realm, "d", "a", "t", "first")
        await two.append(realm, "d", "c", "t", "warm")  # its writer slot taken
        event_id = str(uuid.uuid4())
        at = clock.now_us() + 150_000  # ahead of where either places its next attempt
        with placed_at(at, one, two):
            with pytest.raises(VersionConflict):  # its attempt claimed the id, wrote rows at ``at``
                await one.append(realm, "d", "a", "t", "late", event_id=event_id, expected_version=5)
            created = await two.append(realm, "d", "b", "t", "moved", event_id=event_id)
        await wait_until(lambda: one.writer.ks.stats["fenced"] + two.writer.ks.stats["fenced"] == 1,
                         "the attempt fenced once (by its own writer, or the other's claim)")
        assert created.first.position >> SLOT_BITS > at
        await asyncio.sleep(0.4)
        assert await _scopes(one, realm, event_id) == [[("b", 0)]] * 2


async def test_a_schema_3_keyspace_gains_the_owner_columns(cassandra: Any, realm: str) -> None:
    keyspace = f"perhap_own_{uuid.uuid4().hex[:8]}"
    cassandra.keyspaces.append(keyspace)
    url = f"cassandra://{cassandra.hosts}/{keyspace}"
    async with open_store(url) as store:
        await store.append(realm, "d", "e", "t", 1)
    host, _, port = cassandra.hosts.rpartition(":")
    cluster = Cluster(host.split(","), port=int(port))
    try:
        session = cluster.connect(keyspace)
        session.execute("ALTER TABLE events_by_id DROP (owner, owner_txn, owner_ts)")  # as schema 3 first made it
        async with open_store(url) as store:
            event_id = str(uuid.uuid4())
            await store.append(realm, "d", "e", "t", 2, event_id=event_id)
            with pytest.raises(EventIdConflict):
                await store.append(realm, "d", "other", "t", 2, event_id=event_id)
        columns = {r[0] for r in session.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = 'events_by_id'",
            (keyspace,))}
        assert {"owner", "owner_txn"} <= columns
    finally:
        cluster.shutdown()


async def test_a_batch_of_client_ids_raced_to_two_entities_is_stored_once(url: str, realm: str) -> None:
    """The ids of a batch are claimed a partition at a time (time-ordered ids share a few, random
    ones each have their own): the same 200-event batch sent at once to two entities through two
    store instances is stored whole in exactly one, and the other append is refused with 409."""
    from perhap.ids import uuid7

    async with open_store(url) as one, open_store(url) as two:
        for make_id in (uuid7, lambda: str(uuid.uuid4())):
            ids = [make_id() for _ in range(200)]
            batch = [{"type": "t", "event": i, "event_id": event_id} for i, event_id in enumerate(ids)]
            entities = (f"x{uuid.uuid4().hex[:6]}", f"y{uuid.uuid4().hex[:6]}")
            results = await asyncio.gather(one.append_batch(realm, "d", entities[0], batch),
                                           two.append_batch(realm, "d", entities[1], batch), return_exceptions=True)
            created = [e for e, r in zip(entities, results, strict=True) if not isinstance(r, BaseException)]
            assert len(created) == 1, results
            assert all(isinstance(r, EventIdConflict) for r in results if isinstance(r, BaseException)), results
            for entity in entities:
                events = (await one.read(Scope(realm, "d", entity), limit=500)).events
                assert [e.event_id for e in events] == (ids if entity == created[0] else [])


async def test_client_ids_in_more_partitions_than_an_append_can_claim_are_refused(url: str, realm: str) -> None:
    """Each partition of a batch's client-chosen ids is a Paxos round before the commit, within the
    attempt's lead: 3,000 random ids were placed again and again until a 503 (at every retry too).
    Beyond MAX_CLAIMED_PARTITIONS the batch is refused at once (a 400, nothing stored, so that an
    import halves it); time-ordered ids share a few partitions and pass in larger batches."""
    from perhap.backends.cassandra.writer import MAX_CLAIMED_PARTITIONS
    from perhap.ids import uuid7

    async with open_store(url) as store:
        too_many = [{"type": "t", "event": i, "event_id": str(uuid.uuid4())} for i in range(MAX_CLAIMED_PARTITIONS + 1)]
        with pytest.raises(InvalidInput, match=f"lie in {MAX_CLAIMED_PARTITIONS + 1} partitions"):
            await store.append_batch(realm, "d", "random", too_many)
        assert (await store.read(Scope(realm, "d", "random"))).events == []
        ordered = [{"type": "t", "event": i, "event_id": uuid7()} for i in range(2 * MAX_CLAIMED_PARTITIONS)]
        result = await store.append_batch(realm, "d", "ordered", ordered)
        assert len(result.events) == len(ordered) and result.created


async def test_an_append_cancelled_while_its_commit_is_in_flight_keeps_its_rows(url: str, realm: str) -> None:
    """An append cancelled while its Paxos round was in flight (its caller gone, a loop shutting
    down) deleted its attempt's index rows, while the round still applied: the event was in its
    entity and found by id, but missing from its domain's and realm's reads for good, and a retry
    acknowledged it. The rows now stay for readers to settle, as for any unknown outcome."""
    from cassandra.query import BatchStatement

    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        db = store.writer.ks.db
        real = db.run

        async def applied_then_cancelled(statement: Any, args: Any = None, *, lwt: bool = False) -> Any:
            if lwt and isinstance(statement, BatchStatement):  # the commit: it applies, its caller is cancelled
                await real(statement, args, lwt=lwt)
                raise asyncio.CancelledError
            return await real(statement, args, lwt=lwt)

        for n, event_id in enumerate((str(uuid.uuid4()), None)):  # a client-chosen id, and the server's
            entity = f"e{n}"
            db.run = applied_then_cancelled  # type: ignore[method-assign]
            try:
                with pytest.raises(asyncio.CancelledError):
                    await store.append(realm, "d", entity, "t", {"n": n}, event_id=event_id)
            finally:
                del db.run
            stored = (await store.read(Scope(realm, "d", entity))).events
            assert [e.event for e in stored] == [{"n": n}]
            await asyncio.sleep(1.0)  # past the settle window: the readers settle the pending rows
            for scope in (Scope(realm, "d"), Scope(realm)):
                assert stored[0].event_id in [e.event_id for e in (await store.read(scope)).events], scope
