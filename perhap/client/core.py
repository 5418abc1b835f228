"""Everything but I/O, for both clients: :class:`ClientCore` checks arguments, builds every request
and parses every response into the store's own value types.

Each operation is an :class:`Op` (one request and its parser) or a :class:`Pager` (a first request,
and a parser that also gives the next page's request); :class:`~perhap.client.sync.Client` and
:class:`~perhap.client.aio.AsyncClient` only send them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import orjson

from ..errors import InvalidInput, sent_text
from ..ids import check_event_id
from ..jsoncodec import dump_json, made_null
from ..model import DEFAULT_LIMIT, AppendResult, Event, NewEvent, Page, Scope, check_name, prepare_multi
from ..store.query import read_query
from .errors import NotFound, PerhapClientError, shown_url, unexpected
from .stream import RetryHook, StreamState, stream_timeout
from .wire import Params, appended_from_dict, event_from_dict, json_body, path, read_request, without

DEFAULT_URL = "http://127.0.0.1:8787"
#: A connection left idle this long is not used again (httpx keeps one 5 s): `perhap serve` closes
#: an idle one at 5 s (--idle-timeout), and a request sent on a connection the server is closing
#: at that moment fails as "no answer", which reads as an append that may have been carried out.
POOL = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0)
DEFAULT_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = DEFAULT_LIMIT

T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One request, and how to read its response."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]


@dataclass(frozen=True, slots=True)
class PageOf(Generic[T]):
    """One page's items, and the request for the next page (None on the last)."""

    items: list[T]
    next: httpx.Request | None


@dataclass(frozen=True, slots=True)
class Pager(Generic[T]):
    """The first page's request, and how to read a page (and find the next)."""

    request: httpx.Request
    parse: Callable[[httpx.Response], PageOf[T]]


@dataclass(frozen=True, slots=True)
class ReadBounds:
    """A read's order, position and version bounds, and types (see :meth:`Client.read`)."""

    order: str = "asc"
    after_position: int | None = None
    before_position: int | None = None
    types: Sequence[str] | None = None
    after_version: int | None = None
    until_version: int | None = None


_READ_STREAM = httpx.ByteStream(b"")


def unbound(response: httpx.Response) -> httpx.Response:
    """A response whose body is read, let go of by its stream. httpx binds the two to each other
    (the stream refers to the response, to time it), a reference cycle: every response, body and
    all, lived until Python's cyclic collector next ran, which a few large pages do not prompt (a
    client reading 16 MiB pages grew by one page per page read, 300 MiB before a collection)."""
    response.stream = _READ_STREAM
    return response


#: One page and the server's ETag for it (None if the server sent none).
TaggedPage = tuple[Page, str | None]

#: What HTTP takes as a header name (RFC 9110 "token").
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _page(response: httpx.Response, body: Any) -> Page:
    if isinstance(body, dict) and "event_id" in body and "events" not in body:
        # GET /{realm}/{domain}/{x} answers the event whose id is x, when there is one (a 201's
        # Location is such a path): an event, not a page of an entity's events.
        raise PerhapClientError(
            f"{response.request.url.path} is the address of the event {body['event_id']}, not of an "
            "entity's events: read one event with get_event(realm, domain, event_id) (curl it as it is)",
            url=shown_url(response.request.url))
    try:
        return Page([event_from_dict(e) for e in body["events"]], body["next"])
    except (KeyError, TypeError):
        raise unexpected(response, "not a page of events") from None


def _batch_item(e: NewEvent) -> dict[str, Any]:
    """A checked event as an item of a batch's body: its id only if the caller chose it (else the
    server picks one), its time only if it has one of its own (an import's)."""
    item: dict[str, Any] = {"type": e.type, "event": orjson.Fragment(e.data_json), "meta": orjson.Fragment(e.meta_json)}
    if e.client_id:
        item["event_id"] = e.event_id
    if e.timestamp is not None:
        item["timestamp"] = e.timestamp
    return item


