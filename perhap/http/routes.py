"""The route table: every path the API answers, read by dispatch, metric labels and /_openapi.json.

A path finds its route by shape alone (segment count, a leading ``_``, a trailing ``keys``), in a
few comparisons: no regular expressions, and no route list walked per request. Names are checked
afterwards by the dispatcher, in the same order as always (realm, token, the other names, method).
Each operation names the query parameters it takes: the request refuses any other (and any given
twice, unless the operation lets it repeat) before its handler runs, and the OpenAPI document lists
exactly these.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from ..errors import InvalidInput


class Kind(enum.Enum):
    """What an operation does: names its handler, and the shape of its OpenAPI description."""

    ROOT = "root"
    UI = "ui"
    HEALTH = "health"
    DOCUMENT = "document"
    METRICS = "metrics"
    KEYS = "keys"
    READ = "read"
    READ_OR_EVENT = "read_or_event"
    APPEND = "append"
    APPEND_BATCH = "append_batch"
    APPEND_MANY = "append_many"
    GROUPS = "groups"
    GROUP = "group"
    GROUP_CREATE = "group_create"
    GROUP_DELETE = "group_delete"
    GROUP_LEASE = "group_lease"
    GROUP_ACK = "group_ack"
    GROUP_NACK = "group_nack"
    GROUP_PARKED = "group_parked"
    GROUP_REPLAY = "group_replay"
    NO_ROUTE = "no_route"
    WRONG_METHOD = "wrong_method"


@dataclass(frozen=True, slots=True)
class Operation:
    kind: Kind
    summary: str | None = None  # None: not in the OpenAPI document
    #: The query parameters it takes, each at most once; None: not checked (its answer does not
    #: depend on them: a 404, a 405, a static file).
    query: tuple[str, ...] | None = ()
    #: Those of ``query`` that may be given several times (``type=a&type=b``).
    repeatable: frozenset[str] = frozenset()


_PAGING = ("following", "limit", "order", "after_position", "before_position")
_VERSIONS = ("after_version", "until_version")  # an entity's versions: entity scopes only
SCOPE_READ_QUERY = ("type", *_PAGING)
ENTITY_READ_QUERY = (*SCOPE_READ_QUERY, *_VERSIONS)
TYPED_READ_QUERY = (*_PAGING, *_VERSIONS)  # the type is in the path
KEYS_QUERY = ("after", "limit")
_TYPES = frozenset({"type"})


ANY_METHOD = "*"
#: Where dispatch leaves the route it matched in the ASGI scope (the observer reads it there).
ROUTE_KEY = "perhap.route"


#: GETs that change state: HEAD may not do them (a HEAD would lease events nobody receives), so it
#: is a 405 there.
CHANGING_GETS = frozenset({Kind.GROUP_LEASE})


@dataclass(frozen=True, slots=True)
class Route:
    """One path template and what each method does there (GET answers HEAD too)."""

    template: str  # the metric label and the OpenAPI path
    operations: Mapping[str, Operation]
    open: bool = False  # answered without a token under --auth
    index: int = 0  # place in ROUTES, for tables indexed by route
    realm: bool = field(init=False)  # under /{realm}: checked against the token's realm
    realm_at: int | None = field(init=False)  # the path segment naming a realm (/_groups/{realm}: 1)
    levels: int = field(init=False)  # how many leading path segments are names: realm, domain ...
    allow: str = field(init=False)  # the methods answered, for the Allow header of a 405

    @property
    def head_is_get(self) -> bool:
        """HEAD is answered as GET without its body, unless GET changes state (it leases events)."""
        get = self.operations.get("GET")
        return get is not None and get.kind not in CHANGING_GETS

    def __post_init__(self) -> None:
        methods = set(self.operations) - {ANY_METHOD}
        if self.head_is_get:
            methods.add("HEAD")
        parts = self.template.split("/")[1:]
        set_ = object.__setattr__  # frozen: derived fields are set once, here
        set_(self, "realm", self.template.startswith("/{realm}"))
        set_(self, "realm_at", parts.index("{realm}") if "{realm}" in parts else None)
        set_(self, "levels", sum(p.startswith("{") for p in parts))
        set_(self, "allow", ", ".join(sorted(methods)))


def _get(kind: Kind, summary: str | None = None, query: tuple[str, ...] | None = (),
         repeatable: frozenset[str] = frozenset()) -> dict[str, Operation]:
    return {"GET": Operation(kind, summary, query, repeatable)}


# The order is the OpenAPI document's; matching does not depend on it.
_TABLE = (
    Route("/_health", _get(Kind.HEALTH, "Health"), open=True),
    Route("/_openapi.json", _get(Kind.DOCUMENT, "This document"), open=True),
    Route("/keys", _get(Kind.KEYS, "List realms", KEYS_QUERY)),
    Route("/{realm}", _get(Kind.READ, "Every event of a realm, in position order", SCOPE_READ_QUERY, _TYPES)),
    Route("/{realm}/keys", _get(Kind.KEYS, "List a realm's domains", KEYS_QUERY)),
    Route("/{realm}/{domain}", {
        "GET": Operation(Kind.READ, "Every event of a domain, in position order", SCOPE_READ_QUERY, _TYPES),
        "POST": Operation(Kind.APPEND_MANY, "Append events to several entities of the domain, atomically")}),
    Route("/{realm}/{domain}/keys", _get(Kind.KEYS, "List a domain's entities", KEYS_QUERY)),
    Route("/{realm}/{domain}/{entity}", {
        "GET": Operation(Kind.READ_OR_EVENT, "An entity's events in version order; or one event when {entity} "
                                             "is an event id of this realm and domain", ENTITY_READ_QUERY, _TYPES),
        "POST": Operation(Kind.APPEND_BATCH, "Append a batch to one entity, atomically")}),
    Route("/{realm}/{domain}/{entity}/keys", _get(Kind.KEYS, "List an entity's event types", KEYS_QUERY)),
    Route("/{realm}/{domain}/{entity}/{type}", {
        "GET": Operation(Kind.READ, "An entity's events of one type, in version order", TYPED_READ_QUERY),
        "POST": Operation(Kind.APPEND, "Append one event")}),
    Route("/_groups/{realm}", _get(Kind.GROUPS, "List a realm's consumer groups")),
    Route("/_groups/{realm}/{group}", {
        "GET": Operation(Kind.GROUP, "A consumer group: settings, checkpoint, head, lag, in flight, parked"),
        "PUT": Operation(Kind.GROUP_CREATE, "Create a consumer group (200 when it exists with these settings)"),
        "DELETE": Operation(Kind.GROUP_DELETE, "Delete a consumer group")}),
    Route("/_groups/{realm}/{group}/events", _get(Kind.GROUP_LEASE, "Lease events to a consumer (long poll, "
                                                  "or a stream with Accept: text/event-stream)",
                                                  ("consumer", "max", "wait"))),
    Route("/_groups/{realm}/{group}/ack", {"POST": Operation(Kind.GROUP_ACK, "Acknowledge leased events")}),
    Route("/_groups/{realm}/{group}/nack", {
        "POST": Operation(Kind.GROUP_NACK, "Give leased events back: to retry, or to park")}),
    Route("/_groups/{realm}/{group}/parked", _get(Kind.GROUP_PARKED, "A group's parked events, in position order",
                                                             ("limit", "following"))),
    Route("/_groups/{realm}/{group}/parked/replay", {
        "POST": Operation(Kind.GROUP_REPLAY, "Deliver parked events again")}),
    Route("/_metrics", _get(Kind.METRICS, "Prometheus metrics (an admin token with --auth)")),
    Route("/", _get(Kind.ROOT, "What this server is, and where its API, health, keys, UI and groups are"), open=True),
    Route("/_ui", _get(Kind.UI, query=None), open=True),  # and every path below it: static files
    # Anything else: 404 (or 400 for a bad name), after the same checks as a real route.
    Route("other", {ANY_METHOD: Operation(Kind.NO_ROUTE, query=None)}),
)
# Every other method of a route answers 405 from one handler, which says where the request belongs.
_WRONG_METHOD = Operation(Kind.WRONG_METHOD, query=None)
ROUTES: tuple[Route, ...] = tuple(
    dataclasses.replace(r, index=i, operations={ANY_METHOD: _WRONG_METHOD, **r.operations})
    for i, r in enumerate(_TABLE))
_BY_TEMPLATE = {r.template: r for r in ROUTES}
ROOT, UI, OTHER, KEYS = _BY_TEMPLATE["/"], _BY_TEMPLATE["/_ui"], _BY_TEMPLATE["other"], _BY_TEMPLATE["/keys"]
_SYSTEM = {r.template[1:]: r for r in ROUTES if r.template.startswith("/_") and r is not UI
           and not r.template.startswith("/_groups")}
GROUPS = "_groups"
#: The consumer-group routes by what follows /_groups/{realm}/{group} ("" for the group itself).
_GROUP_ROUTES = {r.template.split("{group}")[1].lstrip("/"): r for r in ROUTES
                 if r.template.startswith("/_groups/{realm}/{group}")}
_GROUP_LIST = _BY_TEMPLATE["/_groups/{realm}"]
_LEVELS = [r for r in ROUTES if r.realm and not r.template.endswith("/keys")]
_KEYS_LEVELS = [r for r in ROUTES if r.realm and r.template.endswith("/keys")]
#: First segments answered without a token: the open routes' (and everything below /_ui).
OPEN_SEGMENTS = frozenset(r.template[1:] for r in ROUTES if r.open and r is not ROOT)


def match(names: list[str]) -> Route:
    """The route of a path given as decoded segments; OTHER when none fits."""
    n = len(names)
    if n == 0:
        return ROOT
    first = names[0]
    if first.startswith("_"):
        if first == "_ui":
            return UI
        if first == GROUPS and n > 1:
            return _GROUP_LIST if n == 2 else _GROUP_ROUTES.get("/".join(names[3:]), OTHER)
        return _SYSTEM.get(first, OTHER) if n == 1 else OTHER
    if first == "keys":
        return KEYS if n == 1 else OTHER
    if n > 4:
        return OTHER
    if n > 1 and names[-1] == "keys":
        return _KEYS_LEVELS[n - 2]
    return _LEVELS[n - 1]


# --------------------------------------------------------------------------- paths


def split_path(raw: bytes) -> list[bytes]:
    """The segments of a raw path, still percent-encoded; a trailing slash means the same resource."""
    segments = raw.split(b"?", 1)[0].split(b"/")[1:]  # some servers and test transports include the query
    if segments and segments[-1] == b"":
        segments.pop()
    return segments


# What quote(..., safe="") leaves as it is: RFC 3986's unreserved characters.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


def encode_segment(name: str) -> str:
    """A name as one path segment (for a Location); names that need no quoting (most) as they are."""
    return name if _UNRESERVED.fullmatch(name) else quote(name, safe="")


def decode_segment(segment: bytes) -> str:
    try:
        if b"%" not in segment:  # the usual case: nothing to unquote
            return segment.decode("utf-8")
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a path segment is not valid UTF-8 after percent-decoding") from None


def route_of(raw: bytes) -> Route:
    """The route of a raw path, for labels: decoded leniently, so even a bad path has one."""
    segments = split_path(raw)
    return match([unquote_to_bytes(s).decode("utf-8", "replace") for s in segments])
