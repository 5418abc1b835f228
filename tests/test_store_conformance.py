"""The store contract (perhap.testing.conformance), in process, on every backend: the original
contract, the consumer's reads and positions, and multi-entity appends."""

from __future__ import annotations

from perhap.testing.conformance import ConsumerContract, MultiEntityContract, StoreContract
from tests.helpers import PerhapBackends


class TestStore(PerhapBackends, StoreContract):
    pass


class TestConsumer(PerhapBackends, ConsumerContract):
    pass


class TestMultiEntity(PerhapBackends, MultiEntityContract):
    pass
