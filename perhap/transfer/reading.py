"""Reading a whole scope or level of a store through its public API, a page at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from ..model import DEFAULT_LIMIT, AppendResult, Event, KeysPage, NewEvent, Page, Scope
from .dump import TransferError

PAGE_SIZE = 1000
#: About this much event JSON in a page read (and as much in the page read ahead). A page is asked
#: for by its count of events, so by count alone 1,000 events of 1 MB each would be a gigabyte in
#: memory (the server's too): the next page's count follows the size of the events just read,
#: and the first page of a scope is small, before any is known.
PAGE_BYTES = 8 * 1024 * 1024
FIRST_PAGE = 16


class TransferStore(Protocol):
    """What export, import and copy use of a store: a :class:`~perhap.store.base.Store`, or a
    server through :class:`~perhap.transfer.remote.RemoteStore`."""

    dense_positions: ClassVar[bool]
    preserves_submission_order: ClassVar[bool]

    async def read(self, scope: Scope, *, following: str | None = None, limit: int = DEFAULT_LIMIT,
                   order: str = "asc") -> Page: ...

    async def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
                   after: str | None = None, limit: int = DEFAULT_LIMIT) -> KeysPage: ...

    async def append_batch(self, realm: str, domain: str, entity: str,
                           events: Sequence[NewEvent | Mapping[str, Any]], *,
                           expected_version: int | None = None) -> AppendResult: ...

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event: ...


async def iter_scope(store: TransferStore, scope: Scope, *, following: str | None = None,
                     page_size: int = PAGE_SIZE) -> AsyncGenerator[Event, None]:
    """Every event of a scope in its order, one page in memory and the next one being read (each
    of at most ``page_size`` events and about PAGE_BYTES). Iterate it inside
    ``contextlib.aclosing`` where the loop may stop early (its reader gone), so the read ahead
    ends before the store is closed."""
    limit = min(page_size, FIRST_PAGE)
    pending = asyncio.ensure_future(store.read(scope, following=following, limit=limit))
    try:
        while True:
            page = await pending
            if page.next is not None:
                limit = _next_limit(page.events, limit, page_size)
                pending = asyncio.ensure_future(store.read(scope, following=page.next, limit=limit))
            for event in page.events:
                yield event
            if page.next is None:
                return
    finally:  # the read ahead stopped, and its outcome taken whatever it was (never left unseen)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)


def _next_limit(events: Sequence[Event], limit: int, most: int) -> int:
    """How many events the next page may hold: about PAGE_BYTES of events the size of these."""
    if not events:
        return limit
    size = sum(len(e.data_json) + len(e.meta_json) for e in events) + 200 * len(events)
    return max(1, min(most, PAGE_BYTES * len(events) // size))


async def every_realm(store: TransferStore, what: str) -> AsyncIterator[str]:
    """Every realm of ``store``, for ``what`` (an export, a copy) of the whole store; refused as
    ``check_every_realm_shown`` says."""
    await check_every_realm_shown(store, what)
    async for realm in iter_keys(store):
        yield realm


async def check_every_realm_shown(store: TransferStore, what: str) -> None:
    """TransferError when ``store`` shows only some of its realms, rather than the others left out
    of ``what`` (an export, a copy) in silence: a server run with ``--auth`` lists only the realm
    of a one-realm token. A server that does not answer raises as any request does."""
    limited = getattr(store, "realms_limited", None)  # (a server's; a Store lists every realm)
    if limited is not None and await limited():
        shown = [name async for name in iter_keys(store)]
        mine = f" ({shown[0]!r})" if shown else ""
        alone = "export that realm by name, or " if what == "an export" else ""
        raise TransferError(f"the token sent reads one realm{mine}, and {what} of the whole store would leave "
                            f"every other realm out: {alone}use a token for every realm (perhap token add --realm '*')")


async def iter_keys(store: TransferStore, *levels: str) -> AsyncIterator[str]:
    """Every name one level below ``levels`` (realms when none), through every page."""
    after = None
    while True:
        page = await store.keys(*levels, after=after, limit=PAGE_SIZE)
        for name in page.keys:
            yield name
        if page.next is None:
            return
        after = page.next
