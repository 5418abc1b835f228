"""Export, import and copy whole stores through the in-process store API, in constant memory.

The dump format (``perhap-dump``, version 1) is JSON Lines in UTF-8:

- line 1, a header: ``{"format":"perhap-dump","version":1,"scope":null}`` (``scope`` is the
  exported ``realm[/domain[/entity]]``, or null for the whole store);
- then one event a line, exactly the event object of the HTTP API:
  ``{"event_id","realm","domain","entity","type","event","meta","version","timestamp"}``.

Realms come in name order, each realm's events in commit order (a domain's or an entity's in its
own order when the export is scoped), so importing the lines in order recreates the commit order.
The header is optional on import: the output of ``perhap read`` imports too.

Import keeps each event's id, version, timestamp and meta. Consecutive events of one entity go as
one atomic batch with ``expected_version`` = the first version - 1, so an event lands at its own
version or the import stops with a clear error. Importing again is idempotent: a batch that is
stored already is an idempotent replay, and a batch that is partly stored (an earlier import was
interrupted) is reconciled event by event against what the destination holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from .store import (
    AppendResult,
    Event,
    EventIdConflict,
    InvalidInput,
    NewEvent,
    NotFound,
    Scope,
    Store,
    VersionConflict,
    canonical_json,
    check_name,
    dump_json,
    load_json,
    new_event,
)

DUMP_FORMAT = "perhap-dump"
DUMP_VERSION = 1
EVENT_KEYS = ("event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "timestamp")
PAGE_SIZE = 1000
BATCH_EVENTS = 1000                  # events in one append_batch
BATCH_BYTES = 4 * 1024 * 1024        # ... and at most about this much JSON
WINDOW_BATCHES = 256                 # batches in flight where the store keeps submission order
WINDOW_BYTES = 16 * 1024 * 1024      # ... and at most about this much JSON in flight


class TransferError(Exception):
    """An export, import or copy cannot go on; the message says why and what to do."""


# --------------------------------------------------------------------------- reading a store


async def iter_scope(store: Store, scope: Scope, *, following: str | None = None,
                     page_size: int = PAGE_SIZE) -> AsyncIterator[Event]:
    """Every event of a scope in its order, one page in memory and the next one being read."""
    pending = asyncio.ensure_future(store.read(scope, following=following, limit=page_size))
    try:
        while True:
            page = await pending
            if page.next is not None:
                pending = asyncio.ensure_future(store.read(scope, following=page.next, limit=page_size))
            for event in page.events:
                yield event
            if page.next is None:
                return
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


async def iter_keys(store: Store, *levels: str) -> AsyncIterator[str]:
    """Every name one level below ``levels`` (realms when none), through every page."""
    after = None
    while True:
        page = await store.keys(*levels, after=after, limit=PAGE_SIZE)
        for name in page.keys:
            yield name
        if page.next is None:
            return
        after = page.next


def _export_scopes(scope: Scope | None) -> None:
    if scope is not None and scope.type is not None:
        raise TransferError("export whole entities: a TYPE scope would leave gaps in the versions, "
                            "and an import keeps versions")


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress report with a rate on a terminal; silent when the stream is not one."""

    def __init__(self, label: str, *, stream: IO[str] | None = None, total_bytes: int | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.total_bytes = total_bytes
        self.events = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def add(self, events: int) -> None:
        self.events += events
        if self.enabled and time.monotonic() - self._drawn >= 0.2:
            self.draw()

    def draw(self, end: str = "") -> None:
        now = time.monotonic()
        self._drawn = now
        rate = self.events / max(now - self.started, 1e-6)
        text = f"{self.label}: {self.events:,} events, {rate:,.0f}/s"
        if self.total_bytes:
            share = min(self.bytes / self.total_bytes, 1.0)
            filled = int(share * 30)
            text += f" [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}"
        self.stream.write(f"\r{text}\x1b[K{end}")
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the progress line, so another line can be printed; the next update redraws it."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0.0

    def close(self) -> None:
        """Draw the final state and end the line (on a terminal)."""
        if self.enabled:
            self.draw("\n")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- export


def dump_header(scope: Scope | None) -> bytes:
    label = None if scope is None else "/".join(p for p in (scope.realm, scope.domain, scope.entity) if p)
    return orjson.dumps({"format": DUMP_FORMAT, "version": DUMP_VERSION, "scope": label}) + b"\n"


async def export_dump(store: Store, out: IO[bytes], scope: Scope | None = None, *,
                      progress: Progress | None = None, page_size: int = PAGE_SIZE) -> int:
    """Write a dump of the store (or of a realm, domain or entity) to ``out``; return the count."""
    _export_scopes(scope)
    out.write(dump_header(scope))
    count = 0
    scopes: AsyncIterator[str] | None = None
    if scope is None:
        scopes = iter_keys(store)

    async def realms() -> AsyncIterator[Scope]:
        if scopes is None:
            assert scope is not None
            yield scope
        else:
            async for realm in scopes:
                yield Scope(realm)

    async for where in realms():
        async for event in iter_scope(store, where, page_size=page_size):
            out.write(orjson.dumps(event.to_json_dict()) + b"\n")
            count += 1
            if progress is not None:
                progress.add(1)
    out.flush()
    return count


# --------------------------------------------------------------------------- import


@dataclass(slots=True)
class DumpEvent:
    """One event to import: where it goes, its version, and the event with its id and time."""

    realm: str
    domain: str
    entity: str
    version: int
    new: NewEvent
    origin: str = ""  # e.g. "dump.jsonl line 7", for error messages

    @property
    def size(self) -> int:
        return len(self.new.data_json) + len(self.new.meta_json) + 200


def event_to_import(event: Event) -> DumpEvent:
    """A stored event (from another store) as an event to import."""
    new = new_event(event.type, event.data_json, event.event_id, event.meta_json, raw=True,
                    timestamp=event.timestamp)
    return DumpEvent(event.realm, event.domain, event.entity, event.version, new)


def parse_dump(lines: Iterable[bytes], name: str = "the dump", *,
               on_bytes: Callable[[int], None] | None = None) -> Iterable[DumpEvent]:
    """Validate a dump line by line and yield its events; TransferError names the bad line."""
    first = True
    for number, raw in enumerate(lines, 1):
        if on_bytes is not None:
            on_bytes(len(raw))
        line = raw.strip()
        if not line:
            continue
        where = f"{name} line {number}"
        try:
            obj = load_json(line)
        except (orjson.JSONDecodeError, InvalidInput) as exc:
            raise TransferError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise TransferError(f"{where}: expected a JSON object")
        if first and "format" in obj:
            first = False
            if obj.get("format") != DUMP_FORMAT:
                raise TransferError(f"{where}: not a perhap dump (format {obj.get('format')!r})")
            version = obj.get("version")
            if not isinstance(version, int) or version > DUMP_VERSION:
                raise TransferError(f"{where}: dump format version {version!r}; this perhap reads "
                                    f"version {DUMP_VERSION} (upgrade perhap)")
            continue
        first = False
        yield _dump_event(obj, where)
    if first:
        raise TransferError(f"{name} is empty: a dump has at least its header line")


def _dump_event(obj: dict[str, Any], where: str) -> DumpEvent:
    missing = [k for k in EVENT_KEYS if k not in obj]
    unknown = sorted(set(obj) - set(EVENT_KEYS))
    if missing or unknown:
        what = (f"missing {', '.join(missing)}" if missing else "") + \
               ("; " if missing and unknown else "") + (f"unknown keys {', '.join(unknown)}" if unknown else "")
        raise TransferError(f"{where}: not an event object ({what})")
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise TransferError(f"{where}: version must be an integer of 0 or more")
    if not isinstance(obj["meta"], dict):
        raise TransferError(f"{where}: meta must be a JSON object")
    try:
        check_name(obj["realm"], "realm", realm=True)
        check_name(obj["domain"], "domain")
        check_name(obj["entity"], "entity")
        new = new_event(obj["type"], dump_json(obj["event"], "event"), obj["event_id"],
                        dump_json(obj["meta"], "meta"), raw=True, timestamp=obj["timestamp"])
    except InvalidInput as exc:
        raise TransferError(f"{where}: {exc.detail}") from None
    return DumpEvent(obj["realm"], obj["domain"], obj["entity"], version, new, where)


@dataclass
class ImportStats:
    imported: int = 0   # written by this run
    present: int = 0    # found stored already (identical): an import run again
    realms: set[str] = field(default_factory=set)


class Importer:
    """Writes events in dump order, batching runs of one entity; each event keeps its version.

    Where the store commits appends in the order they were started (SQLite), up to
    WINDOW_BATCHES batches are kept in flight once a realm is being written fresh; elsewhere one
    batch at a time, so that commit order is the dump's order on every backend.
    """

    def __init__(self, store: Store, *, progress: Progress | None = None,
                 batch_events: int = BATCH_EVENTS) -> None:
        self.store = store
        self.progress = progress
        self.batch_events = batch_events
        self.pipelined = bool(getattr(store, "preserves_submission_order", False))
        self.stats = ImportStats()
        self._run: list[DumpEvent] = []
        self._run_bytes = 0
        self._inflight: deque[tuple[list[DumpEvent], asyncio.Future[AppendResult], int]] = deque()
        self._inflight_bytes = 0
        self._fresh_realm: str | None = None

    def fresh(self, realm: str) -> None:
        """Declare that the destination holds nothing of ``realm``: its writes may be pipelined at once."""
        self._fresh_realm = realm

    async def add(self, item: DumpEvent) -> None:
        """Queue one event; it is written with the run of its entity it belongs to."""
        run = self._run
        if run:
            last = run[-1]
            if (item.entity != last.entity or item.domain != last.domain or item.realm != last.realm
                    or item.version != last.version + 1 or len(run) >= self.batch_events
                    or self._run_bytes >= BATCH_BYTES):
                await self._flush()
                run = self._run
        self.stats.realms.add(item.realm)
        run.append(item)
        self._run_bytes += item.size

    async def finish(self) -> ImportStats:
        """Write what is queued and wait for every write; the stats of the whole run."""
        await self._flush()
        await self._drain()
        return self.stats

    async def _flush(self) -> None:
        batch, size = self._run, self._run_bytes
        self._run, self._run_bytes = [], 0
        if not batch:
            return
        # Pipelining is safe only once this realm is being written fresh: everything the dump holds
        # after a freshly written batch cannot be in the destination if it holds a prefix of the
        # dump (an interrupted import), and if it holds more the dump's order is moot anyway.
        if self.pipelined and batch[0].realm == self._fresh_realm:
            task = asyncio.ensure_future(self._append(batch))
            self._inflight.append((batch, task, size))
            self._inflight_bytes += size
            while len(self._inflight) > WINDOW_BATCHES or self._inflight_bytes > WINDOW_BYTES:
                await self._settle_oldest()
            return
        await self._drain()
        try:
            result = await self._append(batch)
        except (VersionConflict, EventIdConflict):
            await self._reconcile(batch)
        else:
            self._check(batch, result)

    def _append(self, batch: list[DumpEvent]) -> Any:
        first = batch[0]
        return self.store.append_batch(first.realm, first.domain, first.entity, [e.new for e in batch],
                                       expected_version=first.version - 1)

    async def _settle_oldest(self) -> None:
        batch, task, size = self._inflight.popleft()
        self._inflight_bytes -= size
        try:
            try:
                result = await task
            except (VersionConflict, EventIdConflict):
                await self._reconcile(batch)
            else:
                self._check(batch, result)
        except BaseException:
            await self._abandon()
            raise

    async def _drain(self) -> None:
        while self._inflight:
            await self._settle_oldest()

    async def _abandon(self) -> None:
        # A write failed for good: let the writes in flight end (they cannot be recalled), then stop.
        tasks = [task for _, task, _ in self._inflight]
        self._inflight.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check(self, batch: list[DumpEvent], result: AppendResult) -> None:
        for item, done in zip(batch, result.events):
            if done.version != item.version:
                raise TransferError(
                    f"{_label(item)}: event {item.new.event_id} is stored at version {done.version}, "
                    f"but the dump has it at version {item.version}")
            if done.timestamp != item.new.timestamp:
                if result.created:
                    raise TransferError(
                        f"the destination store ({type(self.store).__name__}) did not keep the imported "
                        f"timestamp of event {item.new.event_id} ({item.new.timestamp} became "
                        f"{done.timestamp}): this backend cannot import with full fidelity yet")
                raise TransferError(
                    f"{_label(item)}: event {item.new.event_id} is stored already with timestamp "
                    f"{done.timestamp}, but the dump says {item.new.timestamp}")
        if result.created:
            self.stats.imported += len(batch)
            self._fresh_realm = batch[0].realm
        else:
            self.stats.present += len(batch)
        if self.progress is not None:
            self.progress.add(len(batch))

    async def _reconcile(self, batch: list[DumpEvent]) -> None:
        """A batch met a conflict: keep what is stored already (if identical), write the rest."""
        present = 0
        for item in batch:
            try:
                stored = await self.store.get_event(item.realm, item.domain, item.new.event_id)
            except NotFound:
                break
            _same_or_fail(item, stored)
            present += 1
        self.stats.present += present
        if self.progress is not None:
            self.progress.add(present)
        rest = batch[present:]
        if not rest:
            return
        first = rest[0]
        try:
            result = await self._append(rest)
        except VersionConflict as exc:
            raise TransferError(
                f"{_label(first)}: the destination entity is at version {exc.current_version}, but the "
                f"next event to import ({first.new.event_id}) has version {first.version}; an imported "
                f"event keeps its version, so the entity must be at version {first.version - 1}. Import "
                f"into an empty store, or into one holding an earlier part of the same dump") from None
        except EventIdConflict as exc:
            raise TransferError(
                f"{_label(first)}: event id {exc.event_id} is used by a different event in the "
                f"destination") from None
        self._check(rest, result)


def _label(item: DumpEvent) -> str:
    place = f"{item.realm}/{item.domain}/{item.entity}"
    return f"{item.origin} ({place})" if item.origin else place


def _same_or_fail(item: DumpEvent, stored: Event) -> None:
    new = item.new
    differences = [what for what, same in (
        ("entity", stored.entity == item.entity),
        ("type", stored.type == new.type),
        ("version", stored.version == item.version),
        ("timestamp", stored.timestamp == new.timestamp),
        ("event", _same_json(stored.data_json, new.data_json)),
        ("meta", _same_json(stored.meta_json, new.meta_json)),
    ) if not same]
    if differences:
        raise TransferError(
            f"{_label(item)}: event {new.event_id} is in the destination already, but its "
            f"{', '.join(differences)} differ{'s' if len(differences) == 1 else ''} from the dump")


def _same_json(a: bytes, b: bytes) -> bool:
    return a == b or canonical_json(a) == canonical_json(b)


async def import_dump(store: Store, lines: Iterable[bytes], name: str = "the dump", *,
                      progress: Progress | None = None) -> ImportStats:
    """Import a dump's lines into ``store``, in order; idempotent (see the module docstring)."""
    importer = Importer(store, progress=progress)
    on_bytes = None
    if progress is not None:
        def on_bytes(n: int) -> None:
            progress.bytes += n
    for item in parse_dump(lines, name, on_bytes=on_bytes):
        await importer.add(item)
    return await importer.finish()


def file_size(stream: Any) -> int | None:
    """The size of a regular file behind ``stream`` (None for pipes and terminals)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    import stat

    return st.st_size if stat.S_ISREG(st.st_mode) else None


# --------------------------------------------------------------------------- copy and verify


def _digest_line(e: Event) -> bytes:
    # Canonical JSON (sorted keys) so the checksum compares meaning, whatever a backend's spacing.
    return orjson.dumps([e.event_id, e.domain, e.entity, e.type, e.version, e.timestamp,
                         orjson.Fragment(canonical_json(e.data_json)),
                         orjson.Fragment(canonical_json(e.meta_json))]) + b"\n"


async def realm_digest(store: Store, realm: str) -> tuple[int, str]:
    """A realm's event count and the SHA-256 of its events in commit order (see _digest_line)."""
    digest = hashlib.sha256()
    count = 0
    async for event in iter_scope(store, Scope(realm)):
        digest.update(_digest_line(event))
        count += 1
    return count, digest.hexdigest()


@dataclass
class RealmCheck:
    realm: str
    source: tuple[int, str]
    destination: tuple[int, str]

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass
class CopyReport:
    stats: ImportStats
    complete: bool                      # False when stopped by ``limit``
    checks: list[RealmCheck] = field(default_factory=list)
    extra_realms: list[str] = field(default_factory=list)  # in the destination only (not checked)

    @property
    def ok(self) -> bool:
        return self.complete and all(c.ok for c in self.checks)


async def copy_store(source: Store, destination: Store, *, limit: int | None = None,
                     progress: Progress | None = None,
                     log: Callable[[str], None] | None = None) -> CopyReport:
    """Copy every realm of ``source`` into ``destination``, resumably, then verify each realm.

    Resuming: for a realm the destination holds already, the copy starts after the destination's
    last event of that realm (in commit order), which the source must hold too. Writes that were
    cut off are atomic batches, so the destination always holds a prefix of each realm's order.
    ``limit`` stops after that many events this run (run again to go on); verification then waits.
    """
    say = log or (lambda text: None)
    existing = {name async for name in iter_keys(destination)}
    importer = Importer(destination, progress=progress)
    copied = 0
    complete = True
    async for realm in iter_keys(source):
        following = None
        if realm not in existing:
            importer.fresh(realm)
        else:
            following = await _last_event_id(destination, realm)
            if following is not None:
                try:
                    await source.read(Scope(realm), following=following, limit=1)
                except NotFound:
                    raise TransferError(
                        f"the destination's realm {realm} ends with event {following}, which the "
                        f"source's realm {realm} does not hold: the destination is not a copy of "
                        f"this source") from None
        before = importer.stats.imported + importer.stats.present
        async for event in iter_scope(source, Scope(realm), following=following):
            if limit is not None and copied >= limit:
                complete = False
                break
            await importer.add(event_to_import(event))
            copied += 1
        await importer.finish()
        done = importer.stats.imported + importer.stats.present - before
        resumed = f" (resumed after {following})" if following else ""
        if progress is not None:
            progress.clear()
        say(f"copied {realm}: {done:,} events{resumed}")
        if not complete:
            break
    if progress is not None:
        progress.close()
    report = CopyReport(importer.stats, complete)
    if not complete:
        return report
    async for realm in iter_keys(source):
        existing.discard(realm)
        src, dst = await asyncio.gather(realm_digest(source, realm), realm_digest(destination, realm))
        report.checks.append(RealmCheck(realm, src, dst))
    report.extra_realms = sorted(existing)
    return report


async def _last_event_id(store: Store, realm: str) -> str | None:
    last = None
    async for event in iter_scope(store, Scope(realm), page_size=10_000):
        last = event.event_id
    return last
