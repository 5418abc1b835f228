"""The blocking client: :class:`ClientCore`'s requests, sent with ``httpx.Client``."""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from ..groups.settings import DEFAULT_ACK_TIMEOUT, DEFAULT_LEASE_MAX, DEFAULT_MAX_DELIVERIES, DEFAULT_MAX_IN_FLIGHT
from ..model import AppendResult, Event, NewEvent, Scope
from .core import DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT, DEFAULT_URL, POOL, Op, Pager, ReadBounds, TaggedPage, unbound
from .errors import ConnectionFailed, closed_client, unreachable
from .groups import Delivery, GroupCore
from .stream import RetryHook, StreamState
from .wire import resolve_scope
from .workers import Worker

T = TypeVar("T")


class Client(GroupCore[httpx.Client]):
    """A blocking client: ``with perhap.Client("http://127.0.0.1:8787") as c: c.append(...)``.

    ``transport`` is any httpx transport (to run against an app in process, say); ``timeout`` is in
    seconds per request; ``headers`` go with every request (e.g. an Authorization header).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url, headers)
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError("Client needs a blocking httpx transport (httpx.ASGITransport is asyncio's: "
                            "use AsyncClient with it, or httpx.WSGITransport)")
        self._http = httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout,
                                  headers=headers, limits=POOL)
        self._streams: weakref.WeakSet[LiveStream] = weakref.WeakSet()  # open subscriptions, for close()
        self._streams_lock = threading.Lock()  # (close() may run on another thread than subscribe())

    def _send(self, request: httpx.Request) -> httpx.Response:
        if self._http.is_closed:
            raise closed_client()
        try:
            return unbound(self._http.send(request))
        except httpx.TransportError as exc:
            raise unreachable(request, exc) from None

    def _call(self, op: Op[T]) -> T:
        return op.parse(self._send(op.request))

    def _pages(self, pager: Pager[T]) -> Generator[T, None, None]:
        request: httpx.Request | None = pager.request
        while request is not None:
            page = pager.parse(self._send(request))
            yield from page.items
            request = page.next

    def append(self, realm: str, domain: str, entity: str, type: str, event: Any, *,
               event_id: str | None = None, meta: Mapping[str, Any] | None = None,
               expected_version: int | None = None) -> AppendResult:
        """Append one event; ``result.first`` has its event_id, version, position and timestamp.

        ``event_id`` (a UUID you choose) makes a retry safe: the same event again returns the
        original result with ``created`` False. ``expected_version`` (-1: a new entity) raises
        :class:`VersionConflict` (with ``current_version``) when the entity is elsewhere.
        """
        return self._call(self._append_op(realm, domain, entity, type, event, event_id, meta,
                                          expected_version))

    def append_batch(self, realm: str, domain: str, entity: str,
                     events: Sequence[NewEvent | Mapping[str, Any]], *,
                     expected_version: int | None = None) -> AppendResult:
        """Append events to one entity atomically: all are stored, or none.

        Each event is ``{"type": ..., "event": ..., "event_id"?: ..., "meta"?: ...}`` (or a
        :class:`~perhap.model.NewEvent`); the results come in the same order.
        """
        return self._call(self._append_batch_op(realm, domain, entity, events, expected_version))

    def append_many(self, realm: str, domain: str,
                    events: Sequence[Mapping[str, Any] | tuple[str, NewEvent]], *,
                    expected_versions: Mapping[str, int] | None = None) -> AppendResult:
        """Append events to several entities of one domain atomically: all are stored, or none.

        Each event is ``{"entity": ..., "type": ..., "event": ..., "event_id"?: ..., "meta"?: ...}``
        (or an ``(entity, NewEvent)`` pair); each entity's events take consecutive versions in the
        order given. ``expected_versions`` maps any entities (with or without events here) to the
        version each must be at; if any is elsewhere, :class:`VersionConflict` lists every one in
        ``conflicts`` and nothing is stored. The results, in the order given, carry their entity.
        A backend without multi-entity appends answers :class:`NotSupported`.
        """
        return self._call(self._append_many_op(realm, domain, events, expected_versions))

    def read(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
             type: str | None = None, *, following: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE, order: str = "asc", after_position: int | None = None,
             before_position: int | None = None, types: Sequence[str] | None = None,
             after_version: int | None = None, until_version: int | None = None,
             ) -> Generator[Event, None, None]:
        """Every event of a scope, in its order, following ``next`` through every page.

        The scope is names (``read("shop", "orders")``), a path (``read("shop/orders/o-17")``) or a
        :class:`~perhap.model.Scope`. Entities read in version order, domains and realms in position
        order; ``order="desc"`` reads newest first. ``following`` starts after that event id (in
        the order read); ``after_position`` (ascending) or ``before_position`` (descending) starts
        from a position instead. ``types`` keeps events of any of those types; ``after_version``
        and ``until_version`` bound an entity's versions (exclusive, inclusive). Requests are
        made as you iterate; a clash of arguments raises InvalidInput before any is sent.
        """
        bounds = ReadBounds(order, after_position, before_position, types, after_version, until_version)
        return self._pages(self._read_pager(resolve_scope(realm, domain, entity, type), following, page_size,
                                            bounds))

    def read_page(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                  type: str | None = None, *, following: str | None = None, limit: int = DEFAULT_PAGE_SIZE,
                  order: str = "asc", after_position: int | None = None, before_position: int | None = None,
                  types: Sequence[str] | None = None, after_version: int | None = None,
                  until_version: int | None = None, if_none_match: str | None = None) -> TaggedPage | None:
        """One page of a scope (the arguments of :meth:`read`, ``limit`` events) and its ETag:
        ``page, etag = client.read_page(...)``; ``page.next`` is the next page's ``following``.

        Given ``if_none_match`` (an earlier answer's ETag), the answer is None while that page is
        still what the server would answer (304, no body): a cheap way to poll a realm's head,
        ``read_page("shop", order="desc", limit=1, if_none_match=etag)``.
        """
        bounds = ReadBounds(order, after_position, before_position, types, after_version, until_version)
        return self._call(self._read_page_op(resolve_scope(realm, domain, entity, type), following, limit,
                                              bounds, if_none_match))

    def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        """One event by id; :class:`NotFound` unless it is an event of that realm and domain."""
        return self._call(self._get_event_op(realm, domain, event_id))

    def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
             page_size: int = DEFAULT_PAGE_SIZE) -> Generator[str, None, None]:
        """Sorted names one level down, through every page: realms, a realm's domains, a domain's
        entities, or an entity's event types."""
        return self._pages(self._keys_pager((realm, domain, entity), page_size))

    def realms_limited(self) -> bool:
        """Whether :meth:`keys` of the realms lists only the realm of this client's token: a
        server run with ``--auth``, and a token of one realm. A tool that means to cover the whole
        store would leave every other realm out."""
        return self._call(self._realms_limited_op())

    def ping(self) -> bool:
        """Like :meth:`health`, but raises :class:`ConnectionFailed` when nothing answers at all."""
        return self._call(self._health_op())

    def health(self) -> bool:
        """True when the server answers and its store does."""
        try:
            return self.ping()
        except ConnectionFailed:
            return False

    def subscribe(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                  type: str | None = None, *, following: str | None = None,
                  after_position: int | None = None, types: Sequence[str] | None = None,
                  max_retries: int | None = None, on_retry: RetryHook | None = None,
                  ) -> Generator[Event, None, None]:
        """Every event of a scope after ``following`` or ``after_position`` (default: from the
        start), of ``types`` when given, then each new one.

        An endless iterator over the server's SSE stream. After a dropped connection it reconnects
        with ``Last-Event-ID``, so each event is yielded once and in order. ``max_retries`` bounds
        the failures in a row before :class:`ConnectionFailed` (default: retry forever, backing off
        up to 5 s); ``on_retry(error, delay)`` is called before each wait. Errors other than 503
        (e.g. :class:`NotFound` for an unknown ``following``) are raised at once.
        """
        stream = self._live_stream(resolve_scope(realm, domain, entity, type), following, max_retries, on_retry,
                                   after_position=after_position, types=types)
        for batch in stream.batches():
            yield from batch

    def _live_stream(self, scope: Scope, following: str | None, max_retries: int | None,
                     on_retry: RetryHook | None, *, after_position: int | None = None,
                     types: Sequence[str] | None = None) -> LiveStream:
        """:meth:`subscribe`'s stream as an object another thread can stop (perhap.eventsourcing)."""
        stream = LiveStream(self._http, self._stream(scope, following, max_retries, on_retry,
                                                     after_position=after_position, types=types))
        with self._streams_lock:
            self._streams.add(stream)
        return stream

    # ----------------------------------------------------------------- consumer groups

    def create_group(self, realm: str, group: str, *, domain: str | None = None,
                     types: Sequence[str] | None = None, start: str | int = "beginning",
                     ack_timeout: float = DEFAULT_ACK_TIMEOUT, max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                     max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> dict[str, Any]:
        """Create a consumer group of the realm (of ``domain``, of ``types`` when given); the group
        object. Creating it again with the same settings is fine; other settings raise
        :class:`~perhap.client.errors.GroupConflict`, whose detail names them.

        ``start``: ``"beginning"``, ``"end"`` (only events appended from now on) or a position (the
        first event delivered is the first at or after it). A lease not acknowledged within
        ``ack_timeout`` seconds goes back to the group; after ``max_deliveries`` deliveries the
        event is parked; a consumer holds at most ``max_in_flight`` leases at once.
        """
        return self._call(self._create_group_op(realm, group, domain, types, start, ack_timeout, max_deliveries,
                                                max_in_flight))

    def groups(self, realm: str) -> list[dict[str, Any]]:
        """The realm's groups (their objects, as :meth:`group` gives them), by name."""
        return self._call(self._groups_op(realm))

    def group(self, realm: str, group: str) -> dict[str, Any]:
        """A group's settings and figures: ``checkpoint``, ``head``, ``lag``, ``in_flight``,
        ``parked``, ``delivered``, ``redeliveries``, ``acknowledged``, and its ``consumers``."""
        return self._call(self._group_op(realm, group))

    def delete_group(self, realm: str, group: str) -> None:
        """Delete a group and its state (:class:`NotFound` if there is none)."""
        self._call(self._delete_group_op(realm, group))

    def lease(self, realm: str, group: str, consumer: str, *, max: int = DEFAULT_LEASE_MAX,
              wait: float = 0.0) -> list[Delivery]:
        """Lease up to ``max`` events of the group to ``consumer``, waiting up to ``wait`` seconds
        for one (a long poll); ``[]`` if none came. Each must be acknowledged (:meth:`ack`) or
        given back (:meth:`nack`) within the group's ``ack_timeout``."""
        return self._call(self._lease_op(realm, group, consumer, max, wait))

    def ack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> int:
        """Acknowledge events leased to ``consumer``: never delivered again. All or nothing: if one is
        not leased to it now, :class:`~perhap.client.errors.LeaseConflict` and nothing changes."""
        return self._call(self._ack_op(realm, group, consumer, event_ids))

    def nack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str],
             action: str = "retry") -> dict[str, int]:
        """Give leased events back: ``"retry"`` (delivered again, or parked after ``max_deliveries``)
        or ``"park"``; ``{"retried": n, "parked": n}``. All or nothing, as :meth:`ack`."""
        return self._call(self._nack_op(realm, group, consumer, event_ids, action))

    def parked(self, realm: str, group: str) -> list[Delivery]:
        """The group's parked events, in position order, with ``delivery``, ``parked_at`` and
        ``reason``: every page the server answers with (each ends at its page bounds)."""
        found: list[Delivery] = []
        following = None
        while True:
            page, following = self._call(self._parked_op(realm, group, following))
            found += page
            if following is None or not page:
                return found

    def replay_parked(self, realm: str, group: str, event_ids: Sequence[str] | None = None) -> int:
        """Put parked events (all of them by default) back in the group; how many."""
        return self._call(self._replay_op(realm, group, event_ids))

    def consume(self, realm: str, group: str, handler: Callable[[Delivery], object], *,
                consumer: str | None = None, max: int = DEFAULT_LEASE_MAX, wait: float = 5.0,
                stop: threading.Event | None = None) -> int:
        """Work for a group until ``stop`` is set: lease events (long polls of ``wait`` seconds), call
        ``handler(event)`` for each in order, acknowledge each after its handler returned, and nack
        ("retry") an event whose handler raised (logged on ``perhap.client``; the loop goes on).

        Setting ``stop`` (or Ctrl-C, which is raised again) ends the loop after the current handler;
        the events leased but not handled go back to the group at once. Transient failures (a
        server restarting, 503) are retried with backoff. ``consumer`` defaults to
        ``hostname-pid-random``. Returns the number of events handled.
        """
        return Worker(self, realm, group, handler, consumer=consumer, max=max, wait=wait, stop=stop).run()

    def close(self) -> None:
        """Close the connections. A subscription another thread reads ends at once, raising
        :class:`~perhap.client.errors.PerhapClientError` there (the client is closed)."""
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:  # (a blocked read would otherwise wait for the next heartbeat)
            stream.stop(closing=True)
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveStream:
    """One subscription's connection loop: reconnects with Last-Event-ID and backs off as
    :class:`StreamState` says; :meth:`stop` from any thread ends it, a blocking read included."""

    def __init__(self, http: httpx.Client, state: StreamState) -> None:
        self.http, self.state = http, state
        self.stopped = threading.Event()
        self.closing = False  # stopped by the client's close(): the reader gets the closed client's error
        self.response: httpx.Response | None = None

    def batches(self) -> Generator[list[Event], None, None]:
        """The events of each chunk of the stream that completes some, until stopped."""
        state = self.state
        while not self._ended():
            if self.http.is_closed:  # closed while the stream was open: this reconnection is refused
                raise closed_client()
            try:
                response = self.http.send(state.request(), stream=True)
            except httpx.TransportError as exc:
                self.stopped.wait(state.retry_delay(exc))
                continue
            self.response = response
            error: Exception | None
            try:
                if self._ended():
                    return
                if response.status_code != 200:
                    response.read()
                error = state.opened(response)
                if error is None:
                    for chunk in response.iter_bytes():
                        events = state.feed(chunk)
                        if events:
                            yield events
                    error = ConnectionFailed("the server ended the stream")
            except httpx.TransportError as exc:
                error = exc
            finally:
                response.close()
            if self._ended():
                return
            self.stopped.wait(state.retry_delay(error))

    def _ended(self) -> bool:
        if self.closing:
            raise closed_client()
        return self.stopped.is_set()

    def stop(self, *, closing: bool = False) -> None:
        """End the stream: a thread blocked reading it wakes as its socket is shut down.
        ``closing``: the client is being closed, and the reader is told so."""
        self.closing = self.closing or closing
        self.stopped.set()
        response = self.response
        stream = response.extensions.get("network_stream") if response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
