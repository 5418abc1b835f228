"""The backend-neutral storage interface: value types, errors, validation and the Store base class.

Every backend (``sqlite.py``, ``postgres.py``, ``cassandra.py``) subclasses :class:`Store` and
implements the handful of abstract methods; everything a backend must not get wrong on its own
(name rules, JSON serialisation, event ids, idempotency comparison, subscriptions) lives here once.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

MAX_NAME_BYTES = 255
MAX_BATCH = 10_000
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
RESERVED_NAME = "keys"
MAX_VERSION = 2**62


# --------------------------------------------------------------------------- errors


class PerhapError(Exception):
    """Base of every error the store raises; each maps to one HTTP status."""

    status = 500
    slug = "error"
    title = "Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(PerhapError):
    status, slug, title = 400, "invalid-input", "Invalid input"


class NotFound(PerhapError):
    status, slug, title = 404, "not-found", "Not found"


class VersionConflict(PerhapError):
    status, slug, title = 409, "version-conflict", "Version conflict"

    def __init__(self, current_version: int, expected_version: int) -> None:
        super().__init__(
            f"expected version {expected_version}, but the entity is at version {current_version}",
            current_version=current_version,
            expected_version=expected_version,
        )
        self.current_version = current_version
        self.expected_version = expected_version


class EventIdConflict(PerhapError):
    status, slug, title = 409, "event-id-conflict", "Event id already used"

    def __init__(self, event_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"event_id {event_id} is already used by a different event", event_id=event_id
        )
        self.event_id = event_id


class StorageUnavailable(PerhapError):
    status, slug, title = 503, "storage-unavailable", "Storage unavailable"


# --------------------------------------------------------------------------- names and values


def check_name(value: Any, what: str, *, realm: bool = False) -> str:
    """Validate one level's name: 1-255 bytes of UTF-8, no control characters, no '/'."""
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
    if value == RESERVED_NAME:
        raise InvalidInput(f"'{RESERVED_NAME}' is reserved and cannot be used as a {what}")
    if realm and value.startswith("_"):
        raise InvalidInput("realm names beginning with '_' are reserved for system endpoints")
    return value


def _is_control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o < 0xA0


def check_event_id(value: Any, what: str = "event_id") -> str:
    """Return the canonical (lower-case, hyphenated) form of a UUID string."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"{what} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a UUID, got {value[:64]!r}") from None


def check_expected_version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON does not tell 3 from 3.0; JSON Schema calls both integers
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("expected_version must be an integer (-1 for a new entity)")
    if value < -1:
        raise InvalidInput("expected_version must be -1 or greater")
    if value > MAX_VERSION:
        raise InvalidInput("expected_version is out of range")
    return value


def check_limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return value


# orjson handles integers up to 64 bits; longer digit runs take the (slower, exact) stdlib path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not valid JSON")


def load_json(raw: bytes) -> Any:
    """Parse JSON exactly: integers of any size stay integers (orjson would make them floats)."""
    if _LONG_DIGITS.search(raw):
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise orjson.JSONDecodeError(str(exc), "", 0) from None
    return orjson.loads(raw)


def _stdlib_dumps(value: Any, sort_keys: bool = False) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
    return text.encode("utf-8")


def dump_json(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:  # integers beyond 64 bits: stored exactly, as written
        return _stdlib_dumps(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not serialisable as JSON: {exc}") from None


def canonical_json(raw: bytes) -> bytes:
    """A serialisation that compares equal exactly when two JSON values are equal."""
    value = load_json(raw)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib_dumps(value, sort_keys=True)


EMPTY_OBJECT = b"{}"


# --------------------------------------------------------------------------- ids and time

_last_ms = 0
_last_seq = 0


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), monotonic within this process."""
    global _last_ms, _last_seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        # Same (or earlier) millisecond: count up in rand_a so ids stay strictly increasing.
        _last_seq += 1
        if _last_seq > 0xFFF:
            _last_ms += 1
            _last_seq = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _last_seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
    rand_b = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_last_seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,9}))?(?:Z|[+-]\d\d:\d\d)")


