"""A write on its way from a caller to a backend's writer, and its outcome on the way back."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from ..model import AppendResult, NewEvent


def settle_future(future: asyncio.Future[Any] | concurrent.futures.Future[Any], outcome: Any) -> None:
    """Hand a writer's outcome (a result, or the exception it failed with) to a waiting caller, on
    the caller's loop; a caller that stopped waiting (cancelled: a client disconnect) is skipped,
    and what was written stands."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class WriteJob:
    """One validated batch, from the caller to the backend and its outcome back.

    A single-entity job writes ``batch`` to ``entity`` with ``expected`` (None: any version).
    A multi-entity job (``entities`` set) writes ``batch[i]`` to ``entities[i]``, all or nothing,
    each entity's events taking consecutive versions in send order, and fails with
    ``VersionConflict.several`` unless every ``expectations[entity]`` holds (``entity`` is then
    the first event's entity, ``expected`` None).

    ``loop`` is the caller's event loop, and ``future`` an asyncio future on it; a caller on a plain
    thread (:meth:`Store.append_blocking`) has no loop, and waits on a thread-safe future that the
    writer settles where it runs.
    """

    __slots__ = ("realm", "domain", "entity", "batch", "expected", "future", "loop",
                 "entities", "expectations")

    def __init__(self, realm: str, domain: str, entity: str, batch: list[NewEvent],
                 expected: int | None, loop: asyncio.AbstractEventLoop | None,
                 entities: list[str] | None = None, expectations: dict[str, int] | None = None) -> None:
        self.realm, self.domain, self.entity = realm, domain, entity
        self.batch, self.expected = batch, expected
        self.loop = loop
        self.future: asyncio.Future[AppendResult] | concurrent.futures.Future[AppendResult] = (
            loop.create_future() if loop is not None else concurrent.futures.Future())
        self.entities = entities
        self.expectations = expectations

    @property
    def multi(self) -> bool:
        """Whether this job writes to several entities (see the class docstring)."""
        return self.entities is not None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.realm, self.domain, self.entity

    def settle(self, outcome: AppendResult | BaseException) -> None:
        """Hand the outcome to the caller (on the job's loop); a caller that left is skipped."""
        settle_future(self.future, outcome)
