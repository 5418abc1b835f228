"""Every limit the server enforces, named once: bodies, batches, JSON nesting, streams, headers.

The defaults here are what ``perhap serve`` and :class:`~perhap.http.app.PerhapApp` use unless told
otherwise. Each refusal is a PerhapError, so the app answers it as problem+json like every other error.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput, PerhapError
from .model import MAX_BATCH

# Requests
DEFAULT_MAX_BODY = 1024 * 1024  # bytes; larger is 413
DEFAULT_MAX_BATCH = MAX_BATCH  # events in one batch append; more is 413
DEFAULT_MAX_DEPTH = 64  # JSON nesting, the body object being level 1; deeper is 400
# Reads
DEFAULT_MAX_PAGE_BYTES = 16 * 1024 * 1024  # data and meta in one JSON page (one event at least); then `next`
# Streams
DEFAULT_MAX_STREAMS = 1000  # open at once in one process; more is 429
DEFAULT_MAX_STREAMS_PER_TOKEN = 100
DEFAULT_HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle stream
DEFAULT_STREAM_BUFFER = 1024 * 1024  # bytes of events one stream sends at once (one event at least)
DEFAULT_WRITE_TIMEOUT = 60.0  # seconds a stream's client may leave a write unread; then the stream ends
# The listener (uvicorn)
DEFAULT_MAX_HEADER = 64 * 1024  # bytes of request line and headers; more is 431
MIN_MAX_HEADER = 1024  # below it, a browser's or a client's usual headers alone are a 431
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds to send them; a slower client is disconnected
DEFAULT_BODY_TIMEOUT = 30.0  # seconds after the headers to send the whole body; a slower one is 408
DEFAULT_MAX_CONNECTIONS = 2048  # open connections served per process; a request on one beyond is answered 503
DEFAULT_IDLE_TIMEOUT = 5.0  # seconds a keep-alive connection may stay idle
DEFAULT_GRACEFUL_SHUTDOWN = 30  # seconds in-flight requests get to finish on shutdown


class BatchTooLarge(PerhapError):
    status, slug, title = 413, "batch-too-large", "Batch too large"


class TooDeep(InvalidInput):
    slug, title = "too-deep", "JSON nested too deeply"


class TooManyStreams(PerhapError):
    status, slug, title = 429, "too-many-streams", "Too many open streams"


#: How deep the JSON parsers nest (orjson's own limit; the stdlib's recursion stops near it): a
#: body deeper than this is refused by the parser before check_depth could count it.
PARSER_MAX_DEPTH = 1024


def too_deep(limit: int, wrapped: int = 0) -> TooDeep:
    """The refusal of a body deeper than ``limit`` (``--max-depth``), plus the ``wrapped`` levels a
    batch's list and items add around each event, which are not counted against it."""
    beside = f" (an event counts as in a single append: the batch's {wrapped} levels around it are not counted)"
    return TooDeep(f"the JSON is nested deeper than the limit of {limit} levels" + (beside if wrapped else ""),
                   max_depth=limit)


def parser_gave_up_on_depth(exc: ValueError, limit: int) -> bool:
    """Whether a parse failed on nesting alone, deeper than ``limit``: then the body is too deep
    (``too-deep``), whatever else it may hold, rather than merely not JSON."""
    text = str(exc)
    return limit < PARSER_MAX_DEPTH and ("depth limit exceeded" in text or "maximum recursion depth" in text)


def check_depth(raw: bytes, value: Any, limit: int, wrapped: int = 0) -> None:
    """Refuse JSON nested deeper than ``limit`` (the body object itself is depth 1), plus the
    ``wrapped`` levels a batch puts around each event (see :func:`too_deep`)."""
    most = limit + wrapped
    # Counting brackets is C-fast and settles almost every body without walking it.
    if raw.count(b"[") + raw.count(b"{") <= most:
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > most:
            raise too_deep(limit, wrapped)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


class StreamLimiter:
    """Counts open streams, in total and per token.

    A slot is taken by :meth:`reserve` before the stream's first await (resolving its start may
    need a database round trip) and given back by :meth:`release`: a burst of streams can never
    open more than the limit between the check and the count.
    """

    def __init__(self, total: int, per_token: int) -> None:
        self.total, self.per_token = total, per_token
        self.open = 0  # streams holding a slot: starting or streaming
        self.by_token: dict[str, int] = {}

    def reserve(self, token_id: str | None) -> None:
        """Take a slot for a new stream, or raise TooManyStreams (429)."""
        if self.open >= self.total:
            raise TooManyStreams(f"the server has {self.total} streams open, its limit; retry later",
                                 max_streams=self.total)
        if token_id is not None:
            held = self.by_token.get(token_id, 0)
            if held >= self.per_token:
                raise TooManyStreams(f"this token has {self.per_token} streams open, its limit; "
                                     "close one first", max_streams_per_token=self.per_token)
            self.by_token[token_id] = held + 1
        self.open += 1

    def release(self, token_id: str | None) -> None:
        """Give back the slot :meth:`reserve` took."""
        self.open -= 1
        if token_id is not None:
            left = self.by_token.get(token_id, 1) - 1
            if left > 0:
                self.by_token[token_id] = left
            else:
                self.by_token.pop(token_id, None)
