"""The backend contract as a reusable test suite: a backend is done when all of it passes.

Subclass the contract classes in a test module (its name starting with ``Test``) and override one
fixture, ``store_factory``; pytest then runs every inherited test against your store::

    class MyBackend:
        @pytest.fixture
        def store_factory(self, tmp_path): return lambda: open_my_store(tmp_path / "events.db")

    class TestStore(MyBackend, StoreContract): ...
    class TestHTTP(MyBackend, HTTPContract): ...
    class TestStreaming(MyBackend, StreamingContract): ...
    class TestConsumer(MyBackend, ConsumerContract): ...
    class TestMultiEntity(MyBackend, MultiEntityContract): ...
    class TestConsumerHTTP(MyBackend, ConsumerHTTPContract): ...

The contract classes' names do not start with ``Test``, so importing them runs nothing by itself.
Needs the ``test`` extra (pytest, pytest-asyncio, httpx). See docs/conformance.md.
"""

from .base import BackendContract, StoreFactory
from .consumer import ConsumerContract
from .consumer_http import ConsumerHTTPContract
from .helpers import aclose, problem, read_all, read_by_position, read_every, take, wait_until
from .http_api import HTTPContract
from .live import LiveServer
from .multi_entity import MultiEntityContract
from .store import StoreContract
from .streaming import SSEReader, StreamingContract

__all__ = [
    "BackendContract",
    "ConsumerContract",
    "ConsumerHTTPContract",
    "HTTPContract",
    "LiveServer",
    "MultiEntityContract",
    "SSEReader",
    "StoreContract",
    "StoreFactory",
    "StreamingContract",
    "aclose",
    "problem",
    "read_all",
    "read_by_position",
    "read_every",
    "take",
    "wait_until",
]
