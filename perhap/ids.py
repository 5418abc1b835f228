"""Event ids (UUIDv7) and timestamps (RFC 3339, UTC, microseconds)."""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidInput

_last_ms = 0
_last_seq = 0


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), monotonic within this process."""
    global _last_ms, _last_seq
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        # Same (or earlier) millisecond: count up in rand_a so ids stay strictly increasing.
        _last_seq += 1
        if _last_seq > 0xFFF:
            _last_ms += 1
            _last_seq = 0
        ms = _last_ms
    else:
        _last_ms = ms
        _last_seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
    rand_b = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_last_seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_event_id(value: Any, what: str = "event_id") -> str:
    """Return the canonical (lower-case, hyphenated) form of a UUID string."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"{what} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a UUID, got {value[:64]!r}") from None


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,9}))?(?:Z|[+-]\d\d:\d\d)")


def check_timestamp(value: Any) -> str:
    """An RFC 3339 date-time in perhap's own form: UTC, microseconds, 'Z' (as utc_timestamp writes).

    Offsets are converted to UTC, so every backend stores and returns one canonical string (or the
    microseconds it stands for); precision beyond the microsecond is refused, as it could not be kept.
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"timestamp must be an RFC 3339 date-time, got {str(value)[:40]!r}")
    fraction = match.group(1) or ""
    if fraction[6:].strip("0"):
        raise InvalidInput(f"timestamp {value!r} is finer than a microsecond, which cannot be kept")
    text = value.replace(f".{fraction}", f".{fraction[:6]}") if fraction else value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"timestamp is not a valid date and time: {value!r}") from None
    return parsed.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-26T09:34:31.123456Z."""
    dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
