"""The client's exceptions, and the one place a server's error response becomes one of them.

Errors answered by the server (RFC 9457 problem+json) become :class:`PerhapClientError` subclasses
that also subclass the store's own errors: ``except perhap.VersionConflict`` catches the conflict
whether it was raised by an in-process store or answered by a server.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import EventIdConflict as _StoreEventIdConflict
from ..errors import GroupConflict as _StoreGroupConflict
from ..errors import InvalidInput, PerhapError, StorageUnavailable
from ..errors import LeaseConflict as _StoreLeaseConflict
from ..errors import NotFound as _StoreNotFound
from ..errors import NotSupported as _StoreNotSupported
from ..errors import VersionConflict as _StoreVersionConflict


class PerhapClientError(PerhapError):
    """An error answered by the server, or met on the way to it.

    ``status`` is the HTTP status (0 when no response came), ``problem`` the problem+json body,
    ``type``/``title``/``detail`` its fields, ``extra`` its other fields (e.g. ``current_version``)
    and ``url`` the request's URL.
    """

    def __init__(self, detail: str, *, status: int = 0, problem: Mapping[str, Any] | None = None,
                 url: str | None = None) -> None:
        # Not super().__init__: the store's errors take other arguments; set their fields here.
        Exception.__init__(self, detail)
        self.detail = detail
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        self.type: Any = self.problem.get("type")
        self.title = str(self.problem.get("title") or type(self).title)
        self.extra = {k: v for k, v in self.problem.items() if k not in {"type", "title", "status", "detail"}}
        self.url = url

    def __str__(self) -> str:
        return self.detail

    def one_line(self) -> str:
        """``409 Version conflict: expected version 0, ...``: a message for a terminal."""
        # (An answer that is no error but not what the API answers, a 200 from another server,
        # says so in its detail: "200 Error" would name no error.)
        text = f"{self.status} {self.title}: {self.detail}" if self.status >= 400 else self.detail
        return " ".join(text.split())


class BadRequest(PerhapClientError, InvalidInput):
    """400: a malformed body, a bad name or parameter."""


class NotFound(PerhapClientError, _StoreNotFound):
    """404: no such event, or a ``following`` id that is not in the scope."""


class MethodNotAllowed(PerhapClientError):
    """405: the route does not take this method."""


class Conflict(PerhapClientError):
    """409: the base of the conflicts below."""


class VersionConflict(Conflict, _StoreVersionConflict):
    """409: ``expected_version`` did not match; ``current_version`` is the entity's version.

    After a multi-entity append, ``conflicts`` lists every failing entity as ``(entity,
    expected_version, current_version)``, as the store's own error does; ``expected_version`` and
    ``current_version`` are then the first one's. Empty for a single entity's conflict.
    """

    def __init__(self, detail: str, *, status: int = 0, problem: Mapping[str, Any] | None = None,
                 url: str | None = None) -> None:
        super().__init__(detail, status=status, problem=problem, url=url)
        self.conflicts: list[tuple[str, int, int]] = _conflicts(self.extra.get("conflicts"))
        first = self.conflicts[0] if self.conflicts else ("", -1, -1)
        self.current_version: int = self.extra.get("current_version", first[2])
        self.expected_version: int = self.extra.get("expected_version", first[1])


def _conflicts(listed: Any) -> list[tuple[str, int, int]]:
    """The ``conflicts`` member of a problem as tuples; what is not shaped like one is left out."""
    if not isinstance(listed, list):
        return []
    found = []
    for item in listed:
        if not isinstance(item, dict):
            continue
        entity, expected, current = item.get("entity"), item.get("expected_version"), item.get("current_version")
        if isinstance(entity, str) and isinstance(expected, int) and isinstance(current, int):
            found.append((entity, expected, current))
    return found


class EventIdConflict(Conflict, _StoreEventIdConflict):
    """409: the ``event_id`` is already used by a different event."""

    def __init__(self, detail: str, *, status: int = 0, problem: Mapping[str, Any] | None = None,
                 url: str | None = None) -> None:
        super().__init__(detail, status=status, problem=problem, url=url)
        self.event_id: str = self.extra.get("event_id", "")


class LeaseConflict(Conflict, _StoreLeaseConflict):
    """409: an ack or nack named an event that is not leased to that consumer now (its lease ran
    out and it went back to the group, or it was never leased to it); nothing was changed."""


class GroupConflict(Conflict, _StoreGroupConflict):
    """409: the consumer group exists already with other settings (the detail names them)."""


class PayloadTooLarge(PerhapClientError):
    """413: the request body is over the server's limit (``extra["max_body"]``)."""


class ServerError(PerhapClientError):
    """5xx: the server failed."""


class NotSupported(ServerError, _StoreNotSupported):
    """501: the server's backend does not offer this (e.g. multi-entity appends on Cassandra)."""


