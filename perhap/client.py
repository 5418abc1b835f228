"""A Python client for the perhap HTTP API: :class:`Client` (blocking) and :class:`AsyncClient`.

Both share one implementation of everything but I/O. :class:`_ClientCore` builds every request and
parses every response into the store's own value types (:class:`~perhap.store.Event`,
:class:`~perhap.store.AppendResult`), so code written against an in-process store reads the same
against a server. The two subclasses only send requests, iterate streams and sleep.

Errors answered by the server (RFC 9457 problem+json) become :class:`PerhapClientError` subclasses
that also subclass the store's own errors: ``except perhap.VersionConflict`` catches the conflict
whether it was raised by an in-process store or answered by a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from . import store as _store
from .sse import SSEDecoder
from .store import (
    Appended,
    AppendResult,
    Event,
    NewEvent,
    Scope,
    check_event_id,
    check_name,
    dump_json,
    load_json,
)

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 1000
#: Streams carry a keep-alive comment every 15 s by default; silence this long means a dead link.
STREAM_IDLE_TIMEOUT = 60.0

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

__all__ = [
    "AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed", "EventIdConflict",
    "MethodNotAllowed", "NotFound", "PayloadTooLarge", "PerhapClientError", "ServerError",
    "Unavailable", "VersionConflict",
]


# --------------------------------------------------------------------------- errors


class PerhapClientError(_store.PerhapError):
    """An error answered by the server, or met on the way to it.

    ``status`` is the HTTP status (0 when no response came), ``problem`` the problem+json body,
    ``type``/``title``/``detail`` its fields, ``extra`` its other fields (e.g. ``current_version``)
    and ``url`` the request's URL.
    """

    def __init__(self, detail: str, *, status: int = 0, problem: Mapping[str, Any] | None = None,
                 url: str | None = None) -> None:
        # Not super().__init__: the store's errors take other arguments; set their fields here.
        Exception.__init__(self, detail)
        self.detail = detail
        self.status = status
        self.problem = dict(problem or {})
        self.type = self.problem.get("type")
        self.title = str(self.problem.get("title") or type(self).title)
        self.extra = {k: v for k, v in self.problem.items() if k not in {"type", "title", "status", "detail"}}
        self.url = url

    def __str__(self) -> str:
        return self.detail

    def one_line(self) -> str:
        """``409 Version conflict: expected version 0, ...``: a message for a terminal."""
        text = f"{self.status} {self.title}: {self.detail}" if self.status else self.detail
        return " ".join(text.split())


class BadRequest(PerhapClientError, _store.InvalidInput):
    """400: a malformed body, a bad name or parameter."""


class NotFound(PerhapClientError, _store.NotFound):
    """404: no such event, or a ``following`` id that is not in the scope."""


class MethodNotAllowed(PerhapClientError):
    """405: the route does not take this method."""


class Conflict(PerhapClientError):
    """409: the base of the two conflicts below."""


class VersionConflict(Conflict, _store.VersionConflict):
    """409: ``expected_version`` did not match; ``current_version`` is the entity's version."""

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.current_version: int = self.extra.get("current_version", -1)
        self.expected_version: int = self.extra.get("expected_version", -1)


class EventIdConflict(Conflict, _store.EventIdConflict):
    """409: the ``event_id`` is already used by a different event."""

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.event_id: str = self.extra.get("event_id", "")


class PayloadTooLarge(PerhapClientError):
    """413: the request body is over the server's limit (``extra["max_body"]``)."""


class ServerError(PerhapClientError):
    """5xx: the server failed."""


class Unavailable(ServerError, _store.StorageUnavailable):
    """503: the server's storage does not answer (transient: retry later)."""


class ConnectionFailed(Unavailable):
    """No response: the server cannot be reached, or the connection broke or timed out."""


_BY_TYPE: dict[str, type[PerhapClientError]] = {
    "urn:perhap:problem:version-conflict": VersionConflict,
    "urn:perhap:problem:event-id-conflict": EventIdConflict,
}
_BY_STATUS: dict[int, type[PerhapClientError]] = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 409: Conflict, 413: PayloadTooLarge,
    503: Unavailable,
}


