"""A small incremental parser of Server-Sent Events (the text/event-stream format)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class SSEMessage:
    """One complete message: its ``id:``, ``event:`` and ``data:`` fields (None when absent)."""

    id: str | None
    event: str | None
    data: str | None


class SSEDecoder:
    """Feed bytes as they arrive; get complete messages back. Comments (keep-alives) are dropped."""

    def __init__(self) -> None:
        self._buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """The messages this chunk completes; a partial line waits for the next chunk."""
        self._buffer += chunk
        messages = []
        *lines, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8")
            if not line:
                if self._data or self._id is not None:
                    messages.append(SSEMessage(self._id, self._event,
                                               "\n".join(self._data) if self._data else None))
                self._reset()
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                self._data.append(value)
            elif field == "id":
                self._id = value
            elif field == "event":
                self._event = value
        return messages


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEMessage]:
    """Every message of a stream given as chunks of bytes."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
