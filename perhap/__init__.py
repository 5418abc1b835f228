"""perhap: an immutable, DDD-inspired event store (realm > domain > entity > type > event).

The names in ``__all__`` are the public API; tests/test_public_api.py keeps the list exact.
"""

import typing

from .backends import open_store, parse_store_url
from .errors import (
    EventIdConflict,
    InvalidInput,
    NotFound,
    NotSupported,
    PerhapError,
    StorageUnavailable,
    VersionConflict,
)
from .model import Appended, AppendResult, Event, KeysPage, NewEvent, Page, Scope
from .store.base import Statistic, Store
from .store.query import ReadQuery, read_query
from .store.states import StateRecord, StateTable
from .store.subscription import Subscription

if typing.TYPE_CHECKING:
    from .client import (
        AsyncClient,
        BadRequest,
        Client,
        Conflict,
        ConnectionFailed,
        Delivery,
        MethodNotAllowed,
        PayloadTooLarge,
        PerhapClientError,
        ServerError,
        Unavailable,
    )

__version__ = "0.1.0"

_CLIENT_NAMES = frozenset({
    "AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed", "Delivery", "MethodNotAllowed",
    "PayloadTooLarge", "PerhapClientError", "ServerError", "Unavailable",
})


def __getattr__(name: str) -> typing.Any:
    # The client (and httpx) load on first use: `perhap serve` and in-process users never pay for it.
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'perhap' has no attribute {name!r}")


# The client's NotFound, VersionConflict and EventIdConflict (perhap.client) subclass the store's
# classes of the same names exported here: `except perhap.VersionConflict` catches both.
__all__ = [
    # opening a store
    "open_store",
    "parse_store_url",
    "Store",
    # value types
    "Scope",
    "Event",
    "NewEvent",
    "Appended",
    "AppendResult",
    "Page",
    "KeysPage",
    "Subscription",
    "ReadQuery",
    "read_query",
    "Statistic",
    "StateTable",
    "StateRecord",
    # errors
    "PerhapError",
    "InvalidInput",
    "NotFound",
    "VersionConflict",
    "EventIdConflict",
    "StorageUnavailable",
    "NotSupported",
    # the HTTP client (imported on first use)
    "Client",
    "AsyncClient",
    "PerhapClientError",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "Delivery",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "ServerError",
    "Unavailable",
]
