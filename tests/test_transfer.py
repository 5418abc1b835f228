"""Export, import and copy, for every backend and every pair of backends: full fidelity (ids,
versions, timestamps, meta, commit order), idempotent imports, resumable copies, clear failures."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from perhap import Scope, Store, open_store
from perhap.store import NewEvent, dump_json
from perhap.transfer import (
    Importer,
    TransferError,
    export_dump,
    import_dump,
    iter_scope,
    parse_dump,
)
from tests.conftest import BACKENDS, get_provider
from tests.helpers import read_all
from tests.providers import Provider
from tests.servers import ThreadServer


def run_cli(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], input=input, capture_output=True,
                          timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def fresh_url(provider: Provider) -> str:
    """The URL of an empty store of the provider's backend, for tests of whole stores.

    Every provider hands out an empty store per call (Cassandra's by a namespace of its own
    inside one shared keyspace, which costs no schema change).
    """
    return provider.new_url()


async def fill(store: Store, realms: int = 3, per_realm: int = 60, prefix: str = "realm") -> int:
    """Events of every shape: interleaved entities (commit order matters), batches, chosen ids,
    meta, unicode and exact big integers."""
    values: list[Any] = [None, True, -1.5, 1e300, "ü✓\n\"q\"", [], {}, 2**70, {"z": 1, "a": [2, {"b": None}]}]
    n = 0
    for r in range(realms):
        realm = f"{prefix}{r}"
        for i in range(per_realm):
            entity, domain = f"e{i % 7}", f"d{i % 2}"
            if i % 10 == 9:
                await store.append_batch(realm, domain, f"batch{i}", [
                    {"type": "b", "event": k, "event_id": str(uuid.uuid4()), "meta": {"k": k}} for k in range(3)])
                n += 3
            else:
                await store.append(realm, domain, entity, f"t{i % 3}", values[i % len(values)],
                                   meta={"i": i, "ü": "x"} if i % 2 else None)
                n += 1
    return n


async def read_realm(store: Store, realm: str) -> list[dict[str, Any]]:
    return [e.to_dict() async for e in iter_scope(store, Scope(realm))]


_POSITION = re.compile(rb'("version":\d+),"position":\d+(,"timestamp")')


def strip_positions(dump: bytes) -> bytes:
    """A dump without its positions: each store numbers its events itself, so two stores holding
    the same events may differ there (on Cassandra; SQLite and PostgreSQL count 1, 2, 3 ... per realm)."""
    return _POSITION.sub(rb"\1\2", dump)


def positions_of(dump: bytes) -> dict[str, list[int]]:
    """Each realm's positions, in the dump's order."""
    found: dict[str, list[int]] = {}
    for line in dump.splitlines()[1:-1]:  # (not the header, nor the end line)
        event = orjson.loads(line)
        found.setdefault(event["realm"], []).append(event["position"])
    return found


def export_cli(url: str, *scope: str) -> bytes:
    r = run_cli("export", "--db", url, *scope)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""  # no progress bar when stderr is not a terminal
    return r.stdout


class Sink:
    """A binary output that counts what it is given and keeps nothing."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------- export and import


async def test_export_import_round_trip_is_byte_identical(backend: Provider, tmp_path: Path) -> None:
    store_url = fresh_url(backend)
    async with open_store(store_url) as store:
        count = await fill(store)
    dump = export_cli(store_url)
    lines = dump.splitlines()
    assert orjson.loads(lines[0]) == {"format": "perhap-dump", "version": 3, "scope": None}
    assert len(lines) == count + 2
    assert orjson.loads(lines[-1]) == {"format": "perhap-dump", "end": True, "events": count}
    first = orjson.loads(lines[1])
    assert list(first) == ["event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "position",
                           "timestamp"]

    target = fresh_url(backend)
    path = tmp_path / "dump.jsonl"
    path.write_bytes(dump)
    r = run_cli("import", "--db", target, str(path))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert f"imported {count:,} events into 3 realms (0 were there already)" in r.stdout.decode()
    imported = export_cli(target)
    assert strip_positions(imported) == strip_positions(dump)
    # The target gave the events positions of its own, in the dump's order; where positions count
    # 1, 2, 3 ... per realm (not on Cassandra) they are the source's again: byte for byte the same.
    for realm, positions in positions_of(imported).items():
        assert positions == sorted(set(positions)), realm
    if backend.name != "cassandra":
        assert imported == dump
    # Idempotent: again, from stdin this time, stores nothing new.
    r = run_cli("import", "--db", target, "-", input=dump)
    assert r.returncode == 0, r.stderr
    assert f"imported 0 events into 3 realms ({count:,} were there already)" in r.stdout.decode()
    assert export_cli(target) == imported


