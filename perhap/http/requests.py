"""What a handler is given: the request (names, query, headers, JSON body) and the app's context."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ..auth import Authenticator, Grant
from ..errors import InvalidInput
from ..jsoncodec import load_json
from ..limits import check_depth
from ..model import DEFAULT_LIMIT, MAX_LIMIT, check_name
from ..store.base import Store
from .metrics import Metrics
from .responses import HTTPProblem
from .streaming import StreamRegistry
from .types import Receive, Scope, Send

_INT = re.compile(r"-?[0-9]{1,12}")
_CHALLENGE = [(b"www-authenticate", b"Bearer")]


@dataclass(frozen=True, slots=True, eq=False)
class Context:
    """What every handler of one app shares; made once the store is open."""

    store: Store
    max_body: int
    max_batch: int
    max_depth: int
    metrics: Metrics | None
    streams: StreamRegistry


class Request:
    """One request as a handler sees it: its method, decoded path names, query and token grant."""

    __slots__ = ("scope", "receive", "method", "names", "query", "grant")

    def __init__(self, scope: Scope, receive: Receive, method: str, names: list[str],
                 query: dict[str, str], grant: Grant | None) -> None:
        self.scope, self.receive, self.method = scope, receive, method
        self.names, self.query, self.grant = names, query, grant

    def wants_stream(self) -> bool:
        accept = header(self.scope, b"accept")
        return accept is not None and "text/event-stream" in accept


Handler = Callable[[Context, Request, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def parse_query(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    try:
        return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the query string is not valid percent-encoded UTF-8") from None


def page_limit(query: dict[str, str]) -> int:
    text = query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not _INT.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {text[:20]!r}")
    return int(text)


def type_filter(query: dict[str, str]) -> str | None:
    value = query.get("type")
    return None if value is None else check_name(value, "type")


# --------------------------------------------------------------------------- tokens


def authenticate(auth: Authenticator, scope: Scope) -> Grant:
    """The grant of the request's bearer token, or 401."""
    grant = auth.authenticate(scope.get("headers", ()))
    if grant is None:
        # Never echo the token: a client may have pasted a secret in the wrong place.
        detail = ("the bearer token is not valid (unknown or revoked)" if header(scope, b"authorization")
                  else "this route needs a bearer token: Authorization: Bearer TOKEN")
        raise HTTPProblem(401, detail, "unauthorized", headers=_CHALLENGE)
    return grant


def authorize(grant: Grant | None, realm: str | None, permission: str) -> None:
    """403 unless the grant (None: no --auth) allows ``permission`` on ``realm`` (None: any)."""
    if grant is not None and not grant.allows(realm, permission):
        where = f"realm {realm!r}" if realm is not None else "this server"
        raise HTTPProblem(403, f"this token may not {permission} {where}", "forbidden")


# --------------------------------------------------------------------------- the body


async def read_json_object(request: Request, max_body: int, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object: at most ``max_body`` bytes (413), nested at most ``max_depth``."""
    declared = header(request.scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise HTTPProblem(413, f"the body is larger than the limit of {max_body} bytes", max_body=max_body)
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(400, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise HTTPProblem(413, f"the body is larger than the limit of {max_body} bytes", max_body=max_body)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInput("the body is empty; send a JSON object")
    try:
        body = load_json(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    check_depth(raw, body, max_depth)
    return body
