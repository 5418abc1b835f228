"""Fixtures shared by every test: backends, stores, and the HTTP app in process.

Backends under test come from PERHAP_TEST_BACKENDS (default: all of them). A backend that cannot
start fails its tests loudly; nothing is skipped for want of a server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from perhap.backends import open_store
from perhap.http.app import PerhapApp
from perhap.store.base import Store
from tests.providers import ALL, Provider, load

pytest_plugins = ["tests.browser"]  # the UI tests' browser and page fixtures

BACKENDS = [b.strip() for b in os.environ.get("PERHAP_TEST_BACKENDS", ",".join(ALL)).split(",") if b.strip()]
unknown = set(BACKENDS) - set(ALL)
if unknown:
    raise RuntimeError(f"unknown backends in PERHAP_TEST_BACKENDS: {', '.join(sorted(unknown))}")

_providers: dict[str, Provider] = {}


def get_provider(name: str, tmp_path_factory: pytest.TempPathFactory) -> Provider:
    """Start a backend's provider on first use; it lives until the session ends."""
    if name not in _providers:
        provider = load(name)
        provider.start(tmp_path_factory.mktemp(f"backend-{name}"))
        _providers[name] = provider
    return _providers[name]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for provider in _providers.values():
        try:
            provider.stop()
        except Exception as exc:  # report, but let the other providers stop too
            print(f"stopping {provider.name} failed: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Provider:
    """Each test using this runs once per backend."""
    return get_provider(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def cassandra(tmp_path_factory: pytest.TempPathFactory) -> Provider:
    """The session's Cassandra (started on first use), shared with the conformance suite."""
    return get_provider("cassandra", tmp_path_factory)


@pytest.fixture
def store_url(backend: Provider) -> str:
    return backend.new_url()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


@pytest.fixture
def realm() -> str:
    """A realm name no other test uses, so tests may share one store where a backend needs it."""
    return f"r{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def app(store: Store) -> PerhapApp:
    return PerhapApp(store, heartbeat=0.5)


@pytest.fixture
async def client(app: PerhapApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://perhap.test") as c:
        yield c


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/perhap.db"