async def test_import_keeps_ids_versions_timestamps_and_meta(store: Store, realm: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    events: list[dict[str, Any]] = [
        {"event_id": ids[0], "realm": realm, "domain": "d", "entity": "a", "type": "t", "event": {"x": 1},
         "meta": {"corr": "c1"}, "version": 0, "timestamp": "2001-02-03T04:05:06.000007Z"},
        {"event_id": ids[1], "realm": realm, "domain": "d", "entity": "b", "type": "t", "event": 2**80,
         "meta": {}, "version": 0, "timestamp": "2001-02-03T04:05:07.000000Z"},
        {"event_id": ids[2], "realm": realm, "domain": "d", "entity": "a", "type": "u", "event": None,
         "meta": {}, "version": 1, "timestamp": "2001-02-03T04:05:06.000007Z"},
        {"event_id": ids[3], "realm": realm, "domain": "e", "entity": "a", "type": "u", "event": [1],
         "meta": {"n": 1}, "version": 0, "timestamp": "2000-01-01T01:00:00+01:00"},
    ]
    lines = [dump_json(e, "line") for e in events]  # no header: the output of `perhap read` imports too
    stats = await import_dump(store, lines)
    assert (stats.imported, stats.present) == (4, 0)
    # Commit order across entities is the dump's; a timestamp is kept in perhap's own form (UTC).
    events[3]["timestamp"] = "2000-01-01T00:00:00.000000Z"
    stored = await read_realm(store, realm)
    positions = [e.pop("position") for e in stored]
    assert stored == events and positions == sorted(set(positions))
    assert (await import_dump(store, lines)).present == 4
    assert (await store.get_event(realm, "d", ids[1])).event == 2**80


async def test_interrupted_import_resumes_with_other_batch_boundaries(tmp_path: Path, backend: Provider) -> None:
    sink = tmp_path / "dump.jsonl"
    async with open_store(fresh_url(backend)) as store:
        await fill(store, realms=2, per_realm=80)
        with sink.open("wb") as out:
            await export_dump(store, out)
    lines = sink.read_bytes().splitlines(keepends=True)
    async with open_store(fresh_url(backend)) as target:
        # A first run stopped part-way through a run of one entity's events (a batch boundary the
        # full run does not share), then the whole dump again.
        cut = next(i for i in range(60, len(lines)) if b'"batch' in lines[i] and b'"version":1' in lines[i])
        with pytest.raises(TransferError, match=f"no end line: it was cut short.*its {cut - 1} events were imported"):
            await import_dump(target, lines[:cut])  # every line read is stored, then the cut is named
        again = await import_dump(target, lines)
        assert (again.imported, again.present) == (len(lines) - 1 - cut, cut - 1)  # (lines: and the end line)
        out2 = tmp_path / "again.jsonl"
        with out2.open("wb") as out:
            await export_dump(target, out)
    assert strip_positions(out2.read_bytes()) == strip_positions(sink.read_bytes())


class Sequential:
    """A store that does not promise to keep submission order: the importer goes one batch at a time."""

    preserves_submission_order = False

    def __init__(self, inner: Store, keep_timestamps: bool = True) -> None:
        self.inner, self.keep_timestamps = inner, keep_timestamps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_batch(self, realm: str, domain: str, entity: str, events: list[NewEvent], **kw: Any) -> Any:
        if not self.keep_timestamps:  # a backend without timestamp support
            events = [dataclasses.replace(e, timestamp=None) for e in events]
        return await self.inner.append_batch(realm, domain, entity, events, **kw)


async def test_sequential_import_keeps_order(store: Store, realm: str, backend: Provider, tmp_path: Path) -> None:
    await fill(store, realms=1, per_realm=50, prefix=realm)
    first = tmp_path / "a.jsonl"
    with first.open("wb") as out:
        await export_dump(store, out, Scope(f"{realm}0"))
    async with open_store(fresh_url(backend)) as target:
        with first.open("rb") as f:
            stats = await import_dump(Sequential(target), f)  # type: ignore[arg-type]
        assert stats.imported == len(first.read_bytes().splitlines()) - 2  # (the header and the end line)
        second = tmp_path / "b.jsonl"
        with second.open("wb") as out:
            await export_dump(target, out, Scope(f"{realm}0"))
    assert strip_positions(second.read_bytes()) == strip_positions(first.read_bytes())


async def test_a_backend_that_drops_timestamps_fails_clearly(store: Store, realm: str, backend: Provider) -> None:
    await store.append(realm, "d", "e", "t", 1)
    lines = [orjson.dumps(e) async for e in _wire(store, realm)]
    async with open_store(fresh_url(backend)) as target:
        with pytest.raises(TransferError, match="did not keep the imported timestamp"):
            await import_dump(Sequential(target, keep_timestamps=False), lines)  # type: ignore[arg-type]


async def _wire(store: Store, realm: str) -> Any:
    async for e in iter_scope(store, Scope(realm)):
        yield e.to_json_dict()


async def test_import_refuses_version_gaps_and_foreign_events(store: Store, realm: str) -> None:
    await store.append(realm, "d", "e", "t", "already here")
    event = {"event_id": str(uuid.uuid4()), "realm": realm, "domain": "d", "entity": "e", "type": "t",
             "event": 1, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00.000000Z"}
    # The destination entity is at version 0 with another event: version 0 cannot be kept.
    with pytest.raises(TransferError, match=r"entity is at version 0.*has version 0.*at version -1"):
        await import_dump(store, [orjson.dumps(event)], "dump.jsonl")
    # A gap: version 5 into an entity at version 0.
    with pytest.raises(TransferError, match=r"dump.jsonl line 1 .*version 5.*must be at version 4"):
        await import_dump(store, [orjson.dumps({**event, "version": 5})], "dump.jsonl")
    # The same id, stored already with other content.
    stored = (await store.read(Scope(realm, "d", "e"))).events[0]
    clash = {**stored.to_dict(), "event": "something else"}
    with pytest.raises(TransferError, match=f"{stored.event_id} is in the destination already, but its event differs"):
        await import_dump(store, [orjson.dumps(clash)], "dump.jsonl")
    # The same id used in another entity.
    moved = {**stored.to_dict(), "entity": "elsewhere"}
    with pytest.raises(TransferError, match="but its entity differs from the dump"):
        await import_dump(store, [orjson.dumps(moved)])
    assert len((await store.read(Scope(realm))).events) == 1  # nothing was written


_EVENT = (b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
          b'"type": "t", "event": 1, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00Z"}')


@pytest.mark.parametrize("lines, message", [
    ([b"{not json"], "line 1: not valid JSON"),
    ([b'{"format": "perhap-dump", "version": 1, "scope": null}', b'{"event": "caf\xe9"}'],
     "line 2: not valid UTF-8 (at byte 14"),  # (orjson calls every bad byte a surrogate)
    ([b"[1, 2]"], "line 1: expected a JSON object"),
    ([b'{"format": "other", "version": 1}'], "not a perhap dump"),
    ([b'{"format": "perhap-dump", "version": 4, "scope": null}'], "format version 4"),
    # Version 3 ends with its end line, which counts the events: a dump cut short says so.
    ([b'{"format": "perhap-dump", "version": 3, "scope": null}', _EVENT], "has no end line: it was cut short"),
    ([b'{"format": "perhap-dump", "version": 3, "scope": null}', _EVENT,
      b'{"format": "perhap-dump", "end": true, "events": 2}'],
     "line 3: the end line counts 2 events, the dump holds 1"),
    ([b'{"format": "perhap-dump", "version": 3, "scope": null}', b'{"format": "perhap-dump", "end": true, "events": 0}',
      _EVENT], "line 3: a line after the dump's end line"),
    ([b'{"format": "perhap-dump", "version": 3, "scope": null}', b'{"format": "perhap-dump", "end": 1, "events": 0}'],
     "line 2: not a dump's end line"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "position": 0, "timestamp": "2001-01-01T00:00:00Z"}'],
     "line 1: position must be an integer from 1 to"),
    ([b'{"format": "perhap-dump", "version": 1, "scope": null}', b'{"event_id": "x"}'],
     "line 2: not an event object (missing realm"),
    ([b'{"format": "perhap-dump", "version": 1, "scope": null}', b"",
      b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "timestamp": "yesterday"}'],
     "line 3: timestamp must be an RFC 3339 date-time"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "_r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00Z", "x": 1}'],
     "unknown keys x"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": [], "version": -1, "timestamp": "2001-01-01T00:00:00Z"}'],
     "version must be an integer of 0 or more"),
    ([], "is empty"),
    # null is no id and no time: taken, a new id (a new copy at every run) or the import's time.
    ([b'{"event_id": null, "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00Z"}'],
     "line 1: event_id must be a string"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "timestamp": null}'],
     "line 1: timestamp must be a string"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 0, "position": null, "timestamp": "2001-01-01T00:00:00Z"}'],
     "line 1: position must be an integer from 1 to"),
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": {"a": 1, "a": 2}, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00Z"}'],
     "line 1: "),  # two keys that are one: refused as the HTTP API refuses them (the words are its)
    ([b'{"event_id": "00000000-0000-0000-0000-000000000001", "realm": "r", "domain": "d", "entity": "e", '
      b'"type": "t", "event": 1, "meta": {}, "version": 99999999999999999999, "timestamp": "2001-01-01T00:00:00Z"}'],
     "line 1: version must be an integer of 0 or more"),
    ([b'{"format": "perhap-dump", "version": -1, "scope": null}'], "format version -1"),
    ([b'{"format": "perhap-dump", "version": true, "scope": null}'], "format version True"),
])
def test_bad_dumps_name_the_line(lines: list[bytes], message: str) -> None:
    with pytest.raises(TransferError, match=message.replace("(", r"\(").replace("[", r"\[")):
        list(parse_dump(lines, "dump.jsonl"))


