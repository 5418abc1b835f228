"""Copy: every realm of one store into another, resumably, then each realm verified by count and
SHA-256 over its events in commit order."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from ..errors import NotFound
from ..jsoncodec import canonical_json
from ..model import Event, Scope
from .dump import TransferError, event_to_import
from .importer import Importer, ImportStats
from .progress import Progress
from .reading import TransferStore, every_realm, iter_keys, iter_scope


class RealmDigest(NamedTuple):
    """A realm's event count and the SHA-256 of its events in commit order."""

    events: int
    sha256: str


@dataclass
class RealmCheck:
    realm: str
    source: RealmDigest
    destination: RealmDigest

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


def _digest_line(e: Event) -> bytes:
    # Canonical JSON (sorted keys) so the checksum compares meaning, whatever a backend's spacing.
    # Not the position: each store numbers its events itself (an import or copy assigns its own).
    return orjson.dumps([e.event_id, e.domain, e.entity, e.type, e.version, e.timestamp,
                         orjson.Fragment(canonical_json(e.data_json)),
                         orjson.Fragment(canonical_json(e.meta_json))]) + b"\n"


async def realm_digest(store: TransferStore, realm: str) -> RealmDigest:
    """A realm's event count and the SHA-256 of its events in commit order (see _digest_line)."""
    digest = hashlib.sha256()
    count = 0
    async with aclosing(iter_scope(store, Scope(realm))) as events:
        async for event in events:
            digest.update(_digest_line(event))
            count += 1
    return RealmDigest(count, digest.hexdigest())


async def copy_store(source: TransferStore, destination: TransferStore, *, limit: int | None = None,
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
    try:
        async for realm in every_realm(source, "a copy"):
            following = None
            if realm not in existing:
                importer.fresh(realm)
            else:
                following = await _last_event_id(destination, realm)
                if following is not None:
                    await _check_source_holds(source, realm, following)
            before = importer.stats.imported + importer.stats.present
            async with aclosing(iter_scope(source, Scope(realm), following=following)) as events:
                async for event in events:
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
            say(f"copied {realm}: {done:,} event{'' if done == 1 else 's'}{resumed}")
            if not complete:
                break
    except BaseException:
        await importer.abandon()  # a source that failed mid-realm: no write left pending at close
        raise
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


async def _check_source_holds(source: TransferStore, realm: str, following: str) -> None:
    try:
        await source.read(Scope(realm), following=following, limit=1)
    except NotFound:
        raise TransferError(
            f"the destination's realm {realm} ends with event {following}, which the "
            f"source's realm {realm} does not hold: the destination is not a copy of "
            f"this source") from None


async def _last_event_id(store: TransferStore, realm: str) -> str | None:
    """The id of the realm's newest event: one read, newest first."""
    page = await store.read(Scope(realm), order="desc", limit=1)
    return page.events[0].event_id if page.events else None
