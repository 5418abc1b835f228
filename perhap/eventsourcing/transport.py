"""The recorders' way to a perhap store: blocking calls, in process or over HTTP, one interface.

eventsourcing's recorders are called from application threads and block. :class:`InProcess` runs
a store on one event loop thread per process (shared by every application that opens the same
URL, so two applications on one SQLite file share its single writer); :class:`OverHttp` uses
perhap's blocking client. Both raise perhap's own ``VersionConflict`` for the recorders to decide,
and eventsourcing's exceptions for everything else (see :func:`translated`).
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)

from .. import errors
from ..backends import open_store
from ..model import Appended, Event, NewEvent, Scope
from ..store.base import Store
from .backlog import Backlog

if TYPE_CHECKING:
    from ..client.sync import LiveStream

T = TypeVar("T")

#: Takes each batch of events a live stream brings, or the error that ended it; the stream waits
#: for its room before the next batch.
Deliver = Backlog


def translate(exc: BaseException) -> PersistenceError:
    """eventsourcing's exception for a perhap error, as its database modules classify theirs."""
    if isinstance(exc, PersistenceError):
        return exc
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, errors.EventIdConflict):
        return IntegrityError(detail)
    if isinstance(exc, errors.NotSupported):
        return NotSupportedError(detail)
    if isinstance(exc, errors.StorageUnavailable | httpx.TransportError | TimeoutError | ConnectionError):
        return OperationalError(f"perhap is unavailable: {detail}")
    if isinstance(exc, errors.InvalidInput):
        return DataError(detail)
    if isinstance(exc, errors.NotFound):
        return ProgrammingError(detail)
    status = getattr(exc, "status", 0)
    if status == 413:  # a batch or body over the server's limits: in process the same is a DataError
        return DataError(detail)
    if status == 429:  # too many streams open: a passing state of the server, as a full pool is
        return OperationalError(f"perhap is busy: {detail}")
    if status in (401, 403):
        return OperationalError(f"perhap refused the credentials: {detail}")
    if isinstance(exc, errors.PerhapError) and 400 <= status < 500:
        return ProgrammingError(detail)
    if isinstance(exc, errors.PerhapError | httpx.HTTPError):
        return InternalError(detail)
    return InterfaceError(detail)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise eventsourcing's exceptions; perhap's VersionConflict passes for the recorder to decide."""
    try:
        yield
    except errors.VersionConflict:
        raise
    except (errors.PerhapError, httpx.HTTPError, OSError, TimeoutError, RuntimeError) as exc:
        raise translate(exc) from exc


CLOSED = "the perhap.eventsourcing factory of this recorder is closed"


class Transport(abc.ABC):
    """Blocking access to one store. Reads return one page; ``read`` takes ``Store.read``'s bounds."""

    name: str
    supports_multi_entity: bool = True
    _closed = False

    def __init__(self) -> None:
        #: The live subscriptions, to end when the factory closes: each one's stop and deliver.
        self._live: dict[object, tuple[Callable[[], None], Deliver]] = {}

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError(CLOSED)

    def _track(self, stop: Callable[[], None], deliver: Deliver) -> Callable[[], None]:
        """A live subscription, ended with an InterfaceError if the factory closes under it (its
        iterating thread would otherwise wait for ever, or see the store's own closing)."""
        live, key = self._live, object()
        live[key] = (stop, deliver)

        def stop_tracked() -> None:
            live.pop(key, None)
            stop()

        return stop_tracked

    def _end_subscriptions(self) -> None:
        live, self._live = self._live, {}
        for stop, deliver in live.values():
            stop()
            deliver(InterfaceError(CLOSED))

    @abc.abstractmethod
    def append(self, realm: str, domain: str, entity: str, events: list[NewEvent],
               expected: int | None) -> list[Appended]: ...

    @abc.abstractmethod
    def append_many(self, realm: str, domain: str, pairs: list[tuple[str, NewEvent]],
                    expected: dict[str, int]) -> list[Appended]: ...

    @abc.abstractmethod
    def read(self, scope: Scope, limit: int, **bounds: Any) -> list[Event]: ...

    @abc.abstractmethod
    def subscribe(self, scope: Scope, after_position: int | None, types: Sequence[str] | None,
                  deliver: Deliver) -> Callable[[], None]:
        """Start delivering the scope's events after the position; returns a function that stops it."""

    @abc.abstractmethod
    def close(self) -> None: ...