async def test_a_version_gap_in_a_pipelined_import_stops_before_anything_after_it(backend: Provider) -> None:
    """Into SQLite and PostgreSQL the batches of a fresh realm go many at a time: a version the
    destination refuses (a gap) was found only after the batches sent behind it were stored, so
    the destination held events from after the line the error named, and the dump's order was
    lost once the line was mended and the import run again."""
    def line(entity: str, version: int) -> bytes:
        return orjson.dumps({"event_id": str(uuid.uuid4()), "realm": "gap", "domain": "d", "entity": entity,
                             "type": "t", "event": [entity, version], "meta": {}, "version": version,
                             "timestamp": "2026-01-01T00:00:00.000000Z"})

    before = [line(e, 0) for e in "abc"]
    gap = line("a", 5)
    after = [line(f"x{i}", 0) for i in range(20)]
    async with open_store(fresh_url(backend)) as store:
        with pytest.raises(TransferError, match=r"dump.jsonl line 4 \(gap/d/a\).*at version 0.*has version 5"):
            await import_dump(store, [*before, gap, *after], "dump.jsonl")
        stored = [e.entity for e in (await store.read(Scope("gap"))).events]
        assert stored == ["a", "b", "c"]  # the lines before it, and nothing after
        mended = line("a", 1)
        again = await import_dump(store, [*before, mended, *after], "dump.jsonl")
        assert (again.imported, again.present) == (21, 3)
        assert [e.entity for e in (await store.read(Scope("gap"))).events] == \
            ["a", "b", "c", "a", *(f"x{i}" for i in range(20))]  # the dump's order


async def test_an_id_twice_in_a_run_of_the_dump_names_both_lines(store: Store, realm: str) -> None:
    event = {"event_id": str(uuid.uuid4()), "realm": realm, "domain": "d", "entity": "e", "type": "t",
             "event": 1, "meta": {}, "version": 0, "timestamp": "2001-01-01T00:00:00.000000Z"}
    lines = [orjson.dumps(event), orjson.dumps({**event, "version": 1, "event": 2})]
    with pytest.raises(TransferError, match=r"dump.jsonl line 2 .*is the id of an earlier event of the dump too "
                                            r"\(dump.jsonl line 1"):
        await import_dump(store, lines, "dump.jsonl")
    assert (await store.read(Scope(realm))).events == []


