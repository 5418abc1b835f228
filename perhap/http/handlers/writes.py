"""Appends: one event (POST to a type), an atomic batch (POST to an entity), or an atomic batch
over several entities of a domain (POST to the domain)."""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import InvalidInput, sent_text, shown_keys
from ...limits import BatchTooLarge
from ...model import check_expected_version, new_event
from ..requests import Context, Request, authorize, read_json_object
from ..responses import send_json
from ..routes import encode_segment
from ..types import Send

_APPEND_KEYS = frozenset({"event", "event_id", "meta", "expected_version"})
_BATCH_KEYS = frozenset({"events", "expected_version"})
_MANY_KEYS = frozenset({"events", "expected_versions"})
# The two shapes, as the error messages show them.
#: The levels a batch's body puts around each event (its list, the item): not counted against
#: --max-depth, so an event one append route takes, the others take too.
BATCH_LEVELS = 2
_ONE = '{"event": <your event>}, optionally with "meta", "event_id" and "expected_version"'
_BATCH = '{"events": [{"type": "<type>", "event": <your event>}, ...]}, optionally with "expected_version"'
_MANY = ('{"events": [{"entity": "<entity>", "type": "<type>", "event": <your event>}, ...]}, '
         'optionally with "expected_versions": {"<entity>": <version>, ...}')


def event_path(realm: str, domain: str, event_id: str) -> str:
    """Where an event can be read on its own (the Location of a 201)."""
    return f"/{encode_segment(realm)}/{encode_segment(domain)}/{event_id}"


#: What each optional key must be when present: over HTTP a JSON null is not "absent" (it is not a
#: UUID, an integer or an object), so it is refused in the words of the key's own check.
_NOT_NULL = {"event_id": "event_id must be a UUID (leave the key out to have one made), got null",
             "meta": "meta must be a JSON object (leave the key out for none), got null",
             "expected_version": "expected_version must be an integer, -1 for a new entity "
                                 "(leave the key out to append at any version), got null",
             "expected_versions": "expected_versions must be an object of entity: version "
                                  "(leave the key out to append at any versions), got null",
             "timestamp": "timestamp must be an RFC 3339 time (leave the key out for the commit's), got null"}
_ITEM_KEYS = ("event_id", "meta", "timestamp")


def _refuse_nulls(body: dict[str, object], keys: Iterable[str], items: object = None) -> None:
    """A 400 for an optional key given as null, in the body or in any of its ``items``."""
    for key in keys:
        if key in body and body[key] is None:
            raise InvalidInput(_NOT_NULL[key])
    if type(items) is list:
        for i, item in enumerate(items):
            if type(item) is dict:
                for key in _ITEM_KEYS:
                    if key in item and item[key] is None:
                        raise InvalidInput(f"events[{i}]: {_NOT_NULL[key]}")


async def append(ctx: Context, req: Request, send: Send) -> None:
    realm, domain, entity, type_ = req.names
    body = await read_json_object(req, ctx.max_body, ctx.max_depth, shape=_ONE)
    if "event" not in body:
        if "events" in body:
            raise InvalidInput(f"this route appends one event: {_ONE}; a batch {{\"events\": [...]}} "
                               "goes to the entity, POST /REALM/DOMAIN/ENTITY")
        raise InvalidInput(f"the event must be wrapped in {{\"event\": ...}}: send {_ONE}"
                           + (f"; this body has the keys {shown_keys(body.keys())}" if body else ""))
    unknown = body.keys() - _APPEND_KEYS
    if unknown:
        raise InvalidInput(f"unknown keys in the body: {shown_keys(unknown)}; send {_ONE}")
    if len(body) > 1:
        _refuse_nulls(body, ("event_id", "meta", "expected_version"))
    meta = body.get("meta")
    if "meta" in body and not isinstance(meta, dict):
        raise InvalidInput("meta must be a JSON object")
    prepared = new_event(type_, body["event"], body.get("event_id"), meta)
    expected = check_expected_version(body.get("expected_version"))
    result = await ctx.store.append_batch(realm, domain, entity, [prepared], expected_version=expected)
    first = result.first
    await send_json(send, 201 if result.created else 200, first.to_dict(),
                    [(b"location", event_path(realm, domain, first.event_id).encode())])