def check_timestamp(value: Any) -> str:
    """An RFC 3339 date-time in perhap's own form: UTC, microseconds, 'Z' (as utc_timestamp writes).

    Offsets are converted to UTC, so every backend stores and returns one canonical string (or the
    microseconds it stands for); precision beyond the microsecond is refused, as it could not be kept.
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"timestamp must be an RFC 3339 date-time, got {str(value)[:40]!r}")
    fraction = match.group(1) or ""
    if fraction[6:].strip("0"):
        raise InvalidInput(f"timestamp {value!r} is finer than a microsecond, which cannot be kept")
    text = value.replace(f".{fraction}", f".{fraction[:6]}") if fraction else value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise InvalidInput(f"timestamp is not a valid date and time: {value!r}") from None
    return parsed.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-26T09:34:31.123456Z."""
    dt = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        return cls(*parts)  # type: ignore[arg-type]

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

    ``position`` is the backend's commit-order key; it orders events within any scope and is
    never shown to clients (they page by event id).
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
    position: Any = field(default=None, compare=False)

    @property
    def event(self) -> Any:
        return load_json(self.data_json)

    @property
    def meta(self) -> dict[str, Any]:
        return load_json(self.meta_json)  # type: ignore[no-any-return]

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
            "timestamp": self.timestamp,
        }

    def to_dict(self) -> dict[str, Any]:
        """The same object with ``event`` and ``meta`` parsed into Python values."""
        return load_json(orjson.dumps(self.to_json_dict()))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Appended:
    event_id: str
    version: int
    timestamp: str

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "version": self.version, "timestamp": self.timestamp}


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
    data_json = event if raw else dump_json(event, "event")
    if meta is None:
        meta_json = EMPTY_OBJECT
    else:
        meta_json = meta if raw else dump_json(meta, "meta")
    if event_id is None:
        return NewEvent(type, data_json, meta_json, uuid7(), False, timestamp)
    return NewEvent(type, data_json, meta_json, check_event_id(event_id), True, timestamp)


def prepare_batch(events: Sequence[NewEvent | Mapping[str, Any]]) -> list[NewEvent]:
    """Validate a batch: 1 to MAX_BATCH events, no event_id twice."""
    if not isinstance(events, Sequence) or isinstance(events, (str, bytes)):
        raise InvalidInput("events must be a list")
    if not 1 <= len(events) <= MAX_BATCH:
        raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} events, got {len(events)}")
    prepared: list[NewEvent] = []
    for i, item in enumerate(events):
        if isinstance(item, NewEvent):
            prepared.append(item)
            continue
        if not isinstance(item, Mapping):
            raise InvalidInput(f"events[{i}] must be an object")
        unknown = set(item) - {"type", "event", "event_id", "meta"}
        if unknown:
            raise InvalidInput(f"events[{i}] has unknown keys: {', '.join(sorted(unknown))}")
        if "event" not in item:
            raise InvalidInput(f"events[{i}] needs an 'event'")
        if "type" not in item:
            raise InvalidInput(f"events[{i}] needs a 'type'")
        try:
            prepared.append(new_event(item["type"], item["event"], item.get("event_id"), item.get("meta")))
        except InvalidInput as exc:
            raise InvalidInput(f"events[{i}]: {exc.detail}") from None
    ids = [e.event_id for e in prepared]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the same event_id appears twice in the batch")
    return prepared


def replay_or_conflict(
    batch: Sequence[NewEvent], stored: Mapping[str, Event], realm: str, domain: str, entity: str
) -> AppendResult | None:
    """Decide a write whose client-chosen ids exist already.

    Returns the original result when every event is present and identical (an idempotent retry),
    None when no id exists yet, and raises EventIdConflict otherwise (partly present or different).
    """
    if not stored:
        return None
    results: list[Appended] = []
    for e in batch:
        old = stored.get(e.event_id)
        if old is None:
            raise EventIdConflict(
                e.event_id, "part of this batch was stored before with different content or ids"
            )
        if not e.same_content(old, realm, domain, entity):
            raise EventIdConflict(e.event_id)
        results.append(Appended(old.event_id, old.version, old.timestamp))
    versions = [r.version for r in results]
    if len(batch) > 1 and versions != list(range(versions[0], versions[0] + len(versions))):
        raise EventIdConflict(batch[0].event_id, "these event ids were stored, but not as one batch")
    return AppendResult(results, created=False)


# --------------------------------------------------------------------------- the interface


