"""Test backends: one provider module per storage backend, each giving fresh store URLs.

A provider is started once per test session (it may start a database server) and hands out an
empty store URL per test. Adding a backend to the conformance suite means adding a module here and
its name to ``ALL``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

ALL = ("sqlite", "postgres", "cassandra")


class Provider(Protocol):
    name: str

    def start(self, workdir: Path) -> None:
        """Start whatever server the backend needs; raise (never skip) when it cannot."""

    def new_url(self) -> str:
        """A store URL no other test uses."""

    def stop(self) -> None:
        """Stop servers and remove what start() made."""


def load(name: str) -> Provider:
    module = importlib.import_module(f"tests.providers.{name}")
    provider: Provider = module.provider()
    return provider
