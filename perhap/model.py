"""The store's value types and the rules every name and value must follow, written once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import EventIdConflict, InvalidInput, shown_keys
from .ids import check_event_id, check_timestamp, uuid7, uuid7_many
from .jsoncodec import EMPTY_OBJECT, canonical_json, dump_json, load_json
from .slotted import fast_constructor

MAX_NAME_BYTES = 255
MAX_BATCH = 10_000
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
RESERVED_NAME = "keys"
MAX_VERSION = 2**62
MAX_POSITION = 2**63 - 1

#: Where an event sits in a scope's order: its version in an entity scope, else a backend's
#: commit-order key (an integer on SQLite and PostgreSQL, (microseconds, id) on Cassandra).
#: Internal: clients page by event id.
Cursor = int | tuple[int, uuid.UUID]


# --------------------------------------------------------------------------- names and values


# Names check_name passed (other levels', realms'): requests repeat them; emptied when full.
_VALID: tuple[set[str], set[str]] = (set(), set())
_VALID_MAX = 4096


def check_name(value: Any, what: str, *, realm: bool = False) -> str:
    """Validate one level's name: 1-255 bytes of UTF-8, no control characters, no '/'."""
    known = _VALID[realm]
    if type(value) is str and value in known:
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    ascii = value.isascii()  # the usual case: one byte a character, no surrogates possible
    size = len(value) if ascii else len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise InvalidInput(f"{what} must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {size}")
    if not value.isprintable() and any(_is_control(c) for c in value):
        raise InvalidInput(f"{what} must not contain control characters")
    if "/" in value:
        raise InvalidInput(f"{what} must not contain '/'")
    if not ascii and any("\ud800" <= c <= "\udfff" for c in value):
        raise InvalidInput(f"{what} is not valid UTF-8")
    if value in (".", ".."):
        # A URL resolver drops or climbs such segments, so a Location naming them would point elsewhere.
        raise InvalidInput(f"'{value}' cannot be used as a name ({what}): URLs treat it as a relative path")
    if value == RESERVED_NAME:
        raise InvalidInput(f"'{RESERVED_NAME}' is reserved and cannot be used as a name ({what})")
    if realm and value.startswith("_"):
        raise InvalidInput("realm names beginning with '_' are reserved for system endpoints")
    if type(value) is str:  # not a subclass, whose __eq__ or __hash__ could lie to the set
        if len(known) >= _VALID_MAX:
            known.clear()
        known.add(value)
    return value


