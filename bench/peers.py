"""The peer: Python's ``eventsourcing`` library, its SQLite recorder, on the same disk in the same run.

We use ``SQLiteApplicationRecorder``: like perhap it keeps one global order of all events (the
notification log) beside each aggregate's own sequence, so it is the recorder an application with
readers of "everything after X" uses. Its datastore uses WAL with SQLite's default
``synchronous=FULL``, the same durability as perhap. Stored events are handed over already
serialised, so the peer's figures exclude the serialisation perhap does inside ``append``.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from .common import Sizes, remove_sqlite

TOPIC = "bench.domain:Happened"


def _recorder(path: Path):  # type: ignore[no-untyped-def]
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    # pool_size covers the 16 writer threads, so none waits on the pool itself.
    datastore = SQLiteDatastore(str(path), pool_size=20, max_overflow=10, pool_timeout=60)
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    return datastore, recorder


def _state(i: int) -> bytes:
    return b'{"n":%d,"text":"hello from the benchmark"}' % i


def concurrent_single_inserts(workdir: Path, seconds: float, threads: int = 16) -> float:
    """Events per second, ``threads`` threads each inserting one event per call."""
    from eventsourcing.persistence import StoredEvent

    path = workdir / "peer-single.db"
    datastore, recorder = _recorder(path)
    counts = [0] * threads
    start_gate = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(index: int) -> None:
        originator = uuid.uuid4()
        # Warm, as perhap's side is: each thread's pool connection opened before the clock starts.
        recorder.insert_events([StoredEvent(originator, 1, TOPIC, _state(1))])
        start_gate.wait()
        version = 1
        while not stop.is_set():
            version += 1
            recorder.insert_events([StoredEvent(originator, version, TOPIC, _state(version))])
            counts[index] += 1

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    datastore.close()
    remove_sqlite(path)
    return sum(counts) / elapsed


def batch_inserts(workdir: Path, batches: int, size: int = 1000) -> float:
    """Events per second inserting ``size``-event batches one after another."""
    from eventsourcing.persistence import StoredEvent

    path = workdir / "peer-batch.db"
    datastore, recorder = _recorder(path)
    prepared = []
    for _ in range(batches):
        originator = uuid.uuid4()
        prepared.append([StoredEvent(originator, v, TOPIC, _state(v)) for v in range(1, size + 1)])
    recorder.insert_events([StoredEvent(uuid.uuid4(), 1, TOPIC, _state(1))])  # warm, as perhap's side is
    start = time.perf_counter()
    for batch in prepared:
        recorder.insert_events(batch)
    elapsed = time.perf_counter() - start
    datastore.close()
    remove_sqlite(path)
    return batches * size / elapsed


def select_events(workdir: Path, count: int) -> tuple[float, int]:
    """Events per second reading one aggregate of ``count`` events with ``select_events``."""
    from eventsourcing.persistence import StoredEvent

    path = workdir / "peer-read.db"
    datastore, recorder = _recorder(path)
    originator = uuid.uuid4()
    for first in range(1, count + 1, 10_000):
        recorder.insert_events([StoredEvent(originator, v, TOPIC, _state(v))
                                for v in range(first, min(first + 10_000, count + 1))])
    recorder.select_events(originator)  # one whole read untimed, as perhap's side gets (inprocess.py)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        events = recorder.select_events(originator)
        best = min(best, time.perf_counter() - start)
        assert len(events) == count
    datastore.close()
    remove_sqlite(path)
    return count / best, count


def measure(workdir: Path, sizes: Sizes) -> dict[str, float]:
    read_rate, _ = select_events(workdir, sizes.peer_events)
    return {
        "single": concurrent_single_inserts(workdir, sizes.seconds),
        "batch": batch_inserts(workdir, sizes.batch_count),
        "select": read_rate,
    }
