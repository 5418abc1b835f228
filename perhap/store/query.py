"""What a read asks for, checked once: order, position and version bounds, and a set of types.

The HTTP layer, the client and ``Store.read`` all build a :class:`ReadQuery` through
:func:`read_query`, so a clash of parameters gets the same 400 everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, sent_text
from ..model import DEFAULT_LIMIT, MAX_POSITION, MAX_VERSION, Cursor, Event, Scope, check_name
from ..slotted import fast_constructor

MAX_TYPES = 100
ORDERS = ("asc", "desc")


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """One read of a scope, as a backend's ``_read`` primitive receives it.

    ``after`` and ``before`` are exclusive bounds in the scope's cursor order (versions in an
    entity scope, the backend's cursors otherwise); ``after_position`` and ``before_position`` are
    exclusive bounds on positions. Every bound applies in either order; ``descending`` only says
    which end the page starts from. ``scope.type`` is always None here: ``types`` holds the filter
    (empty: every type).
    """

    scope: Scope
    types: tuple[str, ...] = ()
    descending: bool = False
    after: Cursor | None = None
    before: Cursor | None = None
    after_position: int | None = None
    before_position: int | None = None
    limit: int = DEFAULT_LIMIT
    #: A live stream's read (:class:`~perhap.store.base.Subscription`): where events settle before
    #: they are read (Cassandra), the events settled now are returned at once rather than held
    #: until newer ones settle too, and with none settled the read waits for the oldest only. The
    #: stream's next read takes the rest. (A plain read waits for every event it has seen, so that
    #: a read after an acknowledgement includes it.)
    live: bool = False
    #: Stop once the events read hold this many bytes of data and meta (the event that reaches it
    #: included: one at least): a JSON page (``--max-page-bytes``) or a live stream's read (its
    #: buffer), so that large events cost a bounded page, not ``limit`` of them. Every backend
    #: stops its reads there (a new one could read by ``limit`` and leave the cut to
    #: ``Store.read_page``, which makes it for every backend). A backend that stops must count
    #: exactly ``len(data_json) + len(meta_json)``: the template recognises a cut page by the
    #: same count (a page it did not see cut would end the read with ``next`` None).
    max_bytes: int | None = None

    @property
    def plain(self) -> bool:
        """An ascending read bounded by nothing but its cursor (the live streams' usual read)."""
        return (not self.types and not self.descending and self.before is None
                and self.after_position is None and self.before_position is None)


def check_integer(value: Any, name: str, low: int, high: int) -> int | None:
    """An integer query value in [low, high] (None stays None); a string must be its digits alone
    (an optional minus, no spaces, as ``limit`` takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not (value.isascii() and value.removeprefix("-").isdigit()) or len(value) > 25:
            raise InvalidInput(f"{name} must be an integer, got {sent_text(value, 40)!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be from {low} to {high}, got {value}")
    return value


def read_query(
    scope: Scope,
    *,
    following: str | None = None,
    order: str = "asc",
    after_position: Any = None,
    before_position: Any = None,
    types: Iterable[str] | None = None,
    after_version: Any = None,
    until_version: Any = None,
    limit: int = DEFAULT_LIMIT,
    stream: bool = False,
    max_bytes: int | None = None,
) -> ReadQuery:
    """Check a read's parameters together and build its query (bounds from ``following`` are
    added by the store, which must look the event up). Clashes are 400s that name both sides."""
    if order not in ORDERS:
        raise InvalidInput(f"order must be asc or desc, got {sent_text(order, 40)!r}")
    descending = order == "desc"
    if stream and descending:
        raise InvalidInput("order=desc cannot be streamed: a live stream runs oldest first")
    after_p = check_integer(after_position, "after_position", 0, MAX_POSITION)
    before_p = check_integer(before_position, "before_position", 0, MAX_POSITION)
    if after_p is not None and descending:
        raise InvalidInput("after_position clashes with order=desc: it goes with order=asc; newest first, "
                           "page with before_position")
    if before_p is not None and not descending:
        raise InvalidInput("before_position clashes with order=asc: it goes with order=desc; oldest first, "
                           "page with after_position")
    if following is not None and (after_p is not None or before_p is not None):
        clash = "after_position" if after_p is not None else "before_position"
        raise InvalidInput(f"following and {clash} clash: page with one of them")
    after_v = check_integer(after_version, "after_version", 0, MAX_VERSION)
    until_v = check_integer(until_version, "until_version", 0, MAX_VERSION)
    if (after_v is not None or until_v is not None) and scope.entity is None:
        which = "after_version" if after_v is not None else "until_version"
        level = ("realm", "domain")[scope.level - 1]
        raise InvalidInput(f"{which} applies to an entity's events only, not to a {level}")
    if after_v is not None and until_v is not None and until_v < after_v:
        raise InvalidInput(f"until_version ({until_v}) is below after_version ({after_v})")
    wanted: tuple[str, ...] = ()
    if types is not None:
        if isinstance(types, str):
            types = [types]
        names = list(types)
        if len(names) > MAX_TYPES:
            raise InvalidInput(f"type may be given at most {MAX_TYPES} times, got {len(names)}")
        if names and scope.type is not None:
            raise InvalidInput("a type is given in the path and in the query: give it in one place")
        wanted = tuple(sorted({check_name(t, "type") for t in names}))
    if scope.type is not None:
        wanted = (scope.type,)
        scope = Scope(scope.realm, scope.domain, scope.entity)
    return _make_query(scope, wanted, descending, after_v, None if until_v is None else until_v + 1,
                       after_p, before_p, limit, False, max_bytes)


#: ReadQuery's constructor for the read path: every field, positionally (see perhap.slotted).
_make_query = fast_constructor(ReadQuery)


def event_bytes(event: Event) -> int:
    """What an event weighs against every byte bound (pages, streams, caches): its stored data
    and meta, the JSON that a page or a message carries."""
    return len(event.data_json) + len(event.meta_json)


def bytes_cut(events: Sequence[Event], max_bytes: int | None) -> int | None:
    """How many of ``events`` a page bounded by ``max_bytes`` keeps: up to the event whose data
    and meta bring the total to the bound (one at least); None when they stay below it."""
    if max_bytes is None:
        return None
    size = 0
    for n, event in enumerate(events, 1):
        size += event_bytes(event)
        if size >= max_bytes:
            return n
    return None
