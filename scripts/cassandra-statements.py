#!/usr/bin/env python3
"""What one append or read costs on Cassandra, counted: every statement perhap's driver bridge sends
(Paxos rounds, unlogged batches and their rows, plain statements), per operation, on a private node.

    python scripts/cassandra-statements.py [--dir DIR]

The figures behind the capacity model in docs/backends/cassandra.md. Counts include the follow-ups
an append sends after its answer (marking rows ok), which is why each operation waits a second
before its count is taken. Exits non-zero if an operation fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cassandra.query import BatchStatement

from perhap import Scope, open_store
from perhap.backends.cassandra import driver
from perhap.testing.cassandra import CassandraNode

sent: list[str] = []
_execute = driver.Driver.execute


def _statement_text(stmt: Any) -> str:
    text = getattr(stmt, "query_string", None) or str(stmt)
    words = " ".join(text.split()).split(" ")
    # "INSERT INTO ks.table", "UPDATE ks.table", "SELECT ... FROM ks.table": the verb and the table.
    table = next((w for i, w in enumerate(words) if i and words[i - 1] in ("INTO", "UPDATE", "FROM")), "?")
    return f"{words[0]} {table.split('.')[-1]}"


def _counting_execute(self: driver.Driver, stmt: Any, args: Any = None, *, lwt: bool = False) -> Any:
    if isinstance(stmt, BatchStatement):
        parts = collections.Counter(_statement_text(s) for s in _batch_statements(self.cluster, stmt))
        inner = ", ".join(f"{n} x {what}" for what, n in parts.most_common())
        kind = "Paxos batch" if lwt else f"{stmt.batch_type.name.lower()} batch"
        sent.append(f"{kind} [{inner}]")
    else:
        sent.append(("Paxos " if lwt else "") + _statement_text(stmt))
    return _execute(self, stmt, args, lwt=lwt)


def _batch_statements(session_cluster: Any, batch: BatchStatement) -> list[Any]:
    # A batch keeps (is_prepared, query id or text, parameters) triples: a prepared statement is
    # found again by its id in the cluster's registry.
    prepared = session_cluster._prepared_statements
    return [prepared.get(query, query) if is_prepared else query
            for is_prepared, query, _ in batch._statements_and_parameters]


async def count(name: str, operation: Awaitable[Any], appends: int = 1) -> None:
    sent.clear()
    await operation
    await asyncio.sleep(1.0)  # the follow-ups after the answer
    each = f", {len(sent) / appends:.2f} per append" if appends > 1 else ""
    print(f"\n{name}: {len(sent)} requests{each}")
    for what, n in collections.Counter(sent).most_common():
        print(f"  {n:3} x {what}")


async def measure(url: str) -> None:
    async with open_store(url) as store:
        await store.append("r", "d", "warm", "t", {"x": 0})  # names and statements prepared
        await asyncio.sleep(1.0)
        await count("single append, new entity", store.append("r", "d", "e1", "t", {"x": 1}))
        await count("single append, existing entity", store.append("r", "d", "e1", "t", {"x": 2}))
        await count("single append with a client-chosen id", store.append(
            "r", "d", "e1", "t", {"x": 3}, event_id="0190f2c0-0000-7000-8000-000000000001"))
        await count("64 concurrent single appends, 64 new entities", asyncio.gather(*(
            store.append("r", "d", f"c{i}", "t", {"x": i}) for i in range(64))), appends=64)
        await count("64 more, to the same (existing) entities", asyncio.gather(*(
            store.append("r", "d", f"c{i}", "t", {"x": i}) for i in range(64))), appends=64)
        await count("batch of 1,000 events, new entity", store.append_batch(
            "r", "d", "b1", [{"type": "t", "event": {"n": i}} for i in range(1000)]))
        await count("read an entity (1,000 events, one page)", store.read(Scope("r", "d", "b1"), limit=1000))
        await count("read the entity's last event", store.read(Scope("r", "d", "b1"), order="desc", limit=1))
        await count("read a domain page (100 events)", store.read(Scope("r", "d"), limit=100))
        await count("read a realm page (100 events)", store.read(Scope("r"), limit=100))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="node directory (default: a temporary one, removed after)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="perhap-statements-"))
    driver.Driver.execute = _counting_execute  # type: ignore[method-assign]
    node = CassandraNode(directory / "node")
    node.start()
    try:
        asyncio.run(measure(node.url("statements")))
    finally:
        node.stop()
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
