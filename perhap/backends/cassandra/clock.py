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
    return imported or (EPOCH + timedelta(microseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
