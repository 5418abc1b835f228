"""The store contract (perhap.testing.conformance.StoreContract), in process, on every backend."""

from __future__ import annotations

from perhap.testing.conformance import StoreContract
from tests.helpers import PerhapBackends


class TestStore(PerhapBackends, StoreContract):
    pass