class Unavailable(ServerError, StorageUnavailable):
    """503: the server's storage does not answer (transient: retry later)."""


class ConnectionFailed(Unavailable):
    """No response: the server cannot be reached, or the connection broke or timed out."""


_BY_TYPE: dict[str, type[PerhapClientError]] = {
    "urn:perhap:problem:version-conflict": VersionConflict,
    "urn:perhap:problem:event-id-conflict": EventIdConflict,
    "urn:perhap:problem:not-supported": NotSupported,
    "urn:perhap:problem:lease-conflict": LeaseConflict,
    "urn:perhap:problem:group-conflict": GroupConflict,
}
_BY_STATUS: dict[int, type[PerhapClientError]] = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 409: Conflict, 413: PayloadTooLarge,
    501: NotSupported, 503: Unavailable,
}


def error_from_response(response: httpx.Response) -> PerhapClientError:
    """The typed exception for an error response (its body read already)."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    cls = _BY_TYPE.get(str(problem.get("type")), _BY_STATUS.get(status))
    if cls is None:
        cls = ServerError if status >= 500 else PerhapClientError
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        # Not a problem+json body: another server, or a proxy in front of perhap. A line of its
        # text says what it said; an HTML page would only paste markup into a terminal.
        kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        text = "" if kind == "text/html" else " ".join(response.text.split())[:200]
        said = f": {text}" if text else " (an HTML page)" if kind == "text/html" else ""
        detail = (f"not an answer of perhap's{said}; is {_origin(response)} a perhap server "
                  "(or a proxy in front of one)?")
    problem.setdefault("title", response.reason_phrase or f"HTTP {status}")
    return cls(detail, status=status, problem=problem, url=shown_url(response.request.url))


#: Failures that leave a request unsent: no connection was made (or none was free), or the request
#: never left. Any other (a timeout or a broken connection while sending or waiting, an answer cut
#: off) may come after the server had the whole request, and carried it out.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
             httpx.LocalProtocolError, httpx.ProxyError)


#: What a request sent without an answer may be: an append retried with its event_id is safe.
APPEND_RETRY_HINT = "(a retry of an append with its event_id is safe)"
#: The same for a GET or HEAD: a read changes nothing, and a lease's events are delivered again.
READ_RETRY_HINT = "(retrying it is safe)"


def unreachable(request: httpx.Request, exc: Exception) -> ConnectionFailed:
    """The error for a request that got no response at all, in the same words from the sync and
    the async client (their transports word the same failure differently)."""
    base = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
    reason, url = _reason(exc), shown_url(request.url)
    if not isinstance(exc, _NOT_SENT):  # sent, perhaps carried out: not "unreachable"
        what = "in time" if isinstance(exc, httpx.TimeoutException) else "(the connection broke)"
        if request.method in ("GET", "HEAD"):
            return ConnectionFailed(f"no answer from {base} {what} ({reason}) {READ_RETRY_HINT}", url=url)
        return ConnectionFailed(f"no answer from {base} {what} ({reason}): the request may have been "
                                f"carried out {APPEND_RETRY_HINT}", url=url)
    return ConnectionFailed(f"cannot reach {base}: {reason}", url=url)


def _reason(exc: BaseException) -> str:
    """The operating system's own words where the failure came from a socket (the sync transport
    says "[Errno 111] Connection refused", the async one "All connection attempts failed"), else
    the transport's; "timed out" for every timeout."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLError):  # its errno is the TLS library's, not the system's
            return str(cause)
        if isinstance(cause, socket.gaierror):  # its errno is the resolver's (EAI_*): "Unknown error -2"
            return str(cause.strerror or cause)
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return os.strerror(cause.errno) if cause.errno else str(cause.strerror)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return str(exc) or exc.__class__.__name__


def shown_url(url: httpx.URL) -> str:
    """A request's URL for a message or an exception: a password in it (``http://user:pw@host``,
    which httpx sends as basic auth) replaced by ``***``, as ``--url`` is shown elsewhere, and a
    user name alone too (``http://TOKEN@host``: a server's URL has no database role to show)."""
    if not url.userinfo:
        return str(url)
    user, colon, _ = url.userinfo.partition(b":")
    return str(url.copy_with(userinfo=user + b":***" if colon else b"***"))


def _origin(response: httpx.Response) -> str:
    url = response.request.url
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def closed_client() -> PerhapClientError:
    """The error for a request (a stream's reconnection among them) after the client was closed:
    httpx's own is a RuntimeError, past ``except PerhapError``."""
    return PerhapClientError("this client is closed (close() or the end of its `with`); use a client that is open")


def unexpected(response: httpx.Response, what: str) -> PerhapClientError:
    """The error for a response that is not what the API answers (not a perhap server?)."""
    return PerhapClientError(f"unexpected response from {shown_url(response.request.url)}: {what}",
                             status=response.status_code, url=shown_url(response.request.url))