async def test_import_ignores_positions_and_reads_version_1_dumps(store: Store, realm: str) -> None:
    base = {"realm": realm, "domain": "d", "type": "t", "meta": {}, "timestamp": "2001-01-01T00:00:00.000000Z"}
    ids = [str(uuid.uuid4()) for _ in range(3)]
    # Positions from another store (out of this store's order, even): read, checked, not kept.
    new = [orjson.dumps({"format": "perhap-dump", "version": 2, "scope": None})] + [
        orjson.dumps({**base, "event_id": ids[i], "entity": "a", "event": i, "version": i, "position": p})
        for i, p in enumerate((900, 5, 2**63 - 1))]
    assert (await import_dump(store, new)).imported == 3
    # A dump written before positions existed imports as it always did.
    old = [orjson.dumps({"format": "perhap-dump", "version": 1, "scope": None}),
           orjson.dumps({**base, "event_id": str(uuid.uuid4()), "entity": "b", "event": 3, "version": 0})]
    assert (await import_dump(store, old)).imported == 1
    stored = (await store.read(Scope(realm))).events
    assert [e.event for e in stored] == [0, 1, 2, 3]
    positions = [e.position for e in stored]
    assert positions == sorted(set(positions)) and 900 not in positions and 2**63 - 1 not in positions
    assert (await import_dump(store, new)).present == 3  # again: idempotent, positions or not


async def test_export_scopes(backend: Provider) -> None:
    store_url = fresh_url(backend)
    await _fill_url(store_url, 2, 20)
    whole = export_cli(store_url).splitlines()[1:-1]  # (without the header and the end line)
    realm1 = export_cli(store_url, "realm1").splitlines()
    assert orjson.loads(realm1[0])["scope"] == "realm1"
    assert realm1[1:-1] == [line for line in whole if b'"realm":"realm1"' in line]
    domain = export_cli(store_url, "realm0/d1").splitlines()[1:-1]
    assert domain == [line for line in whole if b'"realm":"realm0","domain":"d1"' in line]
    entity = export_cli(store_url, "realm0/d1/e1").splitlines()[1:-1]
    assert [orjson.loads(line)["version"] for line in entity] == list(range(len(entity)))
    assert "TYPE scope would leave gaps" in one_error_line(run_cli("export", "--db", store_url, "realm0/d1/e1/t1"))
    assert run_cli("export", "--db", store_url, "nosuchrealm").stdout.count(b"\n") == 2  # the header and end only


async def test_export_counts_what_the_store_can_count_for_its_bar(backend: Provider) -> None:
    """The progress bar's total: exact for an entity on every backend, and for a realm or the
    whole store where positions have no gaps (SQLite, PostgreSQL); None where it would take a
    read of every event (a domain; Cassandra's realms)."""
    from perhap.transfer.export import count_events

    async with open_store(fresh_url(backend)) as store:
        await fill(store, 2, 20)
        every = [e for r in ("realm0", "realm1") for e in await read_all(store, Scope(r))]
        counted = {scope: await count_events(store, scope) for scope in
                   (None, Scope("realm1"), Scope("realm0", "d1"), Scope("realm0", "d1", "e1"))}
        entity = [e for e in every if (e.realm, e.domain, e.entity) == ("realm0", "d1", "e1")]
        assert counted[Scope("realm0", "d1", "e1")] == len(entity) > 0
        assert counted[Scope("realm0", "d1")] is None
        if store.dense_positions:
            assert counted[None] == len(every)
            assert counted[Scope("realm1")] == len([e for e in every if e.realm == "realm1"])
        else:
            assert counted[None] is None and counted[Scope("realm1")] is None


