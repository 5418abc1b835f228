"""A server as a store for export, import and copy: the few Store methods they use, over the HTTP
API with :class:`~perhap.client.aio.AsyncClient` (and a bearer token, for a server run with ``--auth``).

The server's errors come as the client's exceptions, which subclass the store's own
(``NotFound``, ``VersionConflict``, ``EventIdConflict``): the transfer code handles both alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from ..client.aio import AsyncClient
from ..client.errors import BadRequest, PayloadTooLarge, PerhapClientError
from ..model import DEFAULT_LIMIT, AppendResult, Event, KeysPage, NewEvent, Page, Scope
from .dump import TooLargeForDestination, TransferError


class RemoteStore:
    """The transfer's view of a server (see :class:`~perhap.transfer.reading.TransferStore`)."""

    #: Nothing says a server's backend numbers a realm's events without gaps.
    dense_positions: ClassVar[bool] = False
    #: Requests in flight may be committed in any order: the importer sends one batch at a time.
    preserves_submission_order: ClassVar[bool] = False

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def read(self, scope: Scope, *, following: str | None = None, limit: int = DEFAULT_LIMIT,
                   order: str = "asc") -> Page:
        tagged = await self.client.read_page(scope, following=following, limit=limit, order=order)
        assert tagged is not None  # (None only answers an If-None-Match, which is not sent)
        return tagged[0]

    async def keys(self, realm: str | None = None, domain: str | None = None, entity: str | None = None, *,
                   after: str | None = None, limit: int = DEFAULT_LIMIT) -> KeysPage:
        """Every name after ``after``, as one page (the client reads the server's pages)."""
        names = [name async for name in self.client.keys(realm, domain, entity, page_size=limit)]
        return KeysPage([n for n in names if after is None or n > after], None)

    async def append_batch(self, realm: str, domain: str, entity: str,
                           events: Sequence[NewEvent | Mapping[str, Any]], *,
                           expected_version: int | None = None) -> AppendResult:
        """Append a batch, each imported event with its own timestamp (which the server must keep)."""
        try:
            return await self.client.append_batch(realm, domain, entity, events, expected_version=expected_version)
        except PayloadTooLarge as exc:  # (nothing of it was written)
            raise TooLargeForDestination(f"the server at {self.client.base_url} refused {len(events)} events in "
                                         f"one request as too large (413: {exc.detail})") from None
        except PerhapClientError as exc:
            if exc.status == 403:  # (a write token's batch with timestamps: the usual mistake)
                raise TransferError(
                    f"the server at {self.client.base_url} refused the import (403: {exc.detail}): an import "
                    "needs an admin token for the realm, since it gives each event its original timestamp, "
                    "which a write token may not (a writer does not backdate)") from None
            if not isinstance(exc, BadRequest) or "unknown keys: timestamp" not in exc.detail:
                raise
            raise TransferError(
                f"the server at {self.client.base_url} does not take an imported event's timestamp "
                f"(400: {exc.detail}), so it cannot import with full fidelity; nothing was written") from None

    async def realms_limited(self) -> bool:
        """Whether the server lists only the realm of the token sent (see ``reading.every_realm``)."""
        return await self.client.realms_limited()

    async def get_event(self, realm: str, domain: str, event_id: str) -> Event:
        return await self.client.get_event(realm, domain, event_id)


def is_server_url(url: str) -> bool:
    """Whether ``url`` names a server (http:// or https://) rather than a store."""
    return url.startswith(("http://", "https://"))


@asynccontextmanager
async def open_remote(url: str, token: str | None = None) -> AsyncIterator[RemoteStore]:
    """The server at ``url`` as a :class:`RemoteStore`, sending ``token`` (if any) as a bearer token."""
    headers = None if token is None else {"authorization": f"Bearer {token}"}
    async with AsyncClient(url, headers=headers) as client:
        # A URL past the server's root (http://host/shop) is a prefix to the client: its realms
        # would be shop's domains, read and written as realms. Only perhap's own answers at
        # /_health. (Whether the store answers is left to the transfer's first request.)
        await client.ping()
        yield RemoteStore(client)
