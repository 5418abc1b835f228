"""How eventsourcing's stored events become perhap events and back, exactly.

An aggregate is an entity, a topic is an event type, a notification id is a position. What perhap's
names cannot hold, or holds differently, travels in the event's ``meta``:

- ``originator_version``: always. perhap versions start at 0 and have no gaps; an aggregate's
  versions start where the application starts them (1 by default, 0 in some applications), so the
  two differ by a constant per aggregate, which every event carries.
- ``uuid``: true when the originator id was a UUID (perhap names are strings), so it comes back as one.
- ``topic``: only when the topic is not a valid perhap type name; the type is then ``~topic``.
- ``state``: absent when the state bytes are JSON as perhap writes it: the event is that JSON.
  ``"python-json"`` when they are JSON as Python's ``json`` writes it with the library's
  ``JSONTranscoder`` settings (``1e-07`` where perhap writes ``1e-7``): the event is the same value,
  and reading writes it back that way. ``"base64"`` for any other bytes (compressed, encrypted,
  other JSON spellings): the event is then the base64 text. Either way JSON state stays readable in
  the web UI, and every form comes back byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import DataError, Notification, StoredEvent

from ..errors import InvalidInput
from ..jsoncodec import EMPTY_OBJECT, dump_json, load_json, right_sized
from ..limits import DEFAULT_MAX_DEPTH, check_depth
from ..model import MAX_NAME_BYTES, Event, NewEvent, check_name, new_event
from ..store.query import MAX_TYPES

#: The deepest JSON state stored as JSON: a request carries an event three levels down
#: (``{"events": [{"event": ...}]}``), and a server refuses bodies deeper than its --max-depth.
STATE_MAX_DEPTH = DEFAULT_MAX_DEPTH - 3

#: The type of events whose topic is not a valid perhap type name (the topic is in the meta).
ESCAPED_TOPIC_TYPE = "~topic"
#: The type of the events that record a process application's tracking (one entity per upstream).
TRACKING_TYPE = "eventsourcing.tracking"
_TRACKING_PREFIX = "~tracking~"


def _is_plain_name(text: str) -> bool:
    if text.startswith("~"):
        return False  # reserved for escaped ids and the recorder's own entities
    try:
        check_name(text, "name")
    except InvalidInput:
        return False
    return True


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii").rstrip("=")


def entity_name(originator_id: UUID | str) -> str:
    """The entity of an aggregate: its id as text, or ``~`` and the id in base64url when the id is
    not a valid perhap name (a '/', control characters, over 255 bytes, a leading '~'). One-to-one."""
    if isinstance(originator_id, UUID):
        return str(originator_id)
    if _is_plain_name(originator_id):
        return originator_id
    escaped = "~" + _b64(originator_id)
    if len(escaped) > MAX_NAME_BYTES:
        raise DataError(f"originator id too long for perhap (at most {MAX_NAME_BYTES} bytes, or 190 when it needs "
                        f"escaping): {originator_id[:40]!r}...")
    return escaped


def originator_of(entity: str, is_uuid: bool) -> UUID | str:
    """The inverse of :func:`entity_name`."""
    if is_uuid:
        return UUID(entity)
    if entity.startswith("~"):
        padded = entity[1:] + "=" * (-len(entity[1:]) % 4)
        return base64.urlsafe_b64decode(padded).decode("utf-8", "surrogatepass")
    return entity


def tracking_entity(application_name: str) -> str:
    """The entity holding the tracking records of one upstream application (never an aggregate's:
    escaped ids hold no second '~' and plain ids never begin with one)."""
    if _is_plain_name(application_name) and len(application_name.encode("utf-8")) <= 245:
        return _TRACKING_PREFIX + application_name
    escaped = _b64(application_name)
    if len(escaped) <= 244:
        return _TRACKING_PREFIX + "~" + escaped
    # Too long even escaped: a digest ('=' never appears in unpadded base64url, so no clash).
    return _TRACKING_PREFIX + "=" + hashlib.sha256(application_name.encode("utf-8", "surrogatepass")).hexdigest()


def is_tracking_entity(entity: str) -> bool:
    return entity.startswith(_TRACKING_PREFIX)


def is_notification(event: Event) -> bool:
    """Whether an event of the application's domain is one of its notifications (see notifications)."""
    if is_tracking_entity(event.entity):
        return False
    version = load_json(event.meta_json).get("originator_version")
    return isinstance(version, int) and not isinstance(version, bool)


def type_of(topic: str) -> str:
    if _is_plain_name(topic):
        return topic
    return ESCAPED_TOPIC_TYPE


def types_of(topics: Iterable[str]) -> list[str]:
    """The event types to read for a set of topics (deduplicated, in a stable order)."""
    return sorted({type_of(t) for t in topics})


def type_filter(topics: Iterable[str]) -> list[str] | None:
    """The types a read of these topics asks perhap for, or None to read every type: none given,
    or more than a read may name (MAX_TYPES). The library takes any number of topics, and the
    notifications are filtered by topic here in any case (:func:`notifications`)."""
    types = types_of(topics)
    return types if 0 < len(types) <= MAX_TYPES else None


# --------------------------------------------------------------------------- state bytes


