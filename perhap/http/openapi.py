"""The OpenAPI 3.1 document of the HTTP API, served at /_openapi.json.

The paths, operations and each operation's query parameters come from the route table
(:mod:`perhap.http.routes`), the same declaration the server checks requests against: a parameter
listed here is taken, any other is a 400. The schemas are written by hand from the same limits the
code enforces (names, limits, body shapes), precise enough for a schema-driven fuzzer: every
parameter and body has a schema, every response a status.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ..groups.settings import DEFAULT_LEASE_MAX, MAX_ACK_TIMEOUT, MAX_DELIVERIES, MAX_IN_FLIGHT, MAX_LEASE_WAIT
from ..model import DEFAULT_LIMIT, MAX_BATCH, MAX_LIMIT, MAX_NAME_BYTES, MAX_POSITION, MAX_VERSION
from ..store.query import MAX_TYPES
from .routes import ROUTES, Kind, Operation, Route

# 'keys', '.' and '..' are excluded by the pattern (not by "not": some generators ignore "not" in
# parameters). maxLength counts characters; the limit is 255 bytes of UTF-8 (JSON Schema has no
# byte length: the description says it).
NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES,
        "description": f"1 to {MAX_NAME_BYTES} bytes of UTF-8",
        "pattern": "^(?!keys$)(?!\\.\\.?$)[^/\\x00-\\x1f\\x7f-\\x9f]+$"}
REALM = {**NAME, "pattern": "^(?!keys$)(?!\\.\\.?$)[^_/\\x00-\\x1f\\x7f-\\x9f][^/\\x00-\\x1f\\x7f-\\x9f]*$"}
#: Any JSON value. Integers of up to 4,300 digits are kept exactly; a float that would become an
#: infinity (1e400) or 0 (1e-400), or a longer integer, is 400.
EVENT_VALUE: dict[str, Any] = {
    "description": "any JSON value; integers of up to 4,300 digits are stored exactly (a longer one is "
                   "refused with 400), and a number a 64-bit float cannot hold (1e400, 1e-400) is refused with 400"}
UUID = {"type": "string", "format": "uuid"}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path" if required is None else required,
            "schema": schema, "description": description}


P_REALM = _param("realm", "path", REALM, "Realm name (names starting with '_' are reserved).")
P_DOMAIN = _param("domain", "path", NAME, "Domain name.")
P_ENTITY = _param("entity", "path", NAME, "Entity (aggregate root) name.")
P_TYPE = _param("type", "path", NAME, "Event type.")
Q_FOLLOWING = _param("following", "query", UUID,
                     "Only events after this event id in the read's order (pass a page's `next`); "
                     "not with after_position or before_position.")
Q_LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                 "Page size: at most this many events; a page also ends once its events' data and meta "
                 "reach the server's `--max-page-bytes` (16 MiB by default, one event at least), with `next` set.")
Q_TYPE = {**_param("type", "query", {"type": "array", "items": NAME, "minItems": 1, "maxItems": MAX_TYPES},
                   f"Only events of these types: repeat it, `type=a&type=b` (at most {MAX_TYPES})."),
          "style": "form", "explode": True}
Q_ORDER = _param("order", "query", {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
                 "`desc`: newest first (`next` then continues newest first). A live stream is `asc` only.")
Q_AFTER_POSITION = _param("after_position", "query", {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
                          "With order=asc: only events with a position above this one (a position beyond "
                          "the head gives an empty page). Not with following.")
Q_BEFORE_POSITION = _param("before_position", "query", {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
                           "With order=desc: only events with a position below this one. Not with following.")
Q_AFTER_VERSION = _param("after_version", "query", {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
                         "Only the entity's events with a version above this one.")
Q_UNTIL_VERSION = _param("until_version", "query", {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
                         "Only the entity's events with a version up to this one (not below after_version).")
Q_AFTER = _param("after", "query", {"type": "string"}, "Only names sorting after this one.")
CONSUMER = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$",
            "description": f"Any id the worker chooses: 1 to {MAX_NAME_BYTES} bytes of UTF-8, no control characters."}
P_GROUP = _param("group", "path", NAME, "Consumer group name.")
Q_CONSUMER = _param("consumer", "query", CONSUMER, "The consumer taking the events: it holds their leases.",
                    required=True)
Q_MAX = _param("max", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LEASE_MAX},
               "Lease at most this many events (a consumer never holds more than the group's max_in_flight).")
Q_WAIT = _param("wait", "query", {"type": "number", "minimum": 0, "maximum": MAX_LEASE_WAIT, "default": 0},
                "Seconds to wait for at least one event (long poll); ignored by a stream.")
#: Consumer-group operations: (request body schema, whether the body is required, success status,
#: answer schema, what it answers).
_GROUP_OPS: dict[Kind, tuple[str | None, bool, str, str | None, str]] = {
    Kind.GROUPS: (None, False, "200", "Groups", "The realm's groups, by name"),
    Kind.GROUP: (None, False, "200", "Group", "The group: its settings, checkpoint, head, lag, in flight, parked"),
    Kind.GROUP_CREATE: ("GroupSettings", False, "201", "Group",
                        "Created (200 with the same body: it exists with these settings)"),
    Kind.GROUP_DELETE: (None, False, "204", None, "Deleted"),
    Kind.GROUP_LEASE: (None, False, "200", "Deliveries", "Events leased to the consumer, each with its delivery "
                                                         "count; with Accept: text/event-stream, a stream of them"),
    Kind.GROUP_ACK: ("Ack", True, "200", "Acknowledged", "Acknowledged"),
    Kind.GROUP_NACK: ("Nack", True, "200", "Nacked", "Given back"),
    Kind.GROUP_PARKED: (None, False, "200", "Parked", "Parked events in position order, each with parked_at and "
                                                      "reason; `next` (pass it as `following`) only when more follow"),
    Kind.GROUP_REPLAY: ("Replay", False, "200", "Replayed", "Back in the group, to be delivered again"),
}
H_LAST_ID = _param("Last-Event-ID", "header", UUID,
                   "With Accept: text/event-stream: resume after this event (wins over following and "
                   "after_position).", required=False)
H_IF_NONE_MATCH = _param("If-None-Match", "header", {"type": "string"},
                         "ETags the client holds (or `*`): when one matches, 304 with no body.", required=False)
ETAG = {"ETag": {"description": "Changes exactly when the JSON answer does (not sent with a stream).",
                 "schema": {"type": "string"}}}
NOT_MODIFIED = {"description": "Not modified: If-None-Match holds the current ETag; no body", "headers": ETAG}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_BAD_PARAMETER = ("Bad name or parameter, or parameters that clash (named in detail: following with "
                  "after_position, after_position with order=desc, before_position with order=asc, "
                  "until_version below after_version, order=desc on a stream); a query parameter not "
                  "listed here, or one given twice, too")


def _read(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": "JSON page of events, with an ETag; with `Accept: text/event-stream` a live SSE "
                       "stream (catch-up after `following`, `after_position` or `Last-Event-ID`, then new "
                       "events; `order`, `before_position` and `limit` are for pages).",
        "parameters": [*params, H_LAST_ID, H_IF_NONE_MATCH],
        "responses": {
            "200": {"description": "A page of events, or an SSE stream", "headers": ETAG,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            "304": NOT_MODIFIED,
            "400": _problem(_BAD_PARAMETER),
            "404": _problem("`following` is not an event of this scope"),
            "503": _problem("Storage unavailable")}}


def _read_or_event(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    op = _read(summary, params)
    op["responses"]["200"]["content"]["application/json"]["schema"] = {
        "oneOf": [{"$ref": "#/components/schemas/Page"}, {"$ref": "#/components/schemas/Event"}]}
    return op


#: On the realms' list only.
KEYS_LIMITED = {"Perhap-Keys-Limited": {
    "description": "`by-token`: the list holds only the realm of the token sent (a token of one realm)",
    "schema": {"type": "string", "enum": ["by-token"]}}}


def _keys(summary: str, params: list[dict[str, Any]], realms: bool) -> dict[str, Any]:
    headers = {**ETAG, **KEYS_LIMITED} if realms else ETAG
    return {"summary": summary, "parameters": [*params, H_IF_NONE_MATCH],
            "responses": {"200": {**_json("Keys", "Sorted names, paged with after"), "headers": headers},
                          "304": NOT_MODIFIED,
                          "400": _problem(_BAD_PARAMETER),
                          "503": _problem("Storage unavailable")}}


#: The single-event append names the event it stored (or found stored) where it can be read.
LOCATION = {"Location": {"description": "Where the event is read on its own: /{realm}/{domain}/{event_id}",
                         "schema": {"type": "string"}}}


_UNDECODED = _problem("A body with a Content-Encoding (gzip, br ...): perhap takes plain JSON")


def _append(summary: str, params: list[dict[str, Any]], request: str, ok: str) -> dict[str, Any]:
    located = {"headers": LOCATION} if request == "AppendRequest" else {}
    return {"summary": summary, "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{request}"}}}},
            "responses": {"201": {**_json(ok, "Stored durably"), **located},
                          "200": {**_json(ok, "Idempotent retry: already stored, the original result"),
                                  **located},
                          "400": _problem("Malformed body, bad name or value, or a query parameter "
                                          "(this operation takes none)"),
                          "409": _problem("Version conflict (with current_version) or event_id reused"),
                          "413": _problem("Body over the size limit, or a batch over the batch limit"),
                          "415": _UNDECODED,
                          "503": _problem("Storage unavailable")}}


def _append_many(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    op = _append(summary, params, "ManyRequest", "AppendedMany")
    op["description"] = ("Events for one or more entities of the domain, stored all or nothing in the "
                         "order sent: each entity's events take consecutive versions, positions follow "
                         "the order sent.")
    op["responses"]["409"] = _problem("An expected version does not hold (`conflicts` lists every failing "
                                      "entity; nothing stored), or an event_id reused")
    op["responses"]["501"] = _problem("This backend does not offer multi-entity appends (`backend` names it)")
    return op


_PATH_PARAMS = {"{realm}": P_REALM, "{domain}": P_DOMAIN, "{entity}": P_ENTITY, "{type}": P_TYPE,
                "{group}": P_GROUP}
_QUERY_PARAMS = {"type": Q_TYPE, "following": Q_FOLLOWING, "limit": Q_LIMIT, "after": Q_AFTER, "order": Q_ORDER,
                 "after_position": Q_AFTER_POSITION, "before_position": Q_BEFORE_POSITION,
                 "after_version": Q_AFTER_VERSION, "until_version": Q_UNTIL_VERSION, "consumer": Q_CONSUMER,
                 "max": Q_MAX, "wait": Q_WAIT}
#: Operations that may answer with a stream (Accept: text/event-stream), hence a 429.
_READS = (Kind.READ, Kind.READ_OR_EVENT, Kind.GROUP_LEASE)


def _operation(route: Route, op: Operation, summary: str) -> dict[str, Any]:
    """The description of one route's method, by what the operation does."""
    params = [_PATH_PARAMS[p] for p in route.template.split("/") if p in _PATH_PARAMS]
    params += [_QUERY_PARAMS[name] for name in op.query or ()]  # exactly what the route takes
    if op.kind is Kind.READ:
        return _read(summary, params)
    if op.kind is Kind.READ_OR_EVENT:
        return _read_or_event(summary, params)
    if op.kind is Kind.KEYS:
        return _keys(summary, params, realms=route.template == "/keys")
    if op.kind is Kind.APPEND:
        return _append(summary, params, "AppendRequest", "Appended")
    if op.kind is Kind.APPEND_BATCH:
        return _append(summary, params, "BatchRequest", "AppendedBatch")
    if op.kind is Kind.APPEND_MANY:
        return _append_many(summary, params)
    if op.kind is Kind.HEALTH:
        return {"summary": summary, "responses": {
            "200": _json("Health", "The store answers"), "503": _problem("The store does not answer")}}
    if op.kind is Kind.ROOT:
        return {"summary": summary, "responses": {"200": {
            "description": 'perhap\'s name and the paths of its other routes: {"name": "perhap", "api": ...}',
            "content": {"application/json": {"schema": {"type": "object"}}}}}}
    if op.kind is Kind.DOCUMENT:
        return {"summary": summary, "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}
    if op.kind is Kind.METRICS:
        return {"summary": summary, "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _problem("No or unknown bearer token (with --auth)"),
            "403": _problem("The token is not an admin token")}}
    if op.kind in _GROUP_OPS:
        return _group(summary, params, *_GROUP_OPS[op.kind])
    raise ValueError(f"no OpenAPI description for {op.kind} of {route.template}")


