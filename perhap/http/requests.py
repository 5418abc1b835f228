"""What a handler is given: the request (names, query, headers, JSON body) and the app's context."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..auth import Authenticator, Grant
from ..errors import InvalidInput, sent_text
from ..groups import Groups
from ..jsoncodec import load_json, not_json_reason, refuse_duplicate_keys
from ..limits import check_depth, parser_gave_up_on_depth, too_deep
from ..model import DEFAULT_LIMIT, MAX_LIMIT
from ..store.base import Store
from .metrics import Metrics
from .pagecache import PageCache
from .responses import HTTPProblem
from .routes import ROUTE_KEY, Kind, Operation, Route
from .streaming import StreamRegistry
from .types import Receive, Scope, Send

_INT = re.compile(r"-?[0-9]{1,12}")
CHALLENGE = [(b"www-authenticate", b"Bearer")]


@dataclass(frozen=True, slots=True, eq=False)
class Context:
    """What every handler of one app shares; made once the store is open."""

    store: Store
    max_body: int
    max_batch: int
    max_depth: int
    metrics: Metrics | None
    streams: StreamRegistry
    pages: PageCache | None  # None: entity pages are not cached
    groups: Groups
    max_page_bytes: int  # a JSON page ends once its events hold this many bytes (one event at least)


class Request:
    """One request as a handler sees it: its method, decoded path names, query and token grant.

    Dispatch makes it once the route (``scope[ROUTE_KEY]``) and the method are known, and its query
    is checked here, before any handler runs: a parameter the route does not take, or one given
    twice (unless it may repeat), is a 400 naming it. A request without a query string pays one
    truth test for this.
    """

    __slots__ = ("scope", "receive", "method", "names", "query", "pairs", "grant")

    def __init__(self, scope: Scope, receive: Receive, method: str, names: list[str],
                 query: Sequence[tuple[str, str]], grant: Grant | None) -> None:
        self.scope, self.receive, self.method = scope, receive, method
        self.names, self.grant = names, grant
        #: Each parameter's value (the last one, for a parameter that may repeat: see :meth:`values`).
        self.query: dict[str, str] = check_query(scope[ROUTE_KEY], method, query) if query else {}
        self.pairs = query  # as sent, repeats kept

    def values(self, name: str) -> list[str] | None:
        """Every value of a parameter that may repeat, in order; None when it is not given."""
        if name not in self.query:
            return None
        return [value for key, value in self.pairs if key == name]

    def wants_stream(self) -> bool:
        accept = header_list(self.scope, b"accept")  # (two Accept lines are one list, RFC 9110 5.3)
        return accept is not None and "event-stream" in accept.lower() and _prefers_stream(accept)


Handler = Callable[[Context, Request, Send], Awaitable[None]]


def _prefers_stream(accept: str) -> bool:
    """Whether an Accept header asks for a stream: ``text/event-stream`` named (in any case) with a
    weight above 0 and not below JSON's (``application/json``, else ``application/*``, else ``*/*``),
    so ``text/event-stream;q=0.1, application/json`` is answered with JSON (RFC 9110, 12.5.1)."""
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights.setdefault(media.lower(), weight)
    stream = weights.get("text/event-stream", 0.0)
    json = next((weights[m] for m in ("application/json", "application/*", "*/*") if m in weights), 0.0)
    return stream > 0 and stream >= json


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def header_list(scope: Scope, name: bytes) -> str | None:
    """A list header (RFC 9110 5.3: ``If-None-Match``): its lines joined with commas, one list."""
    values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]
    return ", ".join(values) if values else None


# --------------------------------------------------------------------------- the query string


def parse_query(raw: bytes) -> Sequence[tuple[str, str]]:
    """The name/value pairs of a raw query string, in order (repeats kept, for the route to judge)."""
    if not raw:
        return ()
    try:
        return parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the query string is not valid percent-encoded UTF-8") from None


_BODY_KEYS = frozenset({"event", "events", "event_id", "meta", "expected_version", "expected_versions"})
#: The body keys each append route takes (a key of another route's body gets that route's shape).
_BODY_KEYS_OF = {Kind.APPEND: frozenset({"event", "event_id", "meta", "expected_version"}),
                 Kind.APPEND_BATCH: frozenset({"events", "expected_version"}),
                 Kind.APPEND_MANY: frozenset({"events", "expected_versions"})}
_APPENDS = (Kind.APPEND, Kind.APPEND_BATCH, Kind.APPEND_MANY)


def route_query(route: Route, method: str, raw: bytes) -> Sequence[tuple[str, str]]:
    """The query's pairs (parse_query); a query that is not valid percent-encoded UTF-8 is refused
    only where the route's operation reads a query (a 405, a 404 or a static file answers as it
    would without one)."""
    try:
        return parse_query(raw)
    except InvalidInput:
        if _operation(route, method) is None:
            return ()
        raise


def _operation(route: Route, method: str) -> Operation | None:
    """The route's operation for ``method`` when it reads a query (None: a 405, a 404, a static file)."""
    op = route.operations.get("GET" if method == "HEAD" and route.head_is_get else method)
    return None if op is None or op.query is None else op