class Store(abc.ABC):
    """An event store. Open one with :func:`perhap.open_store`; every method is a coroutine."""

    url: str
    #: Whether several server processes may share this backend (not so for embedded SQLite).
    shared_across_processes = False
    #: Whether appends started one after another on one event loop, without awaiting each, commit
    #: in the order they were started (lets an import keep many batches in flight; see transfer.py).
    preserves_submission_order = False
    #: How long a subscriber waits before polling again when no wake-up arrives.
    poll_interval = 1.0

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
        return await self.append_batch(
            realm, domain, entity, [prepared], expected_version=expected_version
        )

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
        check_name(realm, "realm", realm=True)
        check_name(domain, "domain")
        check_name(entity, "entity")
        batch = prepare_batch(events)
        return await self._write(realm, domain, entity, batch, check_expected_version(expected_version))

    @abc.abstractmethod
    async def _write(
        self, realm: str, domain: str, entity: str, batch: list[NewEvent], expected_version: int | None
    ) -> AppendResult:
        """Store a validated batch atomically, with version and idempotency checks."""

    async def read(
        self, scope: Scope, *, following: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> Page:
        """Events of a scope in its order (version order for an entity, else commit order)."""
        limit = check_limit(limit)
        after = None
        if following is not None:
            after = await self._position_of(scope, check_event_id(following, "following"))
        events = await self._read_after(scope, after, limit + 1)
        if len(events) > limit:
            return Page(events[:limit], events[limit - 1].event_id)
        return Page(events, None)

    @abc.abstractmethod
    async def _position_of(self, scope: Scope, event_id: str) -> Any:
        """The position of an event in the scope; raise NotFound when it is not in the scope."""

    @abc.abstractmethod
    async def _read_after(self, scope: Scope, after: Any, limit: int) -> list[Event]:
        """Up to ``limit`` events of the scope after the position ``after`` (None: the start)."""

    @abc.abstractmethod
    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        """One event by id; NotFound unless it belongs to that realm and domain."""

    @abc.abstractmethod
    async def keys(
        self,
        realm: str | None = None,
        domain: str | None = None,
        entity: str | None = None,
        *,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> KeysPage:
        """Sorted names one level below the given one (realms when nothing is given)."""

    @abc.abstractmethod
    async def health(self) -> bool:
        """True when the storage answers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish in-flight writes and release every resource."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- subscriptions

    async def subscribe(
        self, scope: Scope, *, following: str | None = None, batch: int = 500
    ) -> AsyncIterator[Event]:
        """Every event of the scope after ``following``, then each new one as it commits.

        Exactly once and in order: a subscription is a cursor over the same gap-safe read path as
        paging, so it holds no queue of its own and a slow consumer simply reads further behind.
        """
        sub = await self.subscription(scope, following=following, batch=batch)
        while True:
            for event in await sub.fetch():
                yield event

    async def subscription(
        self, scope: Scope, *, following: str | None = None, batch: int = 500
    ) -> Subscription:
        """A cursor for :meth:`subscribe`; ``fetch(timeout)`` returns the next events or []."""
        after = None
        if following is not None:
            after = await self._position_of(scope, check_event_id(following, "following"))
        return Subscription(self, scope, after, batch)

    def _change_token(self) -> Any:
        """An opaque marker of the last commit this process knows of (see _wait_for_change)."""
        return None

    async def _wait_for_change(self, token: Any, timeout: float) -> None:
        """Sleep until something may have committed after ``token``, or ``timeout`` passes."""
        await asyncio.sleep(timeout)


class CommitSignal:
    """Wake-ups for a backend's subscribers when a commit is known to this process.

    Backends call ``_notify_commit()`` after their own commits (and on a notification from another
    process, where they have one); subscribers sleep in ``_wait_for_change`` until then or until
    their poll interval passes, so correctness never depends on a wake-up arriving.
    """

    _commits = 0
    _commit_event: asyncio.Event | None = None

    def _notify_commit(self, *_: Any) -> None:
        self._commits += 1
        event, self._commit_event = self._commit_event, asyncio.Event()
        if event is not None:
            event.set()

    def _change_token(self) -> Any:
        return self._commits

    async def _wait_for_change(self, token: Any, timeout: float) -> None:
        if self._commits != token:
            return
        if self._commit_event is None:
            self._commit_event = asyncio.Event()
        try:
            await asyncio.wait_for(self._commit_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class Subscription:
    """A position in a scope that moves forward as events are fetched."""

    def __init__(self, store: Store, scope: Scope, after: Any, batch: int) -> None:
        self.store, self.scope, self.after, self.batch = store, scope, after, batch

    async def fetch(self, timeout: float | None = None) -> list[Event]:
        """The next events after the cursor, waiting up to ``timeout`` (None: forever) for some."""
        store = self.store
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # Take the token before reading: a commit after it wakes the wait below at once.
            token = store._change_token()
            events = await store._read_after(self.scope, self.after, self.batch)
            if events:
                self.after = events[-1].position
                return events
            wait = store.poll_interval
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return []
            await store._wait_for_change(token, wait)


def iter_chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
