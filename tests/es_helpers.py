"""What tests/test_eventsourcing.py shares: where the application's events go (a store in process or
a server in front of it), an independent read of what perhap stored, small aggregates and apps."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Notification, StoredEvent, Subscription
from eventsourcing.utils import Environment

from perhap.backends import open_store
from perhap.client import Client
from perhap.eventsourcing import Factory
from perhap.model import Event, Scope

A = TypeVar("A", bound=Application)
MODULE = {"PERSISTENCE_MODULE": "perhap.eventsourcing"}


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion on a thread of its own (the caller may be inside a loop)."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


async def _read_store(store_url: str, scope: Scope) -> list[Event]:
    async with open_store(store_url) as store:
        found: list[Event] = []
        following = None
        while True:
            page = await store.read(scope, limit=1000, following=following)
            found.extend(page.events)
            if page.next is None:
                return found
            following = page.next


def read_raw(store_url: str, realm: str, domain: str | None = None, entity: str | None = None) -> list[Event]:
    """What perhap holds, read through a store of our own (not the recorder's)."""
    return run_async(_read_store(store_url, Scope(realm, domain, entity)))  # type: ignore[no-any-return]


@dataclass
class Target:
    """Where a test's applications write: PERHAP_URL is the store's URL, or a server's in front of it."""

    backend: str
    transport: str
    store_url: str
    url: str
    opened: list[Factory] = field(default_factory=list)

    def env(self, realm: str | None = "fresh", **extra: str) -> dict[str, str]:
        env = {**MODULE, "PERHAP_URL": self.url, **extra}
        if realm == "fresh":
            env["PERHAP_REALM"] = f"es-{uuid.uuid4().hex[:12]}"
        elif realm is not None:
            env["PERHAP_REALM"] = realm
        return env

    def factory(self, name: str = "TestApp", **env: str) -> Factory:
        factory = Factory(Environment(name, env or self.env()))
        self.opened.append(factory)
        return factory

    def app(self, cls: type[A], **env: str) -> A:
        app = cls(env=env or self.env())
        self.opened.append(app.factory)  # type: ignore[arg-type]
        return app

    def raw(self, realm: str, domain: str | None = None, entity: str | None = None) -> list[Event]:
        """The stored perhap events, over HTTP through perhap's client, else from the store itself."""
        if self.transport == "http":
            with Client(self.url) as client:
                return list(client.read(Scope(realm, domain, entity), page_size=1000))
        return read_raw(self.store_url, realm, domain, entity)

    def close(self) -> None:
        for factory in self.opened:
            factory.close()
        self.opened.clear()


def stored(originator_id: UUID | str, version: int, state: bytes = b"{}", topic: str = "t") -> StoredEvent:
    return StoredEvent(originator_id=originator_id, originator_version=version, topic=topic, state=state)


def take(subscription: Subscription[Any], count: int, timeout: float = 30) -> list[Notification]:
    """The subscription's next ``count`` notifications; fewer if they do not come within ``timeout``."""
    got: list[Notification] = []

    def pull() -> None:
        for notification in subscription:
            got.append(notification)
            if len(got) >= count:
                return

    thread = threading.Thread(target=pull, daemon=True)
    thread.start()
    thread.join(timeout)
    subscription.stop()
    thread.join(10)
    return list(got)


def in_threads(*calls: Any) -> list[BaseException | None]:
    """Run the calls at once (released together by a barrier); each one's exception or None."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            calls[i]()
        except BaseException as exc:  # reported to the caller
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def versions(events: Sequence[StoredEvent]) -> list[int]:
    return [e.originator_version for e in events]


def write_until_killed(url: str, victim: subprocess.Popen[bytes] | None) -> tuple[int, str]:
    """Run CHILD against ``url`` and SIGKILL it (or ``victim``, the server it writes to) at a random
    moment after its first inserts; the last insert it reported as stored, and what it printed after."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, "crash"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        for _ in range(random.randint(20, 60)):
            line = child.stdout.readline()
            assert line.strip().isdigit(), line
        time.sleep(random.random() / 10)
        (victim or child).send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    return max(int(x) for x in [line, *out.split()] if x.strip().isdigit()), out


# --------------------------------------------------------------------------- the domain


class Account(Aggregate):
    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Account0(Account):
    """An aggregate whose versions start at 0."""

    INITIAL_VERSION = 0


class BankAccounts(Application):
    pass


class Ledger(Application):
    is_snapshotting_enabled = True


#: A child process for the crash test: process-recorder inserts until killed, each of two new
#: aggregates' events marked with the tracking id that came with them; prints each id once stored.
CHILD = """
import sys, uuid
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import Environment
from perhap.eventsourcing import Factory
env = Environment("Crash", {"PERHAP_URL": sys.argv[1], "PERHAP_REALM": sys.argv[2], "PERHAP_TIMEOUT": "5"})
recorder = Factory(env).process_recorder()
for n in range(1, 100000):
    events = [StoredEvent(uuid.uuid4(), 1, "t", b'{"n":%d}' % n), StoredEvent(str(n), 1, "t", b'{"n":%d}' % n)]
    try:
        recorder.insert_events(events, tracking=Tracking("upstream", n))
    except Exception as exc:
        print("error", type(exc).__name__, flush=True)
        break
    print(n, flush=True)
"""
