"""Request limits beyond the body size: batch size, JSON nesting depth, open streams.

Each refusal is a PerhapError, so the app answers it as problem+json like every other error.
"""

from __future__ import annotations

from typing import Any

from .store import MAX_BATCH, InvalidInput, PerhapError

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_STREAMS = 1000
DEFAULT_MAX_STREAMS_PER_TOKEN = 100
DEFAULT_MAX_BATCH = MAX_BATCH


class BatchTooLarge(PerhapError):
    status, slug, title = 413, "batch-too-large", "Batch too large"


class TooDeep(InvalidInput):
    slug, title = "too-deep", "JSON nested too deeply"


class TooManyStreams(PerhapError):
    status, slug, title = 429, "too-many-streams", "Too many open streams"


def check_depth(raw: bytes, value: Any, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` (the body object itself is depth 1)."""
    # Counting brackets is C-fast and settles almost every body without walking it.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise TooDeep(f"the JSON is nested deeper than the limit of {limit} levels", max_depth=limit)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


class StreamLimiter:
    """Counts open streams per token; the total is the app's own ``open_streams``."""

    def __init__(self, total: int, per_token: int) -> None:
        self.total, self.per_token = total, per_token
        self.by_token: dict[str, int] = {}

    def reserve(self, open_now: int, token_id: str | None) -> None:
        if open_now >= self.total:
            raise TooManyStreams(f"the server has {self.total} streams open, its limit; retry later",
                                 max_streams=self.total)
        if token_id is not None:
            held = self.by_token.get(token_id, 0)
            if held >= self.per_token:
                raise TooManyStreams(f"this token has {self.per_token} streams open, its limit; "
                                     "close one first", max_streams_per_token=self.per_token)
            self.by_token[token_id] = held + 1

    def release(self, token_id: str | None) -> None:
        if token_id is not None:
            left = self.by_token.get(token_id, 1) - 1
            if left > 0:
                self.by_token[token_id] = left
            else:
                self.by_token.pop(token_id, None)


# --------------------------------------------------------------------------- the HTTP listener

DEFAULT_MAX_HEADER = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0


class _HeadersTooLarge(Exception):
    pass


def limited_protocol(max_header: int = DEFAULT_MAX_HEADER, header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> Any:
    """uvicorn's httptools protocol, plus what it lacks: a cap on the request line and headers
    (431 problem+json; httptools alone takes any size) and a deadline to finish sending them
    (a slowloris client is disconnected instead of holding a connection slot for ever)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, whose own cap on incomplete headers answers a plain 400
        return "auto"
    import orjson

    body = orjson.dumps({"type": "urn:perhap:problem:headers-too-large",
                         "title": "Request Header Fields Too Large", "status": 431,
                         "detail": f"the request line and headers exceed the limit of {max_header} bytes",
                         "max_header": max_header})
    response = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)

    class LimitedHttpTools(HttpToolsProtocol):  # type: ignore[misc]
        _header_bytes = 0
        _too_large = False
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._deadline is None:
                self._arm()

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header:
                self._too_large = True
                raise _HeadersTooLarge

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                return super().send_400_response(msg)  # type: ignore[no-any-return]
            self.transport.write(response)
            self.transport.close()

    return LimitedHttpTools
