"""The HTTP contract (perhap.testing.conformance), through the ASGI app, on every backend: the
original contract and the consumer's (positions, new query parameters, multi-entity appends, ETags)."""

from __future__ import annotations

from perhap.testing.conformance import ConsumerHTTPContract, HTTPContract
from tests.helpers import PerhapBackends


class TestHTTP(PerhapBackends, HTTPContract):
    pass


class TestConsumerHTTP(PerhapBackends, ConsumerHTTPContract):
    pass
