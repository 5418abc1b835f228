"""The errors the store raises. Each maps to one HTTP status, so every layer answers alike."""

from __future__ import annotations

from typing import Any


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


class EventIdConflict(PerhapError):
    status, slug, title = 409, "event-id-conflict", "Event id already used"

    def __init__(self, event_id: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"event_id {event_id} is already used by a different event", event_id=event_id
        )
        self.event_id = event_id


class StorageUnavailable(PerhapError):
    status, slug, title = 503, "storage-unavailable", "Storage unavailable"