def _check_imported_timestamps(req: Request, realm: str, events: list[object]) -> None:
    """An event's own ``timestamp`` (instead of its commit time) is an import's: ``perhap import``
    and ``copy`` through a server send them. Under --auth only an admin token may give one (a
    writer does not backdate what it writes)."""
    if req.grant is not None and any(type(e) is dict and "timestamp" in e for e in events):
        authorize(req.grant, realm, "admin")


async def append_batch(ctx: Context, req: Request, send: Send) -> None:
    realm, domain, entity = req.names
    body = await read_json_object(req, ctx.max_body, ctx.max_depth, shape=_BATCH, wrapped=BATCH_LEVELS)
    if "events" not in body:
        raise InvalidInput(f"this is the batch route, POST /REALM/DOMAIN/ENTITY: send {_BATCH}; "
                           "one event goes to /REALM/DOMAIN/ENTITY/TYPE as {\"event\": <your event>}"
                           + (f"; this body has the keys {shown_keys(body.keys())}" if body else ""))
    unknown = body.keys() - _BATCH_KEYS
    if unknown:
        raise InvalidInput(f"unknown keys in the body: {shown_keys(unknown)}; send {_BATCH}")
    events = body.get("events")
    if not isinstance(events, list):
        raise InvalidInput("the body needs an 'events' list: {\"events\": [{\"type\": ..., \"event\": ...}]}")
    if len(events) > ctx.max_batch:
        raise BatchTooLarge(f"a batch holds at most {ctx.max_batch} events, got {len(events)}",
                            max_batch=ctx.max_batch)
    _refuse_nulls(body, ("expected_version",), events)
    _check_imported_timestamps(req, realm, events)
    expected = check_expected_version(body.get("expected_version"))
    result = await ctx.store.append_batch(realm, domain, entity, events, expected_version=expected)
    await send_json(send, 201 if result.created else 200, {"events": [a.to_dict() for a in result.events]})


async def append_many(ctx: Context, req: Request, send: Send) -> None:
    """POST /REALM/DOMAIN: events for several entities of the domain, stored all or nothing."""
    realm, domain = req.names
    body = await read_json_object(req, ctx.max_body, ctx.max_depth, shape=_MANY, wrapped=BATCH_LEVELS)
    if "events" not in body:
        hint = ("; one event goes to /REALM/DOMAIN/ENTITY/TYPE as {\"event\": <your event>}" if "event" in body
                else f"; this body has the keys {shown_keys(body.keys())}" if body else "")
        raise InvalidInput(f"this is the multi-entity route, POST /REALM/DOMAIN: send {_MANY}{hint}")
    unknown = body.keys() - _MANY_KEYS
    if unknown:
        hint = ("; expected_versions (plural) maps each entity to its version here"
                if "expected_version" in unknown else "")
        raise InvalidInput(f"unknown keys in the body: {shown_keys(unknown)}; send {_MANY}{hint}")
    events = body["events"]
    if not isinstance(events, list):
        raise InvalidInput(f"'events' must be a list: send {_MANY}")
    if len(events) > ctx.max_batch:
        raise BatchTooLarge(f"a batch holds at most {ctx.max_batch} events, got {len(events)}",
                            max_batch=ctx.max_batch)
    _refuse_nulls(body, ("expected_versions",), events)
    expected_versions = body.get("expected_versions")
    if type(expected_versions) is dict and None in expected_versions.values():
        entity = next(e for e, v in expected_versions.items() if v is None)
        raise InvalidInput(f"expected_versions[{sent_text(entity, 60)!r}] must be an integer, -1 for a new entity "
                           "(leave the entity out to append at any version), got null")
    _check_imported_timestamps(req, realm, events)
    result = await ctx.store.append_many(realm, domain, events, expected_versions=expected_versions)
    await send_json(send, 201 if result.created else 200, {"events": [a.to_dict() for a in result.events]})
