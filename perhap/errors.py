"""The errors the store raises. Each maps to one HTTP status, so every layer answers alike."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: What a realm token looks like in any text: its prefix and (at least most of) its 43 base64url
#: characters (the token file's own format is perhap.auth's).
_TOKEN_IN_TEXT = re.compile(rb"perhap_[A-Za-z0-9_-]{32,}")


class PerhapError(Exception):
    """Base of every error the store raises; each maps to one HTTP status."""

    status = 500
    slug = "error"
    title = "Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(PerhapError):
    status, slug, title = 400, "invalid-input", "Invalid input"


class NotFound(PerhapError):
    status, slug, title = 404, "not-found", "Not found"


class VersionConflict(PerhapError):
    status, slug, title = 409, "version-conflict", "Version conflict"

    def __init__(self, current_version: int, expected_version: int) -> None:
        super().__init__(
            f"expected version {expected_version}, but the entity is at version {current_version}",
            current_version=current_version,
            expected_version=expected_version,
        )
        self.current_version = current_version
        self.expected_version = expected_version
        #: (entity, expected_version, current_version) for every failing entity of a multi-entity append.
        self.conflicts: list[tuple[str, int, int]] = []

    @classmethod
    def several(cls, conflicts: list[tuple[str, int, int]]) -> VersionConflict:
        """The conflict of a multi-entity append: every (entity, expected, current) that failed."""
        entity, expected, current = conflicts[0]
        error = cls(current, expected)
        shown = "; ".join(f"{e}: expected {x}, at {c}" for e, x, c in conflicts[:5])
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        error.detail = f"expected versions do not hold ({shown}{more}); nothing was stored"
        error.args = (error.detail,)
        error.conflicts = conflicts
        error.extra = {"conflicts": [{"entity": e, "expected_version": x, "current_version": c}
                                     for e, x, c in conflicts]}
        return error


class EventIdConflict(PerhapError):
    status, slug, title = 409, "event-id-conflict", "Event id already used"

    def __init__(self, event_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"event_id {event_id} is already used by a different event", event_id=event_id
        )
        self.event_id = event_id


class LeaseConflict(PerhapError):
    """A consumer acknowledged or returned an event its group has not leased to it (now)."""

    status, slug, title = 409, "lease-conflict", "Not leased to this consumer"


class GroupConflict(PerhapError):
    """A consumer group exists with other settings than those asked for."""

    status, slug, title = 409, "group-conflict", "Group exists with other settings"


class NotSupported(PerhapError):
    """A capability this backend does not offer (see the feature matrix in docs/backends)."""

    status, slug, title = 501, "not-supported", "Not supported by this backend"


class StateTooLarge(PerhapError):
    """A consumer group's state document would pass its size limit: too many events parked or
    leased at once. The request was valid; what it would store does not fit (507)."""

    status, slug, title = 507, "group-state-full", "Insufficient Storage"


class StorageUnavailable(PerhapError):
    status, slug, title = 503, "storage-unavailable", "Storage unavailable"


class StoreClosed(StorageUnavailable):
    """The store was closed: unlike a storage that does not answer for now, it never will again."""


def store_closed() -> StoreClosed:
    """What every call on a closed store raises, whichever backend and part of it (a new instance
    each time: a raised exception carries its own traceback)."""
    return StoreClosed("the store is closed")


# --------------------------------------------------------------------------- quoting what was sent


def sent_text(value: object, limit: int) -> str:
    """What a client sent, as an error message may quote it: any token in it hidden, then cut to
    ``limit`` characters. (In that order: a cut through a token would leave a part of it that the
    mask no longer recognises, up to 31 of its secret characters.)"""
    return hide_tokens_in(str(value))[:limit]


def shown_keys(keys: Iterable[str]) -> str:
    """A body's keys for a message: sorted, and short whatever the client sent (ten at most, each
    cut to 40 characters)."""
    shown = sorted(keys)
    text = ", ".join(sent_text(k, 40) + ("..." if len(k) > 40 else "") for k in shown[:10])
    return text + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")


def hide_tokens_in(text: str) -> str:
    """:func:`hide_tokens` for text; whatever else it holds (lone surrogates too) is kept as it was."""
    if "perhap_" not in text:
        return text
    return hide_tokens(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")


def hide_tokens(text: bytes) -> bytes:
    """``text`` with anything shaped like a token replaced: an error that quotes what a client
    sent (a query parameter's name, a body's value, a realm) must not echo a token it held."""
    if b"perhap_" not in text:
        return text
    return _TOKEN_IN_TEXT.sub(b"perhap_***(a token, not shown)", text)
