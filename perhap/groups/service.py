"""Consumer groups over a store: each operation a compare-and-set of the group's state document.

One :class:`Groups` serves one store in one process. An operation loads the group's document,
changes it (:mod:`.state`) and writes it back only if nobody wrote it meanwhile; else it loads
again and starts over. Within a process a lock per group keeps its operations from racing each
other, so conflicts only come from other processes sharing the store (PostgreSQL, Cassandra),
which is what makes two servers of one group safe without any coordination of their own: a lease
exists for everyone once its write succeeded, and no write can succeed over a state it did not see.

Wall-clock time judges leases, since several servers judge the same ones: keep their clocks in
step (NTP), as a lease may end early or late by their difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import GroupConflict, NotFound, StateTooLarge, StorageUnavailable
from ..ids import utc_timestamp
from ..model import MAX_LIMIT, MAX_POSITION, Event
from ..store.base import Store
from ..store.query import read_query
from ..store.states import StateTable, new_token
from .ahead import Bodies, lease_cut, parked_page, read_ahead, scan, take_back_deferred
from .settings import MAX_ATTEMPTS, READ_BYTES, SEEN_EVERY, SHARED_POLL, GroupSettings
from .state import GroupState, Lease

_T = TypeVar("_T")

Change = Callable[[GroupState, float], Awaitable[tuple[_T, bool]]]


class Groups:
    """The consumer groups of one store, in this process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._table: StateTable | None = None
        self._cache: dict[tuple[str, str], _Parsed] = {}
        #: Per group, the operations waiting to be applied, and the task applying them.
        self._queues: dict[tuple[str, str], list[_Queued]] = {}
        self._runners: dict[tuple[str, str], asyncio.Future[None]] = {}
        #: Per group, a future resolved (and replaced) when the group changes in this process.
        self._changed: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._bodies = Bodies()
        self._remember = self._bodies.remember

    @property
    def table(self) -> StateTable:
        if self._table is None:
            self._table = self.store.group_states()
            self._table.watch(self._heard)
        return self._table

    # ----------------------------------------------------------------- the group itself

    async def create(self, realm: str, name: str, settings: GroupSettings) -> tuple[bool, dict[str, Any]]:
        """Make the group (True), or find it made with the same settings (False); else 409."""
        while True:
            record = await self.table.get(realm, name)
            if record is not None:
                state = GroupState.from_bytes(record.data)
                differ = state.settings.differences(settings)
                if differ:
                    raise GroupConflict(f"group {name!r} of realm {realm!r} has another {' and '.join(differ)}; "
                                        "delete it first to change its settings",
                                        settings=state.settings.to_json())
                return False, await self._describe(realm, name, state)
            scanned = await self._start(realm, settings)
            state = GroupState(settings, time.time(), scanned, scanned)
            if await self.table.put(realm, name, state.to_bytes(), new_token(), None):
                return True, await self._describe(realm, name, state)

    async def _start(self, realm: str, settings: GroupSettings) -> int:
        """The position the group starts after."""
        if settings.start == "beginning":
            return 0
        if isinstance(settings.start, int):
            return max(settings.start - 1, 0)
        return await self._head(realm, settings)

    async def delete(self, realm: str, name: str) -> None:
        key = (realm, name)
        while True:  # until this delete wins over whatever else writes the group meanwhile
            record = await self.table.get(realm, name)
            if record is None:
                raise _unknown(realm, name)
            if await self.table.delete(realm, name, record.token):
                self._cache.pop(key, None)
                self._wake(key)
                return

    async def names(self, realm: str | None) -> list[tuple[str, str]]:
        return await self.table.names(realm)

    async def check(self, realm: str, name: str) -> None:
        """404 unless the group exists."""
        if await self.table.get(realm, name) is None:
            raise _unknown(realm, name)

    async def describe(self, realm: str, name: str) -> dict[str, Any]:
        return await self._describe(realm, name, await self._load(realm, name))

    async def _load(self, realm: str, name: str) -> GroupState:
        """The group's state as stored (404 unless the group exists)."""
        record = await self.table.get(realm, name)
        if record is None:
            raise _unknown(realm, name)
        return GroupState.from_bytes(record.data)

    async def _describe(self, realm: str, name: str, state: GroupState) -> dict[str, Any]:
        now = time.time()
        state.expire(now)  # as a consumer would find it now
        held: dict[str, int] = {}
        for lease in state.leases.values():
            held[lease.consumer] = held.get(lease.consumer, 0) + 1
        head = await self._head(realm, state.settings)
        unread = await self._count_after(realm, state.settings, state.scanned, head) if head > state.scanned else 0
        return {
            "realm": realm, "name": name, **state.settings.to_json(), "created": utc_timestamp(state.created),
            "checkpoint": await self._checkpoint(realm, state), "head": head,
            "lag": len(state.leases) + state.waiting() + unread,
            "in_flight": len(state.leases), "parked": len(state.parked), "delivered": state.delivered,
            "redeliveries": state.redeliveries, "acknowledged": state.acknowledged,
            "consumers": [{"consumer": c, "last_seen": utc_timestamp(t), "in_flight": held.get(c, 0)}
                          for c, t in sorted(state.consumers.items())],
        }

    async def _checkpoint(self, realm: str, state: GroupState) -> int:
        """The position of the newest scope event with every event up to it acknowledged or
        parked, or before the group's start (0 when there is none): always one of the scope's own
        positions, never past its head. (The scan's position or the start's alone were not: a
        start of 99 over a head of 7 said 98, and a start in another domain's event named it.)"""
        oldest = state.oldest_open()
        below = oldest if oldest is not None else min(state.scanned + 1, MAX_POSITION)
        page = await self.store.read(state.settings.scope(realm), order="desc", before_position=below,
                                     limit=1, types=state.settings.types)
        return page.events[0].position if page.events else 0

    async def _head(self, realm: str, settings: GroupSettings) -> int:
        page = await self.store.read(settings.scope(realm), order="desc", limit=1, types=settings.types)
        return page.events[0].position if page.events else 0

    async def _count_after(self, realm: str, settings: GroupSettings, position: int, head: int) -> int:
        if self.store.dense_positions and settings.domain is None and not settings.types:
            return head - position  # a realm's positions are 1, 2, 3 ... with no gaps
        total = 0
        while True:  # (pages bounded in bytes too: only the count is wanted)
            page = await self.store.read_page(read_query(settings.scope(realm), after_position=position,
                                                         limit=MAX_LIMIT, types=settings.types, max_bytes=READ_BYTES))
            total += len(page.events)
            if page.next is None or not page.events:
                return total
            position = page.events[-1].position

    # ----------------------------------------------------------------- consuming

    async def lease(self, realm: str, name: str, consumer: str, limit: int, wait: float,
                    check: Callable[[], None] | None = None, stop: asyncio.Event | None = None,
                    max_bytes: int | None = None, born: list[float] | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` events (up to the one reaching ``max_bytes``) leased to ``consumer``,
        waiting up to ``wait`` seconds for one; ``check`` (it raises to refuse, a revoked token)
        runs before each look. Once ``stop`` is set (the server stops) the wait ends with nothing
        leased; a look under way finishes, and what it leased is returned, never dropped. ``born``:
        the group's creation time at the first look (a stream's leases share it); made again since
        (deleted and made by another process between two looks), the group is another one: 404."""
        born = [] if born is None else born
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        key = (realm, name)
        while True:
            if stop is not None and stop.is_set():
                return []
            if check is not None:
                check()
            # Both taken before looking: a commit or a change after them ends the wait at once.
            token = self.store._change_token()
            changed = self._changed.get(key)
            if changed is None:
                changed = self._changed[key] = loop.create_future()
            leased, expiry = await self._lease_once(realm, name, consumer, limit, max_bytes, born)
            if leased:
                return await self._deliveries(realm, leased)
            left = deadline - loop.time()
            if left <= 0:
                return []
            pause = min(left, self.store.poll_interval)
            if self.store.shared_across_processes:
                pause = min(pause, SHARED_POLL)
            if expiry is not None:
                pause = min(pause, max(expiry - time.time(), 0.0) + 0.01)
            await self._wait(changed, token, pause, stop)

    async def _wait(self, changed: asyncio.Future[None], token: int, timeout: float,
                    stop: asyncio.Event | None = None) -> None:
        """Until an event is stored, the group changes in this process, ``stop`` is set, or
        ``timeout`` passes."""
        commit = asyncio.ensure_future(self.store._wait_for_change(token, timeout))
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait() if stop else asyncio.sleep(timeout))
        try:
            await asyncio.wait({commit, changed, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            commit.cancel()
            stopped.cancel()

    async def _lease_once(self, realm: str, name: str, consumer: str, limit: int, max_bytes: int | None,
                          born: list[float]) -> tuple[list[tuple[int, Lease]], float | None]:
        key = (realm, name)
        cached = self._cache.get(key)
        known = None if cached is None else (cached.scanned, cached.state)
        ahead = await read_ahead(self.store, realm, name, known, consumer, limit, self._remember)

        async def change(state: GroupState, now: float) -> tuple[tuple[list[tuple[int, Lease]], float | None], bool]:
            if born[:1] not in ([], [state.created]):
                raise _unknown(realm, name)  # deleted and made again since the first look
            born[:] = [state.created]
            scanned = state.scanned
            dirty = state.expire(now)
            dirty = state.seen(consumer, now, SEEN_EVERY) or dirty
            room = min(limit, state.settings.max_in_flight - state.held_by(consumer))
            chosen: list[int] = []
            if room > 0:
                dirty = await take_back_deferred(self.store, realm, state, room, self._remember) or dirty
                busy = state.busy_entities()
                chosen = state.choose_pending(room, busy)
                full = None if max_bytes is None else lambda: self._bodies.size_of(state, chosen) >= max_bytes
                await scan(self.store, realm, state, room, busy, chosen, ahead, self._remember, full)
                if max_bytes is not None:  # (those left out wait in pending, as they were)
                    del chosen[await lease_cut(chosen, state, max_bytes, functools.partial(self._body, realm)):]
            leases = state.lease(chosen, consumer, now)
            # Every change made in place must be stored (or dropped with the cache): events read
            # and waiting behind their entity are one, even when nothing goes out.
            dirty = dirty or bool(chosen) or state.scanned != scanned
            return (list(zip(chosen, leases, strict=True)), state.next_expiry()), dirty

        return await self._update(realm, name, change)

    async def ack(self, realm: str, name: str, consumer: str, event_ids: Sequence[str]) -> int:
        return await self._answer(realm, name, consumer, lambda state, now: state.ack(consumer, event_ids))

    async def nack(self, realm: str, name: str, consumer: str, event_ids: Sequence[str],
                   action: str) -> tuple[int, int]:
        return await self._answer(realm, name, consumer,
                                  lambda state, now: state.nack(consumer, event_ids, action, now))

    async def _answer(self, realm: str, name: str, consumer: str,
                      apply: Callable[[GroupState, float], _T]) -> _T:
        """A consumer's ack or nack: applied after leases that ran out are expired, so an answer
        for a lease past its ``ack_timeout`` is a 409 as the lease's end promised, whether or not
        anyone has seen the event go back (or be parked) yet; then waiting consumers look again."""
        async def change(state: GroupState, now: float) -> tuple[_T, bool]:
            state.expire(now)
            result = apply(state, now)
            state.seen(consumer, now, SEEN_EVERY)
            return result, True

        result = await self._update(realm, name, change)
        self._wake((realm, name))
        return result

    async def parked(self, realm: str, name: str, limit: int, following: str | None = None,
                     max_bytes: int | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the group's parked events after the event ``following`` (see
        :func:`.ahead.parked_page`), which need not be parked still: a page's last event may be
        replayed before the next page is asked for, so its place is then read from the store."""
        state = await self._load(realm, name)
        state.expire(time.time())  # leases that ran out for the last time are parked already
        after = -1
        if following is not None:
            found = [pos for pos, p in state.parked.items() if p.event_id == following]
            after = found[0] if found else (await self.store.get_event(realm, None, following)).position
        return await parked_page(state, after, limit, max_bytes, functools.partial(self._body, realm))

    async def replay(self, realm: str, name: str, event_ids: Sequence[str] | None) -> int:
        async def change(state: GroupState, now: float) -> tuple[int, bool]:
            expired = state.expire(now)
            count = state.replay(event_ids)
            return count, expired or count > 0

        count = await self._update(realm, name, change)
        self._wake((realm, name))
        return count

    # ----------------------------------------------------------------- state documents

    async def _update(self, realm: str, name: str, change: Change[_T]) -> _T:
        """Run ``change`` on the group's state and store the result, again on a fresher state
        whenever another process wrote first.

        Operations on one group that arrive while one is being stored wait, then go together
        (group commit): each is applied in turn to the same state, one write stores them all, and
        its outcome answers each. The stored token is read every time (one small read), but the
        document is parsed only when it is not the one this process wrote or read last.
        """
        key = (realm, name)
        done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(_Queued(change, done))
        if key not in self._runners:
            # A task of its own: a caller that goes away must not leave the others unanswered.
            self._runners[key] = asyncio.ensure_future(self._run(key))
        return await done

    async def _run(self, key: tuple[str, str]) -> None:
        try:
            while batch := self._queues.pop(key, None):
                # A caller that left (a long poll whose client hung up) is owed nothing: its
                # operation is not applied at all.
                batch = [q for q in batch if not q.done.done()]
                if batch:
                    await self._store(key, batch)
        finally:
            del self._runners[key]

    async def _store(self, key: tuple[str, str], batch: list[_Queued]) -> None:
        realm, name = key
        for attempt in range(MAX_ATTEMPTS):
            try:
                stored = await self.table.get(realm, name)
                if stored is None:
                    self._cache.pop(key, None)
                    raise _unknown(realm, name)
                cached = self._cache.get(key)
                if cached is None or cached.token != stored.token:
                    cached = self._cache[key] = _Parsed(stored.token, GroupState.from_bytes(stored.data))
                state = cached.state
                outcomes: list[object] = []
                dirty = failed = False
                now = time.time()
                for item in batch:
                    try:
                        result, changed = await item.change(state, now)
                    except Exception as exc:  # this operation's own failure: a 409, a read that failed
                        outcomes.append(_Failed(exc))
                        failed = True
                        continue
                    outcomes.append(result)
                    dirty = dirty or changed
                token, data = new_token(), state.to_bytes() if dirty else b""
                try:
                    written = not dirty or await self.table.put(realm, name, data, token, cached.token)
                except StateTooLarge:
                    if len(batch) > 1:
                        raise
                    # Leases that ran out grow the document (a parked entry is larger than a lease):
                    # not the operation's doing, so one that adds nothing to that goes through.
                    allowed = GroupState.size_expired(stored.data, now)
                    written = await self.table.put(realm, name, data, token, cached.token, allowed)
            except BaseException as exc:
                self._cache.pop(key, None)  # changed in place, maybe not stored
                if isinstance(exc, StateTooLarge) and len(batch) > 1:
                    for item in batch:  # one at a time: what shrinks the state (acks) goes through
                        await self._store(key, [item])
                    return
                _answer(batch, [_Failed(exc if isinstance(exc, Exception) else StorageUnavailable("stopped"))]
                        * len(batch))
                if not isinstance(exc, Exception):
                    raise
                return
            if written:
                if dirty:
                    self._cache[key] = _Parsed(token, state)
                elif failed:
                    self._cache.pop(key, None)  # a failed operation may have changed it unstored
                _answer(batch, outcomes)
                return
            self._cache.pop(key, None)
            # The first retry at once (the state just written, read as early as its writer can)
            await asyncio.sleep(random.uniform(0, 0.005 * min(attempt, 10)))
        busy = StorageUnavailable(f"group {name!r} is changed by other processes too often; try again")
        _answer(batch, [_Failed(busy)] * len(batch))

    def _wake(self, key: tuple[str, str]) -> None:
        changed = self._changed.pop(key, None)
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _heard(self, key: tuple[str, str] | None) -> None:
        """Another process changed a group (None: maybe any): its waiting consumers look again now,
        not at their next poll (the other process's own consumers would take the work meanwhile)."""
        for each in [key] if key is not None else list(self._changed):
            self._wake(each)

    # ----------------------------------------------------------------- event bodies

    async def _body(self, realm: str, domain: str, event_id: str) -> Event:
        event = self._bodies.get(event_id)
        if event is None:
            event = await self.store.get_event(realm, domain, event_id)
            self._remember(event)
        return event

    async def _deliveries(self, realm: str, leased: list[tuple[int, Lease]]) -> list[dict[str, Any]]:
        return [{**(await self._body(realm, lease.domain, lease.event_id)).to_json_dict(), "delivery": lease.delivery}
                for _, lease in leased]

    async def figures(self, of_realm: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """(realm, name, description) of every group of a realm or (None) of the store, by name."""
        found = []
        for realm, name in await self.table.names(of_realm):
            with contextlib.suppress(NotFound):  # deleted meanwhile
                found.append((realm, name, await self.describe(realm, name)))
        return found


@dataclass(slots=True)
class _Queued:
    """An operation waiting for its turn, and where its outcome goes."""

    change: Change[Any]
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _Failed:  # an operation's own failure, for its caller
    error: Exception


def _answer(batch: list[_Queued], outcomes: list[object]) -> None:
    for item, outcome in zip(batch, outcomes, strict=True):
        if item.done.done():  # its caller left meanwhile
            continue
        if isinstance(outcome, _Failed):
            item.done.set_exception(outcome.error)
        else:
            item.done.set_result(outcome)


@dataclass(slots=True)
class _Parsed:
    """A group's state as this process last read or wrote it, under the token stored with it,
    and its ``scanned`` as stored (an operation being applied may move the state's on)."""

    token: str
    state: GroupState
    scanned: int = field(init=False)

    def __post_init__(self) -> None:
        self.scanned = self.state.scanned


def _unknown(realm: str, name: str) -> NotFound:
    return NotFound(f"no consumer group {name!r} in realm {realm!r}; create it with PUT /_groups/{realm}/{name}")
