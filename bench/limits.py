"""The floor: what SQLite itself does on this disk, with no perhap and no Python beyond the loop.

Three reference figures, all WAL with ``synchronous=FULL`` (every commit fsync'd, as perhap does):
- one row per commit (the fsync rate: what any store without group commit is bound by);
- ``executemany`` of 1,000 rows per commit into a small table with 2 indexes;
Keys are perhap's time-ordered UUIDs (random UUIDs would scatter every commit over the whole
unique index and measure the disk's random-write rate instead).
- ``executemany`` of 1,000 rows per commit into perhap's own events table (its 7 b-trees), so the
  batch row shows how much of perhap's cost is SQLite and how much is Python around it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from perhap.store import uuid7

from .common import Sizes, remove_sqlite


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _payload(i: int) -> bytes:
    return b'{"n":%d,"text":"hello from the benchmark"}' % i


def single_row_commits(workdir: Path, seconds: float) -> float:
    """Durable one-row commits per second."""
    path = workdir / "raw-single.db"
    conn = _connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL)")
    conn.execute("CREATE INDEX t_k ON t (k)")
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (uuid7(), _payload(n)))
        conn.execute("COMMIT")
        n += 1
        if n % 16 == 0 and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    conn.close()
    remove_sqlite(path)
    return n / elapsed


def executemany_rows(workdir: Path, seconds: float, *, perhap_schema: bool) -> float:
    """Rows per second with 1,000 rows per commit, either a 2-index table or perhap's schema."""
    path = workdir / f"raw-many-{int(perhap_schema)}.db"
    conn = _connect(path)
    if perhap_schema:
        from perhap.backends.sqlite import SCHEMA

        conn.executescript(SCHEMA)
        sql = ("INSERT INTO events (entity_key, seq, event_id, realm_id, domain_id, entity_id, type_id, version, ts,"
               " data, meta, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    else:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, g INTEGER NOT NULL,"
                     " v BLOB NOT NULL)")
        conn.execute("CREATE INDEX t_g ON t (g)")
        sql = "INSERT INTO t (k, g, v) VALUES (?, ?, ?)"
    ts = "2026-01-01T00:00:00.000000Z"
    n = 0
    batch_no = 0
    busy = 0.0  # in SQLite: building the rows (a thousand uuid7s) is Python's, not the floor's
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or batch_no == 0:
        if perhap_schema:
            # Each batch a new entity, as row 4 appends: its key is entity * 2**32 + version.
            rows = [((batch_no + 1) * 2**32 + v, n + v + 1, uuid7(), 1, 1, batch_no + 1, 1, v, ts, _payload(v), b"{}",
                     n + v + 1) for v in range(1000)]
        else:
            rows = [(uuid7(), batch_no, _payload(v)) for v in range(1000)]
        began = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        busy += time.perf_counter() - began
        n += len(rows)
        batch_no += 1
    conn.close()
    remove_sqlite(path)
    return n / busy


def measure(workdir: Path, sizes: Sizes) -> dict[str, float]:
    """The reference rows' raw figures, each measured for half a throughput phase (they judge
    nothing, and a full run must stay within its five minutes)."""
    return {
        "single_commits": single_row_commits(workdir, sizes.seconds / 2),
        "executemany": executemany_rows(workdir, sizes.seconds / 2, perhap_schema=False),
        "executemany_perhap_schema": executemany_rows(workdir, sizes.seconds / 2, perhap_schema=True),
    }
