"""The OpenAPI 3.1 document of the HTTP API, served at /_openapi.json.

Written by hand from the same limits the code enforces (names, limits, body shapes), precise enough
for a schema-driven fuzzer: every parameter and body has a schema, every response a status.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .store import MAX_BATCH, MAX_LIMIT, MAX_VERSION

# 'keys' is excluded by the pattern (not by "not": some generators ignore "not" in parameters).
NAME = {"type": "string", "minLength": 1, "maxLength": 255,
        "pattern": "^(?!keys$)[^/\\x00-\\x1f\\x7f-\\x9f]+$"}
REALM = {**NAME, "pattern": "^(?!keys$)[^_/\\x00-\\x1f\\x7f-\\x9f][^/\\x00-\\x1f\\x7f-\\x9f]*$"}
UUID = {"type": "string", "format": "uuid"}


def _param(name: str, where: str, schema: dict[str, Any], description: str,
           required: bool | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path" if required is None else required,
            "schema": schema, "description": description}


P_REALM = _param("realm", "path", REALM, "Realm name (names starting with '_' are reserved).")
P_DOMAIN = _param("domain", "path", NAME, "Domain name.")
P_ENTITY = _param("entity", "path", NAME, "Entity (aggregate root) name.")
P_TYPE = _param("type", "path", NAME, "Event type.")
Q_FOLLOWING = _param("following", "query", UUID, "Only events after this event id in the scope's order.")
Q_LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 1000},
                 "Page size.")
Q_TYPE = _param("type", "query", NAME, "Only events of this type.")
Q_AFTER = _param("after", "query", {"type": "string"}, "Only names sorting after this one.")
H_LAST_ID = _param("Last-Event-ID", "header", UUID,
                   "With Accept: text/event-stream: resume after this event (wins over following).",
                   required=False)


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _read(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {
        "summary": summary,
        "description": "JSON page of events; with `Accept: text/event-stream` a live SSE stream "
                       "(catch-up after `following` or `Last-Event-ID`, then new events).",
        "parameters": [*params, Q_FOLLOWING, Q_LIMIT, H_LAST_ID],
        "responses": {
            "200": {"description": "A page of events, or an SSE stream",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            "400": _problem("Bad name or parameter"),
            "404": _problem("`following` is not an event of this scope"),
            "503": _problem("Storage unavailable")}}}


def _read_or_event(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    op = _read(summary, params)
    op["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "oneOf": [{"$ref": "#/components/schemas/Page"}, {"$ref": "#/components/schemas/Event"}]}
    return op


def _keys(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": [*params, Q_AFTER, Q_LIMIT],
                    "responses": {"200": _json("Keys", "Sorted names, paged with after"),
                                  "400": _problem("Bad name or parameter"),
                                  "503": _problem("Storage unavailable")}}}


def _append_responses(ok: str) -> dict[str, Any]:
    return {"201": _json(ok, "Stored durably"),
            "200": _json(ok, "Idempotent retry: already stored, the original result"),
            "400": _problem("Malformed body, bad name or value"),
            "409": _problem("Version conflict (with current_version) or event_id reused"),
            "413": _problem("Body over the size limit, or a batch over the batch limit"),
            "503": _problem("Storage unavailable")}


@cache
def openapi_document() -> dict[str, Any]:
    event_object = {
        "type": "object",
        "required": ["event_id", "realm", "domain", "entity", "type", "event", "meta", "version", "timestamp"],
        "properties": {"event_id": UUID, "realm": {"type": "string"}, "domain": {"type": "string"},
                       "entity": {"type": "string"}, "type": {"type": "string"}, "event": {},
                       "meta": {"type": "object"}, "version": {"type": "integer", "minimum": 0},
                       "timestamp": {"type": "string", "format": "date-time"}}}
    appended = {"type": "object", "required": ["event_id", "version", "timestamp"],
                "properties": {"event_id": UUID, "version": {"type": "integer", "minimum": 0},
                               "timestamp": {"type": "string", "format": "date-time"}}}
    expected = {"type": ["integer", "null"], "minimum": -1, "maximum": MAX_VERSION,
                "description": "The entity's current version must equal this (-1: no events yet)."}
    schemas = {
        "Event": event_object,
        "Appended": appended,
        "AppendedBatch": {"type": "object", "required": ["events"],
                          "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Appended"}}}},
        "Page": {"type": "object", "required": ["events", "next"],
                 "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                                "next": {"oneOf": [UUID, {"type": "null"}]}}},
        "Keys": {"type": "object", "required": ["keys", "next"],
                 "properties": {"keys": {"type": "array", "items": {"type": "string"}},
                                "next": {"type": ["string", "null"]}}},
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                   "status": {"type": "integer"}, "detail": {"type": "string"},
                                   "current_version": {"type": "integer"}}},
        "AppendRequest": {"type": "object", "required": ["event"], "additionalProperties": False,
                          "properties": {"event": {}, "event_id": {"oneOf": [UUID, {"type": "null"}]},
                                         "meta": {"type": "object"}, "expected_version": expected}},
        "BatchRequest": {"type": "object", "required": ["events"], "additionalProperties": False,
                         "properties": {
                             "events": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {
                                 "type": "object", "required": ["type", "event"], "additionalProperties": False,
                                 "properties": {"type": NAME, "event": {}, "event_id": UUID,
                                                "meta": {"type": "object"}}}},
                             "expected_version": expected}},
        "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
    }
    paths: dict[str, Any] = {
        "/_health": {"get": {"summary": "Health", "responses": {
            "200": _json("Health", "The store answers"), "503": _problem("The store does not answer")}}},
        "/_openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/keys": _keys("List realms", []),
        "/{realm}": _read("Every event of a realm, in commit order", [P_REALM, Q_TYPE]),
        "/{realm}/keys": _keys("List a realm's domains", [P_REALM]),
        "/{realm}/{domain}": _read("Every event of a domain, in commit order", [P_REALM, P_DOMAIN, Q_TYPE]),
        "/{realm}/{domain}/keys": _keys("List a domain's entities", [P_REALM, P_DOMAIN]),
        "/{realm}/{domain}/{entity}": {
            **_read_or_event("An entity's events in version order; or one event when {entity} is an event id "
                    "of this realm and domain", [P_REALM, P_DOMAIN, P_ENTITY, Q_TYPE]),
            "post": {"summary": "Append a batch to one entity, atomically",
                     "parameters": [P_REALM, P_DOMAIN, P_ENTITY],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/BatchRequest"}}}},
                     "responses": _append_responses("AppendedBatch")}},
        "/{realm}/{domain}/{entity}/keys": _keys("List an entity's event types", [P_REALM, P_DOMAIN, P_ENTITY]),
        "/{realm}/{domain}/{entity}/{type}": {
            **_read("An entity's events of one type", [P_REALM, P_DOMAIN, P_ENTITY, P_TYPE]),
            "post": {"summary": "Append one event",
                     "parameters": [P_REALM, P_DOMAIN, P_ENTITY, P_TYPE],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/AppendRequest"}}}},
                     "responses": _append_responses("Appended")}},
    }
    paths["/_metrics"] = {"get": {"summary": "Prometheus metrics (an admin token with --auth)", "responses": {
        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": _problem("No or unknown bearer token (with --auth)"),
        "403": _problem("The token is not an admin token")}}}
    open_paths = {"/_health", "/_openapi.json"}
    # Every operation may also answer these, whatever its parameters.
    for path, item in paths.items():
        for method, op in item.items():
            responses = op["responses"]
            responses.setdefault("405", _problem("Method not allowed"))
            if path in open_paths:
                op["security"] = []
                continue
            responses.setdefault("401", _problem("No or unknown bearer token (with --auth)"))
            responses.setdefault("403", _problem("The token may not do this on this realm"))
            if method == "get" and path != "/_metrics" and "keys" not in path:
                responses.setdefault("429", _problem("Too many open streams (with Accept: text/event-stream)"))
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
