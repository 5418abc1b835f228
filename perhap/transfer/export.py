"""Export: a store (or a realm, domain or entity) written as a dump, in constant memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import IO

import orjson

from ..model import Scope
from .dump import check_export_scope, dump_end, dump_header
from .progress import Progress
from .reading import PAGE_SIZE, TransferStore, every_realm, iter_scope


async def export_dump(store: TransferStore, out: IO[bytes], scope: Scope | None = None, *,
                      progress: Progress | None = None, page_size: int = PAGE_SIZE) -> int:
    """Write a dump of the store (or of a realm, domain or entity) to ``out``; return the count."""
    check_export_scope(scope)
    # The header goes out with the first event, or at the end of an empty export: a store that
    # refuses the first read (a 401, say) leaves no header that would read as an empty dump.
    header: bytes | None = dump_header(scope)
    count = 0
    async for where in _scopes(store, scope):
        # Closed at once if the writing fails (a reader that quit: `perhap export | head`).
        async with aclosing(iter_scope(store, where, page_size=page_size)) as events:
            async for event in events:
                if header is not None:
                    out.write(header)
                    header = None
                out.write(orjson.dumps(event.to_json_dict()) + b"\n")
                count += 1
                if progress is not None:
                    progress.add(1)
    if header is not None:
        out.write(header)
    out.write(dump_end(count))  # only once every event is out: a dump cut short has none
    out.flush()
    return count


async def count_events(store: TransferStore, scope: Scope | None) -> int | None:
    """How many events an export of ``scope`` (None: the whole store) will write, where the store
    can tell without reading them (for the progress bar): an entity by its last version, a realm by
    its head's position where positions have no gaps; else None."""
    if scope is not None and scope.entity is not None:
        last = (await store.read(scope, order="desc", limit=1)).events
        return last[0].version + 1 if last else 0
    if not store.dense_positions or (scope is not None and scope.domain is not None):
        return None
    total = 0
    async for where in _scopes(store, scope):
        head = (await store.read(where, order="desc", limit=1)).events
        total += head[0].position if head else 0
    return total


async def _scopes(store: TransferStore, scope: Scope | None) -> AsyncIterator[Scope]:
    """The scope itself, or every realm (in name order) for the whole store."""
    if scope is not None:
        yield scope
        return
    async for realm in every_realm(store, "an export"):
        yield Scope(realm)