def check_consumer(value: Any) -> str:
    """A consumer id: 1 to 255 bytes of UTF-8 without control characters (it is never a path
    segment, so '/' and the reserved names are fine: a host name and a pid, say)."""
    if value is None:
        raise InvalidInput("consumer is required: the id of the worker taking the events")
    if not isinstance(value, str):
        raise InvalidInput("consumer must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("consumer is not valid UTF-8") from None
    if not 1 <= size <= MAX_NAME_BYTES:
        raise InvalidInput(f"consumer must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {size}")
    if not value.isprintable() and any(_is_control(c) for c in value):
        raise InvalidInput("consumer must not contain control characters")
    return value


def _is_control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o < 0xA0


def check_expected_version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON does not tell 3 from 3.0; JSON Schema calls both integers
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("expected_version must be an integer (-1 for a new entity)")
    if value < -1:
        raise InvalidInput("expected_version must be -1 or greater")
    # Any larger integer is an expectation like another: no entity is at that version, so it is
    # a 409 naming the current one (backends compare it in Python and never send one above
    # MAX_VERSION to a database, whose integers may not hold it).
    return value


def check_limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return value


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True, slots=True)
class Scope:
    """What a read or a subscription covers: a realm, a domain, an entity, optionally one type."""

    realm: str
    domain: str | None = None
    entity: str | None = None
    type: str | None = None

    def __post_init__(self) -> None:
        check_name(self.realm, "realm", realm=True)
        if self.domain is not None:
            check_name(self.domain, "domain")
        if self.entity is not None:
            if self.domain is None:
                raise InvalidInput("an entity scope needs a domain")
            check_name(self.entity, "entity")
        if self.type is not None:
            check_name(self.type, "type")

    @classmethod
    def parse(cls, path: str) -> Scope:
        """Scope from 'realm[/domain[/entity[/type]]]' (no percent-decoding)."""
        parts = path.strip("/").split("/")
        if not 1 <= len(parts) <= 4:
            raise InvalidInput("a scope is REALM[/DOMAIN[/ENTITY[/TYPE]]]")
        padded: list[str | None] = [*parts, None, None, None]
        return cls(parts[0], padded[1], padded[2], padded[3])

    @property
    def level(self) -> int:
        """1 for a realm, 2 for a domain, 3 for an entity."""
        return 3 if self.entity is not None else 2 if self.domain is not None else 1

    def contains(self, event: Event) -> bool:
        return (
            event.realm == self.realm
            and (self.domain is None or event.domain == self.domain)
            and (self.entity is None or event.entity == self.entity)
            and (self.type is None or event.type == self.type)
        )

    def __str__(self) -> str:
        parts = [self.realm, self.domain, self.entity]
        text = "/".join(p for p in parts if p is not None)
        return text + (f"?type={self.type}" if self.type else "")


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. ``data_json`` and ``meta_json`` hold the serialised JSON as stored.

    ``position`` is the event's integer place in its realm (1 to 2^63 - 1, increasing in the
    realm's order; contiguous on SQLite and PostgreSQL). ``cursor`` is the event's place in the
    order of the scope it was read from (see :data:`Cursor`); it is never shown to clients.
    """

    event_id: str
    realm: str
    domain: str
    entity: str
    type: str
    version: int
    timestamp: str
    data_json: bytes
    meta_json: bytes
    position: int
    cursor: Cursor | None = field(default=None, compare=False)

    @property
    def event(self) -> Any:
        return load_json(self.data_json)

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = load_json(self.meta_json)
        return meta

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: a dict for orjson, with the stored JSON embedded unparsed."""
        return {
            "event_id": self.event_id,
            "realm": self.realm,
            "domain": self.domain,
            "entity": self.entity,
            "type": self.type,
            "event": orjson.Fragment(self.data_json),
            "meta": orjson.Fragment(self.meta_json),
            "version": self.version,
            "position": self.position,
            "timestamp": self.timestamp,
        }

    def to_dict(self) -> dict[str, Any]:
        """The same object with ``event`` and ``meta`` parsed into Python values."""
        value: dict[str, Any] = load_json(orjson.dumps(self.to_json_dict()))
        return value


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an appended event went; ``entity`` is set in the results of a multi-entity append."""

    event_id: str
    version: int
    position: int
    timestamp: str
    entity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        fields = {"event_id": self.event_id, "version": self.version, "position": self.position,
                  "timestamp": self.timestamp}
        return fields if self.entity is None else {"entity": self.entity, **fields}


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of an append or a batch: ``created`` is False for an idempotent replay."""

    events: list[Appended]
    created: bool

    @property
    def first(self) -> Appended:
        return self.events[0]


@dataclass(frozen=True, slots=True)
class Page:
    events: list[Event]
    next: str | None


