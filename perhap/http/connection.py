"""What perhap's listener (:mod:`perhap.listener`) offers the app over a connection, as the
``perhap.abort`` ASGI scope extension: closing the connection at once, and how many bytes written
to it its client has not taken yet; and the rule both the listener and a stream apply with that
count to tell a client that stopped reading from one that reads slowly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .types import Scope as ASGIScope

#: The ASGI scope extension perhap's own listener (:mod:`perhap.server`) provides: ``abort()``
#: closes the connection at once, unsent data dropped (a plain close waits for the client to read it).
ABORT_EXTENSION = "perhap.abort"
#: Set in that extension by a stream: its writes are timed by the app, not by the listener.
TIMED_HERE = "timed_here"


@dataclass(frozen=True, slots=True)
class Connection:
    """What perhap's listener offers a stream over its connection (the ``perhap.abort`` extension):
    closing it at once, and how many bytes written to it the client has not taken yet (the
    transport's buffer and the kernel's; None when the platform does not say)."""

    abort: Callable[[], None]
    unsent: Callable[[], int | None]


def connection_of(scope: ASGIScope) -> Connection | None:
    """The listener's hooks on the connection, when it offers them. Asked for by a stream, which
    times its own writes (and counts the clients it drops): the listener's own write deadline, for
    other answers, is then left off for this response."""
    extension = (scope.get("extensions") or {}).get(ABORT_EXTENSION)
    if extension is None or "abort" not in extension:
        return None
    extension[TIMED_HERE] = True
    return Connection(extension["abort"], extension.get("unsent", unknown))


def unknown() -> None:
    """The count where the platform gives none."""
    return None


def still_reading(unsent: int | None, seen: list[int | None]) -> bool:
    """Whether a client whose write has waited the write timeout took some of it since the last
    look (``seen[0]``: the bytes it had not taken then, None at the first look, which only takes
    the count). Unknown counts (no such figure on this platform) say no: the timeout alone judges."""
    before, seen[0] = seen[0], unsent
    return unsent is not None and (before is None or unsent < before)