def _group(summary: str, params: list[dict[str, Any]], body: str | None, required: bool, status: str,
           answer: str | None, description: str) -> dict[str, Any]:
    ok = _json(answer, description) if answer is not None else {"description": description}
    if answer is not None and "text/event-stream" in description:  # the lease route: JSON or a stream
        ok = {**ok, "content": {**_json(answer, description)["content"],
                                "text/event-stream": {"schema": {"type": "string"}}}}
    missing = "No such group" + (", or `following` is not an event of the realm" if answer == "Parked" else "")
    responses = {status: ok, "404": _problem(missing), "409": _problem(
        "The group exists with other settings (PUT), or an event is not leased to this consumer now "
        "(ack, nack): nothing was changed"), "503": _problem("Storage unavailable"),
        "507": _problem("The group's state would pass its size limit (`max_bytes`): nothing was changed")}
    if body is not None:
        responses["413"] = _problem("Body over the size limit")
        responses["415"] = _UNDECODED
    if status == "201":
        responses["200"] = _json("Group", "It exists with these settings: nothing was changed")
    operation: dict[str, Any] = {"summary": summary, "parameters": params, "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": required, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    return operation


def _group_schemas(position: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The consumer groups' bodies and answers (docs/groups.md)."""
    ids = {"type": "array", "maxItems": MAX_LIMIT, "items": UUID}
    settings = {
        "domain": {"oneOf": [NAME, {"type": "null"}]},
        "types": {"oneOf": [{"type": "array", "maxItems": MAX_TYPES, "items": NAME}, {"type": "null"}]},
        "start": {"oneOf": [{"enum": ["beginning", "end"]},
                            {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}]},
        "ack_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_ACK_TIMEOUT},
        "max_deliveries": {"type": "integer", "minimum": 1, "maximum": MAX_DELIVERIES},
        "max_in_flight": {"type": "integer", "minimum": 1, "maximum": MAX_IN_FLIGHT}}
    count = {"type": "integer", "minimum": 0}
    figures = ("checkpoint", "head", "lag", "in_flight", "parked", "delivered", "redeliveries", "acknowledged")
    group = {"type": "object", "required": ["realm", "name", *settings, "created", *figures, "consumers"],
             "properties": {"realm": {"type": "string"}, "name": {"type": "string"}, **settings,
                            "created": {"type": "string", "format": "date-time"},
                            **dict.fromkeys(figures, count),
                            "consumers": {"type": "array", "items": {
                                "type": "object", "required": ["consumer", "last_seen", "in_flight"],
                                "properties": {"consumer": {"type": "string"},
                                               "last_seen": {"type": "string", "format": "date-time"},
                                               "in_flight": count}}}}}
    delivered = {**event, "required": [*event["required"], "delivery"], "properties": {
        **event["properties"], "position": position, "delivery": {"type": "integer", "minimum": 1},
        "parked_at": {"type": "string", "format": "date-time"}, "reason": {"enum": ["nack", "max_deliveries"]}}}

    def counts(*names: str) -> dict[str, Any]:
        return {"type": "object", "required": list(names), "properties": dict.fromkeys(names, count)}

    return {
        "GroupSettings": {"type": "object", "additionalProperties": False, "properties": settings},
        "Group": group,
        "Groups": {"type": "object", "required": ["groups"], "properties": {"groups": {"type": "array",
                                                                                     "items": group}}},
        "Deliveries": {"type": "object", "required": ["events"], "properties": {"events": {"type": "array",
                                                                                          "items": delivered}}},
        "Parked": {"type": "object", "required": ["events"], "properties": {
            "events": {"type": "array", "items": delivered}, "next": UUID}},
        "Ack": {"type": "object", "required": ["consumer", "event_ids"], "additionalProperties": False,
                "properties": {"consumer": CONSUMER, "event_ids": ids}},
        "Nack": {"type": "object", "required": ["consumer", "event_ids"], "additionalProperties": False,
                 "properties": {"consumer": CONSUMER, "event_ids": ids,
                                "action": {"enum": ["retry", "park", "release"], "default": "retry"}}},
        "Replay": {"type": "object", "additionalProperties": False, "properties": {"event_ids": ids}},
        "Acknowledged": counts("acknowledged"),
        "Nacked": {"oneOf": [counts("retried", "parked"), counts("released")]},
        "Replayed": counts("replayed"),
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        for method, op in route.operations.items():
            if op.summary is None:
                continue  # not described: /_ui (static files) and the fallback
            operation = _operation(route, op, op.summary)
            responses = operation["responses"]
            # Every operation may also answer these, whatever its parameters.
            responses.setdefault("400", _problem("A query parameter not listed here, or one given twice"))
            responses.setdefault("405", _problem("Method not allowed"))
            if route.open:
                operation["security"] = []
            else:
                responses.setdefault("401", _problem("No or unknown bearer token (with --auth)"))
                responses.setdefault("403", _problem("The token may not do this on this realm"))
                if op.kind in _READS:
                    responses.setdefault("429", _problem("Too many open streams (with Accept: text/event-stream)"))
            paths.setdefault(route.template, {})[method.lower()] = operation
    return paths


#: The limits a problem names, as the field that carries the limit (with the status that names it).
_LIMIT_FIELDS = (("max_body", "413"), ("max_batch", "413"), ("max_depth", "400 too-deep"),
                 ("max_streams", "429"), ("max_streams_per_token", "429"), ("max_header", "431"),
                 ("max_connections", "503"), ("max_bytes", "a group's state, 507"))


@cache
def openapi_document(max_batch: int = MAX_BATCH, metrics: bool = True) -> dict[str, Any]:
    """The document; ``max_batch`` is the server's own cap on a batch's events (``--max-batch``),
    which a schema-driven client must see (beyond MAX_BATCH a batch is refused whatever it is);
    without ``metrics`` (``PerhapApp(metrics=False)``) there is no ``/_metrics`` to list."""
    batch_items = min(max_batch, MAX_BATCH)
    position = {"type": "integer", "minimum": 1, "maximum": MAX_POSITION,
                "description": "The event's place in its realm: unique, increasing in the realm's order."}
    event_object = {
        "type": "object",
        "required": ["event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "position",
                     "timestamp"],
        "properties": {"event_id": UUID, "realm": {"type": "string"}, "domain": {"type": "string"},
                       "entity": {"type": "string"}, "type": {"type": "string"}, "event": {},
                       "meta": {"type": "object"}, "version": {"type": "integer", "minimum": 0},
                       "position": position, "timestamp": {"type": "string", "format": "date-time"}}}
    appended: dict[str, Any] = {
        "type": "object", "required": ["event_id", "version", "position", "timestamp"],
        "properties": {"event_id": UUID, "version": {"type": "integer", "minimum": 0},
                       "position": position, "timestamp": {"type": "string", "format": "date-time"}}}
    appended_one_of_many = {"type": "object", "required": ["entity", "event_id", "version", "position", "timestamp"],
                            "properties": {"entity": {"type": "string"}, **appended["properties"]}}
    expected = {"type": "integer", "minimum": -1,
                "description": "The entity's current version must equal this (-1: no events yet)."}
    batch_item: dict[str, Any] = {
        "type": "object", "required": ["type", "event"], "additionalProperties": False,
        # An optional key without a value is left out: null is a 400 for each.
        "properties": {"type": NAME, "event": EVENT_VALUE, "event_id": UUID, "meta": {"type": "object"},
                       "timestamp": {"type": "string", "format": "date-time",
                                     "description": "An imported event's own time, kept instead of the commit "
                                                    "time (RFC 3339; under --auth, an admin token's)"}}}
    many_item = {**batch_item, "required": ["entity", "type", "event"],
                 "properties": {"entity": NAME, **batch_item["properties"]}}
    schemas = {
        "Event": event_object,
        "Appended": appended,
        "AppendedBatch": {"type": "object", "required": ["events"], "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Appended"}}}},
        "AppendedMany": {"type": "object", "required": ["events"], "properties": {
            "events": {"type": "array", "items": appended_one_of_many, "description": "In the order sent."}}},
        "Page": {"type": "object", "required": ["events", "next"],
                 "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                                "next": {"oneOf": [UUID, {"type": "null"}]}}},
        "Keys": {"type": "object", "required": ["keys", "next"],
                 "properties": {"keys": {"type": "array", "items": {"type": "string"}},
                                "next": {"type": ["string", "null"]}}},
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                   "status": {"type": "integer"}, "detail": {"type": "string"},
                                   "current_version": {"type": "integer"},
                                   "expected_version": {"type": "integer"},
                                   "parameter": {"type": "string"},
                                   "backend": {"type": "string"},
                                   "event_id": {**UUID, "description": "the id a 409 event-id-conflict names"},
                                   **{limit: {"type": "integer", "description": f"the limit refused ({why})"}
                                      for limit, why in _LIMIT_FIELDS},
                                   "body_timeout": {"type": "number", "description": "the limit refused (408)"},
                                   "settings": {"type": "object",
                                                "description": "a group's settings (409 group-conflict)"},
                                   "conflicts": {"type": "array", "items": {
                                       "type": "object",
                                       "required": ["entity", "expected_version", "current_version"],
                                       "properties": {"entity": {"type": "string"},
                                                      "expected_version": {"type": "integer"},
                                                      "current_version": {"type": "integer"}}}}}},
        "AppendRequest": {"type": "object", "required": ["event"], "additionalProperties": False,
                          "properties": {"event": EVENT_VALUE, "event_id": UUID,
                                         "meta": {"type": "object"}, "expected_version": expected}},
        "BatchRequest": {"type": "object", "required": ["events"], "additionalProperties": False,
                         "properties": {
                             "events": {"type": "array", "minItems": 1, "maxItems": batch_items, "items": batch_item},
                             "expected_version": expected}},
        "ManyRequest": {"type": "object", "required": ["events"], "additionalProperties": False,
                        "properties": {
                            "events": {"type": "array", "minItems": 1, "maxItems": batch_items, "items": many_item},
                            "expected_versions": {
                                "type": "object", "maxProperties": MAX_BATCH,
                                "propertyNames": NAME,
                                "additionalProperties": expected,
                                "description": "Entity to expected version, for any entities of the "
                                               "domain (with or without events here)."}}},
        "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
        **_group_schemas(position, event_object),
    }
    paths = _paths()
    if not metrics:
        paths = {path: item for path, item in paths.items() if path != "/_metrics"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "perhap", "version": "0.1.0",
                 "description": "An immutable, DDD-inspired event store: realm > domain > entity > type > event."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Needed when the server runs with --auth; without it, no token is needed."}}},
        # Either a token or none: which one applies depends on how the server was started.
        "security": [{"bearer": []}, {}],
    }
