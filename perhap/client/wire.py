"""The API's wire forms on the client side: URL paths of scopes, and response bodies parsed into the
store's own value types (:class:`~perhap.model.Event`, :class:`~perhap.model.Appended`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx
import orjson

from ..errors import InvalidInput
from ..jsoncodec import dump_json, load_json
from ..model import Appended, Event, Scope
from ..store.query import ReadQuery
from .errors import error_from_response, unexpected

#: A request's query parameters, in order; a name may repeat (``type``).
Params: TypeAlias = list[tuple[str, str]]


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
                 dump_json(item["meta"], "meta"), item["position"])


def appended_from_dict(item: Mapping[str, Any]) -> Appended:
    """An :class:`~perhap.model.Appended` from an append's answer (``entity`` in multi-entity results);
    TypeError or KeyError when ``item`` is not such an answer (what the parsers turn into "unexpected")."""
    if not isinstance(item, Mapping):
        raise TypeError("an append's result is not an object")
    entity = item.get("entity")
    if entity is not None and not isinstance(entity, str):
        raise TypeError("entity is not a string")
    return Appended(item["event_id"], item["version"], item["position"], item["timestamp"], entity)


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


def read_request(scope: Scope, query: ReadQuery) -> tuple[str, Params]:
    """The path and query of a checked read: an entity's one type is a path segment, other types
    are repeated ``type`` parameters; bounds and order as the API names them."""
    names = [n for n in (scope.realm, scope.domain, scope.entity) if n is not None]
    if scope.entity is not None and scope.type is not None:
        where, params = path(*names, scope.type), []
    else:
        where, params = path(*names), [("type", t) for t in query.types]
    if query.descending:
        params.append(("order", "desc"))
    if query.after_position is not None:
        params.append(("after_position", str(query.after_position)))
    if query.before_position is not None:
        params.append(("before_position", str(query.before_position)))
    # In an entity scope the query's cursor bounds are versions: after_version, until_version + 1.
    if isinstance(query.after, int):
        params.append(("after_version", str(query.after)))
    if isinstance(query.before, int):
        params.append(("until_version", str(query.before - 1)))
    return where, params


def without(params: Params, *names: str) -> Params:
    """The parameters less every one named."""
    return [(k, v) for k, v in params if k not in names]