def error_from_response(response: httpx.Response) -> PerhapClientError:
    """The typed exception for an error response (its body read already)."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    cls = _BY_TYPE.get(str(problem.get("type")), _BY_STATUS.get(status))
    if cls is None:
        cls = ServerError if status >= 500 else PerhapClientError
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        # Not a problem+json body (a proxy's error page, say): show a little of what came.
        text = " ".join(response.text.split())[:200]
        detail = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    problem.setdefault("title", response.reason_phrase or f"HTTP {status}")
    return cls(detail, status=status, problem=problem, url=str(response.request.url))


def _unreachable(request: httpx.Request, exc: Exception) -> ConnectionFailed:
    base = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
    reason = str(exc) or exc.__class__.__name__
    return ConnectionFailed(f"cannot reach {base}: {reason}", url=str(request.url))


def _unexpected(response: httpx.Response, what: str) -> PerhapClientError:
    return PerhapClientError(f"unexpected response from {response.request.url}: {what}",
                             status=response.status_code, url=str(response.request.url))


# --------------------------------------------------------------------------- parsing


def _json_body(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response)
    try:
        return load_json(response.content)
    except (orjson.JSONDecodeError, _store.InvalidInput):
        raise _unexpected(response, "the body is not JSON (is this a perhap server?)") from None


def event_from_dict(item: Mapping[str, Any]) -> Event:
    """An :class:`~perhap.store.Event` from its wire form (a dict as the API returns it)."""
    return Event(item["event_id"], item["realm"], item["domain"], item["entity"], item["type"],
                 item["version"], item["timestamp"], dump_json(item["event"], "event"),
                 dump_json(item["meta"], "meta"))


def _appended(item: Mapping[str, Any]) -> Appended:
    return Appended(item["event_id"], item["version"], item["timestamp"])


def _path(*names: str) -> str:
    return "/" + "/".join(quote(n, safe="") for n in names)


def _scope(realm: str | Scope, domain: str | None, entity: str | None, type: str | None) -> Scope:
    """A Scope from arguments, a Scope, or a 'realm/domain/entity/type' path (names have no '/')."""
    if isinstance(realm, Scope):
        if (domain, entity, type) != (None, None, None):
            raise _store.InvalidInput("give a Scope or names, not both")
        return realm
    if not isinstance(realm, str):
        raise _store.InvalidInput("realm must be a string (or a Scope)")
    if "/" in realm and domain is None and entity is None:
        scope = Scope.parse(realm)
        if type is not None:
            if scope.type is not None:
                raise _store.InvalidInput("the scope names a type already")
            scope = Scope(scope.realm, scope.domain, scope.entity, type)
        return scope
    return Scope(realm, domain, entity, type)


def _scope_request(scope: Scope) -> tuple[str, dict[str, str]]:
    """The path and query of a scope's read (an entity's type is a path segment, else a parameter)."""
    names = [n for n in (scope.realm, scope.domain, scope.entity) if n is not None]
    if scope.entity is not None and scope.type is not None:
        return _path(*names, scope.type), {}
    return _path(*names), ({"type": scope.type} if scope.type else {})


_Op = tuple[httpx.Request, Callable[[httpx.Response], T]]
_Pager = tuple[httpx.Request, Callable[[httpx.Response], "tuple[list[T], httpx.Request | None]"]]


class _ClientCore(Generic[H]):
    """Everything but I/O: requests are built and responses parsed here, for both clients."""

    _http: H

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 body: Any = None, headers: Mapping[str, str] | None = None,
                 timeout: httpx.Timeout | None = None) -> httpx.Request:
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        content = None
        all_headers = dict(headers or {})
        if body is not None:
            try:
                content = orjson.dumps(body)
            except TypeError as exc:  # e.g. an event_id or expected_version that is no JSON
                raise _store.InvalidInput(f"the request is not serialisable as JSON: {exc}") from None
            all_headers["content-type"] = "application/json"
        return self._http.build_request(method, path, params=params, content=content,
                                        headers=all_headers, **extra)

    # ----------------------------------------------------------------- one request each

    def _append_op(self, realm: str, domain: str, entity: str, type: str, event: Any,
                   event_id: str | None, meta: Mapping[str, Any] | None,
                   expected_version: int | None) -> _Op[AppendResult]:
        for name, what in ((realm, "realm"), (domain, "domain"), (entity, "entity"), (type, "type")):
            check_name(name, what, realm=what == "realm")
        body: dict[str, Any] = {"event": orjson.Fragment(dump_json(event, "event"))}
        if event_id is not None:
            body["event_id"] = event_id
        if meta is not None:
            body["meta"] = orjson.Fragment(dump_json(meta, "meta"))
        if expected_version is not None:
            body["expected_version"] = expected_version
        request = self._request("POST", _path(realm, domain, entity, type), body=body)

        def parse(response: httpx.Response) -> AppendResult:
            try:
                return AppendResult([_appended(_json_body(response))], created=response.status_code == 201)
            except (KeyError, TypeError):
                raise _unexpected(response, "not an append result") from None

        return request, parse

    def _append_batch_op(self, realm: str, domain: str, entity: str,
                         events: Sequence[NewEvent | Mapping[str, Any]],
                         expected_version: int | None) -> _Op[AppendResult]:
        for name, what in ((realm, "realm"), (domain, "domain"), (entity, "entity")):
            check_name(name, what, realm=what == "realm")
        items = []
        for e in events:
            if isinstance(e, NewEvent):
                item: dict[str, Any] = {"type": e.type, "event": orjson.Fragment(e.data_json),
                                        "meta": orjson.Fragment(e.meta_json)}
                if e.client_id:
                    item["event_id"] = e.event_id
            else:
                # Serialised here so that any JSON value (big integers too) goes through one path.
                item = {k: orjson.Fragment(dump_json(v, k)) if k in ("event", "meta") else v
                        for k, v in e.items()}
            items.append(item)
        body: dict[str, Any] = {"events": items}
        if expected_version is not None:
            body["expected_version"] = expected_version
        request = self._request("POST", _path(realm, domain, entity), body=body)

        def parse(response: httpx.Response) -> AppendResult:
            try:
                results = [_appended(a) for a in _json_body(response)["events"]]
            except (KeyError, TypeError):
                raise _unexpected(response, "not a batch result") from None
            return AppendResult(results, created=response.status_code == 201)

        return request, parse

    def _get_event_op(self, realm: str, domain: str, event_id: str) -> _Op[Event]:
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        event_id = check_event_id(event_id)
        request = self._request("GET", _path(realm, domain, event_id))

        def parse(response: httpx.Response) -> Event:
            body = _json_body(response)
            # The same URL reads an entity named like the id when no such event exists: an
            # (empty) page instead of an event means "not found".
            if isinstance(body, dict) and "events" in body:
                raise NotFound(f"no event {event_id} in {realm}/{domain}", status=404, url=str(request.url))
            try:
                return event_from_dict(body)
            except (KeyError, TypeError):
                raise _unexpected(response, "not an event") from None

        return request, parse

    def _health_op(self) -> _Op[bool]:
        return self._request("GET", "/_health"), lambda r: r.status_code == 200

    # ----------------------------------------------------------------- paged reads

    def _read_pager(self, scope: Scope, following: str | None, page_size: int) -> _Pager[Event]:
        path, params = _scope_request(scope)
        params = {**params, "limit": str(page_size)}
        if following is not None:
            params["following"] = check_event_id(following, "following")

        def parse(response: httpx.Response) -> tuple[list[Event], httpx.Request | None]:
            body = _json_body(response)
            try:
                events = [event_from_dict(e) for e in body["events"]]
                after = body["next"]
            except (KeyError, TypeError):
                raise _unexpected(response, "not a page of events") from None
            if after is None:
                return events, None
            return events, self._request("GET", path, params={**params, "following": after})

        return self._request("GET", path, params=params), parse

    def _keys_pager(self, levels: tuple[str | None, ...], page_size: int) -> _Pager[str]:
        names: list[str] = []
        for name, what in zip(levels, ("realm", "domain", "entity")):
            if name is None:
                break
            names.append(check_name(name, what, realm=what == "realm"))
        if len(names) < len([n for n in levels if n is not None]):
            raise _store.InvalidInput("keys of an entity need its realm and domain")
        path = _path(*names, "keys")
        params = {"limit": str(page_size)}

        def parse(response: httpx.Response) -> tuple[list[str], httpx.Request | None]:
            body = _json_body(response)
            try:
                keys, after = list(body["keys"]), body["next"]
            except (KeyError, TypeError):
                raise _unexpected(response, "not a page of keys") from None
            if after is None:
                return keys, None
            return keys, self._request("GET", path, params={**params, "after": after})

        return self._request("GET", path, params=params), parse

    # ----------------------------------------------------------------- streams

    def _stream(self, scope: Scope, following: str | None, max_retries: int | None,
                on_retry: Callable[[Exception, float], None] | None) -> _StreamState:
        if following is not None:
            following = check_event_id(following, "following")
        return _StreamState(self, scope, following, max_retries, on_retry)


class _StreamState:
    """One subscription's reconnect state: the request to (re)send, SSE decoding, backoff."""

    def __init__(self, core: _ClientCore[Any], scope: Scope, following: str | None,
                 max_retries: int | None, on_retry: Callable[[Exception, float], None] | None) -> None:
        self.core = core
        self.path, self.params = _scope_request(scope)
        self.last_id = following
        self.max_retries = max_retries
        self.on_retry = on_retry
        self.failures = 0
        self.decoder = SSEDecoder()
        timeout = core._http.timeout
        self.timeout = httpx.Timeout(timeout.connect, read=max(timeout.read or 0, STREAM_IDLE_TIMEOUT),
                                     write=timeout.write, pool=timeout.pool)

    def request(self) -> httpx.Request:
        headers = {"accept": "text/event-stream"}
        if self.last_id is not None:
            # The server resumes after this id (it wins over `following`): nothing is seen twice.
            headers["last-event-id"] = self.last_id
        return self.core._request("GET", self.path, params=self.params, headers=headers,
                                  timeout=self.timeout)

    def opened(self, response: httpx.Response) -> Exception | None:
        """After an error response's body was read: raise, or return a retryable error (503)."""
        if response.status_code == 200:
            self.failures = 0
            self.decoder = SSEDecoder()
            return None
        error = error_from_response(response)
        if isinstance(error, Unavailable):
            return error
        raise error

    def feed(self, chunk: bytes) -> list[Event]:
        events = []
        for message in self.decoder.feed(chunk):
            if message.data is None:
                continue
            try:
                event = event_from_dict(load_json(message.data.encode("utf-8")))
            except (orjson.JSONDecodeError, KeyError, TypeError, _store.InvalidInput):
                raise PerhapClientError(f"unexpected data in the stream from {self.path}") from None
            if event.event_id == self.last_id:
                continue  # defensive: never yield the resume point itself again
            self.last_id = event.event_id
            events.append(event)
        return events

    def retry_delay(self, error: Exception) -> float:
        """Seconds to wait before reconnecting; raises once ``max_retries`` failures in a row."""
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            if isinstance(error, PerhapClientError):
                raise error
            raise ConnectionFailed(f"the stream of {self.path} failed {self.failures} times: {error}")
        delay = min(0.1 * 2.0 ** (self.failures - 1), 5.0)
        if self.on_retry is not None:
            self.on_retry(error, delay)
        return delay