@dataclass(frozen=True, slots=True)
class KeysPage:
    keys: list[str]
    next: str | None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready to be written: validated, serialised, with its final id."""

    type: str
    data_json: bytes
    meta_json: bytes
    event_id: str
    client_id: bool  # True when the client chose the id (so a replay is possible)
    #: When set (an import keeping an event's original time), the event's timestamp instead of the
    #: commit time: an RFC 3339 UTC string in utc_timestamp's form (check_timestamp makes it so),
    #: which a backend must return exactly as given. Never set from HTTP input.
    timestamp: str | None = None

    def same_content(self, stored: Event, realm: str, domain: str, entity: str) -> bool:
        """Whether a stored event with the same id is this very event (idempotent retry)."""
        return (
            stored.realm == realm
            and stored.domain == domain
            and stored.entity == entity
            and stored.type == self.type
            and canonical_json(stored.data_json) == canonical_json(self.data_json)
            and canonical_json(stored.meta_json) == canonical_json(self.meta_json)
        )


#: NewEvent's constructor on hot paths: every field, positionally (see perhap.slotted).
make_new_event = fast_constructor(NewEvent)
_EVENT_KEYS = frozenset({"type", "event", "event_id", "meta", "timestamp"})  # timestamp: an import's


def new_event(
    type: str, event: Any, event_id: Any = None, meta: Any = None, *, raw: bool = False,
    timestamp: str | None = None,
) -> NewEvent:
    """Validate and serialise one event. With ``raw``, event and meta are JSON bytes already.

    ``timestamp`` (RFC 3339) keeps an imported event's original time, normalised to UTC with
    microseconds; see :attr:`NewEvent.timestamp`.
    """
    check_name(type, "type")
    if timestamp is not None:
        timestamp = check_timestamp(timestamp)
    if meta is not None and not raw and not isinstance(meta, dict):
        raise InvalidInput("meta must be a JSON object")
    data_json: bytes = event if raw else dump_json(event, "event")
    meta_json = EMPTY_OBJECT if meta is None else meta if raw else dump_json(meta, "meta")
    if event_id is None:
        return make_new_event(type, data_json, meta_json, uuid7(), False, timestamp)
    return make_new_event(type, data_json, meta_json, check_event_id(event_id), True, timestamp)


def prepare_batch(events: object) -> list[NewEvent]:
    """Validate a batch (a sequence of NewEvents or mappings): 1 to MAX_BATCH events, no id twice.
    Each mapping as :func:`new_event` would make it, but each type name is checked once and the
    server's ids are made together (in the batch's order): per-event work is a batch's cost."""
    if type(events) is not list and (not isinstance(events, Sequence) or isinstance(events, (str, bytes))):
        raise InvalidInput("events must be a list")  # (a list is the usual case: no ABC check)
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} events, got {len(events)}")
    prepared: list[NewEvent] = []
    checked: set[str] = set()  # type names found valid
    ids: Iterator[str] | None = None  # server-made ids: made at the first event that needs one
    chosen = False  # whether any id was not made here (so two may be equal)
    for i, item in enumerate(events):
        if isinstance(item, NewEvent):
            prepared.append(item)
            chosen = True
            continue
        if type(item) is not dict and not isinstance(item, Mapping):
            raise InvalidInput(f"events[{i}] must be an object")
        if not (item.keys() if type(item) is dict else set(item)) <= _EVENT_KEYS:
            unknown = set(item) - _EVENT_KEYS
            raise InvalidInput(f"events[{i}] has unknown keys: {shown_keys(unknown)}")
        if "event" not in item:
            raise InvalidInput(f"events[{i}] needs an 'event'")
        if "type" not in item:
            raise InvalidInput(f"events[{i}] needs a 'type'")
        type_, event, event_id, meta = item["type"], item["event"], item.get("event_id"), item.get("meta")
        try:  # the checks of new_event, in its order
            if type(type_) is not str or type_ not in checked:
                checked.add(check_name(type_, "type"))
            if meta is not None and not isinstance(meta, dict):
                raise InvalidInput("meta must be a JSON object")
            data_json = dump_json(event, "event")  # (NaN and infinities refused, not written as null)
            meta_json = EMPTY_OBJECT if meta is None else dump_json(meta, "meta")
            stamp = None if (given := item.get("timestamp")) is None else check_timestamp(given)
            if event_id is not None:
                prepared.append(make_new_event(type_, data_json, meta_json, check_event_id(event_id), True, stamp))
                chosen = True
                continue
        except InvalidInput as exc:
            raise InvalidInput(f"events[{i}]: {exc.detail}") from None
        if ids is None:
            ids = iter(uuid7_many(len(events) - i))
        prepared.append(make_new_event(type_, data_json, meta_json, next(ids), False, stamp))
    if chosen and len({e.event_id for e in prepared}) != len(prepared):
        raise InvalidInput("the same event_id appears twice in the batch")
    return prepared


