"""Small helpers shared by the test modules, and the binding of the contract to perhap's backends."""

from __future__ import annotations

import asyncio

import pytest

from perhap.backends import open_store
from perhap.backends.sqlite import open_sqlite
from perhap.testing.conformance import StoreFactory, read_all, take, wait_until

__all__ = ["PerhapBackends", "append_from_another_store", "read_all", "take", "wait_until"]


class PerhapBackends:
    """Runs a contract class on perhap's own backends: conftest's ``backend`` (PERHAP_TEST_BACKENDS)."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> StoreFactory:
        return lambda: open_store(store_url)


async def append_from_another_store(path: str, realm: str, domain: str, entity: str, count: int) -> None:
    """Append ``count`` events to an entity through a second SQLite store on the same file, on an
    event loop of its own (as another writer would): the first store's caches are then stale."""
    other = asyncio.new_event_loop()

    async def writes() -> None:
        async with await open_sqlite(path, synchronous="OFF") as twin:
            for i in range(count):
                await twin.append(realm, domain, entity, "t", i)

    try:
        await asyncio.get_running_loop().run_in_executor(None, other.run_until_complete, writes())
    finally:
        other.close()
