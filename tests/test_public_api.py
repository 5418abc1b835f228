"""The curated public API: ``perhap.__all__`` is exactly what is exported, every name in it imports,
and every perhap type a public signature mentions is exported."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import perhap

EXPECTED = {
    "open_store", "parse_store_url", "Store",
    "Scope", "Event", "NewEvent", "Appended", "AppendResult", "Page", "KeysPage", "Subscription", "Statistic",
    "ReadQuery", "read_query", "StateTable", "StateRecord",
    "PerhapError", "InvalidInput", "NotFound", "VersionConflict", "EventIdConflict", "StorageUnavailable",
    "NotSupported",
    "Client", "AsyncClient", "Delivery", "PerhapClientError", "BadRequest", "Conflict", "ConnectionFailed",
    "MethodNotAllowed", "PayloadTooLarge", "ServerError", "Unavailable",
}


def test_all_is_exactly_the_intended_names() -> None:
    assert len(perhap.__all__) == len(set(perhap.__all__)), "a name is listed twice"
    assert set(perhap.__all__) == EXPECTED


def test_every_public_attribute_is_in_all() -> None:
    # Submodules become attributes as they load; everything else public must be listed.
    public = {name for name, value in vars(perhap).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public <= set(perhap.__all__), public - set(perhap.__all__)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_imports(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from perhap import {name}", namespace)
    assert namespace[name] is getattr(perhap, name)


def test_star_import() -> None:
    namespace: dict[str, Any] = {}
    exec("from perhap import *", namespace)
    assert set(perhap.__all__) <= set(namespace)


def test_old_paths_keep_working() -> None:
    import perhap.app
    from perhap.store import Store

    assert perhap.open_store.__name__ == "open_store"
    assert perhap.Client.__name__ == "Client" and perhap.AsyncClient.__name__ == "AsyncClient"
    assert perhap.app.PerhapApp.__name__ == "PerhapApp"
    assert Store is perhap.Store


def test_client_errors_are_caught_as_store_errors() -> None:
    import perhap.client

    assert issubclass(perhap.client.VersionConflict, perhap.VersionConflict)
    assert issubclass(perhap.client.EventIdConflict, perhap.EventIdConflict)
    assert issubclass(perhap.client.NotFound, perhap.NotFound)
    assert issubclass(perhap.PerhapClientError, perhap.PerhapError)


def test_the_client_loads_lazily() -> None:
    code = (
        "import sys, perhap\n"
        "assert 'httpx' not in sys.modules, 'import perhap loaded httpx'\n"
        "assert 'perhap.client' not in sys.modules, 'import perhap loaded the client'\n"
        "perhap.Client\n"
        "assert 'perhap.client' in sys.modules and 'httpx' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        perhap.NoSuchThing  # noqa: B018


# ----------------------------------------------------------------------------- types in signatures


def _public_methods(cls: type) -> Iterator[Callable[..., Any]]:
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__init__", "__aenter__", "__await__", "__enter__"):
            continue
        if callable(member) and getattr(member, "__qualname__", "").split(".")[0] != "object":
            yield member


def _perhap_types(annotation: Any) -> Iterator[type]:
    """Every class defined in perhap that an annotation mentions, however deeply nested."""
    if isinstance(annotation, type) and annotation.__module__.split(".")[0] == "perhap":
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _perhap_types(arg)


def _signature_types(fn: Callable[..., Any]) -> set[type]:
    hints = typing.get_type_hints(fn)
    return {t for hint in hints.values() for t in _perhap_types(hint)}


def _public_signature_types() -> dict[type, set[str]]:
    """Each perhap type in a public signature, with where it appears."""
    where: dict[type, set[str]] = {}
    owners: list[type] = [perhap.Store, perhap.open_store, perhap.Client, perhap.AsyncClient]
    for owner in owners:
        for method in _public_methods(owner):
            for t in _signature_types(method):
                where.setdefault(t, set()).add(f"{owner.__name__}.{method.__name__}")
    for record in (perhap.Event, perhap.Page, perhap.KeysPage, perhap.AppendResult, perhap.Appended):
        hints = typing.get_type_hints(record)
        for field in dataclasses.fields(record):
            for t in _perhap_types(hints[field.name]):
                where.setdefault(t, set()).add(f"{record.__name__}.{field.name}")
    return where


def test_every_type_in_a_public_signature_is_exported() -> None:
    where = _public_signature_types()
    assert {perhap.Store, perhap.Scope, perhap.Event, perhap.Page, perhap.AppendResult} <= set(where)
    missing = {f"{t.__module__}.{t.__qualname__}": sorted(places) for t, places in where.items()
               if getattr(perhap, t.__name__, None) is not t}
    assert not missing, f"types in public signatures but not exported from perhap: {missing}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_class_has_resolvable_hints(name: str) -> None:
    # A hint that names something its module does not import breaks typing.get_type_hints, and
    # with it every tool that reads them (IDEs, pydantic, documentation generators).
    value = getattr(perhap, name)
    if not isinstance(value, type):
        typing.get_type_hints(value)
        return
    typing.get_type_hints(value)
    for _, method in inspect.getmembers(value, inspect.isfunction):
        if method.__module__.split(".")[0] == "perhap" or method.__name__ == "__init__":
            typing.get_type_hints(method)
