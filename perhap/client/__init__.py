"""A Python client for the perhap HTTP API: :class:`Client` (blocking) and :class:`AsyncClient`.

Both share one implementation of everything but I/O (:mod:`perhap.client.core`): it builds every
request and parses every response into the store's own value types (:class:`~perhap.model.Event`,
:class:`~perhap.model.AppendResult`), so code written against an in-process store reads the same
against a server. The two subclasses (:mod:`.sync`, :mod:`.aio`) only send requests, iterate
streams and sleep; :mod:`.stream` keeps a subscription's state between reconnects. Consumer groups
have their requests in :mod:`.groups` (with :class:`Delivery`, a leased event) and the worker loops
of ``consume`` in :mod:`.workers`.

Errors answered by the server (RFC 9457 problem+json) become :class:`PerhapClientError` subclasses
(:mod:`.errors`) that also subclass the store's own errors: ``except perhap.VersionConflict``
catches the conflict whether it was raised by an in-process store or answered by a server.

The client never imports server-side code (the HTTP app, the backends, the server).
"""

from .aio import AsyncClient
from .core import DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT, DEFAULT_URL
from .errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    EventIdConflict,
    GroupConflict,
    LeaseConflict,
    MethodNotAllowed,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    PerhapClientError,
    ServerError,
    Unavailable,
    VersionConflict,
    error_from_response,
)
from .groups import Delivery
from .stream import STREAM_IDLE_TIMEOUT
from .sync import Client
from .wire import event_from_dict

__all__ = [
    "DEFAULT_PAGE_SIZE", "DEFAULT_TIMEOUT", "DEFAULT_URL", "STREAM_IDLE_TIMEOUT",
    "AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed", "Delivery", "EventIdConflict",
    "GroupConflict", "LeaseConflict", "MethodNotAllowed", "NotFound", "NotSupported", "PayloadTooLarge",
    "PerhapClientError", "ServerError", "Unavailable", "VersionConflict", "error_from_response", "event_from_dict",
]
