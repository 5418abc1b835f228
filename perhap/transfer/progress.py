"""A one-line progress report for long transfers, on a terminal only."""

from __future__ import annotations

import os
import stat
import sys
import time
from typing import IO


class Progress:
    """A one-line progress report with a rate on a terminal; silent when the stream is not one."""

    def __init__(self, label: str, *, stream: IO[str] | None = None, total_bytes: int | None = None,
                 total_events: int | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.total_bytes = total_bytes
        self.total_events = total_events  # the bar's measure when the bytes are not known
        self.events = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def add(self, events: int) -> None:
        """Count ``events`` more done; redraw at most five times a second."""
        self.events += events
        if self.enabled and time.monotonic() - self._drawn >= 0.2:
            self.draw()

    def draw(self, end: str = "") -> None:
        """Draw the line now: events, rate, and a bar when the total (bytes or events) is known."""
        now = time.monotonic()
        self._drawn = now
        rate = self.events / max(now - self.started, 1e-6)
        text = f"{self.label}: {self.events:,} event{'' if self.events == 1 else 's'}, {rate:,.0f}/s"
        share = None
        if self.total_bytes:
            share = min(self.bytes / self.total_bytes, 1.0)
        elif self.total_events:
            share = min(self.events / self.total_events, 1.0)
        if share is not None:
            filled = int(share * 30)
            text += f" [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}"
        self.stream.write(f"\r{text}\x1b[K{end}")
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the progress line, so another line can be printed; the next update redraws it."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0.0

    def close(self) -> None:
        """Draw the final state and end the line (on a terminal)."""
        if self.enabled:
            self.draw("\n")


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def file_size(stream: IO[bytes] | IO[str]) -> int | None:
    """The size of a regular file behind ``stream`` (None for pipes and terminals)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