async def test_export_streams_in_constant_memory(store: Store, realm: str) -> None:
    async def peak_of_export() -> tuple[int, int]:
        sink = Sink()
        tracemalloc.start()
        try:
            await export_dump(store, sink, Scope(realm), page_size=100)  # type: ignore[arg-type]
            return sink.size, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    async def add(n: int) -> None:
        for chunk in range(n // 500):
            await store.append_batch(realm, "d", f"e{n}-{chunk}", [{"type": "t", "event": "x" * 1000}] * 500)

    await add(1500)
    size1, peak1 = await peak_of_export()
    await add(3000)  # three times the events, the same memory
    size3, peak3 = await peak_of_export()
    assert size3 > 3 * size1 - 1000 and size3 > 4_500_000
    assert peak3 < peak1 * 1.3 + 200_000 and peak3 < size3 / 3, (peak1, peak3)


async def test_pages_read_for_a_transfer_hold_about_page_bytes_whatever_the_events_size(
        store: Store, realm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages were asked for by count alone: 1,000 events of 1 MB, a gigabyte in the exporter (and
    in the server answering it). Here 20 kB events against a 200 kB budget: about ten a page."""
    from perhap.transfer import reading

    monkeypatch.setattr(reading, "PAGE_BYTES", 200_000)
    big = [{"type": "t", "event": "x" * 20_000}] * 60
    small = [{"type": "t", "event": i} for i in range(300)]
    await store.append_batch(realm, "d", "big", big)
    await store.append_batch(realm, "d", "small", small)
    limits: list[int] = []
    read = store.read

    async def counted(scope: Scope, **options: Any) -> Any:
        limits.append(options["limit"])
        return await read(scope, **options)

    monkeypatch.setattr(store, "read", counted)
    events = [e async for e in iter_scope(store, Scope(realm), page_size=1000)]
    assert len(events) == 360 and [e.entity for e in events] == ["big"] * 60 + ["small"] * 300
    assert limits[0] == reading.FIRST_PAGE and max(limits[1:5]) <= 10, limits  # the big events' pages
    assert max(limits) > 500, limits  # and the small ones' grow back (to about 1,000 in this budget)


def test_progress_on_a_terminal_and_none_when_piped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    asyncio.run(_fill_url(url, 1, 30))
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "perhap.cli", "export", "--db", url], stdout=subprocess.PIPE,
                           stderr=slave, timeout=60)
        os.close(slave)
        shown = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
    assert r.returncode == 0
    assert b"exporting: 36 events" in shown and b"/s" in shown and shown.endswith(b"\n")
    assert b"] 100%" in shown  # a bar: SQLite's realm heads count the events
    piped = run_cli("export", "--db", url)
    assert piped.stderr == b"" and piped.stdout.count(b"\n") == 38


async def _fill_url(url: str, realms: int, per_realm: int) -> int:
    async with open_store(url) as store:
        return await fill(store, realms, per_realm)


def test_cli_import_errors_are_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"format": "perhap-dump", "version": 1, "scope": null}\n{oops\n')
    assert "bad.jsonl line 2: not valid JSON" in one_error_line(run_cli("import", "--db", url, str(bad)))
    assert "cannot read" in one_error_line(run_cli("import", "--db", url, str(tmp_path / "missing.jsonl")))
    # An empty dump (export | import with the export failing) is refused before the store is made.
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    assert "stdin is empty" in one_error_line(run_cli("import", "--db", fresh, "-", input=b"\n  \n"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fresh.db")]
    # So is one whose first line is no dump's (a binary file, a BOM): it made an empty store.
    for junk in (b"\x89PNG\r\n\x1a\n", b"\xef\xbb\xbf" + bad.read_bytes(), b"[1]\n"):
        assert "stdin line 1" in one_error_line(run_cli("import", "--db", fresh, "-", input=junk))
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("fresh.db")]
    (tmp_path / "lines.jsonl").write_bytes(b"\n" + bad.read_bytes())  # lines still counted from the first
    assert "lines.jsonl line 3: not valid JSON" in one_error_line(
        run_cli("import", "--db", url, str(tmp_path / "lines.jsonl")))
    assert "no SQLite store at" in one_error_line(run_cli("export", "--db", f"sqlite:///{tmp_path}/typo.db"))
    assert not (tmp_path / "typo.db").exists()
    assert "mysql" in one_error_line(run_cli("import", "--db", "mysql://x/y", str(bad)))
    assert "--db" in one_error_line(run_cli("import", str(bad)))


def _dump_with_a_bad_line(events: int, realm: str = "bad") -> list[bytes]:
    """A dump of ``events`` events of three entities in turn (each its own batch: hundreds of
    batches), then a line that is not JSON."""
    header = orjson.dumps({"format": "perhap-dump", "version": 2, "scope": None})
    return [header] + [orjson.dumps({
        "event_id": str(uuid.uuid4()), "realm": realm, "domain": "d", "entity": f"e{i % 3}", "type": "t",
        "event": {"i": i}, "meta": {}, "version": i // 3, "position": i + 1,
        "timestamp": "2026-01-01T00:00:00.000000Z"}) for i in range(events)] + [b"{oops"]


async def test_a_bad_line_ends_the_import_with_every_sent_batch_settled(backend: Provider) -> None:
    """The batches pipelined before a bad line were left pending when the store closed ("Task
    exception was never retrieved ... the store is closed"): they are waited for, so every event
    before the bad line is stored but the run not sent yet (here the last event: each is its own run)."""
    lines = _dump_with_a_bad_line(300)
    async with open_store(fresh_url(backend)) as store:
        with pytest.raises(TransferError, match="line 302: not valid JSON"):
            await import_dump(store, lines, "dump.jsonl")
        pending = [t for t in asyncio.all_tasks() if not t.done() and "append_batch" in repr(t.get_coro())]
        assert pending == []
        stored = len((await store.read(Scope("bad"), limit=1000)).events)
        assert stored == 299
        again = await import_dump(store, lines[:-1])  # the bad line mended: the rest, and nothing twice
        assert (again.imported, again.present) == (1, 299)


def test_cli_import_of_a_dump_with_a_bad_line_near_the_end_is_one_line(backend: Provider, tmp_path: Path) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_bytes(b"\n".join(_dump_with_a_bad_line(400)) + b"\n")
    url = fresh_url(backend)
    r = run_cli("import", "--db", url, str(dump))
    assert r.returncode == 1 and r.stdout == b""
    assert one_error_line(r) == (f"error: {dump} line 402: not valid JSON (unexpected character, "
                                 f"expected a string key: line 1 column 2 (char 1))")
    assert len(export_cli(url).splitlines()) == 1 + 399 + 1  # the batches sent were written, not dropped


def test_a_dump_cut_short_at_a_line_s_end_fails_its_import(backend: Provider, tmp_path: Path) -> None:
    """`perhap export | perhap import -` whose export died between two lines: the lines read are
    stored (as a whole dump's would be), and the import fails naming the missing end line (it
    exited 0, as if the dump were whole). The whole dump then imports the rest."""
    source = fresh_url(backend)
    count = asyncio.run(_fill_url(source, 1, 30))
    lines = export_cli(source).splitlines(keepends=True)
    target = fresh_url(backend)
    r = run_cli("import", "--db", target, "-", input=b"".join(lines[:11]))  # the header and ten events
    assert r.returncode == 1 and r.stdout == b""
    assert one_error_line(r) == ("error: stdin has no end line: it was cut short (an export that failed or was "
                                 "stopped, a copy of the file not finished); its 10 events were imported (0 were "
                                 "there already): import the whole dump (importing one again is safe)")
    assert len(export_cli(target).splitlines()) == 1 + 10 + 1
    r = run_cli("import", "--db", target, "-", input=b"".join(lines))
    assert r.returncode == 0, r.stderr
    assert f"imported {count - 10:,} events into 1 realm (10 were there already)" in r.stdout.decode()


# --------------------------------------------------------------------------- copy


PAIRS = list(itertools.product(BACKENDS, BACKENDS))


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
async def test_copy_between_backends_verifies_every_realm(pair: tuple[str, str], tmp_path_factory: Any) -> None:
    source = fresh_url(get_provider(pair[0], tmp_path_factory))
    destination = fresh_url(get_provider(pair[1], tmp_path_factory))
    count = await _fill_url(source, 3, 40)
    r = run_cli("copy", "--from", source, "--to", destination)
    out = r.stdout.decode()
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    for realm in ("realm0", "realm1", "realm2"):
        assert f"verified {realm}: " in out
    assert f"copy verified: 3 realms, {count:,} events ({count:,} copied now, 0 there already)" in out
    copied = export_cli(destination)
    assert strip_positions(copied) == strip_positions(export_cli(source))
    for realm, positions in positions_of(copied).items():  # the destination's own positions
        assert positions == sorted(set(positions)), realm
    # And back: a copy of the copy into a third store is the same store again.
    back = fresh_url(get_provider(pair[0], tmp_path_factory))
    assert run_cli("copy", "--from", destination, "--to", back).returncode == 0
    assert strip_positions(export_cli(back)) == strip_positions(export_cli(source))


async def test_copy_with_limit_resumes_where_it_stopped(backend: Provider) -> None:
    source, destination = fresh_url(backend), fresh_url(backend)
    count = await _fill_url(source, 2, 90)
    copied = 0
    for run in range(4):
        r = run_cli("copy", "--from", source, "--to", destination, "--limit", "70")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        if "copy verified" in out:
            break
        assert "stopped after 70 events (--limit)" in out
        copied += 70
        if run > 0:
            assert "(resumed after " in out
    assert f"copy verified: 2 realms, {count:,} events" in out
    assert strip_positions(export_cli(destination)) == strip_positions(export_cli(source))


def test_copy_killed_mid_way_resumes(tmp_path: Path) -> None:
    # Many small realms: the kill lands long before the end, however busy the machine is.
    source, destination = f"sqlite:///{tmp_path}/src.db?synchronous=normal", f"sqlite:///{tmp_path}/dst.db"
    count = asyncio.run(_fill_url(source, 100, 10))
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "copy", "--from", source, "--to", destination],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(5)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert all(line.startswith(b"copied realm") for line in lines), lines
    partial = asyncio.run(_realms(destination))
    assert 5 <= len(partial) < 100  # cut off part-way: realms are copied in name order
    r = run_cli("copy", "--from", source, "--to", destination)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "(resumed after " in out
    assert f"copy verified: 100 realms, {count:,} events" in out
    assert export_cli(destination) == export_cli(source)  # SQLite to SQLite: the same positions too



def test_a_copy_whose_reader_goes_away_still_copies_and_verifies_everything(tmp_path: Path) -> None:
    """`perhap copy ... | head -1`: the reader leaving stops what the copy prints, not the copy; its
    exit status still says whether every realm was copied and verified (it exited 0 part-way)."""
    source, destination = f"sqlite:///{tmp_path}/src.db?synchronous=normal", f"sqlite:///{tmp_path}/dst.db"
    asyncio.run(_fill_url(source, 100, 10))  # (many realms: the reader leaves long before the end)
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "copy", "--from", source, "--to", destination],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    assert proc.wait(120) == 0 and first.startswith(b"copied realm")
    assert proc.stderr.read() == b""
    assert export_cli(destination) == export_cli(source)


async def _realms(url: str) -> list[str]:
    async with open_store(url) as store:
        return (await store.keys()).keys


async def test_copy_refuses_a_destination_that_is_not_a_copy(backend: Provider) -> None:
    source, destination = fresh_url(backend), fresh_url(backend)
    await _fill_url(source, 1, 10)
    async with open_store(destination) as dst:
        await dst.append("realm0", "d0", "stranger", "t", 1)
    line = one_error_line(run_cli("copy", "--from", source, "--to", destination))
    assert "which the source's realm realm0 does not hold" in line


async def test_copy_reports_a_mismatch(backend: Provider) -> None:
    source, destination = fresh_url(backend), fresh_url(backend)
    async with open_store(source) as src:
        await src.append("r", "d", "a", "t", 1)
        await src.append("r", "d", "b", "t", 2)
        events = [e.to_json_dict() async for e in iter_scope(src, Scope("r"))]
    async with open_store(destination) as dst:  # the same events, committed in the other order
        await import_dump(dst, [orjson.dumps(events[1]), orjson.dumps(events[0])])
        await dst.append("extra", "d", "e", "t", 0)
    r = run_cli("copy", "--from", source, "--to", destination)
    out = r.stdout.decode()
    assert r.returncode == 1 and "MISMATCH r: source 2 events sha256" in out, out
    assert "note: the destination also holds realm extra" in out
    assert "copy verification failed: 1 of 1 realms differ" in one_error_line(r)


def test_copy_usage_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    asyncio.run(_fill_url(url, 1, 1))
    assert "--to" in one_error_line(run_cli("copy", "--from", url))
    assert "same store" in one_error_line(run_cli("copy", "--from", url, "--to", url))
    assert "no SQLite store" in one_error_line(run_cli("copy", "--from", f"sqlite:///{tmp_path}/none.db", "--to", url))
    assert "--limit" in one_error_line(run_cli("copy", "--from", url, "--to", url + "2", "--limit", "0"))


def test_copy_refuses_one_sqlite_file_spelled_two_ways(tmp_path: Path) -> None:
    """`--from sqlite:///big.db --to sqlite:////abs/path/big.db` copied a store onto itself:
    "0 copied, verified"."""
    url = f"sqlite:///{tmp_path}/x.db"
    asyncio.run(_fill_url(url, 1, 3))
    (tmp_path / "link.db").symlink_to(tmp_path / "x.db")
    relative = os.path.relpath(tmp_path / "x.db")  # from the directory the command runs in
    for other in (f"sqlite:///{relative}", f"sqlite:///{tmp_path}/./x.db?synchronous=OFF",
                  f"sqlite:///{tmp_path}/link.db", f"sqlite:///{tmp_path}/sub/../x.db"):
        r = run_cli("copy", "--from", url, "--to", other)
        assert r.returncode == 2 and "--from and --to are the same store" in one_error_line(r), (other, r.stderr)
        if "sub/.." not in other:  # (a path through a missing directory is no store to copy from)
            r = run_cli("copy", "--from", other, "--to", url)
            assert r.returncode == 2 and "same store" in one_error_line(r), other
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("x.db")) == ["link.db"]


async def test_importer_batches_runs_of_one_entity(store: Store, realm: str, backend: Provider) -> None:
    calls: list[int] = []

    class Counting(Sequential):
        async def append_batch(self, *args: Any, **kw: Any) -> Any:
            calls.append(len(args[3]))
            return await super().append_batch(*args, **kw)

    await store.append_batch(realm, "d", "a", [{"type": "t", "event": i} for i in range(25)])
    await store.append(realm, "d", "b", "t", 0)
    await store.append(realm, "d", "a", "t", 25)
    lines = [orjson.dumps(e) async for e in _wire(store, realm)]
    async with open_store(fresh_url(backend)) as target:
        importer = Importer(Counting(target), batch_events=10)  # type: ignore[arg-type]
        for item in parse_dump(lines):
            await importer.add(item)
        await importer.finish()
    assert calls == [10, 10, 5, 1, 1]


def test_export_into_a_reader_that_quits_is_quiet(tmp_path: Path) -> None:
    """`perhap export | head -2`: the reader goes after two lines; export stops without a word on
    stderr (the page it was reading ahead is stopped before the store closes)."""
    url = f"sqlite:///{tmp_path}/q.db"
    asyncio.run(_fill_url(url, 2, 3000))
    export = subprocess.Popen([sys.executable, "-m", "perhap.cli", "export", "--db", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert export.stdout is not None and export.stderr is not None
    head = [export.stdout.readline() for _ in range(2)]
    export.stdout.close()  # the reader quits
    err = export.stderr.read()
    export.wait(60)
    assert head[0].startswith(b"{") and head[1].startswith(b"{")
    assert b"Traceback" not in err and b"never retrieved" not in err, err.decode()


def test_a_library_s_log_warning_does_not_reach_stderr(tmp_path: Path) -> None:
    """Library log records (asyncpg's "Failed to restore the pool connection floor" with its
    traceback, when PostgreSQL stopped mid-copy) reached stderr through Python's last-resort
    handler. Here asyncio's: in debug mode it warns of a step that blocks the loop, as an export
    does while its reader stops reading."""
    url = f"sqlite:///{tmp_path}/w.db"

    async def fill_big() -> None:  # ~1 MB of dump: far more than a pipe holds
        async with open_store(url) as store:
            for entity in ("a", "b", "c"):
                await store.append_batch("r", "d", entity, [{"type": "t", "event": "x" * 300}] * 1000)

    asyncio.run(fill_big())
    export = subprocess.Popen([sys.executable, "-m", "perhap.cli", "export", "--db", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONASYNCIODEBUG": "1"})
    assert export.stdout is not None
    export.stdout.readline()
    time.sleep(0.5)  # the export blocks in a write: asyncio logs "Executing <Task ...> took 0.5 seconds"
    out, err = export.communicate(timeout=60)
    assert export.returncode == 0 and err == b"", err.decode()
    assert b'"position":3000,' in out.splitlines()[-2]  # (what readline buffered is not in out; the end line last)


async def test_an_import_holds_a_bounded_number_of_events_in_flight(tmp_path: Path) -> None:
    """Runs of one entity go as batches pipelined into SQLite; however many fit the byte window,
    at most WINDOW_EVENTS (plus the batch just sent) are in flight: 100,000 small events in runs of
    1,000 were all in flight at once (0.5 GB)."""
    from perhap.transfer import importer as importer_module
    header = orjson.dumps({"format": "perhap-dump", "version": 2, "scope": None})
    lines = [header] + [orjson.dumps({
        "event_id": str(uuid.uuid4()), "realm": "gen", "domain": "d", "entity": f"e{i // 1000}", "type": "t",
        "event": {"i": i}, "meta": {}, "version": i % 1000, "position": i + 1,
        "timestamp": "2026-01-01T00:00:00.000000Z"}) for i in range(20_000)]
    async with open_store(f"sqlite:///{tmp_path / 'a.db'}") as store:
        in_flight = most = 0
        append_batch = store.append_batch

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, most
            in_flight += len(args[3])
            most = max(most, in_flight)
            try:
                return await append_batch(*args, **kwargs)
            finally:
                in_flight -= len(args[3])

        store.append_batch = counted  # type: ignore[method-assign]
        stats = await import_dump(store, lines)
        del store.append_batch
        assert stats.imported == 20_000
        assert 1_000 < most <= 5_000 == importer_module.WINDOW_EVENTS + importer_module.BATCH_EVENTS, most
        assert len((await store.read(Scope("gen", "d", "e19"), limit=2000)).events) == 1000


def test_an_export_to_a_file_it_cannot_write_says_so_in_words(tmp_path: Path) -> None:
    """It was `error: FileNotFoundError: ... 'x.jsonl.partial'`: the user's file, in words."""
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_one_event(url))
    r = run_cli("export", "--db", url, "-o", str(tmp_path / "missing" / "x.jsonl"))
    err = r.stderr.decode()
    expected = f"error: cannot write {tmp_path}/missing/x.jsonl: No such file or directory\n"
    assert r.returncode == 1 and err == expected, err
    # A directory: said before the dump is written (it was written whole beside it, then the move
    # failed naming x.partial).
    (tmp_path / "dir").mkdir()
    r = run_cli("export", "--db", url, "-o", str(tmp_path / "dir"))
    assert r.returncode == 1 and r.stderr.decode() == f"error: cannot write {tmp_path}/dir: it is a directory; " \
                                                      "give a file's path\n", r.stderr
    assert not (tmp_path / "dir.partial").exists()
    # A symbolic link is written through (as the shell's > does), not replaced by a file.
    (tmp_path / "old.jsonl").write_bytes(b"old")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "old.jsonl")
    r = run_cli("export", "--db", url, "-o", str(tmp_path / "link.jsonl"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.jsonl").is_symlink() and (tmp_path / "old.jsonl").read_bytes().count(b"\n") == 3


def test_an_export_into_a_pipe_or_a_device_writes_into_it_and_a_file_keeps_its_mode(tmp_path: Path) -> None:
    """-o was written beside its target and renamed over it whatever it was: a FIFO (or, as root,
    /dev/null) became a plain file, `-o /dev/stdout` through a pipe failed, and a private (0600)
    dump became readable by all. Now a device or a pipe is written into, as by the shell's >, and a
    file replaced keeps its mode."""
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_one_event(url))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    r = run_cli("export", "--db", url, "-o", str(fifo))
    reader.join(30)
    assert r.returncode == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode), r.stderr
    assert got and got[0].count(b"\n") == 3 and got[0].startswith(b'{"format":"perhap-dump"'), got
    piped = subprocess.run([sys.executable, "-m", "perhap.cli", "export", "--db", url, "-o", "/dev/stdout"],
                           capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout.count(b"\n") == 3, piped.stderr
    private = tmp_path / "private.jsonl"
    private.write_bytes(b"old")
    private.chmod(0o600)
    assert run_cli("export", "--db", url, "-o", str(private)).returncode == 0
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and private.read_bytes().count(b"\n") == 3


def test_two_exports_to_one_file_at_once_each_leave_a_whole_dump(tmp_path: Path) -> None:
    """Overlapping exports of a server's store to one -o file (two cron runs): both wrote one fixed
    FILE.partial, the second truncated the first's midway, and the first moved a dump with a hole
    of NUL bytes into place and exited 0 (the second then failed on a raw FileNotFoundError). Each
    now writes a file of its own: both exit 0, and the file is a whole dump."""
    url = f"sqlite:///{tmp_path}/s.db"

    async def many() -> None:
        async with open_store(url) as store:
            for n in range(20):
                await store.append_batch("r", "d", f"e{n}", [{"type": "t", "event": "x" * 200}] * 1000)

    asyncio.run(many())
    target = tmp_path / "dump.jsonl"
    with ThreadServer(url) as server:
        exports = [subprocess.Popen([sys.executable, "-m", "perhap.cli", "export", "--db", server.url, "-o",
                                     str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for _ in range(2)]
        outcomes = [(p.wait(120), p.stderr.read().decode() if p.stderr else "") for p in exports]
    for p in exports:
        for pipe in (p.stdout, p.stderr):
            if pipe is not None:
                pipe.close()
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    dump = target.read_bytes()
    assert b"\0" not in dump and dump.count(b"\n") == 20_002
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    r = run_cli("import", "--db", f"sqlite:///{tmp_path}/again.db", str(target))
    assert r.returncode == 0, r.stderr


def test_an_export_over_its_own_store_file_is_refused(tmp_path: Path) -> None:
    """``export --db sqlite:///s.db -o s.db`` replaced the store with its dump, exit 0. The store's
    file however spelt, or a file beside it (its WAL, shared memory, lock), is a usage error."""
    url = f"sqlite:///{tmp_path}/s.db"
    asyncio.run(_one_event(url))
    before = (tmp_path / "s.db").read_bytes()
    (tmp_path / "here").symlink_to(tmp_path)
    for output in ("s.db", "./s.db", str(tmp_path / "here" / "s.db"), "s.db-wal", "s.db-shm", "s.db-lock"):
        r = subprocess.run([sys.executable, "-m", "perhap.cli", "export", "--db", url, "-o", output],
                           capture_output=True, cwd=tmp_path)
        assert r.returncode == 2 and b"the store's own file" in r.stderr, (output, r.stderr)
    assert (tmp_path / "s.db").read_bytes() == before
    assert run_cli("export", "--db", url, "-o", str(tmp_path / "s.jsonl")).returncode == 0


def test_a_transfer_cut_off_without_an_answer_advises_running_it_again() -> None:
    """The client's words for a request sent with no answer speak of retrying an append; an
    export, import or copy is run again instead (it goes on where it stopped)."""
    import httpx

    from perhap.cli.common import CommandError
    from perhap.cli.transfer import run_store_job
    from perhap.client.errors import unreachable

    async def cut_off() -> int:
        raise unreachable(httpx.Request("POST", "http://127.0.0.1:9/r/d/e"), httpx.ReadError("broke"))

    with pytest.raises(CommandError) as info:
        run_store_job(cut_off())
    text = str(info.value)
    assert "no answer from http://127.0.0.1:9" in text and "running the same command again is safe" in text
    assert "append" not in text, text


async def _one_event(url: str) -> None:
    async with open_store(url) as store:
        await store.append("r", "d", "e", "t", 1)


def test_a_copy_whose_source_does_not_answer_makes_no_destination(tmp_path: Path) -> None:
    """A copy from a server that was down created the new SQLite destination, empty, before it
    failed: the source answers first now, as an import's dump is read before its store is made."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = run_cli("copy", "--from", f"http://127.0.0.1:{port}", "--to", f"sqlite:///{tmp_path}/new.db")
    assert r.returncode != 0 and one_error_line(r)
    assert list(tmp_path.iterdir()) == []