# --------------------------------------------------------------------------- the clients


class Client(_ClientCore[httpx.Client]):
    """A blocking client: ``with perhap.Client("http://127.0.0.1:8787") as c: c.append(...)``.

    ``transport`` is any httpx transport (to run against an app in process, say); ``timeout`` is in
    seconds per request; ``headers`` go with every request (e.g. an Authorization header).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url)
        self._http = httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout,
                                  headers=headers)

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._http.send(request)
        except httpx.TransportError as exc:
            raise _unreachable(request, exc) from None

    def _call(self, op: _Op[T]) -> T:
        request, parse = op
        return parse(self._send(request))

    def _pages(self, pager: _Pager[T]) -> Generator[T, None, None]:
        request: httpx.Request | None = pager[0]
        while request is not None:
            items, request = pager[1](self._send(request))
            yield from items

    def append(self, realm: str, domain: str, entity: str, type: str, event: Any, *,
               event_id: str | None = None, meta: Mapping[str, Any] | None = None,
               expected_version: int | None = None) -> AppendResult:
        """Append one event; ``result.first`` has its event_id, version and timestamp.

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
        :class:`~perhap.store.NewEvent`); the results come in the same order.
        """
        return self._call(self._append_batch_op(realm, domain, entity, events, expected_version))

    def read(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
             type: str | None = None, *, following: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE) -> Generator[Event, None, None]:
        """Every event of a scope, in its order, following ``next`` through every page.

        The scope is names (``read("shop", "orders")``), a path (``read("shop/orders/o-17")``) or a
        :class:`~perhap.store.Scope`. Entities read in version order, domains and realms in commit
        order; ``following`` starts after that event id. Requests are made as you iterate.
        """
        return self._pages(self._read_pager(_scope(realm, domain, entity, type), following, page_size))

    def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        """One event by id; :class:`NotFound` unless it is an event of that realm and domain."""
        return self._call(self._get_event_op(realm, domain, event_id))

    def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
             page_size: int = DEFAULT_PAGE_SIZE) -> Generator[str, None, None]:
        """Sorted names one level down, through every page: realms, a realm's domains, a domain's
        entities, or an entity's event types."""
        return self._pages(self._keys_pager((realm, domain, entity), page_size))

    def health(self) -> bool:
        """True when the server answers and its store does."""
        try:
            return self._call(self._health_op())
        except ConnectionFailed:
            return False

    def subscribe(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                  type: str | None = None, *, following: str | None = None,
                  max_retries: int | None = None,
                  on_retry: Callable[[Exception, float], None] | None = None,
                  ) -> Generator[Event, None, None]:
        """Every event of a scope after ``following`` (default: from the start), then each new one.

        An endless iterator over the server's SSE stream. After a dropped connection it reconnects
        with ``Last-Event-ID``, so each event is yielded once and in order. ``max_retries`` bounds
        the failures in a row before :class:`ConnectionFailed` (default: retry forever, backing off
        up to 5 s); ``on_retry(error, delay)`` is called before each wait. Errors other than 503
        (e.g. :class:`NotFound` for an unknown ``following``) are raised at once.
        """
        state = self._stream(_scope(realm, domain, entity, type), following, max_retries, on_retry)
        while True:
            try:
                response = self._http.send(state.request(), stream=True)
            except httpx.TransportError as exc:
                time.sleep(state.retry_delay(exc))
                continue
            error: Exception | None
            try:
                if response.status_code != 200:
                    response.read()
                error = state.opened(response)
                if error is None:
                    for chunk in response.iter_bytes():
                        yield from state.feed(chunk)
                    error = ConnectionFailed("the server ended the stream")
            except httpx.TransportError as exc:
                error = exc
            finally:
                response.close()
            time.sleep(state.retry_delay(error))

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_ClientCore[httpx.AsyncClient]):
    """The asyncio client: ``async with perhap.AsyncClient(url) as c: await c.append(...)``.

    The same methods as :class:`Client`; ``read``, ``keys`` and ``subscribe`` are async iterators.
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(base_url)
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout,
                                       headers=headers)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request)
        except httpx.TransportError as exc:
            raise _unreachable(request, exc) from None

    async def _call(self, op: _Op[T]) -> T:
        request, parse = op
        return parse(await self._send(request))

    async def _pages(self, pager: _Pager[T]) -> AsyncGenerator[T, None]:
        request: httpx.Request | None = pager[0]
        while request is not None:
            items, request = pager[1](await self._send(request))
            for item in items:
                yield item

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

    def read(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
             type: str | None = None, *, following: str | None = None,
             page_size: int = DEFAULT_PAGE_SIZE) -> AsyncGenerator[Event, None]:
        """Every event of a scope through every page: ``async for e in client.read(...)``
        (see :meth:`Client.read`)."""
        return self._pages(self._read_pager(_scope(realm, domain, entity, type), following, page_size))

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        """One event by id (see :meth:`Client.get_event`)."""
        return await self._call(self._get_event_op(realm, domain, event_id))

    def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
             page_size: int = DEFAULT_PAGE_SIZE) -> AsyncGenerator[str, None]:
        """Sorted names one level down through every page: ``async for name in client.keys(...)``."""
        return self._pages(self._keys_pager((realm, domain, entity), page_size))

    async def health(self) -> bool:
        """True when the server answers and its store does."""
        try:
            return await self._call(self._health_op())
        except ConnectionFailed:
            return False

    async def subscribe(self, realm: str | Scope, domain: str | None = None, entity: str | None = None,
                        type: str | None = None, *, following: str | None = None,
                        max_retries: int | None = None,
                        on_retry: Callable[[Exception, float], None] | None = None,
                        ) -> AsyncGenerator[Event, None]:
        """A scope's events, then each new one, resuming after dropped connections
        (see :meth:`Client.subscribe`). Close it with ``aclose()`` (or ``contextlib.aclosing``)."""
        state = self._stream(_scope(realm, domain, entity, type), following, max_retries, on_retry)
        while True:
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

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