def check_query(route: Route, method: str, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The query as a dict, once every name is one the route's operation takes, each at most once
    unless the operation lets it repeat."""
    query = dict(pairs)
    op = _operation(route, method)
    if op is None or op.query is None:
        return query  # a 405, a 404 or a static file: that answer wins, whatever the query says
    for name in query:
        if name not in op.query:
            raise _unknown(route, method, op.kind, op.query, name, query[name])
    if len(query) != len(pairs):
        seen = set()
        for name, _ in pairs:
            if name in seen and name not in op.repeatable:
                raise InvalidInput(f"the query parameter {_shown(name)} is given more than once; give it once",
                                   parameter=sent_text(name, 100))
            seen.add(name)
    return query


def _unknown(route: Route, method: str, kind: Kind, allowed: tuple[str, ...], name: str,
             value: str) -> InvalidInput:
    where = f"{'GET' if method == 'HEAD' else method} {route.template}"
    takes = f"it takes {', '.join(allowed)}" if allowed else "it takes no query parameters"
    detail = f"unknown query parameter {_shown(name)} for {where}: {takes}"
    if kind in _APPENDS and name in _BODY_KEYS:
        if name in _BODY_KEYS_OF[kind]:
            detail = f"{name} belongs in the JSON body, not the query string: {_body_shape(kind, name, value)}"
        else:  # e.g. expected_version on the multi-entity route, whose body has expected_versions
            detail = (f"unknown query parameter {_shown(name)} for {where}: {takes}, and its JSON body "
                      f"has no {name} either: send {_body_shape(kind, '', value)}")
    elif name == "type" and route.levels == 4:
        detail += " (the type is the last segment of this path)"
    elif name in ("after_version", "until_version") and kind is Kind.READ and route.levels < 3:
        detail += f" ({name} bounds an entity's versions: /REALM/DOMAIN/ENTITY?{name}=N)"
    return InvalidInput(detail, parameter=sent_text(name, 100))


def _body_shape(kind: Kind, name: str, value: str) -> str:
    version = value if _INT.fullmatch(value) else "N"
    if kind is Kind.APPEND:
        return {"expected_version": f'{{"event": ..., "expected_version": {version}}}',
                "event_id": '{"event": ..., "event_id": "..."}',
                "meta": '{"event": ..., "meta": {...}}'}.get(
                    name, '{"event": ...}, optionally with "event_id", "meta" and "expected_version"')
    if kind is Kind.APPEND_MANY:
        return '{"events": [{"entity": ..., "type": ..., "event": ...}], "expected_versions": {"<entity>": N}}'
    if name == "expected_version":
        return f'{{"events": [...], "expected_version": {version}}}'
    return '{"events": [{"type": ..., "event": ..., "event_id": ..., "meta": {...}}]}'


def _shown(name: str) -> str:
    return repr(sent_text(name, 60) + ("..." if len(name) > 60 else ""))


def page_limit(query: dict[str, str]) -> int:
    text = query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not _INT.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {sent_text(text, 40)!r}")
    return int(text)


# --------------------------------------------------------------------------- tokens


def authenticate(auth: Authenticator, scope: Scope) -> Grant:
    """The grant of the request's bearer token, or 401."""
    grant = auth.authenticate(scope.get("headers", ()))
    if grant is None:
        # Never echo the token: a client may have pasted a secret in the wrong place.
        given = [v for n, v in scope.get("headers", ()) if n == b"authorization"]
        if not given:
            detail = "this route needs a bearer token: Authorization: Bearer TOKEN"
        elif len(given) > 1 or given[0].split(b" ", 1)[0].lower() != b"bearer":
            detail = "the Authorization header must be one 'Bearer TOKEN' (another scheme, or several, is no token)"
        else:
            detail = "the bearer token is not valid (unknown or revoked)"
        raise HTTPProblem(401, detail, "unauthorized", headers=CHALLENGE)
    return grant


def authorize(grant: Grant | None, realm: str | None, permission: str) -> None:
    """403 unless the grant (None: no --auth) allows ``permission`` on ``realm`` (None: any)."""
    if grant is not None and not grant.allows(realm, permission):
        where = f"realm {realm!r}" if realm is not None else "this server"
        raise HTTPProblem(403, f"this token may not {permission} {where}", "forbidden")


# --------------------------------------------------------------------------- the body


async def read_json_object(request: Request, max_body: int, max_depth: int,
                           optional: bool = False, shape: str = "", wrapped: int = 0) -> dict[str, Any]:
    """The body as a JSON object: at most ``max_body`` bytes (413), nested at most ``max_depth``
    levels, and ``wrapped`` more: those a batch puts around each event (its list, the item), so
    that an event one append route takes, the others take too (``perhap copy`` sends batches).
    With ``optional``, no body at all reads as ``{}``. ``shape``, the object the route takes, is
    shown to a body that is JSON but no object (an event sent bare, a list of events)."""
    declared = header(request.scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise HTTPProblem(413, f"the body is larger than the limit of {max_body} bytes", max_body=max_body)
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(400, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise HTTPProblem(413, f"the body is larger than the limit of {max_body} bytes", max_body=max_body)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidInput("the body is empty; send a JSON object")
    coding = header_list(request.scope, b"content-encoding")  # (two lines are one list, RFC 9110 5.3)
    if coding is not None and any(c.strip().lower() not in ("", "identity") for c in coding.split(",")):
        # Refused even when the bytes happen to parse: the body says it is encoded, and perhap
        # decodes no content-coding.
        raise HTTPProblem(415, f"the body has Content-Encoding {coding!r}: perhap takes bodies as they are "
                               "(no compression); send plain JSON", headers=[(b"accept-encoding", b"identity")])
    try:
        body = load_json(raw)
    except orjson.JSONDecodeError as exc:
        if parser_gave_up_on_depth(exc, max_depth + wrapped):
            raise too_deep(max_depth, wrapped) from None
        raise InvalidInput(f"the body is {not_json_reason(raw, exc)}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object" + (f": send {shape}" if shape else ""))
    check_depth(raw, body, max_depth, wrapped)
    refuse_duplicate_keys(raw, body)
    return body

