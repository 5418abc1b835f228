"""Import: events written in dump order, each at its own version, idempotently.

Consecutive events of one entity go as one atomic batch with ``expected_version`` = the first
version - 1, so an event lands at its own version or the import stops with a clear error.
Importing again is idempotent: a batch that is stored already is an idempotent replay, and a batch
that is partly stored (an earlier import was interrupted) is reconciled event by event against
what the destination holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EventIdConflict, InvalidInput, NotFound, VersionConflict
from ..jsoncodec import canonical_json
from ..model import AppendResult, Event
from .dump import CutShort, DumpEvent, TooLargeForDestination, TransferError, parse_dump
from .progress import Progress
from .reading import TransferStore

BATCH_EVENTS = 1000                  # events in one append_batch
BATCH_BYTES = 4 * 1024 * 1024        # ... and at most about this much JSON
WINDOW_BATCHES = 256                 # batches in flight where the store keeps submission order
WINDOW_BYTES = 16 * 1024 * 1024      # ... and at most about this much JSON in flight
#: ... and at most this many events: an event in flight costs some kB of Python objects whatever its
#: JSON's size (100,000 events in 1,000-event runs: 0.5 GB at peak, 133 MB with this), and a few
#: batches keep the writer busy (the import took as long).
WINDOW_EVENTS = 4000
#: Entities of a realm whose next version the importer remembers (then it forgets them all and
#: leaves their versions to the destination): see Importer._flush.
KNOWN_ENTITIES = 200_000


@dataclass
class ImportStats:
    imported: int = 0   # written by this run
    present: int = 0    # found stored already (identical): an import run again
    realms: set[str] = field(default_factory=set)


@dataclass(slots=True)
class InFlight:
    """A batch being written while later ones are sent (pipelined imports only)."""

    batch: list[DumpEvent]
    task: asyncio.Future[AppendResult]
    size: int


class Importer:
    """Writes events in dump order, batching runs of one entity; each event keeps its version.

    Where the store commits appends in the order they were started (SQLite, PostgreSQL), up to
    WINDOW_BATCHES batches are kept in flight once a realm is being written fresh; elsewhere one
    batch at a time, so that commit order is the dump's order on every backend.
    """

    def __init__(self, store: TransferStore, *, progress: Progress | None = None,
                 batch_events: int = BATCH_EVENTS, whole: bool = False) -> None:
        self.store = store
        self.progress = progress
        self.batch_events = batch_events
        self.pipelined = bool(store.preserves_submission_order)
        self.stats = ImportStats()
        self._run: list[DumpEvent] = []
        self._run_bytes = 0
        self._inflight: deque[InFlight] = deque()
        self._inflight_bytes = 0
        self._inflight_events = 0
        self._fresh_realm: str | None = None
        #: Whether every event the destination holds of a realm has been added (found stored, or
        #: written) before the realm's first new one: so of a dump read from its first line into
        #: a destination holding a part of it, but not of a copy that resumes after the
        #: destination's last event (only realms declared ``fresh`` are known whole then).
        self._whole = whole
        #: The realm being imported, and the version the next event of each of its entities must
        #: have (of every entity it holds, while ``_complete``: the realm is known whole, was not
        #: left and come back to, and was not forgotten for size).
        self._realm: str | None = None
        self._next_version: dict[tuple[str, str], int] = {}
        self._complete = False
        self._run_ids: set[str] = set()

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
            elif item.new.event_id in self._run_ids:
                twice = next(e for e in run if e.new.event_id == item.new.event_id)
                raise TransferError(f"{item.label}: event id {item.new.event_id} is the id of an earlier event "
                                    f"of the dump too ({twice.label}): each event has its own")
        if item.realm != self._realm:
            known_whole = self._whole or item.realm == self._fresh_realm
            self._realm, self._complete = item.realm, known_whole and item.realm not in self.stats.realms
            self._next_version.clear()
        self.stats.realms.add(item.realm)
        run.append(item)
        self._run_ids.add(item.new.event_id)
        self._run_bytes += item.size

    async def finish(self) -> ImportStats:
        """Write what is queued and wait for every write; the stats of the whole run."""
        await self._flush()
        await self._drain()
        return self.stats

    async def _flush(self) -> None:
        batch, size = self._run, self._run_bytes
        self._run, self._run_bytes = [], 0
        self._run_ids.clear()
        if not batch:
            return
        first, key = batch[0], (batch[0].domain, batch[0].entity)
        expected = self._next_version.get(key, 0 if self._complete else None)
        if len(self._next_version) >= KNOWN_ENTITIES:
            self._next_version.clear()
            self._complete = False
        self._next_version[key] = batch[-1].version + 1  # (a write that fails ends the import)
        # Pipelining is safe only once this realm is being written fresh: everything the dump holds
        # after a freshly written batch cannot be in the destination if it holds a prefix of the
        # dump (an interrupted import), and if it holds more the dump's order is moot anyway.
        if self.pipelined and batch[0].realm == self._fresh_realm:
            # A version the destination would refuse is refused here, before anything after it is
            # sent: sent, the batches after it would be stored while it is refused, and the
            # destination's order would not be the dump's. (The realm is fresh: the destination
            # holds none of it but what this import wrote or found, so an entity unseen is new.)
            if expected is not None and first.version != expected:
                raise TransferError(_version_refused(first, expected - 1))
            self._inflight.append(InFlight(batch, asyncio.ensure_future(self._append(batch)), size))
            self._inflight_bytes += size
            self._inflight_events += len(batch)
            while (len(self._inflight) > WINDOW_BATCHES or self._inflight_bytes > WINDOW_BYTES
                   or self._inflight_events > WINDOW_EVENTS):
                await self._settle_oldest()
            return
        await self._drain()
        await self._write(batch)

    async def _write(self, batch: list[DumpEvent]) -> None:
        """One batch, then the next only once it is stored (the dump's order is the commit order)."""
        try:
            result = await self._append(batch)
        except (VersionConflict, EventIdConflict):
            await self._reconcile(batch)
        except (TooLargeForDestination, InvalidInput) as exc:
            # Too large, or refused for an event's own sake (a server of a lower --max-depth): sent
            # again in halves, each at its own versions, in order, down to the one event refused,
            # which is named (the destination then holds exactly the dump's lines before it).
            if len(batch) == 1:
                why = "is larger than the destination takes" if isinstance(exc, TooLargeForDestination) else \
                    "is refused by the destination"
                raise TransferError(f"{batch[0].label}: event {batch[0].new.event_id} {why}: {exc}") from None
            half = len(batch) // 2
            await self._write(batch[:half])
            await self._write(batch[half:])
        else:
            self._check(batch, result)

    def _append(self, batch: list[DumpEvent]) -> Coroutine[Any, Any, AppendResult]:
        first = batch[0]
        return self.store.append_batch(first.realm, first.domain, first.entity, [e.new for e in batch],
                                       expected_version=first.version - 1)

    async def _settle_oldest(self) -> None:
        oldest = self._inflight.popleft()
        self._inflight_bytes -= oldest.size
        self._inflight_events -= len(oldest.batch)
        try:
            try:
                result = await oldest.task
            except (VersionConflict, EventIdConflict):
                await self._reconcile(oldest.batch)
            else:
                self._check(oldest.batch, result)
        except BaseException:
            await self._abandon()
            raise

    async def _drain(self) -> None:
        while self._inflight:
            await self._settle_oldest()

    async def abandon(self) -> None:
        """Stop without writing more: the queued run is dropped, and the writes in flight are let
        end (they cannot be recalled; what they store is a prefix of the dump, which a run again
        resumes after). Call it when an import fails anywhere else (a bad dump line, a source
        that fails mid-copy), so that no write is left pending when the store closes."""
        self._run, self._run_bytes = [], 0
        await self._abandon()

    async def _abandon(self) -> None:
        # A write failed for good: let the writes in flight end (they cannot be recalled), then stop.
        tasks = [flight.task for flight in self._inflight]
        self._inflight.clear()
        self._inflight_bytes = self._inflight_events = 0
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check(self, batch: list[DumpEvent], result: AppendResult) -> None:
        for item, done in zip(batch, result.events):
            if done.version != item.version:
                raise TransferError(
                    f"{item.label}: event {item.new.event_id} is stored at version {done.version}, "
                    f"but the dump has it at version {item.version}")
            if done.timestamp != item.new.timestamp:
                if result.created:
                    raise TransferError(
                        f"the destination store ({type(self.store).__name__}) did not keep the imported "
                        f"timestamp of event {item.new.event_id} ({item.new.timestamp} became "
                        f"{done.timestamp}): this backend cannot import with full fidelity yet")
                raise TransferError(
                    f"{item.label}: event {item.new.event_id} is stored already with timestamp "
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
            raise TransferError(_version_refused(first, exc.current_version)) from None
        except EventIdConflict as exc:
            raise TransferError(
                f"{first.label}: event id {exc.event_id} is used by a different event in the "
                f"destination") from None
        self._check(rest, result)


def _version_refused(first: DumpEvent, current: int | None) -> str:
    return (f"{first.label}: the destination entity is at version {current}, but the next event to "
            f"import ({first.new.event_id}) has version {first.version}; an imported event keeps its "
            f"version, so the entity must be at version {first.version - 1}. Import into an empty store, "
            "or into one holding an earlier part of the same dump")


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
            f"{item.label}: event {new.event_id} is in the destination already, but its "
            f"{', '.join(differences)} differ{'s' if len(differences) == 1 else ''} from the dump")


def _same_json(a: bytes, b: bytes) -> bool:
    return a == b or canonical_json(a) == canonical_json(b)


async def import_dump(store: TransferStore, lines: Iterable[bytes], name: str = "the dump", *,
                      progress: Progress | None = None) -> ImportStats:
    """Import a dump's lines into ``store``, in order; idempotent (see the module docstring)."""
    importer = Importer(store, progress=progress, whole=True)
    on_bytes = None
    if progress is not None:
        def on_bytes(n: int) -> None:
            progress.bytes += n
    try:
        try:
            for item in parse_dump(lines, name, on_bytes=on_bytes):
                await importer.add(item)
        except CutShort as exc:  # every line read was good: stored, as a whole dump's would be
            stats = await importer.finish()
            raise TransferError(f"{exc}; its {stats.imported + stats.present:,} events were imported "
                                f"({stats.present:,} were there already): import the whole dump (importing "
                                "one again is safe)") from None
        return await importer.finish()
    except BaseException:
        # A bad line (or any failure) ends the import there: nothing more is sent, and the batches
        # sent already are waited for (stored, as a run again would store them) before the store closes.
        await importer.abandon()
        raise
