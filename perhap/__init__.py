"""perhap: an immutable, DDD-inspired event store (realm > domain > entity > type > event)."""

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

__version__ = "0.1.0"

__all__ = [
    "Appended",
    "AppendResult",
    "Event",
    "EventIdConflict",
    "InvalidInput",
    "KeysPage",
    "NotFound",
    "Page",
    "PerhapError",
    "Scope",
    "StorageUnavailable",
    "Store",
    "VersionConflict",
    "open_store",
    "parse_store_url",
]
