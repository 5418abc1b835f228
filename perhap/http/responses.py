"""Every response body the HTTP layer builds: JSON, and RFC 9457 problem+json (built only here)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import NotFound, hide_tokens
from .types import Headers, Send

JSON = [(b"content-type", b"application/json")]
PROBLEM = [(b"content-type", b"application/problem+json")]
# Every JSON body ends with a newline: a terminal's prompt then starts on its own line after curl,
# and line-oriented tools (jq -c, wc -l, grep) see one complete line. Parsers ignore it; it costs a byte.
_NEWLINE = orjson.OPT_APPEND_NEWLINE
# (404's type is not-found whoever answers: a route, or the store's NotFound, so one title for both.)
STATUS_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: NotFound.title,
                 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
                 429: "Too Many Requests", 431: "Request Header Fields Too Large",
                 500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}
# An entity tag's opaque part inside If-None-Match, with or without the weak prefix W/.
_TAG = re.compile(r'(?:W/)?"([^"]*)"')


class HTTPProblem(Exception):
    """An error of the HTTP layer itself (no route, wrong method, no token ...): one problem+json."""

    def __init__(self, status: int, detail: str, slug: str | None = None,
                 headers: Headers | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra
        self.title = STATUS_TITLES.get(status, "Error")
        self.slug = slug or STATUS_TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or []


def problem_body(status: int, slug: str, title: str, detail: str, extra: dict[str, Any]) -> bytes:
    """The problem+json document: type, title, status, detail, then any extra members."""
    body = {"type": f"urn:perhap:problem:{slug}", "title": title, "status": status, "detail": detail}
    body.update(extra)
    # A client that put its token where no token goes (`?perhap_...`, an event_id, a realm) is told
    # what was wrong without the token in the answer (which proxies and clients may log).
    try:
        raw = orjson.dumps(body, option=_NEWLINE)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits (an expected_version) or half a surrogate pair (a key) that the
        # request gave: escaped, the answer is still JSON (dump_json refuses what it cannot store).
        raw = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    return hide_tokens(raw)


async def send_body(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """A complete response: ``headers`` (content type first), then content-length, in two messages."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, value: Any, headers: Headers | None = None) -> None:
    body = orjson.dumps(value, option=_NEWLINE)
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), *(headers or ())]})
    await send({"type": "http.response.body", "body": body})


def entity_tag(body: bytes) -> bytes:
    """A strong ETag for a body: a digest of its bytes, so it changes exactly when the body does.

    SHA-256 (cut to 128 bits) rather than a cheaper checksum: a collision would serve a stale
    page as current, and with hardware SHA it costs one or two microseconds per kilobyte.
    """
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def none_match(if_none_match: str, tag: bytes) -> bool:
    """Whether an If-None-Match header matches ``tag`` (RFC 9110 13.1.2: ``*``, or any listed tag,
    compared weakly: ``W/"x"`` matches ``"x"``). A malformed header matches nothing."""
    if if_none_match.strip() == "*":
        return True
    opaque = tag[1:-1].decode()
    return any(found == opaque for found in _TAG.findall(if_none_match))


async def send_tagged(send: Send, body: bytes, tag: bytes, if_none_match: str | None,
                      extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON 200 with its ETag, or a bodiless 304 when the client holds that representation;
    ``extra`` headers go with either."""
    if if_none_match is not None and none_match(if_none_match, tag):
        # 304 carries the validator it confirms, and no content headers (RFC 9110 15.4.5).
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", tag), *extra]})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), (b"etag", tag), *extra]})
    await send({"type": "http.response.body", "body": body})


def json_bytes(value: Any) -> bytes:
    """A JSON body as every response sends it (with its trailing newline)."""
    return orjson.dumps(value, option=_NEWLINE)


async def send_problem(send: Send, status: int, slug: str, title: str, detail: str,
                       extra: dict[str, Any], headers: Headers | None = None) -> None:
    body = problem_body(status, slug, title, detail, extra)
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*PROBLEM, (b"content-length", str(len(body)).encode()), *(headers or ())]})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # the response had started already (a stream): nothing more to say
        pass
