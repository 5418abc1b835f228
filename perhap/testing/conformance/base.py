"""The one hook every contract class needs: how to open a store over fresh, empty storage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from ...store.base import Store

#: Opens a store; every call in one test opens the same storage (a reopen must see what an
#: earlier store wrote), and each test gets storage no other test uses.
StoreFactory = Callable[[], Awaitable[Store]]


class BackendContract:
    """Base of the contract classes. Subclass one and override :meth:`store_factory`."""

    # Marked here so the contract runs under pytest-asyncio's strict mode as well as auto mode.
    pytestmark = pytest.mark.asyncio

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        """The hook: return a callable that opens your backend's store over empty storage."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the store_factory fixture "
            "(see docs/conformance.md)")

    @pytest_asyncio.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        store = await store_factory()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def realm(self) -> str:
        """A realm no other test uses, so tests may share one storage where a backend needs it."""
        return f"r{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def contiguous_positions(self, store: Store) -> bool:
        """Whether the backend numbers each realm's events 1, 2, 3 ... with no gap: what its
        ``dense_positions`` declares (SQLite and PostgreSQL promise it; Cassandra only promises
        increasing positions), which the contract then checks, since perhap relies on it (an
        export counts a realm's events by its newest position)."""
        return store.dense_positions
