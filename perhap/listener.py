"""The HTTP listener: uvicorn's httptools protocol with the limits it lacks (the size of a head and
the time to send it, the time for a body, a client that stops reading) and a way for the app to
close a connection at once; every refusal a problem+json answer, as the app's own are."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
from typing import Any

from .http.connection import ABORT_EXTENSION, TIMED_HERE, still_reading
from .http.observer import LISTENER_BYTES, LISTENER_STATUS
from .http.responses import STATUS_TITLES, problem_body
from .limits import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER, DEFAULT_WRITE_TIMEOUT

log = logging.getLogger("perhap.listener")


class _HeadersTooLarge(Exception):
    pass


#: Seconds a connection the listener closed (a deadline passed) may take to go; then it is cut.
CLOSE_GRACE = 1.0
#: What a request line and head hold beside the method, the URL and the headers: " ", " HTTP/1.1",
#: CRLF, and the CRLF of the blank line. (A header counts its name, value and ": " CRLF.)
_REQUEST_LINE_FRAME = 1 + 9 + 2 + 2
#: SO_LINGER on, for 0 seconds: close() resets the connection and drops the unsent bytes.
_LINGER_NONE = struct.pack("ii", 1, 0)
try:  # The ioctl that gives a socket's send queue in bytes (Linux's SIOCOUTQ, which is TIOCOUTQ).
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
except ImportError:  # not Unix: a write's time alone judges a client
    _OUTQ = None


def limited_protocol(max_header: int = DEFAULT_MAX_HEADER, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                     body_timeout: float = DEFAULT_BODY_TIMEOUT,
                     write_timeout: float | None = DEFAULT_WRITE_TIMEOUT, max_body: int | None = None) -> Any:
    """uvicorn's httptools protocol, plus what it lacks: a cap on the request line and headers
    (431 problem+json; httptools alone takes any size), a deadline to finish sending them (a
    slowloris client is disconnected instead of holding a connection slot for ever), a deadline
    for the body after them (408 problem+json, then the connection is closed), and a way for the
    app to close a connection at once (the ``perhap.abort`` scope extension, for stalled streams),
    and a deadline for a client that stops reading: once the transport's buffer is over its high
    mark, a response left unread for ``write_timeout`` seconds (None: never) ends the connection,
    so a client asking for a large page it never reads cannot hold a slot for ever (a stream's
    response is left to the app, which times its own writes: see ``abort_hook``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, whose own cap on incomplete headers answers a plain 400
        return "auto"
    too_large_body = problem_body(431, "headers-too-large", STATUS_TITLES[431],
                                  f"the request line and headers exceed the limit of {max_header} bytes",
                                  {"max_header": max_header})
    too_large = _problem_response(b"431 Request Header Fields Too Large", too_large_body)
    slow_body = problem_body(408, "body-timeout", "Request Timeout",
                             f"the body did not arrive within {body_timeout:g} s of the headers",
                             {"body_timeout": body_timeout})
    too_slow = _problem_response(b"408 Request Timeout", slow_body)
    overflow_body = problem_body(413, "content-too-large", STATUS_TITLES[413],
                                 "the Content-Length is larger than any body this server takes (see --max-body)",
                                 {} if max_body is None else {"max_body": max_body})
    overflow = _problem_response(b"413 Content Too Large", overflow_body)
    short_body = body_timeout < header_timeout

    class LimitedHttpTools(HttpToolsProtocol):
        _header_bytes = 0
        _method_counted = False
        _in_head = True  # until a request's headers are complete, and again after its last byte
        _in_message = False
        _raw_head = 0  # bytes of reads that ended inside a head (or between requests)
        _head_seen = False  # a byte of the current head (not a blank line before it) has come
        _head_tail = b""  # the last bytes of a head not ended yet, where its end may begin
        _steps = 0  # heads and messages completed on this connection
        _has_cycle = False  # the message being parsed has its cycle (its headers are complete)
        _cycles: tuple[Any, ...] = ()  # the requests whose answers may still be owed, in order
        _unreadable: Any = None  # a request whose body the parser will never pass on (an upgrade's)
        _lost = False
        _refusal: bytes | None = None  # owed after the answers before it (see _owed_first)
        _refused: Any = None
        _too_large = False
        _deadline: Any = None
        _body_deadline: float | None = None  # loop time; None until the headers are complete
        _extensions: Any = None
        _write_deadline: Any = None
        _unsent_seen: list[int | None]  # see still_reading
        _hooks: dict[str, Any]

        def pause_writing(self) -> None:
            super().pause_writing()
            # A stream times its own writes (and counts what it drops): left to it.
            if write_timeout is not None and self._write_deadline is None \
                    and not self._extensions[ABORT_EXTENSION].get(TIMED_HERE):
                self._unsent_seen[0] = None
                self._write_deadline = self.loop.call_later(write_timeout, self._write_expired)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._cancel_write_deadline()

        def _cancel_write_deadline(self) -> None:
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None

        def _write_expired(self) -> None:
            self._write_deadline = None
            if self.transport.is_closing():
                return
            if still_reading(self._unsent(), self._unsent_seen):  # slowly: a large page, a slow link
                assert write_timeout is not None
                self._write_deadline = self.loop.call_later(write_timeout / 4, self._write_expired)
                return
            self._drop()  # what is buffered for it goes: the client stopped reading

        def _unsent(self) -> int | None:
            """Bytes written to the connection that the client has not taken: the transport's
            buffer and the kernel's send queue (None where the kernel does not say)."""
            sock = self.transport.get_extra_info("socket")
            if sock is None or _OUTQ is None:
                return None
            try:
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
            except (OSError, ValueError):
                return None
            return int(self.transport.get_write_buffer_size()) + int(queued)

        def _drop(self) -> None:
            """Close the connection with what is unsent dropped: the transport's buffer, and the
            kernel's too (up to 4 MiB a socket, which a plain close leaves flowing to a client that
            reads slowly, or holds for one that does not): a reset, not a FIN after the data."""
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
            self.transport.abort()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # Within --max-connections (uvicorn's limit is one above it): served for as long as it
            # stays open. One beyond is refused at its request, unless room was made by then.
            limit = self.limit_concurrency
            self._admitted = limit is None or len(self.connections) < limit
            self._extensions = {ABORT_EXTENSION: {}}  # until a request's headers are in
            self._hooks = {"abort": self._drop, "unsent": self._unsent}  # (each request's, copied)
            self._unsent_seen = [None]
            self._arm(header_timeout)

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None:  # nothing after a refused request runs (uvicorn may resume reads)
                return
            if self._in_head and not self.transport.is_closing() and self._head_ends_over(data):
                return self._refuse_head()
            steps = self._steps
            super().data_received(data)
            if self._steps != steps or not self._in_head or self.transport.is_closing():
                return
            # httptools drops blank lines before a request and spaces around a value before the callbacks
            # count them: a read that completed no head and no message was all head, and counts whole.
            self._raw_head += len(data)
            answering = self.cycle is not None and not self.cycle.response_complete
            if self._raw_head > max_header:
                self._refuse_head()
            elif not self._in_message and not answering and self._deadline is None:
                # Bytes that begin no request (blank lines) cancel uvicorn's keep-alive timer: the
                # header deadline runs from them, or they would hold an idle connection for ever.
                self._body_deadline = None
                self._arm(header_timeout)

        def _head_ends_over(self, data: bytes) -> bool:
            """Whether the head that this read ends is over ``max_header``, every byte of it counted
            as sent (the callbacks miss what the parser drops: a value's leading spaces); a read
            that ends no head is counted whole after the parser had it."""
            start = 0
            if not self._head_seen:  # blank lines before a request are not its head yet
                start = len(data) - len(data.lstrip(b"\r\n")) if data[:1] in (b"\r", b"\n") else 0
                if start == len(data):
                    return False
                self._head_seen = True
            tail = self._head_tail
            ended = -1  # bytes of this read up to the end of the head's blank line
            if tail:  # the blank line may have begun in the read before
                at = (tail + data[start:start + 3]).find(b"\r\n\r\n")
                if at >= 0:
                    ended = start + at + 4 - len(tail)
            if ended < 0:
                at = data.find(b"\r\n\r\n", start)
                if at < 0:
                    self._head_tail = (tail + data[start:])[-3:] if len(data) - start < 3 else data[-3:]
                    return False
                ended = at + 4
            return self._raw_head + ended > max_header

        def _refuse_head(self) -> None:
            self._too_large = True
            self.send_400_response("")  # the 431

        def _owed_first(self, broken: Any, refusal: bytes) -> bool:
            """Whether answers are owed to earlier requests of this connection (pipelined) than the
            one that could not be read: those go out first, then its ``refusal``, then the
            connection closes; the unreadable one, never started, gets no other answer. (Written
            now, its refusal would have come before them, and closing would have lost them: a 201
            whose client read a 400.)"""
            if not self._owes(besides=broken):
                return False
            if broken is not None:  # queued behind them: it never runs
                broken.disconnected = True
                for queued in [p for p in self.pipeline if p[0] is broken]:
                    self.pipeline.remove(queued)
            self._refusal, self._refused = refusal, broken
            self.transport.pause_reading()  # nothing after the unreadable request is read
            return True

        def _owes(self, besides: Any) -> bool:
            """Whether an answer is still owed on this connection, to a request other than ``besides``."""
            return any(not c.response_complete and c is not besides for c in self._cycles)

        def on_response_complete(self) -> None:
            if self._refusal is not None and not self._owes(besides=self._refused):
                # The last answer owed before an unreadable request is out: its refusal follows.
                self.server_state.total_requests += 1
                if not self.transport.is_closing():
                    self.transport.write(self._refusal)
                    self.transport.close()  # (no abort after a grace: the answers before it may still be draining)
                return
            super().on_response_complete()

        def _unsupported_upgrade_warning(self) -> None:
            # perhap switches to no other protocol (WebSocket, h2c), and the parser reads nothing
            # after the head of a request that asks to: one without a body is answered as HTTP/1.1
            # and its connection then closed (what follows it would never be read); one with a
            # body is refused in words. (uvicorn logged two warnings a request, one saying no
            # WebSocket library was installed, and the app waited for a body that never came.)
            cycle = self.cycle
            if any(name == b"transfer-encoding" or name == b"content-length" and value.strip() not in (b"", b"0")
                   for name, value in self.headers):
                # (the parser ended its message at the head: the app must not take it as bodiless)
                self._unreadable = cycle
                self.send_400_response("it asks to switch protocols (Upgrade) and has a body; perhap speaks "
                                       "HTTP/1.1 only: send it without the Upgrade header")
            elif cycle is not None:
                cycle.keep_alive = False

        def eof_received(self) -> None:
            # A half-close (shutdown(SHUT_WR)) closes the transport now, as uvicorn has it, and a lost
            # connection tells only the last request: the others, told here, answer nowhere (uvloop's
            # write raised on the closed transport, a bug logged and a 500 counted for a stored append).
            for cycle in self._cycles:
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost = True
            self._disarm()
            self._cancel_write_deadline()
            self.eof_received()  # (every request still owed an answer)
            super().connection_lost(exc)

        def _arm(self, delay: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(delay, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            # One timer a request, armed when its first byte arrives and cancelled when its last
            # does: the header deadline first, then (re-armed only if still running) the body's.
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._body_deadline is not None:
                left = self._body_deadline - self.loop.time()
                if left > 0:
                    return self._arm(left)
                cycle = self.cycle
                if cycle is not None and not cycle.response_started and not cycle.response_complete:
                    cycle.scope[LISTENER_STATUS] = 408  # type: ignore[literal-required]
                    cycle.scope[LISTENER_BYTES] = len(slow_body)  # type: ignore[literal-required]
                    cycle.disconnected = True  # the app's receive() now says http.disconnect
                    cycle.message_event.set()  # and whatever it answers goes nowhere
                    if self._owed_first(cycle, too_slow):  # after the answers owed before it
                        return
                    self.transport.write(too_slow)
            elif self._owed_first(None, b""):  # a head unfinished: the answers owed go out first
                return
            self.transport.close()
            # Over TLS, close() waits for the client's close_notify (asyncio gives it 30 s), and the
            # connection keeps its slot meanwhile: a client that sends none is cut off a second on.
            self.loop.call_later(CLOSE_GRACE, self._abort_unless_lost)

        def _abort_unless_lost(self) -> None:
            if not self._lost:
                self.transport.abort()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # The request line's own bytes (two spaces, "HTTP/1.1", its CRLF) and the blank line
            # that ends the head; the method and the URL are added as they come.
            self._header_bytes = _REQUEST_LINE_FRAME
            self._method_counted = False
            self._in_message = True
            self._has_cycle = False
            self._body_deadline = None
            if self._deadline is None:
                self._arm(header_timeout)

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header:
                self._too_large = True
                raise _HeadersTooLarge

        def on_url(self, url: bytes) -> None:
            if not self._method_counted:  # (the URL may come in several parts)
                self._method_counted = True
                self._count(len(self.parser.get_method()))
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._raw_head = False, 0
            self._head_seen, self._head_tail = False, b""
            self._steps += 1
            self._body_deadline = self.loop.time() + body_timeout
            if short_body and self._deadline is not None and self._deadline.when() > self._body_deadline:
                self._arm(body_timeout)  # the body's deadline comes before the header one would
            previous = self.cycle
            limit = self.limit_concurrency
            if limit is not None and not self._admitted:
                # uvicorn refused every request while connections (or requests) were over the
                # limit, those of connections served for long too: 3N connections at once left no
                # one served. The first N open are served; one beyond is refused (and closed)
                # unless some of them have gone by the time it asks.
                self._admitted = sum(getattr(c, "_admitted", False) for c in self.connections) < limit - 1
            app = self.app
            if limit is not None and not self._admitted:  # answered with over_the_limit for its app
                log.warning("refused a request: %d connections at once", limit - 1)
                self.app = _over_the_limit(limit - 1)
            # (uvicorn's own count is not asked: it is what refused the connections it served)
            self.limit_concurrency = None
            try:
                super().on_headers_complete()
            finally:
                self.app, self.limit_concurrency = app, limit
            # One per request: a stream's mark (TIMED_HERE) is for its own response only.
            self._extensions = {ABORT_EXTENSION: self._hooks.copy()}
            self.scope["extensions"] = self._extensions
            self._has_cycle = True
            if self.scope["http_version"] == "1.0":
                _close_delimited(self.cycle)
            if previous is None or previous.response_complete:  # answers end in order: none owed
                self._cycles = (self.cycle,)
            else:  # pipelined behind answers still owed (rare): keep those
                self._cycles = (*[c for c in self._cycles if not c.response_complete], self.cycle)

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_head, self._in_message = True, False
            self._steps += 1
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            # The parser's own refusals (a bad request line, a bad Content-Length ...) are problems
            # like every other error of the API, not uvicorn's plain text.
            # (The request whose body is bad, or that the parser will never pass on.)
            broken = self._unreadable or (self.cycle if self._in_message and self._has_cycle else None)
            if self.transport.is_closing() or self._refusal is not None:
                return
            if self._too_large:
                status, body, response = 431, too_large_body, too_large
            elif str(sys.exception()) == "Content-Length overflow":
                # (uvicorn calls this inside its except clause, with its own words in msg: the
                # parser's are the exception's.) A length past 2**64 is larger than any body taken.
                status, body, response = 413, overflow_body, overflow
            else:
                if type(sys.exception()).__name__ == "HttpParserInvalidURLError":  # (curl sends what is typed)
                    msg = ("its path holds a character that must be percent-encoded: a space, a non-ASCII "
                           "letter (send é as its UTF-8, %C3%A9)")
                body = problem_body(400, "invalid-input", "Invalid input", f"the request is not valid HTTP: {msg}", {})
                status, response = 400, _problem_response(b"400 Bad Request", body)
            if self._owed_first(broken, response):
                return
            if broken is not None and not broken.response_complete:
                # Its app is running, waiting for the body: it now reads a disconnect, its answer
                # goes nowhere, and this one is what the metrics and the access log count.
                broken.scope[LISTENER_STATUS] = status  # type: ignore[literal-required]
                broken.scope[LISTENER_BYTES] = len(body)  # type: ignore[literal-required]
                broken.disconnected = True
                broken.message_event.set()
            self.transport.write(response)
            self.transport.close()

    return LimitedHttpTools


def _over_the_limit(served: int) -> Any:
    """The ASGI app that answers in place of uvicorn's plain-text 503 of --max-connections (its
    limit is one above ``served``: see server._config): a problem like every other refusal."""
    body = problem_body(503, "too-many-connections", STATUS_TITLES[503],
                        f"the server is serving its limit of {served} connections at once; "
                        "try again shortly", {"max_connections": served})
    start = {"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]}

    async def over_the_limit(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return over_the_limit


def _close_delimited(cycle: Any) -> None:
    """An HTTP/1.0 request's answer of no known length (a stream) without chunked encoding, which
    HTTP/1.0 does not have (uvicorn chunks whatever the version): its body runs to the close."""
    send = cycle.send
    open_ended = False

    async def send_close_delimited(message: Any) -> None:
        nonlocal open_ended
        if message["type"] == "http.response.start":
            open_ended = not any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))
            if open_ended:  # (uvicorn counts a body down from its length: this one has none)
                cycle.keep_alive, cycle.chunked_encoding, cycle.expected_content_length = False, False, 1 << 62
        elif open_ended and not message.get("more_body", False):
            cycle.expected_content_length = len(message.get("body", b""))  # the last: then the close
        await send(message)

    cycle.send = send_close_delimited


def _problem_response(status: bytes, body: bytes) -> bytes:
    """A whole HTTP/1.1 problem+json response that closes the connection."""
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/problem+json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
