"""Small helpers shared by the test modules, and the binding of the contract to perhap's backends."""

from __future__ import annotations

import pytest

from perhap.backends import open_store
from perhap.testing.conformance import StoreFactory, read_all, take, wait_until

__all__ = ["PerhapBackends", "read_all", "take", "wait_until"]


class PerhapBackends:
    """Runs a contract class on perhap's own backends: conftest's ``backend`` (PERHAP_TEST_BACKENDS)."""

    @pytest.fixture
    def store_factory(self, store_url: str) -> StoreFactory:
        return lambda: open_store(store_url)