def url_problem(url: str) -> str | None:
    """Why no request could use ``url`` as a server's base URL (the words that follow the URL in a
    message), or None: it must be http:// or https://, with a host, a port from 1 to 65535 if
    any, and no query or fragment (every request's own path and query go after it)."""
    if not url.lower().startswith(("http://", "https://")):
        return " is not an http:// or https:// URL"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        return f" is not a valid URL: {' '.join(str(exc).split()) or 'malformed'}"
    if not parsed.host:
        return f" names no host, e.g. {DEFAULT_URL}"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f": the port must be from 1 to 65535, not {parsed.port}"
    if parsed.query or parsed.fragment:
        return " has a query or a fragment: give the server's scheme, host, port and any path prefix only"
    return None


class ClientCore(Generic[H]):
    """Everything but I/O: requests are built and responses parsed here, for both clients."""

    _http: H

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        # Refused here too: without a scheme (or with an unclosed "[") every request would fail as
        # a connection error, which reads as a server that is down, and is retried as one.
        problem = url_problem(base_url)
        if problem is not None:
            raise InvalidInput(f"the server's URL{problem}")  # (not quoted: it may hold a password)
        self.base_url = base_url.rstrip("/")
        for name, value in (headers or {}).items():
            # Refused here, by name: httpx would refuse it at each request, as a connection error
            # (a transient one, which loops like consume retry) whose message shows the value (a
            # token read from a file with its line break, say).
            if not _HEADER_NAME.fullmatch(name):
                raise InvalidInput(f"{sent_text(name, 60)!r} is not a valid header name (letters, digits and "
                                   "!#$%&'*+-.^_`|~ only)")
            if not value.isascii() or any(c in value for c in "\r\n\x00"):
                raise InvalidInput(f"the {name} header holds a line break or a character outside ASCII "
                                   "(a token read with its newline?); its value is not shown")

    def _request(self, method: str, path: str, *, params: Mapping[str, str] | Params | None = None,
                 body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
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
                raise InvalidInput(f"the request is not serialisable as JSON: {exc}") from None
            if made_null(content, body):  # (ack_timeout=nan went out as null)
                raise InvalidInput("the request holds a number JSON cannot carry (NaN or an infinity)")
            all_headers["content-type"] = "application/json"
        query = tuple(params) if isinstance(params, list) else params  # (a tuple is covariant for mypy)
        return self._http.build_request(method, path, params=query, content=content,
                                        headers=all_headers, **extra)

    # ----------------------------------------------------------------- one request each

    def _append_op(self, realm: str, domain: str, entity: str, type: str, event: Any,
                   event_id: str | None, meta: Mapping[str, Any] | None,
                   expected_version: int | None) -> Op[AppendResult]:
        for name, what in ((realm, "realm"), (domain, "domain"), (entity, "entity"), (type, "type")):
            check_name(name, what, realm=what == "realm")
        body: dict[str, Any] = {"event": orjson.Fragment(dump_json(event, "event"))}
        if event_id is not None:
            body["event_id"] = event_id
        if meta is not None:
            body["meta"] = orjson.Fragment(dump_json(meta, "meta"))
        if expected_version is not None:
            body["expected_version"] = expected_version
        request = self._request("POST", path(realm, domain, entity, type), body=body)

        def parse(response: httpx.Response) -> AppendResult:
            try:
                return AppendResult([appended_from_dict(json_body(response))],
                                    created=response.status_code == 201)
            except (KeyError, TypeError):
                raise unexpected(response, "not an append result") from None

        return Op(request, parse)

    def _append_batch_op(self, realm: str, domain: str, entity: str,
                         events: Sequence[NewEvent | Mapping[str, Any]],
                         expected_version: int | None) -> Op[AppendResult]:
        for name, what in ((realm, "realm"), (domain, "domain"), (entity, "entity")):
            check_name(name, what, realm=what == "realm")
        items = []
        for e in events:
            if isinstance(e, NewEvent):
                item = _batch_item(e)
            else:
                # Serialised here so that any JSON value (big integers too) goes through one path;
                # an optional key given as None is left out (None means absent here, as in a Store,
                # while the server refuses a JSON null for it).
                item = {k: orjson.Fragment(dump_json(v, k)) if k in ("event", "meta") else v
                        for k, v in e.items() if v is not None or k == "event"}
            items.append(item)
        body: dict[str, Any] = {"events": items}
        if expected_version is not None:
            body["expected_version"] = expected_version
        request = self._request("POST", path(realm, domain, entity), body=body)

        def parse(response: httpx.Response) -> AppendResult:
            try:
                results = [appended_from_dict(a) for a in json_body(response)["events"]]
            except (KeyError, TypeError):
                raise unexpected(response, "not a batch result") from None
            return AppendResult(results, created=response.status_code == 201)

        return Op(request, parse)

    def _get_event_op(self, realm: str, domain: str, event_id: str) -> Op[Event]:
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        event_id = check_event_id(event_id)
        request = self._request("GET", path(realm, domain, event_id))

        def parse(response: httpx.Response) -> Event:
            body = json_body(response)
            # The same URL reads an entity named like the id when no such event exists: an
            # (empty) page instead of an event means "not found".
            if isinstance(body, dict) and "events" in body:
                # The problem the server answers for an id it knows in another place, so that code
                # reading e.problem finds its fields either way.
                detail = f"no event {event_id} in {realm}/{domain}"
                raise NotFound(detail, status=404, url=shown_url(request.url), problem={
                    "type": f"urn:perhap:problem:{NotFound.slug}", "title": NotFound.title, "status": 404,
                    "detail": detail})
            try:
                return event_from_dict(body)
            except (KeyError, TypeError):
                raise unexpected(response, "not an event") from None

        return Op(request, parse)

    def _realms_limited_op(self) -> Op[bool]:
        def parse(response: httpx.Response) -> bool:
            json_body(response)  # (an error's exception)
            return response.headers.get("perhap-keys-limited") is not None

        return Op(self._request("GET", "/keys", params={"limit": "1"}), parse)

    def _health_op(self) -> Op[bool]:
        return Op(self._request("GET", "/_health"), _healthy)

    def _append_many_op(self, realm: str, domain: str,
                        events: Sequence[Mapping[str, Any] | tuple[str, NewEvent]],
                        expected_versions: Mapping[str, int] | None) -> Op[AppendResult]:
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        # The store's own check: the same 400 for a bad event here as from a server or a Store.
        entities, batch, expectations = prepare_multi(events, expected_versions)
        items = []
        for entity, e in zip(entities, batch, strict=True):
            items.append({"entity": entity, **_batch_item(e)})
        body: dict[str, Any] = {"events": items}
        if expected_versions is not None:
            body["expected_versions"] = expectations
        request = self._request("POST", path(realm, domain), body=body)

        def parse(response: httpx.Response) -> AppendResult:
            try:
                results = [appended_from_dict(a) for a in json_body(response)["events"]]
            except (KeyError, TypeError):
                raise unexpected(response, "not a multi-entity append result") from None
            return AppendResult(results, created=response.status_code == 201)

        return Op(request, parse)

    # ----------------------------------------------------------------- paged reads

    def _read_requests(self, scope: Scope, following: str | None, limit: int,
                       bounds: ReadBounds) -> tuple[str, Params, Params]:
        """A read's path, its first query, and the query of the pages after it (without `following`)."""
        if following is not None:
            following = check_event_id(following, "following")
        # Checked here as the store checks them: a clash is the same 400, before anything is sent.
        query = read_query(scope, following=following, order=bounds.order, after_position=bounds.after_position,
                           before_position=bounds.before_position, types=bounds.types,
                           after_version=bounds.after_version, until_version=bounds.until_version)
        params: Params  # (annotated: mypy defers this module's imports and cannot infer it)
        where, params = read_request(scope, query)
        params.append(("limit", str(limit)))
        first = params if following is None else [*params, ("following", following)]
        # `next` continues in the same order; it replaces a position bound, which it is past already.
        later: Params = without(params, "after_position", "before_position")
        return where, first, later

    def _read_pager(self, scope: Scope, following: str | None, page_size: int,
                    bounds: ReadBounds) -> Pager[Event]:
        later: Params  # (annotated: mypy defers this module's imports and cannot infer it)
        where, first, later = self._read_requests(scope, following, page_size, bounds)

        def parse(response: httpx.Response) -> PageOf[Event]:
            page = _page(response, json_body(response))
            if page.next is None:
                return PageOf(page.events, None)
            return PageOf(page.events, self._request("GET", where, params=[*later, ("following", page.next)]))

        return Pager(self._request("GET", where, params=first), parse)

    def _read_page_op(self, scope: Scope, following: str | None, limit: int, bounds: ReadBounds,
                      if_none_match: str | None) -> Op[TaggedPage | None]:
        where, first, _ = self._read_requests(scope, following, limit, bounds)
        headers = None if if_none_match is None else {"if-none-match": if_none_match}

        def parse(response: httpx.Response) -> TaggedPage | None:
            if response.status_code == 304:
                return None  # unchanged since the page tagged `if_none_match`
            return _page(response, json_body(response)), response.headers.get("etag")

        return Op(self._request("GET", where, params=first, headers=headers), parse)

    def _keys_pager(self, levels: tuple[str | None, ...], page_size: int) -> Pager[str]:
        names: list[str] = []
        for name, what in zip(levels, ("realm", "domain", "entity")):
            if name is None:
                break
            names.append(check_name(name, what, realm=what == "realm"))
        if len(names) < len([n for n in levels if n is not None]):
            deepest = max(i for i, name in enumerate(levels) if name is not None)
            asked = ("a realm's domains", "a domain's entities", "an entity's types")[deepest]
            raise InvalidInput(f"keys: {asked} need the name of every level above it (realm, domain, entity)")
        where = path(*names, "keys")
        params = {"limit": str(page_size)}

        def parse(response: httpx.Response) -> PageOf[str]:
            body = json_body(response)
            try:
                keys, after = list(body["keys"]), body["next"]
            except (KeyError, TypeError):
                raise unexpected(response, "not a page of keys") from None
            if after is None:
                return PageOf(keys, None)
            return PageOf(keys, self._request("GET", where, params={**params, "after": after}))

        return Pager(self._request("GET", where, params=params), parse)

    # ----------------------------------------------------------------- streams

    def _stream(self, scope: Scope, following: str | None, max_retries: int | None,
                on_retry: RetryHook | None, *, after_position: int | None = None,
                types: Sequence[str] | None = None) -> StreamState:
        if following is not None:
            following = check_event_id(following, "following")
        query = read_query(scope, following=following, after_position=after_position, types=types,
                           stream=True)
        where, params = read_request(scope, query)
        resumed = without(params, "after_position")
        timeout = stream_timeout(self._http.timeout)

        def build(headers: Mapping[str, str]) -> httpx.Request:
            # A stream resumes after the event in Last-Event-ID (the last one seen, or `following`),
            # which is past any starting position: the position is left out, not contradicted.
            query_params = resumed if "last-event-id" in headers else params
            return self._request("GET", where, params=query_params, headers=headers, timeout=timeout)

        return StreamState(build, where, following, max_retries, on_retry)


def _healthy(response: httpx.Response) -> bool:
    """A 200 that is perhap's own health answer; else not healthy. A 200 of anything else is no
    perhap server's: a URL with a path past the server's root (``http://host/shop``) reads the
    realm ``shop``'s domain ``_health``, an empty page, and would have said healthy."""
    if response.status_code != 200:
        return False
    body = json_body(response)
    if not isinstance(body, dict) or body.get("status") != "ok":
        raise unexpected(response, "not a perhap server's health answer: does the URL go past the server's root "
                                   "(a path such as /realm)?")
    return True