def replay_or_conflict(
    batch: Sequence[NewEvent], stored: Mapping[str, Event], realm: str, domain: str, entity: str
) -> AppendResult | None:
    """Decide a write whose client-chosen ids exist already.

    Returns the original result when every event is present and identical (an idempotent retry),
    None when no id exists yet, and raises EventIdConflict otherwise (partly present or different).
    """
    return _replay(batch, [entity] * len(batch), stored, realm, domain, with_entity=False)


def prepare_multi(events: object, expected_versions: object) -> tuple[list[str], list[NewEvent], dict[str, int]]:
    """Validate a multi-entity append: 1 to MAX_BATCH events of the form
    ``{"entity", "type", "event", "event_id"?, "meta"?}`` (or ``(entity, NewEvent)`` pairs), and
    ``expected_versions`` mapping any entities (with or without events) to an expected version.

    Returns the entity of each event, the events, and the expectations.
    """
    if not isinstance(events, Sequence) or isinstance(events, (str, bytes)):
        raise InvalidInput("events must be a list")
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} events, got {len(events)}")
    entities: list[str] = []
    plain: list[NewEvent | Mapping[str, Any]] = []
    for i, item in enumerate(events):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], NewEvent):
            entity, event = item
        elif isinstance(item, Mapping):
            if "entity" not in item:
                raise InvalidInput(f"events[{i}] needs an 'entity'")
            entity = item["entity"]
            event = {k: v for k, v in item.items() if k != "entity"}
        else:
            raise InvalidInput(f"events[{i}] must be an object")
        try:
            entities.append(check_name(entity, "entity"))
        except InvalidInput as exc:
            raise InvalidInput(f"events[{i}]: {exc.detail}") from None
        plain.append(event)
    batch = prepare_batch(plain)
    expectations: dict[str, int] = {}
    if expected_versions is not None:
        if not isinstance(expected_versions, Mapping):
            raise InvalidInput("expected_versions must be an object mapping entities to versions")
        if len(expected_versions) > MAX_BATCH:
            raise InvalidInput(f"expected_versions names at most {MAX_BATCH} entities")
        for entity, value in expected_versions.items():
            check_name(entity, "entity in expected_versions")
            try:
                expected = check_expected_version(value)
            except InvalidInput as exc:
                raise InvalidInput(f"expected_versions[{entity!r}]: {exc.detail}") from None
            if expected is None:
                raise InvalidInput(f"expected_versions[{entity!r}] must be an integer (-1 for a new entity)")
            expectations[entity] = expected
    return entities, batch, expectations


def replay_or_conflict_multi(
    batch: Sequence[NewEvent], entities: Sequence[str], stored: Mapping[str, Event], realm: str, domain: str
) -> AppendResult | None:
    """:func:`replay_or_conflict` for a multi-entity append: the original results when every event
    is stored, identical, in its entity, and each entity's events as one run of versions."""
    return _replay(batch, entities, stored, realm, domain, with_entity=True)


def _replay(batch: Sequence[NewEvent], entities: Sequence[str], stored: Mapping[str, Event], realm: str,
            domain: str, *, with_entity: bool) -> AppendResult | None:
    """Both replay decisions: a batch to one entity is the case where every entity is the same."""
    if not stored:
        return None
    results: list[Appended] = []
    runs: dict[str, list[int]] = {}
    for e, entity in zip(batch, entities, strict=True):
        old = stored.get(e.event_id)
        if old is None:  # named by an id the client sent and that is stored (not a new one's)
            raise EventIdConflict(
                next(x.event_id for x in batch if x.event_id in stored),
                "part of this batch was stored before with different content or ids"
            )
        if not e.same_content(old, realm, domain, entity):
            raise EventIdConflict(e.event_id)
        results.append(Appended(old.event_id, old.version, old.position, old.timestamp,
                                entity if with_entity else None))
        runs.setdefault(entity, []).append(old.version)
    positions = [r.position for r in results]
    for versions in runs.values():
        if versions != list(range(versions[0], versions[0] + len(versions))):
            raise EventIdConflict(batch[0].event_id, "these event ids were stored, but not as one batch")
    if positions != sorted(positions):
        raise EventIdConflict(batch[0].event_id, "these event ids were stored, but not as one batch")
    return AppendResult(results, created=False)