#: Python's JSON as eventsourcing's JSONTranscoder writes it (its separators, no ASCII escapes).
PYTHON_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
BASE64, AS_PYTHON_WRITES = "base64", "python-json"  # the forms of meta.state (absent: perhap's JSON)


def encode_state(state: bytes) -> tuple[bytes, str | None]:
    """The event's JSON for these state bytes, and the form it is in (``meta.state``).

    State is stored as JSON when perhap's serialisation of it gives the same bytes back (so any path,
    HTTP included, returns it byte for byte), or Python's does (reading re-writes it that way, from
    the value, whatever spelling a path returns); anything else is stored as base64 text.
    """
    if state[:1] in (b"{", b"[", b'"'):  # JSON values an application's transcoder writes
        try:
            value = load_json(state)
            # Nested deeper than a server takes inside a request's envelope: base64, below.
            check_depth(state, value, STATE_MAX_DEPTH)
            data_json = dump_json(value, "state")
            if data_json == state:
                return state, None
            if python_json(data_json) == state:
                return data_json, AS_PYTHON_WRITES
        except (orjson.JSONDecodeError, InvalidInput, ValueError, TypeError, RecursionError):
            pass
    return b'"' + base64.b64encode(state) + b'"', BASE64


def python_json(data_json: bytes) -> bytes:
    return PYTHON_JSON.encode(load_json(data_json)).encode("utf-8")


def decode_state(data_json: bytes, form: str | None) -> bytes:
    if form is None:
        return data_json
    if form == AS_PYTHON_WRITES:
        return python_json(data_json)
    try:
        return base64.b64decode(data_json[1:-1], validate=True)
    except binascii.Error:
        raise DataError("an event marked as base64 state holds something else") from None


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a perhap event says about the stored event it holds."""

    originator_version: int
    is_uuid: bool
    topic: str
    state_form: str | None  # meta.state: None (perhap's JSON), "python-json" or "base64"


class NotRecorded(DataError):
    """An event of the application's domain that perhap.eventsourcing did not write (appended
    some other way, through the UI or the API): no aggregate's event, and no notification."""


def recorded(event: Event) -> Recorded:
    """The eventsourcing fields of a stored perhap event; NotRecorded if it holds none."""
    meta: dict[str, Any] = load_json(event.meta_json)
    version = meta.get("originator_version")
    if not isinstance(version, int) or isinstance(version, bool):  # (true is no version: JSON's, not an int)
        raise NotRecorded(f"event {event.event_id} in {event.realm}/{event.domain}/{event.entity} was not "
                          "written by perhap.eventsourcing (no originator_version in its meta)")
    topic = meta.get("topic", event.type)
    form = meta.get("state")
    if form not in (None, BASE64, AS_PYTHON_WRITES):
        raise DataError(f"event {event.event_id} holds its state in a form this perhap does not know: {form!r}")
    return Recorded(version, meta.get("uuid") is True, topic, form)


def to_new_event(stored: StoredEvent) -> NewEvent:
    """A perhap event holding this stored event (its entity is :func:`entity_name` of the id)."""
    topic = stored.topic
    state = stored.state
    data_json, form = encode_state(state if isinstance(state, bytes) else bytes(state))
    meta: dict[str, Any] = {"originator_version": stored.originator_version}
    if isinstance(stored.originator_id, UUID):
        meta["uuid"] = True
    event_type = type_of(topic)
    if event_type != topic:
        meta["topic"] = topic
    if form is not None:
        meta["state"] = form
    return new_event(event_type, data_json, None, right_sized(orjson.dumps(meta)), raw=True)


def to_stored_event(event: Event, originator_id: UUID | str | None = None) -> StoredEvent:
    info = recorded(event)
    if originator_id is None:
        originator_id = originator_of(event.entity, info.is_uuid)
    return StoredEvent(originator_id=originator_id, originator_version=info.originator_version,
                       topic=info.topic, state=decode_state(event.data_json, info.state_form))


def to_notification(event: Event) -> Notification:
    info = recorded(event)
    return Notification(id=event.position, originator_id=originator_of(event.entity, info.is_uuid),
                        originator_version=info.originator_version, topic=info.topic,
                        state=decode_state(event.data_json, info.state_form))


def notifications(events: Iterable[Event], topics: Collection[str]) -> list[Notification]:
    """The notifications among events of an application's domain: tracking records are left out,
    and so are events appended there some other way (one posted through the UI made every later
    read of the log fail, so a follower stopped there for good); when ``topics`` are given, events
    of other topics too (types may be shared by escaped topics)."""
    found = []
    for event in events:
        if is_tracking_entity(event.entity):
            continue
        try:
            notification = to_notification(event)
        except NotRecorded:
            continue
        if topics and notification.topic not in topics:
            continue
        found.append(notification)
    return found


def tracking_event(application_name: str, notification_id: int) -> NewEvent:
    data = right_sized(orjson.dumps({"application_name": application_name, "notification_id": notification_id}))
    return new_event(TRACKING_TYPE, data, None, EMPTY_OBJECT, raw=True)


def tracking_id(event: Event) -> int:
    value = load_json(event.data_json).get("notification_id")
    if not isinstance(value, int):
        raise DataError(f"tracking event {event.event_id} has no notification_id")
    return value
