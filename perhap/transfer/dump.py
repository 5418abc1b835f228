"""The dump format (``perhap-dump``, version 3): its header and end line, and its lines read back
as events to import, each checked and named by its line (see :mod:`perhap.transfer` for the format)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidInput
from ..jsoncodec import dump_json, load_json, not_json_reason, refuse_duplicate_keys
from ..model import MAX_POSITION, Event, NewEvent, Scope, check_name, new_event

DUMP_FORMAT = "perhap-dump"
#: Version 2 added each event's ``position``; version 3 the end line, which says the dump is whole
#: (a dump cut short at a line's end read as a whole one). Dumps of versions 1 and 2 import as before.
DUMP_VERSION = 3
#: The first version whose dumps end with their end line.
ENDED_VERSION = 3
EVENT_KEYS = ("event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "timestamp")
#: Keys an event line may have besides EVENT_KEYS: read, checked, and not imported (the destination
#: gives every event its own position).
OPTIONAL_KEYS = ("position",)
TYPE_SCOPE_REFUSED = ("export whole entities: a TYPE scope would leave gaps in the versions, "
                      "and an import keeps versions")


class TransferError(Exception):
    """An export, import or copy cannot go on; the message says why and what to do."""


class CutShort(TransferError):
    """A dump of version 3 on that ends without its end line: every line read was good."""


class TooLargeForDestination(TransferError):
    """A batch the destination refuses as too large (a server's ``--max-body`` or ``--max-batch``):
    the importer sends it again in halves; an event alone that it refuses stops the import."""


def check_export_scope(scope: Scope | None) -> None:
    """Refuse a TYPE scope: an import keeps versions, and a type's events leave gaps in them."""
    if scope is not None and scope.type is not None:
        raise TransferError(TYPE_SCOPE_REFUSED)


def dump_header(scope: Scope | None) -> bytes:
    """The first line of a dump of ``scope`` (None: the whole store)."""
    label = None if scope is None else "/".join(p for p in (scope.realm, scope.domain, scope.entity) if p)
    return orjson.dumps({"format": DUMP_FORMAT, "version": DUMP_VERSION, "scope": label}) + b"\n"


def dump_end(count: int) -> bytes:
    """The last line of a dump of ``count`` events: without it, a dump was cut short."""
    return orjson.dumps({"format": DUMP_FORMAT, "end": True, "events": count}) + b"\n"


@dataclass(slots=True)
class DumpEvent:
    """One event to import: where it goes, its version, and the event with its id and time."""

    realm: str
    domain: str
    entity: str
    version: int
    new: NewEvent
    origin: str = ""  # e.g. "dump.jsonl line 7", for error messages

    @property
    def size(self) -> int:
        return len(self.new.data_json) + len(self.new.meta_json) + 200

    @property
    def label(self) -> str:
        """Where the event comes from and goes, for error messages."""
        place = f"{self.realm}/{self.domain}/{self.entity}"
        return f"{self.origin} ({place})" if self.origin else place


def event_to_import(event: Event) -> DumpEvent:
    """A stored event (from another store) as an event to import."""
    new = new_event(event.type, event.data_json, event.event_id, event.meta_json, raw=True,
                    timestamp=event.timestamp)
    return DumpEvent(event.realm, event.domain, event.entity, event.version, new)


def not_empty(lines: Iterable[bytes], name: str) -> Iterator[bytes]:
    """``lines`` unchanged, once a line that is not blank has come and proved a dump's (its header,
    or an event): a dump without one (an empty file, nothing on stdin) or whose first line is no
    dump's (binary data, a BOM) is refused before anything else is done (an import's store made)."""
    rest = iter(lines)
    head: list[bytes] = []
    for line in rest:
        head.append(line)
        if line.strip():
            next(parse_dump(head, name, whole=False), None)  # (TransferError names the line)
            return itertools.chain(head, rest)
    raise TransferError(_empty(name))


def _empty(name: str) -> str:
    return f"{name} is empty: a dump has at least its header line"


def parse_dump(lines: Iterable[bytes], name: str = "the dump", *, whole: bool = True,
               on_bytes: Callable[[int], None] | None = None) -> Iterator[DumpEvent]:
    """Validate a dump line by line and yield its events; TransferError names the bad line. A dump
    of version 3 on must end with its end line, counting its events (``whole``: the lines are the
    whole dump); a cut short one fails at its end, after the events before were yielded."""
    first, version, count, ended = True, 0, 0, False
    for number, raw in enumerate(lines, 1):
        if on_bytes is not None:
            on_bytes(len(raw))
        line = raw.strip()
        if not line:
            continue
        where = f"{name} line {number}"
        if ended:
            raise TransferError(f"{where}: a line after the dump's end line")
        try:
            obj = load_json(line)
        except (orjson.JSONDecodeError, InvalidInput) as exc:
            raise TransferError(f"{where}: {not_json_reason(line, exc)}") from None
        try:  # as the HTTP API refuses such a body: one of the two values would be lost
            refuse_duplicate_keys(line, obj)
        except InvalidInput as exc:
            raise TransferError(f"{where}: {exc.detail}") from None
        if not isinstance(obj, dict):
            raise TransferError(f"{where}: expected a JSON object")
        if first and "format" in obj:
            first = False
            version = _check_header(obj, where)
            continue
        first = False
        if version >= ENDED_VERSION and "format" in obj:
            _check_end(obj, where, count)
            ended = True
            continue
        count += 1
        yield _dump_event(obj, where)
    if first:
        raise TransferError(_empty(name))
    if whole and version >= ENDED_VERSION and not ended:
        raise CutShort(f"{name} has no end line: it was cut short (an export that failed or was stopped, a copy "
                       "of the file not finished)")


def _check_end(obj: dict[str, Any], where: str, count: int) -> None:
    events = obj.get("events")
    if obj.get("format") != DUMP_FORMAT or obj.get("end") is not True or set(obj) != {"format", "end", "events"} \
            or isinstance(events, bool) or not isinstance(events, int):
        raise TransferError(f"{where}: not a dump's end line (expected {dump_end(count).decode().strip()})")
    if events != count:
        raise TransferError(f"{where}: the end line counts {events} events, the dump holds {count}: "
                            "lines are missing or were added")


def _check_header(obj: dict[str, Any], where: str) -> int:
    """The dump's version, from its header."""
    if obj.get("format") != DUMP_FORMAT:
        raise TransferError(f"{where}: not a perhap dump (format {obj.get('format')!r})")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= DUMP_VERSION:
        raise TransferError(f"{where}: dump format version {version!r}; this perhap reads "
                            f"version {DUMP_VERSION} (upgrade perhap)")
    return version


def _dump_event(obj: dict[str, Any], where: str) -> DumpEvent:
    missing = [k for k in EVENT_KEYS if k not in obj]
    unknown = sorted(set(obj) - set(EVENT_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        what = (f"missing {', '.join(missing)}" if missing else "") + \
               ("; " if missing and unknown else "") + (f"unknown keys {', '.join(unknown)}" if unknown else "")
        raise TransferError(f"{where}: not an event object ({what})")
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_POSITION:
        raise TransferError(f"{where}: version must be an integer of 0 or more (up to {MAX_POSITION})")
    if not isinstance(obj["meta"], dict):
        raise TransferError(f"{where}: meta must be a JSON object")
    # null is no id and no time: taken, the event would be stored under a new id (and imported
    # again at every run) or at the time of the import.
    for key, what in (("event_id", "the event's id"), ("timestamp", "its time (RFC 3339, UTC)")):
        if not isinstance(obj[key], str):
            raise TransferError(f"{where}: {key} must be a string, {what}")
    position = obj.get("position", 1)
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= MAX_POSITION:
        raise TransferError(f"{where}: position must be an integer from 1 to {MAX_POSITION}")
    try:
        check_name(obj["realm"], "realm", realm=True)
        check_name(obj["domain"], "domain")
        check_name(obj["entity"], "entity")
        new = new_event(obj["type"], dump_json(obj["event"], "event"), obj["event_id"],
                        dump_json(obj["meta"], "meta"), raw=True, timestamp=obj["timestamp"])
    except InvalidInput as exc:
        raise TransferError(f"{where}: {exc.detail}") from None
    return DumpEvent(obj["realm"], obj["domain"], obj["entity"], version, new, where)