# --------------------------------------------------------------------------- in process


class _LoopThread:
    """One event loop on a daemon thread, where this process's in-process stores live."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="perhap-eventsourcing", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_lock = threading.Lock()
_loop_thread: _LoopThread | None = None
_stores: dict[str, tuple[Store, int]] = {}  # url -> (store, factories using it)
_exited = False  # the interpreter is exiting: the stores are closed, the loop thread is going
#: Seconds the exit waits for each store to close (SQLite's and PostgreSQL's take milliseconds).
EXIT_CLOSE_TIMEOUT = 10.0


@atexit.register
def _close_at_exit() -> None:
    """Close this process's stores while their loop thread still runs. An application left open
    (a module-level one, as the library's examples have them) is closed by its __del__ while the
    interpreter tears modules down, when daemon threads are frozen: its close waited for ever on
    the loop thread (atexit functions run before that)."""
    global _exited
    with _lock:
        _exited = True
        stores = [store for store, _ in _stores.values()]
        _stores.clear()
    runner = _loop_thread
    if runner is None or not runner.thread.is_alive():
        return
    for store in stores:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(store.close(), runner.loop).result(EXIT_CLOSE_TIMEOUT)


def _loop() -> _LoopThread:
    global _loop_thread
    if _loop_thread is None:
        _loop_thread = _LoopThread()
    return _loop_thread


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop thread did not come along (a call on it would wait for
    ever), nor may its stores be used from here; the child opens its own when it needs them."""
    global _lock, _loop_thread, _stores
    _lock, _loop_thread, _stores = threading.Lock(), None, {}


os.register_at_fork(after_in_child=_forget_after_fork)


class InProcess(Transport):
    """A perhap store opened in this process (``sqlite:///``, ``postgresql://``, ``cassandra://``)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._pid = os.getpid()  # a forked child has neither its loop thread nor its store: see _check
        with _lock:
            self._runner = _loop()
            store, users = _stores.get(url, (None, 0))
            if store is None:
                with translated():
                    store = self._runner.run(_opened(url))
            _stores[url] = (store, users + 1)
        self.store = store
        # A factory dropped without close() gives its share of the store back when collected, so
        # that the next factory for this URL does not inherit a store whose file was replaced.
        self._release = weakref.finalize(self, _forget, url, self._runner)
        self._release.atexit = False
        self.name = store.backend_name
        self.supports_multi_entity = store.supports_multi_entity

    def _check(self) -> None:
        super()._check()
        if os.getpid() != self._pid:
            raise InterfaceError("this factory was made before the process forked: its store and event loop are "
                                 "the parent's; make the application again in the child")

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        if self._closed or os.getpid() != self._pid:
            call.close()  # never awaited: close it, so Python does not warn
        self._check()
        with translated():
            return self._runner.run(call)

    def append(self, realm: str, domain: str, entity: str, events: list[NewEvent],
               expected: int | None) -> list[Appended]:
        if self.store.accepts_blocking_appends:  # straight to the writer (SQLite, PostgreSQL)
            return self._blocking(realm, domain, entity, events, expected_version=expected)
        return self._run(self.store.append_batch(realm, domain, entity, events, expected_version=expected)).events

    def append_many(self, realm: str, domain: str, pairs: list[tuple[str, NewEvent]],
                    expected: dict[str, int]) -> list[Appended]:
        if self.store.accepts_blocking_appends:
            return self._blocking(realm, domain, None, pairs, expected_versions=expected)
        return self._run(self.store.append_many(realm, domain, pairs, expected_versions=expected)).events

    def _blocking(self, realm: str, domain: str, entity: str | None, events: Sequence[Any],
                  **expected: Any) -> list[Appended]:
        self._check()
        with translated():
            return self.store.append_blocking(realm, domain, entity, events, **expected).events

    def read(self, scope: Scope, limit: int, **bounds: Any) -> list[Event]:
        return self._run(self.store.read(scope, limit=limit, **bounds)).events

    def subscribe(self, scope: Scope, after_position: int | None, types: Sequence[str] | None,
                  deliver: Deliver) -> Callable[[], None]:
        self._check()
        store = self.store

        async def pump() -> None:
            try:
                sub = await store.subscription(scope, after_position=after_position, types=types)
                while True:
                    deliver(await sub.fetch())
                    await deliver.room()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream ends: the subscriber gets the error
                deliver(translate(exc))

        future = asyncio.run_coroutine_threadsafe(pump(), self._runner.loop)

        def stop() -> None:
            future.cancel()  # thread-safe: cancels the task on its loop

        return self._track(stop, deliver)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end_subscriptions()
        if self._release.detach() is None:
            # Its finalizer ran already: collected in a reference cycle, the factory was given
            # back then, and the application's __del__ closes it after. Giving it back twice took
            # another factory's share, and that one's close shut the store under a third.
            return
        if self._runner is not _loop_thread or _exited:  # the parent's (opened before a fork), or closed
            return
        store = _drop_user(self.url)
        if store is not None:
            with translated():
                self._runner.run(store.close())


def _drop_user(url: str) -> Store | None:
    """One factory fewer on the URL's store; the store itself when that was the last."""
    with _lock:
        store, users = _stores[url]
        if users > 1:
            _stores[url] = (store, users - 1)
            return None
        del _stores[url]
        return store


def _forget(url: str, runner: _LoopThread) -> None:
    """A factory collected without close(): its store closes on its loop when it was the last
    user, not waited for (a finalizer may run on any thread, the loop's own included)."""
    if runner is not _loop_thread or _exited:  # the parent's (opened before a fork), or closed at exit
        return
    store = _drop_user(url)
    if store is not None:
        asyncio.run_coroutine_threadsafe(store.close(), runner.loop)


async def _opened(url: str) -> Store:
    return await open_store(url)


# --------------------------------------------------------------------------- over HTTP


class OverHttp(Transport):
    """A perhap server, through the blocking client (``http://`` and ``https://``)."""

    name = "http"

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        from ..client import Client  # httpx loads only for this transport

        super().__init__()
        headers = {"authorization": f"Bearer {token}"} if token else None
        self.client = Client(url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), headers=headers)

    def append(self, realm: str, domain: str, entity: str, events: list[NewEvent],
               expected: int | None) -> list[Appended]:
        self._check()
        with translated():
            return self.client.append_batch(realm, domain, entity, events, expected_version=expected).events

    def append_many(self, realm: str, domain: str, pairs: list[tuple[str, NewEvent]],
                    expected: dict[str, int]) -> list[Appended]:
        self._check()
        with translated():
            return self.client.append_many(realm, domain, pairs, expected_versions=expected).events

    def read(self, scope: Scope, limit: int, **bounds: Any) -> list[Event]:
        """Up to ``limit`` events, as in process: a page the server ended early, at its
        ``--max-page-bytes``, is followed by the next (the recorders take a short answer as the end)."""
        self._check()
        with translated():  # (the client's read follows `next`, and asks for a page as it needs one)
            return list(itertools.islice(self.client.read(scope, page_size=limit, **bounds), limit))

    def subscribe(self, scope: Scope, after_position: int | None, types: Sequence[str] | None,
                  deliver: Deliver) -> Callable[[], None]:
        self._check()
        client = self.client

        def check_server(error: Exception, delay: float) -> None:
            # A stream silent past the idle timeout (no keep-alive) may be a server that no longer
            # answers at all: one request with the usual timeout tells, rather than reconnecting to
            # it, each try waiting as long again.
            if isinstance(error, httpx.TimeoutException):
                with translated():
                    client.ping()

        with translated():  # its arguments are checked here (more than 100 topics, say)
            stream = client._live_stream(scope, None, STREAM_RETRIES, check_server, after_position=after_position,
                                         types=types)
        threading.Thread(target=_pump, args=(stream, deliver), name="perhap-eventsourcing-stream",
                         daemon=True).start()
        return self._track(stream.stop, deliver)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._end_subscriptions()
            self.client.close()


#: Failed connections in a row after which a live stream gives up with an OperationalError.
STREAM_RETRIES = 5


def _pump(stream: LiveStream, deliver: Deliver) -> None:
    """Hand each batch of the stream to ``deliver``, then the error that ended it (not a stop)."""
    try:
        for batch in stream.batches():
            deliver(batch)
            deliver.wait_for_room()
    except Exception as exc:
        if not stream.stopped.is_set():
            deliver(translate(exc))


def connect(url: str, token: str | None = None, timeout: float = 30.0) -> Transport:
    """The transport for a PERHAP_URL."""
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        return OverHttp(url, token, timeout)
    return InProcess(url)
