"""A subscription's state between reconnects, shared by both clients: which request to (re)send,
SSE decoding, the resume point and the backoff. The clients only send, iterate and sleep."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx
import orjson

from ..errors import InvalidInput
from ..jsoncodec import load_json
from ..model import Event
from ..sse import SSEDecoder
from .errors import ConnectionFailed, PerhapClientError, Unavailable, error_from_response, unexpected, unreachable
from .wire import event_from_dict

#: Streams carry a keep-alive comment every 15 s by default; silence this long means a dead link.
STREAM_IDLE_TIMEOUT = 60.0

#: Builds the stream's request with these extra headers.
RequestFactory = Callable[[Mapping[str, str]], httpx.Request]
#: ``on_retry(error, delay)``: called before each wait to reconnect.
RetryHook = Callable[[Exception, float], None]


def stream_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """The client's timeout, with a read timeout long enough to outlast the keep-alive interval."""
    return httpx.Timeout(timeout.connect, read=max(timeout.read or 0, STREAM_IDLE_TIMEOUT),
                         write=timeout.write, pool=timeout.pool)


#: A stream that stayed open this long (the longest wait between reconnects) before it ended begins
#: a new run of failures: ``max_retries`` bounds failures in a row, and it was no failure.
STEADY_STREAM = 5.0

#: Answers a reconnect waits out (besides 503, which is retried whenever it comes).
_PASSING_ON_RECONNECT = frozenset({429, 502, 504})


class StreamState:
    """One subscription's reconnect state: the request to (re)send, SSE decoding, backoff."""

    def __init__(self, build: RequestFactory, path: str, following: str | None,
                 max_retries: int | None, on_retry: RetryHook | None) -> None:
        self.build = build
        self.path = path
        self.last_id = following
        self.max_retries = max_retries
        self.on_retry = on_retry
        self.failures = 0
        self.decoder = SSEDecoder()
        self.was_open = False  # a stream was served once: answers while getting it back are passing
        self.opened_at: float | None = None  # when the stream now open was (monotonic)

    def request(self) -> httpx.Request:
        """The request to send now: it resumes after the last event yielded."""
        headers = {"accept": "text/event-stream"}
        if self.last_id is not None:
            # The server resumes after this id (it wins over `following`): nothing is seen twice.
            headers["last-event-id"] = self.last_id
        return self.build(headers)

    def opened(self, response: httpx.Response) -> Exception | None:
        """After an error response's body was read: raise, or return a retryable error (503)."""
        if response.status_code == 200:
            # Not an event stream (a page of HTML, a proxy's answer): no reconnect would make it one.
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise unexpected(response, "not an event stream (is this a perhap server?)")
            # A 200 alone is no success: a server that answers and closes at once would reset the
            # count at every try (max_retries never reached, no backoff). Events reset it, and so
            # does a stream that stayed open (retry_delay).
            self.decoder = SSEDecoder()
            self.was_open = True
            self.opened_at = time.monotonic()
            return None
        error = error_from_response(response)
        if isinstance(error, Unavailable):
            return error
        # Getting a dropped stream back: the server may still count the old one against its limit
        # (429) until it notices it gone, and a proxy answers 502 or 504 while the server restarts.
        if self.was_open and response.status_code in _PASSING_ON_RECONNECT:
            return error
        raise error

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by this chunk of the stream, never one yielded before."""
        events = []
        try:
            messages = self.decoder.feed(chunk)
        except UnicodeDecodeError:  # a stream is UTF-8: this is no perhap server's (or a proxy mangled it)
            raise PerhapClientError(f"unexpected data in the stream from {self.path}: not UTF-8") from None
        for message in messages:
            if message.data is None:
                continue
            try:
                event = event_from_dict(load_json(message.data.encode("utf-8")))
            except (orjson.JSONDecodeError, KeyError, TypeError, InvalidInput):
                raise PerhapClientError(f"unexpected data in the stream from {self.path}") from None
            if event.event_id == self.last_id:
                continue  # defensive: never yield the resume point itself again
            self.last_id = event.event_id
            events.append(event)
        if events:
            self.failures = 0
        return events

    def retry_delay(self, error: Exception) -> float:
        """Seconds to wait before reconnecting; raises once ``max_retries`` failures in a row, a
        transport's failure put in the client's own words ("cannot reach ...", "no answer from
        ..."), the same from both clients. (``on_retry`` gets the failure as it came: its callers
        tell a timeout from a refusal by the transport's own classes.)"""
        if self.opened_at is not None and time.monotonic() - self.opened_at >= STEADY_STREAM:
            self.failures = 0
        self.opened_at = None
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            if isinstance(error, httpx.TransportError):
                error = unreachable(_request_of(error) or self.request(), error)
            if isinstance(error, PerhapClientError) and not isinstance(error, ConnectionFailed):
                raise error
            raise ConnectionFailed(f"the stream of {self.path} failed {self.failures} times: {error}",
                                   url=error.url if isinstance(error, PerhapClientError) else None)
        delay = min(0.1 * 2.0 ** (self.failures - 1), 5.0)
        if self.on_retry is not None:
            self.on_retry(error, delay)
        return delay


def _request_of(error: httpx.TransportError) -> httpx.Request | None:
    try:
        return error.request
    except RuntimeError:  # (httpx raises when the error was made without one)
        return None
