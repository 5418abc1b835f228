"""perhap: an immutable, DDD-inspired event store (realm > domain > entity > type > event)."""

from typing import TYPE_CHECKING, Any

from .backends import open_store, parse_store_url
from .store import (
    Appended,
    AppendResult,
    Event,
    EventIdConflict,
    InvalidInput,
    KeysPage,
    NotFound,
    Page,
    PerhapError,
    Scope,
    StorageUnavailable,
    Store,
    VersionConflict,
)

if TYPE_CHECKING:
    from .client import (
        AsyncClient,
        BadRequest,
        Client,
        Conflict,
        ConnectionFailed,
        MethodNotAllowed,
        PayloadTooLarge,
        PerhapClientError,
        ServerError,
        Unavailable,
    )

__version__ = "0.1.0"

_CLIENT_NAMES = {"AsyncClient", "BadRequest", "Client", "Conflict", "ConnectionFailed", "MethodNotAllowed",
                 "PayloadTooLarge", "PerhapClientError", "ServerError", "Unavailable"}


def __getattr__(name: str) -> Any:
    # The client (and httpx) load on first use: `perhap serve` and in-process users never pay for it.
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'perhap' has no attribute {name!r}")


# The client's NotFound, VersionConflict and EventIdConflict (perhap.client) subclass the store's
# classes of the same names exported here: `except perhap.VersionConflict` catches both.
__all__ = [
    "Appended",
    "AppendResult",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "EventIdConflict",
    "InvalidInput",
    "KeysPage",
    "MethodNotAllowed",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PerhapClientError",
    "PerhapError",
    "Scope",
    "ServerError",
    "StorageUnavailable",
    "Store",
    "Unavailable",
    "VersionConflict",
    "open_store",
    "parse_store_url",
]
