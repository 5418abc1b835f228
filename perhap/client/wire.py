"""The API's wire forms on the client side: URL paths of scopes, and response bodies parsed into the
store's own value types (:class:`~perhap.model.Event`, :class:`~perhap.model.Appended`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ..errors import InvalidInput
from ..jsoncodec import dump_json, load_json
from ..model import Appended, Event, Scope
from .errors import error_from_response, unexpected


def json_body(response: httpx.Response) -> Any:
    """The JSON body of a successful response; the typed error of an unsuccessful one."""
    if response.status_code >= 400:
        raise error_from_response(response)
    try:
        return load_json(response.content)
    except (orjson.JSONDecodeError, InvalidInput):
        raise unexpected(response, "the body is not JSON (is this a perhap server?)") from None


def event_from_dict(item: Mapping[str, Any]) -> Event:
    """An :class:`~perhap.model.Event` from its wire form (a dict as the API returns it)."""
    return Event(item["event_id"], item["realm"], item["domain"], item["entity"], item["type"],
                 item["version"], item["timestamp"], dump_json(item["event"], "event"),
                 dump_json(item["meta"], "meta"))


def appended_from_dict(item: Mapping[str, Any]) -> Appended:
    """An :class:`~perhap.model.Appended` from an append's answer."""
    return Appended(item["event_id"], item["version"], item["timestamp"])


def path(*names: str) -> str:
    """The URL path of names, each percent-encoded (so a name never adds a segment)."""
    return "/" + "/".join(quote(n, safe="") for n in names)


def resolve_scope(realm: object, domain: str | None, entity: str | None, type: str | None) -> Scope:
    """A Scope from arguments, a Scope, or a 'realm/domain/entity/type' path (names have no '/')."""
    if isinstance(realm, Scope):
        if (domain, entity, type) != (None, None, None):
            raise InvalidInput("give a Scope or names, not both")
        return realm
    if not isinstance(realm, str):
        raise InvalidInput("realm must be a string (or a Scope)")
    if "/" in realm and domain is None and entity is None:
        scope = Scope.parse(realm)
        if type is not None:
            if scope.type is not None:
                raise InvalidInput("the scope names a type already")
            scope = Scope(scope.realm, scope.domain, scope.entity, type)
        return scope
    return Scope(realm, domain, entity, type)


def scope_request(scope: Scope) -> tuple[str, dict[str, str]]:
    """The path and query of a scope's read (an entity's type is a path segment, else a parameter)."""
    names = [n for n in (scope.realm, scope.domain, scope.entity) if n is not None]
    if scope.entity is not None and scope.type is not None:
        return path(*names, scope.type), {}
    return path(*names), ({"type": scope.type} if scope.type else {})
