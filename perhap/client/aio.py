"""The asyncio client: :class:`ClientCore`'s requests, sent with ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from ..groups.settings import DEFAULT_ACK_TIMEOUT, DEFAULT_LEASE_MAX, DEFAULT_MAX_DELIVERIES, DEFAULT_MAX_IN_FLIGHT
from ..model import AppendResult, Event, NewEvent, Scope
from .core import DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT, DEFAULT_URL, POOL, Op, Pager, ReadBounds, TaggedPage, unbound
from .errors import ConnectionFailed, closed_client, unreachable
from .groups import Delivery, GroupCore
from .stream import RetryHook
from .wire import resolve_scope
from .workers import AsyncWorker

T = TypeVar("T")


class AsyncClient(GroupCore[httpx.AsyncClient]):
    """The asyncio client: ``async with perhap.AsyncClient(url) as c: await c.append(...)``.

    The same methods as :class:`~perhap.client.sync.Client`; ``read``, ``keys`` and ``subscribe``
    are async iterators.
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url, headers)
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError("AsyncClient needs an asyncio httpx transport (a blocking one: use Client)")
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout,
                                       headers=headers, limits=POOL)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._http.is_closed:
            raise closed_client()
        try:
            return unbound(await self._http.send(request))
        except httpx.TransportError as exc:
            raise unreachable(request, exc) from None

    async def _call(self, op: Op[T]) -> T:
        return op.parse(await self._send(op.request))

    async def _pages(self, pager: Pager[T]) -> AsyncGenerator[T, None]:
        request: httpx.Request | None = pager.request
        while request is not None:
            page = pager.parse(await self._send(request))
            for item in page.items:
                yield item
            request = page.next

    async def append(self, realm: str, domain: str, entity: str, type: str, event: Any, *,
                     event_id: str | None = None, meta: Mapping[str, Any] | None = None,
                     expected_version: int | None = None) -> AppendResult:
        """Append one event (see :meth:`Client.append`)."""
        return await self._call(self._append_op(realm, domain, entity, type, event, event_id, meta,
                                                expected_version))

    async def append_batch(self, realm: str, domain: str, entity: str,
                           events: Sequence[NewEvent | Mapping[str, Any]], *,
                           expected_version: int | None = None) -> AppendResult:
        """Append events to one entity atomically (see :meth:`Client.append_batch`)."""
        return await self._call(self._append_batch_op(realm, domain, entity, events, expected_version))

    async def append_many(self, realm: str, domain: str,
                          events: Sequence[Mapping[str, Any] | tuple[str, NewEvent]], *,
                          expected_versions: Mapping[str, int] | None = None) -> AppendResult:
        """Append events to several entities of one domain atomically (see :meth:`Client.append_many`)."""
        return await self._call(self._append_many_op(realm, domain, events, expected_versions))

    def read(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
             type: str | None = None, *, following: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE, order: str = "asc", after_position: int | None = None,
             before_position: int | None = None, types: Sequence[str] | None = None,
             after_version: int | None = None, until_version: int | None = None,
             ) -> AsyncGenerator[Event, None]:
        """Every event of a scope through every page: ``async for e in client.read(...)``
        (see :meth:`Client.read`)."""
        bounds = ReadBounds(order, after_position, before_position, types, after_version, until_version)
        return self._pages(self._read_pager(resolve_scope(realm, domain, entity, type), following, page_size,
                                            bounds))

    async def read_page(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                  type: str | None = None, *, following: str | None = None, limit: int = DEFAULT_PAGE_SIZE,
                  order: str = "asc", after_position: int | None = None, before_position: int | None = None,
                  types: Sequence[str] | None = None, after_version: int | None = None,
                  until_version: int | None = None, if_none_match: str | None = None) -> TaggedPage | None:
        """One page of a scope, with the server's ETag (see :meth:`Client.read_page`)."""
        bounds = ReadBounds(order, after_position, before_position, types, after_version, until_version)
        return await self._call(self._read_page_op(resolve_scope(realm, domain, entity, type), following, limit,
                                              bounds, if_none_match))

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        """One event by id (see :meth:`Client.get_event`)."""
        return await self._call(self._get_event_op(realm, domain, event_id))

    def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
             page_size: int = DEFAULT_PAGE_SIZE) -> AsyncGenerator[str, None]:
        """Sorted names one level down through every page: ``async for name in client.keys(...)``."""
        return self._pages(self._keys_pager((realm, domain, entity), page_size))

    async def realms_limited(self) -> bool:
        """Whether :meth:`keys` of the realms lists only the realm of this client's token (see
        :meth:`Client.realms_limited`)."""
        return await self._call(self._realms_limited_op())

    async def ping(self) -> bool:
        """Like :meth:`health`, but raises :class:`ConnectionFailed` when nothing answers at all."""
        return await self._call(self._health_op())

    async def health(self) -> bool:
        """True when the server answers and its store does."""
        try:
            return await self.ping()
        except ConnectionFailed:
            return False

    async def subscribe(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                        type: str | None = None, *, following: str | None = None,
                        after_position: int | None = None, types: Sequence[str] | None = None,
                        max_retries: int | None = None, on_retry: RetryHook | None = None,
                        ) -> AsyncGenerator[Event, None]:
        """A scope's events, then each new one, resuming after dropped connections
        (see :meth:`Client.subscribe`). Close it with ``aclose()`` (or ``contextlib.aclosing``)."""
        state = self._stream(resolve_scope(realm, domain, entity, type), following, max_retries, on_retry,
                             after_position=after_position, types=types)
        while True:
            if self._http.is_closed:  # closed while the stream was open: this reconnection is refused
                raise closed_client()
            try:
                response = await self._http.send(state.request(), stream=True)
            except httpx.TransportError as exc:
                await asyncio.sleep(state.retry_delay(exc))
                continue
            error: Exception | None
            try:
                if response.status_code != 200:
                    await response.aread()
                error = state.opened(response)
                if error is None:
                    async for chunk in response.aiter_bytes():
                        for event in state.feed(chunk):
                            yield event
                    error = ConnectionFailed("the server ended the stream")
            except httpx.TransportError as exc:
                error = exc
            finally:
                await response.aclose()
            await asyncio.sleep(state.retry_delay(error))

    # ----------------------------------------------------------------- consumer groups

    async def create_group(self, realm: str, group: str, *, domain: str | None = None,
                           types: Sequence[str] | None = None, start: str | int = "beginning",
                           ack_timeout: float = DEFAULT_ACK_TIMEOUT, max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                           max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> dict[str, Any]:
        """Create a consumer group; the group object (see :meth:`Client.create_group`)."""
        return await self._call(self._create_group_op(realm, group, domain, types, start, ack_timeout,
                                                      max_deliveries, max_in_flight))

    async def groups(self, realm: str) -> list[dict[str, Any]]:
        """The realm's groups, by name."""
        return await self._call(self._groups_op(realm))

    async def group(self, realm: str, group: str) -> dict[str, Any]:
        """A group's settings and figures (see :meth:`Client.group`)."""
        return await self._call(self._group_op(realm, group))

    async def delete_group(self, realm: str, group: str) -> None:
        """Delete a group and its state."""
        await self._call(self._delete_group_op(realm, group))

    async def lease(self, realm: str, group: str, consumer: str, *, max: int = DEFAULT_LEASE_MAX,
                    wait: float = 0.0) -> list[Delivery]:
        """Lease up to ``max`` events, waiting up to ``wait`` seconds for one (see :meth:`Client.lease`)."""
        return await self._call(self._lease_op(realm, group, consumer, max, wait))

    async def ack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> int:
        """Acknowledge leased events, all or nothing (see :meth:`Client.ack`)."""
        return await self._call(self._ack_op(realm, group, consumer, event_ids))

    async def nack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str],
                   action: str = "retry") -> dict[str, int]:
        """Give leased events back, ``"retry"`` or ``"park"`` (see :meth:`Client.nack`)."""
        return await self._call(self._nack_op(realm, group, consumer, event_ids, action))

    async def parked(self, realm: str, group: str) -> list[Delivery]:
        """The group's parked events, in position order (see :meth:`Client.parked`)."""
        found: list[Delivery] = []
        following = None
        while True:
            page, following = await self._call(self._parked_op(realm, group, following))
            found += page
            if following is None or not page:
                return found

    async def replay_parked(self, realm: str, group: str, event_ids: Sequence[str] | None = None) -> int:
        """Put parked events (all by default) back in the group; how many."""
        return await self._call(self._replay_op(realm, group, event_ids))

    async def consume(self, realm: str, group: str, handler: Callable[[Delivery], Awaitable[object] | object], *,
                      consumer: str | None = None, max: int = DEFAULT_LEASE_MAX, wait: float = 5.0,
                      stop: asyncio.Event | None = None) -> int:
        """Work for a group until ``stop`` is set (see :meth:`Client.consume`); ``handler`` may be
        async or not (a plain one runs on the event loop). Cancelling the task gives the leased,
        unhandled events back before the cancellation goes on. Returns the number handled."""
        worker = AsyncWorker(self, realm, group, handler, consumer=consumer, max=max, wait=wait, stop=stop)
        return await worker.run()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
