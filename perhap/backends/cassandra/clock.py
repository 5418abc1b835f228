"""The writer's clock and event timestamps.

Callers use ``clock.now_us()`` (looked up at call time, not imported by name), so that a test can
run a process whose clock is off by a few milliseconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LEAD_US = 10_000_000  # how far ahead of its clock a writer may place a position


def now_us() -> int:
    """This process's clock, in microseconds since the epoch: positions and horizons come from it."""
    return time.time_ns() // 1000


def stamp(ts: int, imported: str | None = None) -> str:
    """An event's timestamp: the one it was imported with, else its position (microseconds) in
    RFC 3339, computed exactly (no float rounding)."""
    if imported:
        return imported
    # strftime per event was half the CPU of reading an entity back; the events of a page share a
    # few seconds, so each second's text is made once.
    seconds, micros = divmod(ts, 1_000_000)
    head = _SECONDS.get(seconds)
    if head is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[seconds] = (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{micros:06d}Z"


_SECONDS: dict[int, str] = {}  # seconds since the epoch -> "YYYY-MM-DDTHH:MM:SS"
