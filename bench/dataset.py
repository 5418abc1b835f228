"""Large prepared SQLite stores, made by bulk SQL straight into perhap's schema and cached.

Appending 10 million events through perhap would take longer than the whole suite may run, so the
store the growth and memory rows read is generated inside SQLite with one recursive CTE, its
indexes built after the rows, and kept in a cache directory (``~/.cache/perhap-bench`` unless
``--cache-dir`` or ``PERHAP_BENCH_CACHE`` says otherwise) for the next run.

Shape of a store of N events: realm ``bench``, ten domains ``d0`` .. ``d9`` of N/10 events each,
N/100 entities ``e0`` .. of 100 events each (entity k in domain ``d{k % 10}``), two event types.
Events are interleaved round-robin over all entities in commit order (seq and position), as in a
store written by many clients over time: a domain's or realm's walk meets every entity in turn.
Schema 3 stores the rows by entity whatever the order they came in (:mod:`perhap.backends.sqlite.schema`),
so they are generated in that order (each one appended to the table), with the seq and position the
round-robin gives them. Event ids are valid version-7 UUIDs, ordered like the seqs, all older than
any perhap makes today (so new appends land at the end of the id index, as real ones do).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from perhap.backends.sqlite import SCHEMA, SCHEMA_VERSION
from perhap.backends.sqlite.schema import KEY_SPAN

from .common import log

DATASET_VERSION = 1
DOMAINS = 10
EVENTS_PER_ENTITY = 100
TYPES = ("happened", "noted")
TS = "2026-01-01T00:00:00.000000Z"


@dataclass(frozen=True)
class Dataset:
    path: Path
    events: int
    entities: int

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def entity(self, k: int) -> tuple[str, str, str]:
        """(realm, domain, entity) of entity number k."""
        return "bench", f"d{k % DOMAINS}", f"e{k}"

    def domain_events(self) -> int:
        return self.events // DOMAINS


def cache_dir(explicit: str | None = None) -> Path:
    path = Path(explicit or os.environ.get("PERHAP_BENCH_CACHE") or Path.home() / ".cache" / "perhap-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepared(events: int, directory: Path) -> Dataset:
    """The cached store of ``events`` events, built first if it is missing or stale."""
    if events % (DOMAINS * EVENTS_PER_ENTITY):
        raise ValueError(f"events must be a multiple of {DOMAINS * EVENTS_PER_ENTITY}")
    path = directory / f"store-{events}-v{DATASET_VERSION}-s{SCHEMA_VERSION}.db"
    sidecar = path.with_suffix(".json")
    entities = events // EVENTS_PER_ENTITY
    data = Dataset(path, events, entities)
    # Two runs sharing a cache directory: one builds, the other waits and reuses the store (both
    # building into one temporary file made one of them fail at the rename).
    with open(path.with_suffix(".build-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and sidecar.exists():
            restore(data)
            return data
        started = time.perf_counter()
        log(f"building the cached store of {events:,} events in {path} (once; later runs reuse it)")
        build(path.with_suffix(".tmp"), events)
        os.replace(path.with_suffix(".tmp"), path)
        sidecar.write_text(json.dumps({"events": events, "entities": entities,
                                       "seconds": round(time.perf_counter() - started, 1)}) + "\n")
    log(f"built in {time.perf_counter() - started:.0f}s, {path.stat().st_size / 1e9:.2f} GB")
    return data


def build(path: Path, events: int) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    entities = events // EVENTS_PER_ENTITY
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB while building the indexes
    conn.execute("PRAGMA temp_store=MEMORY")
    tables, indexes = _split_schema()
    conn.executescript(tables)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO perhap_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    conn.execute("INSERT INTO realms (id, name) VALUES (1, 'bench')")
    conn.executemany("INSERT INTO domains (id, realm_id, name) VALUES (?, 1, ?)",
                     [(d + 1, f"d{d}") for d in range(DOMAINS)])
    conn.executemany("INSERT INTO types (id, name) VALUES (?, ?)", [(i + 1, t) for i, t in enumerate(TYPES)])
    conn.execute(f"""
        WITH RECURSIVE k(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM k WHERE x + 1 < {entities})
        INSERT INTO entities (id, domain_id, name)
        SELECT x + 1, x % {DOMAINS} + 1, 'e' || x FROM k""")
    conn.execute("INSERT INTO entity_types SELECT n.id, t.id FROM entities n, types t")
    # Row x in key order is entity x / 100 (0-based), version x % 100; its commit order i (0-based)
    # is version * entities + entity: entity i % entities, version i / entities, as round-robin
    # appends would make it. The type alternates by version.
    conn.execute(f"""
        WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x + 1 < {events}),
        r(i, k, v) AS (SELECT (x % {EVENTS_PER_ENTITY}) * {entities} + x / {EVENTS_PER_ENTITY},
                              x / {EVENTS_PER_ENTITY}, x % {EVENTS_PER_ENTITY} FROM s)
        INSERT INTO events (entity_key, seq, event_id, realm_id, domain_id, entity_id, type_id, version, ts,
                            data, meta, position)
        SELECT (k + 1) * {KEY_SPAN} + v, i + 1,
               printf('00000000-%04x-7%03x-8%03x-%012x', (i >> 40) & 65535, 0, 0, i & 281474976710655),
               1, k % {DOMAINS} + 1, k + 1, v % 2 + 1, v, '{TS}',
               CAST(printf('{{"n":%d,"text":"hello from the benchmark"}}', v) AS BLOB),
               CAST('{{}}' AS BLOB), i + 1
        FROM r""")
    conn.execute("COMMIT")
    for statement in indexes:
        conn.execute(statement)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _split_schema() -> tuple[str, list[str]]:
    statements = [s.strip() for s in SCHEMA.split(";") if s.strip()]
    tables = ";\n".join(s for s in statements if not s.upper().startswith("CREATE UNIQUE INDEX")
                        and not s.upper().startswith("CREATE INDEX")) + ";"
    indexes = [s for s in statements if s.upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX"))]
    return tables, indexes


def restore(data: Dataset) -> None:
    """Undo what a benchmark appended (events, entities beyond the generated ones)."""
    conn = sqlite3.connect(data.path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        if last <= data.events:
            return
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM events WHERE seq > ?", (data.events,))
        conn.execute("DELETE FROM entity_types WHERE entity_id > ?", (data.entities,))
        conn.execute("DELETE FROM entities WHERE id > ?", (data.entities,))
        conn.execute("DELETE FROM domains WHERE id > ?", (DOMAINS,))
        conn.execute("DELETE FROM realms WHERE id > 1")
        conn.execute("DELETE FROM types WHERE id > ?", (len(TYPES),))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def warm(data: Dataset) -> None:
    """Read the file once so it sits in the page cache, as a long-running server's store does."""
    with open(data.path, "rb", buffering=0) as f:
        while f.read(8 * 1024 * 1024):
            pass
