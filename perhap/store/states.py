"""Named state documents changed only by compare-and-set: what consumer groups keep their state in.

A backend offers one :class:`StateTable` (``Store.group_states()``): small JSON documents keyed by
(realm, name), each with a ``token`` that changes on every write. A write names the token it read;
it succeeds only while the stored token is still that one, so several processes sharing a store
change a document one at a time without a lock server, and a document deleted and created again
never matches a token read before (tokens are random, not counters: no ABA).

The rules every backend keeps, checked by tests/test_group_states.py on each of them:

- a successful ``put`` or ``delete`` is durable before it returns (as durable as an append);
- a ``get`` that starts after a successful write, in any process, sees that write or a later one;
- ``put`` with ``expected=None`` creates only when no document has the name; otherwise it replaces
  only when the stored token equals ``expected``; False, and nothing written, otherwise;
- a write whose outcome is unknown (the database stopped answering while deciding it) is True when
  the document turns out to hold the write's token (unique to it), else StorageUnavailable: it may
  or may not have been applied, so read the document again before anything else.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StateTooLarge

#: A document is kept small by its writers; a larger one is refused (:func:`check_size`).
MAX_STATE_BYTES = 8 * 1024 * 1024


def check_size(data: bytes, limit: int | None = None) -> None:
    """Every backend's ``put`` first: a document past :data:`MAX_STATE_BYTES` (or past ``limit``,
    what its writer allows beyond it: see ``put``) is StateTooLarge."""
    if len(data) > (MAX_STATE_BYTES if limit is None else max(limit, MAX_STATE_BYTES)):
        raise StateTooLarge(f"a consumer group's state may hold at most {MAX_STATE_BYTES >> 20} MiB "
                            f"({len(data):,} bytes asked): acknowledge, replay or lease fewer events "
                            "at a time, or delete the group", max_bytes=MAX_STATE_BYTES)

#: Told of a document another process changed: its (realm, name), or None for "any of them may
#: have" (notifications were missed). Called on the store's event loop.
Watcher = Callable[[tuple[str, str] | None], None]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """One stored document: its token (the compare-and-set key) and its JSON bytes."""

    token: str
    data: bytes


def new_token() -> str:
    """A fresh token for a write: 128 random bits."""
    return secrets.token_hex(16)


class StateTable(abc.ABC):
    """Compare-and-set documents of one store (see the module's rules)."""

    @abc.abstractmethod
    async def get(self, realm: str, name: str) -> StateRecord | None:
        """The document, or None when there is none."""

    @abc.abstractmethod
    async def names(self, realm: str | None) -> list[tuple[str, str]]:
        """(realm, name) of every document of ``realm`` (None: of every realm), sorted."""

    @abc.abstractmethod
    async def put(self, realm: str, name: str, data: bytes, token: str, expected: str | None,
                  limit: int | None = None) -> bool:
        """Store ``data`` under the new ``token`` if the stored token is ``expected`` (None: if
        there is no document); True when written. ``limit``: the largest document taken, more
        than MAX_STATE_BYTES only where what passes it is not the writer's own doing."""

    @abc.abstractmethod
    async def delete(self, realm: str, name: str, expected: str) -> bool:
        """Remove the document if its token is ``expected``; True when removed."""

    def watch(self, changed: Watcher) -> None:
        """Call ``changed`` when another process writes a document, where the backend hears of it
        (PostgreSQL: a NOTIFY sent with the write). Only a hint, to wake waiting readers early:
        it may come late or never, so readers keep looking on their own too."""
        return None  # by default nothing is heard: readers poll
