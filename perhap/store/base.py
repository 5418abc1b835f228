"""The Store template: the façade every caller uses, written once over a few backend primitives.

The template owns everything a backend must not get wrong on its own: validation of names and
values, paging, scope checks, the closed state, cancellation safety of writes, and wake-ups for
subscribers. A backend implements only these primitives:

- ``_submit(job)``: start writing one validated batch atomically (to one entity, or with
  ``job.entities`` to several of one domain), with the version and idempotency checks, and settle
  the job when it is decided (:mod:`perhap.store.groupcommit` has the shared group-commit machinery);
- ``_read(query)``: up to ``query.limit`` events of a scope within the query's bounds, in either
  order (:class:`perhap.store.query.ReadQuery`);
- ``_find_event(event_id)``: one event by id, wherever it is, with its cursor;
- ``_names(realm, domain, entity, after, limit)``: names one level below, after a name;
- ``_ping()`` and ``_close()``.

And, where they apply, hooks with defaults here: ``statistics()`` and ``refresh_statistics()``
(figures for /_metrics), ``dense_positions``, ``group_states()`` (where consumer groups keep
their state), ``commit_marker()`` (lets caches skip a probe), ``health()`` (to refuse a caller on
an event loop the backend's connections do not belong to), and ``_add_waiter()`` and
``_change_token()`` for a backend whose commit notices come from another thread (SQLite's writer).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ..errors import InvalidInput, NotFound, NotSupported, store_closed
from ..ids import check_event_id
from ..model import (
    DEFAULT_LIMIT,
    AppendResult,
    Cursor,
    Event,
    KeysPage,
    NewEvent,
    Page,
    Scope,
    check_expected_version,
    check_limit,
    check_name,
    new_event,
    prepare_batch,
    prepare_multi,
)
from .job import WriteJob
from .query import ReadQuery, bytes_cut, read_query
from .states import StateTable
from .subscription import Subscription, follow


@dataclass(frozen=True, slots=True)
class Statistic:
    """A figure a backend keeps anyway, read at scrape time by ``/_metrics`` and the benchmarks."""

    name: str  # exported as perhap_<name> (counters get _total)
    value: float
    help: str
    counter: bool = True


class Store(abc.ABC):
    """An event store. Open one with :func:`perhap.open_store`; every method is a coroutine."""

    url: str
    #: Whether several server processes may share this backend (not so for embedded SQLite).
    shared_across_processes: ClassVar[bool] = False
    #: Whether appends started one after another on one event loop, without awaiting each, commit
    #: in the order they were started (lets an import keep many batches in flight; see transfer).
    preserves_submission_order: ClassVar[bool] = False
    #: Whether :meth:`append_many` (a multi-entity atomic append) is offered; else 501.
    supports_multi_entity: ClassVar[bool] = True
    #: Whether :meth:`append_blocking` takes appends from plain threads (its ``_submit`` is thread-safe).
    accepts_blocking_appends: ClassVar[bool] = False
    #: Whether a realm's positions are 1, 2, 3 ... without gaps (so its head's position counts it).
    dense_positions: ClassVar[bool] = False
    poll_interval: float = 1.0  # seconds a subscriber waits before polling again without a wake-up

    def __init__(self) -> None:
        self._closed = False
        self._commits = 0  # commits known to this process: the subscribers' change token
        self._waiters: set[asyncio.Future[None]] = set()

    # ----------------------------------------------------------------- writing

    async def append(
        self,
        realm: str,
        domain: str,
        entity: str,
        type: str,
        event: Any,
        *,
        event_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append one event to an entity; ``expected_version=-1`` means the entity must be new."""
        prepared = new_event(type, event, event_id, meta)
        return await self.append_batch(realm, domain, entity, [prepared], expected_version=expected_version)

    async def append_batch(
        self,
        realm: str,
        domain: str,
        entity: str,
        events: Sequence[NewEvent | Mapping[str, Any]],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append events to one entity atomically: all are stored, or none."""
        job = self._batch_job(realm, domain, entity, events, expected_version, asyncio.get_running_loop())
        self._submit(job)
        # A client that disconnects cancels only this wait: the backend writes the job all the
        # same and skips settling a cancelled future (no asyncio.shield: it costs an extra future
        # and an extra loop pass per append).
        future = job.future
        assert isinstance(future, asyncio.Future)
        return await future

    async def append_many(
        self,
        realm: str,
        domain: str,
        events: Sequence[Mapping[str, Any] | tuple[str, NewEvent]],
        *,
        expected_versions: Mapping[str, int] | None = None,
    ) -> AppendResult:
        """Append events to several entities of one domain atomically: all are stored, or none.

        Each event names its ``entity``; each entity's events take consecutive versions in the
        order sent, and positions follow the order sent. ``expected_versions`` may name any
        entities (with or without events); if any does not hold, VersionConflict lists them all.
        The results (in the order sent) carry their entity.
        """
        job = self._multi_job(realm, domain, events, expected_versions, asyncio.get_running_loop())
        self._submit(job)
        future = job.future
        assert isinstance(future, asyncio.Future)
        return await future

    def append_blocking(
        self,
        realm: str,
        domain: str,
        entity: str | None,
        events: Sequence[Any],
        *,
        expected_versions: Mapping[str, int] | None = None,
        expected_version: int | None = None,
    ) -> AppendResult:
        """:meth:`append_batch` (``entity`` given) or :meth:`append_many` (``entity`` None) for a
        caller on a plain thread, blocking until the outcome. Only where ``accepts_blocking_appends``
        (SQLite: its writer thread; PostgreSQL: one call on the store's loop); else NotSupported."""
        if not self.accepts_blocking_appends:
            raise NotSupported(f"the {self.backend_name} backend takes appends on its event loop only",
                               backend=self.backend_name)
        if entity is None:
            job = self._multi_job(realm, domain, events, expected_versions, None)
        else:
            job = self._batch_job(realm, domain, entity, events, expected_version, None)
        self._submit(job)
        return job.future.result()

    def _batch_job(self, realm: str, domain: str, entity: str, events: Sequence[NewEvent | Mapping[str, Any]],
                   expected_version: int | None, loop: asyncio.AbstractEventLoop | None) -> WriteJob:
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        check_name(entity, "entity")
        batch = prepare_batch(events)
        expected = check_expected_version(expected_version)
        self._check_open()
        return WriteJob(realm, domain, entity, batch, expected, loop)

    def _multi_job(self, realm: str, domain: str, events: Sequence[Mapping[str, Any] | tuple[str, NewEvent]],
                   expected_versions: Mapping[str, int] | None, loop: asyncio.AbstractEventLoop | None) -> WriteJob:
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        entities, batch, expectations = prepare_multi(events, expected_versions)
        self._check_open()
        if not self.supports_multi_entity:
            raise NotSupported(f"the {self.backend_name} backend does not offer multi-entity appends; "
                               "append to one entity at a time (see the feature matrix in docs/backends)",
                               backend=self.backend_name)
        return WriteJob(realm, domain, entities[0], batch, None, loop, entities, expectations)

    @property
    def backend_name(self) -> str:
        """The backend's name as the docs and errors give it."""
        return type(self).__name__.removesuffix("Store").lower()

    @abc.abstractmethod
    def _submit(self, job: WriteJob) -> None:
        """Start writing ``job`` atomically, with version and idempotency checks; ``job.settle``
        its outcome when decided. The write must go on if the caller stops waiting."""

    # ----------------------------------------------------------------- reading

    async def read(
        self,
        scope: Scope,
        *,
        following: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "asc",
        after_position: int | None = None,
        before_position: int | None = None,
        types: Sequence[str] | None = None,
        after_version: int | None = None,
        until_version: int | None = None,
    ) -> Page:
        """Events of a scope in its order (version order for an entity, else position order).

        ``order="desc"`` reads newest first; ``next`` of a page, passed as ``following``, continues
        in the same order. ``after_position`` (ascending) and ``before_position`` (descending) start
        from a position; ``types`` keeps events of any of those types; ``after_version`` and
        ``until_version`` bound an entity's versions (exclusive and inclusive).
        """
        query = read_query(scope, following=following, order=order, after_position=after_position,
                           before_position=before_position, types=types, after_version=after_version,
                           until_version=until_version, limit=check_limit(limit))
        return await self.read_page(query, following)

    async def read_page(self, query: ReadQuery, following: str | None = None) -> Page:
        """A page of a checked query (see :func:`perhap.store.query.read_query`), after ``following``."""
        self._check_open()
        query = await self._bounded(query, following)
        limit = query.limit
        events = await self._read(replace(query, limit=limit + 1))
        cut = bytes_cut(events[:limit], query.max_bytes)
        if cut is not None:  # (more may follow, as far as the page knows: `next` is given)
            return Page(events[:cut], events[cut - 1].event_id)
        if len(events) > limit:
            return Page(events[:limit], events[limit - 1].event_id)
        return Page(events, None)

    async def _bounded(self, query: ReadQuery, following: str | None) -> ReadQuery:
        """The query with the cursor of ``following`` as its bound in the direction of reading."""
        if following is None:
            return query
        cursor = await self._cursor_of(query.scope, query.types, check_event_id(following, "following"))
        if query.descending:
            if query.before is None or _less(cursor, query.before):
                return replace(query, before=cursor)
        elif query.after is None or _less(query.after, cursor):
            return replace(query, after=cursor)
        return query

    async def get_event(self, realm: str, domain: str | None, event_id: str) -> Event:
        """One event by id; NotFound unless it belongs to that realm and domain (any of the realm's
        domains when ``domain`` is None)."""
        event_id = check_event_id(event_id)
        self._check_open()
        event = await self._find_event(event_id)
        if event is None or event.realm != realm or (domain is not None and event.domain != domain):
            raise NotFound(f"no event {event_id} in {realm}" + ("" if domain is None else f"/{domain}"))
        return event

    async def keys(
        self,
        realm: str | None = None,
        domain: str | None = None,
        entity: str | None = None,
        *,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> KeysPage:
        """Sorted names one level below the given one (realms if none); ``after`` ends at a NUL, which no name holds."""
        limit = check_limit(limit)
        if realm is not None:
            Scope(realm, domain, entity)  # each name checked as a read's are: InvalidInput, not a storage error
        elif domain is not None or entity is not None:
            raise InvalidInput("the names below a realm need the realm")
        if after is not None and (not isinstance(after, str) or not _encodes(after)):
            raise InvalidInput("after must be a string of UTF-8 text")
        self._check_open()
        names = await self._names(realm, domain, entity, (after or "").partition("\x00")[0], limit + 1)
        if len(names) > limit:
            return KeysPage(names[:limit], names[limit - 1])
        return KeysPage(names, None)

    async def _cursor_of(self, scope: Scope, types: Sequence[str], event_id: str) -> Cursor:
        """The cursor of an event in a scope's order; NotFound when it is not in the scope."""
        event = await self._find_event(event_id)
        if (event is None or event.realm != scope.realm
                or (scope.domain is not None and event.domain != scope.domain)
                or (scope.entity is not None and event.entity != scope.entity)
                or (scope.type is not None and event.type != scope.type)
                or (types and event.type not in types)
                or event.cursor is None):
            shown = str(scope) + (f" of type {', '.join(types)}" if types else "")
            raise NotFound(f"no event {event_id} in {shown}")
        return event.version if scope.entity is not None else event.cursor

    @abc.abstractmethod
    async def _read(self, query: ReadQuery) -> list[Event]:
        """Up to ``query.limit`` events of ``query.scope`` within every bound of the query, of its
        types, in its order. Realm and domain reads show only events no earlier event can still
        join (gap-safe), in either order. Each event's ``cursor`` is its place in that order: its
        version in an entity scope, else the backend's commit-order key (see ``Cursor``)."""

    @abc.abstractmethod
    async def _find_event(self, event_id: str) -> Event | None:
        """The event with this id wherever it is, its cursor in its realm's order; None if none."""

    @abc.abstractmethod
    async def _names(self, realm: str | None, domain: str | None, entity: str | None,
                     after: str, limit: int) -> list[str]:
        """Up to ``limit`` names one level below the given one greater than ``after``, in order."""

    # ----------------------------------------------------------------- life cycle

    async def health(self) -> bool:
        """True when the storage answers."""
        try:
            return not self._closed and await self._ping()
        except Exception:
            return False

    @abc.abstractmethod
    async def _ping(self) -> bool:
        """Whether the storage answers and the backend's own machinery runs."""

    async def close(self) -> None:
        """Finish in-flight writes and release every resource."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    @abc.abstractmethod
    async def _close(self) -> None:
        """Finish the writes already submitted, then release every resource."""

    def group_states(self) -> StateTable:
        """Where consumer groups keep their state (:mod:`perhap.store.states`); set up at open."""
        raise NotSupported("this store keeps no consumer-group state")

    def statistics(self) -> list[Statistic]:  # figures the backend keeps (group commits, size ...)
        return []

    async def refresh_statistics(self) -> None:
        return None  # before a scrape, the figures that take a query (PostgreSQL's size)

    def _check_open(self) -> None:
        if self._closed:
            raise store_closed()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- subscriptions

    async def subscribe(
        self, scope: Scope, *, following: str | None = None, batch: int = 500,
        after_position: int | None = None, types: Sequence[str] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every event of the scope after ``following`` (or ``after_position``), of ``types`` when
        given, then each new one as it commits.

        Exactly once and in order: a subscription is a cursor over the same gap-safe read path as
        paging, so it holds no queue of its own and a slow consumer simply reads further behind.
        Like a live stream over HTTP, it outlasts a storage that does not answer for a while (a
        database restarting): its cursor stays, and it reads again after a pause; only a closed
        store ends it (StoreClosed).
        """
        sub = await self.subscription(scope, following=following, batch=batch,
                                      after_position=after_position, types=types)
        async for event in follow(sub):
            yield event

    async def subscription(
        self, scope: Scope, *, following: str | None = None, batch: int = 500,
        after_position: int | None = None, types: Sequence[str] | None = None,
    ) -> Subscription:
        """A cursor for :meth:`subscribe`; ``fetch(timeout)`` returns the next events or []."""
        query = read_query(scope, following=following, after_position=after_position, types=types,
                           limit=batch, stream=True)
        return await self.subscription_for(query, following)

    async def subscription_for(self, query: ReadQuery, following: str | None = None) -> Subscription:
        """A subscription for a checked ascending query (see :func:`perhap.store.query.read_query`)."""
        self._check_open()
        return Subscription(self, replace(await self._bounded(query, following), live=True))

    def _notify_commit(self, *_: object) -> None:
        """Wake this process's subscribers: call on the store's loop after every commit known
        here (own commits, and other processes' where the backend hears of them)."""
        self._commits += 1
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            _wake(waiter)

    def commit_marker(self) -> int | None:
        """A value that changes with every commit to this store by anyone, or None where other
        processes may commit unseen (then callers must ask the store). Equal markers taken at two
        moments mean no event was stored in between: caches may skip asking."""
        return None

    def _add_waiter(self, waiter: asyncio.Future[None]) -> None:  # the next commit notice sets it
        self._waiters.add(waiter)

    def _change_token(self) -> int:
        """A marker of the last commit this process knows of (see _wait_for_change)."""
        return self._commits

    async def _wait_for_change(self, token: int, timeout: float) -> None:
        """Sleep until something may have committed after ``token``, or ``timeout`` passes.

        Correctness never depends on a wake-up arriving: subscribers poll at least this often.
        """
        if self._commits != token:
            return
        # A bare future and a timer: far cheaper than asyncio.wait_for (a task per wait), which
        # matters when each commit wakes a hundred streams.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        self._add_waiter(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _less(a: Cursor, b: Cursor) -> bool:
    """Cursor order (cursors of one scope are all integers, or all tuples)."""
    return a < b  # type: ignore[operator]


def _encodes(text: str) -> bool:
    """Whether ``text`` is UTF-8 text (no lone surrogate), as every stored name is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
