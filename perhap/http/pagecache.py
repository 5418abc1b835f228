"""Serialised pages of entity reads, served again while the entity has not moved.

An entity's events never change once written, and its versions grow by one without gaps, so the
answer to one read of an entity (the same query from the same ``following``) is fixed by the
entity's current version. A repeated read then costs one index probe (the entity's last event)
instead of reading, decoding, serialising and hashing every event of the page.

Exact, also with several server processes on one store: the probe asks the store each time, so
an append made anywhere is seen by the next read. A store may offer a cheaper probe of its own
(``entity_version(realm, domain, entity)``, see :class:`VersionProbing`: PostgreSQL reads the
version its entities table keeps, one statement for many concurrent requests); it must answer as
of a moment after it was called, as a read would. A page is kept under a version it is known to
be at least as new as (see :func:`known_version`), never a later one, so a stale page is never
served for a version it does not reflect.

Where the store knows every commit made to it (:meth:`Store.commit_marker`: embedded SQLite, which
one process owns), a page also keeps the commit marker taken before it was read or probed: while
the marker has not moved, nothing was stored, and the page is served without a probe.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol, cast

from ..model import Page, Scope
from ..store.base import Store
from ..store.query import ReadQuery

#: Bytes of pages kept per app by default: about a thousand 100-event pages.
DEFAULT_PAGE_CACHE = 32 * 1024 * 1024
_LARGEST_SHARE = 16  # a page over 1/16 of the cache is not kept: it would evict many hot ones


@dataclass(frozen=True, slots=True)
class CachedPage:
    version: int  # the entity's version the page was read at (or after)
    body: bytes
    tag: bytes  # its ETag
    marker: int | None = None  # the store's commit marker before the page was read or last probed


#: A page's key: every field of its query, and the event it follows. Plain values, not the
#: ReadQuery itself: a frozen dataclass hashes and compares by building tuples of its fields (and
#: its Scope's) on each look-up, which was a tenth of a cached GET's CPU in process.
Key = tuple[object, ...]


# Every field, read from the dataclasses themselves: a field added to either is in the key at once.
_scope_fields = attrgetter(*(f.name for f in dataclasses.fields(Scope)))
_query_fields = attrgetter(*(f.name for f in dataclasses.fields(ReadQuery) if f.name != "scope"))


def page_key(query: ReadQuery, following: str | None) -> Key:
    """The cache key of a read: equal exactly when the queries (and ``following``) are equal."""
    return (_scope_fields(query.scope), _query_fields(query), following)


class PageCache:
    """A least-recently-used map of entity reads to their pages, bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_PAGE_CACHE) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._pages: OrderedDict[Key, CachedPage] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Key) -> CachedPage | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: Key, page: CachedPage) -> None:
        if len(page.body) * _LARGEST_SHARE > self.max_bytes:
            return
        old = self._pages.pop(key, None)
        if old is not None:
            self.size -= len(old.body)
        self._pages[key] = page
        self.size += len(page.body)
        while self.size > self.max_bytes:
            _, evicted = self._pages.popitem(last=False)
            self.size -= len(evicted.body)


class VersionProbing(Protocol):
    """A store's own probe of an entity's current version (-1: no events).

    Optional, found by name rather than declared on :class:`Store`: only the page cache uses it,
    and stores without it are probed by a read of the entity's last event."""

    async def entity_version(self, realm: str, domain: str, entity: str) -> int: ...


async def entity_version(store: Store, query: ReadQuery) -> int:
    """The current version of the query's entity (-1: no events): the store's own probe, or a
    read of its last event (one index probe)."""
    scope = query.scope
    if hasattr(store, "entity_version") and scope.domain is not None and scope.entity is not None:
        return await cast(VersionProbing, store).entity_version(scope.realm, scope.domain, scope.entity)
    page = await store.read_page(ReadQuery(query.scope, descending=True, limit=1))
    return page.events[0].version if page.events else -1


def known_version(query: ReadQuery, page: Page) -> int | None:
    """The entity's version a page was read at, when the page shows it for free: the last event
    of a complete oldest-first read of every type with no upper bound is the entity's last."""
    if (page.next is None and page.events and not query.descending and not query.types
            and query.before is None and query.before_position is None):
        return page.events[-1].version
    return None
