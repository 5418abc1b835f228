"""The HTTP contract (perhap.testing.conformance.HTTPContract), through the ASGI app, on every backend."""

from __future__ import annotations

from perhap.testing.conformance import HTTPContract
from tests.helpers import PerhapBackends


class TestHTTP(PerhapBackends, HTTPContract):
    pass
