"""The worker loops behind ``Client.consume`` and ``AsyncClient.consume``: lease events of a
consumer group, hand each to the handler in order, acknowledge what it handled, give back the rest.

The rules, the same in both loops:

- an event is acknowledged only after its handler returned; the acknowledgements of a lease go in
  one request when its events are done, or sooner, once the oldest has waited :data:`ACK_EVERY`:
  a thread (a task in the asyncio loop) sends them then even while a later handler still runs, so
  one slow handler cannot hold back what the others finished until their leases run out;
- a handler that raises gets its event nacked ("retry") at once: the group delivers it again, and
  parks it after ``max_deliveries``; the exception is logged and the loop goes on;
- ``stop`` ends the loop after the current handler: the events leased but not handled yet are
  nacked ("release"), so another consumer gets them at once instead of after ``ack_timeout``, and
  the delivery does not count towards ``max_deliveries`` (they never failed); so does
  a KeyboardInterrupt (sync) or a cancellation (async), which is then raised again;
- transient failures (no answer, 503, other 5xx but 501) are retried with backoff (0.1 s doubling
  up to :data:`MAX_BACKOFF`): leases for as long as it takes, acknowledgements for as long as the
  leases may still hold. A 409 on an acknowledgement (a lease that ran out and went back to the
  group) is logged, and the other events of the request are acknowledged one by one;
- events whose lease ran out before their turn (a slow batch) are left alone: they went back to
  the group, and handling them here would only do the work twice.

Nothing here imports the clients: a loop takes any object with their group methods.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .errors import Conflict, NotSupported, PerhapClientError, ServerError
from .groups import Delivery

log = logging.getLogger("perhap.client")

#: Acknowledgements wait for the end of their lease's events, or this many seconds at most.
ACK_EVERY = 1.0
#: The longest pause between two tries after a transient failure.
MAX_BACKOFF = 2.0


class GroupCalls(Protocol):
    """What the blocking loop needs of a client (:class:`~perhap.client.sync.Client` has it)."""

    def group(self, realm: str, group: str) -> dict[str, Any]: ...
    def lease(self, realm: str, group: str, consumer: str, *, max: int = ..., wait: float = ...) -> list[Delivery]: ...
    def ack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> int: ...
    def nack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str],
             action: str = ...) -> dict[str, int]: ...


class AsyncGroupCalls(Protocol):
    """What the asyncio loop needs of a client (:class:`~perhap.client.aio.AsyncClient` has it)."""

    async def group(self, realm: str, group: str) -> dict[str, Any]: ...
    async def lease(self, realm: str, group: str, consumer: str, *, max: int = ...,
                    wait: float = ...) -> list[Delivery]: ...
    async def ack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> int: ...
    async def nack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str],
                   action: str = ...) -> dict[str, int]: ...


def default_consumer() -> str:
    """``hostname-pid-random``: says where a worker runs, and is its own even in a restarted process."""
    host = "".join(c for c in socket.gethostname() if c.isprintable() and c.isascii())[:200] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def transient(error: Exception) -> bool:
    """Worth trying again: no answer, 503, or another 5xx (a restarting server, its proxy), not 501."""
    return isinstance(error, ServerError) and not isinstance(error, NotSupported)


class Backoff:
    """Pauses after failures in a row: 0.1 s, doubling, up to :data:`MAX_BACKOFF`."""

    def __init__(self) -> None:
        self.failures = 0

    def next(self) -> float:
        """The pause before the next try."""
        delay = min(0.1 * 2.0 ** self.failures, MAX_BACKOFF)
        self.failures += 1
        return delay


class Batch:
    """One lease's events as a loop works through them: the next to handle, the handled ones not
    acknowledged yet, and when the leases run out, as seen from here: the clock starts when the
    answer arrives, a little after the server leased, so a margin is taken off to stay early."""

    def __init__(self, events: list[Delivery], ack_timeout: float, name: str) -> None:
        self.events, self.name = events, name
        self.expires = time.monotonic() + ack_timeout - min(1.0, ack_timeout / 10)
        self.next = 0  # events[:next] were handled, given back, or left to run out
        self.done: list[str] = []
        self.oldest = 0.0
        self.lock = threading.Lock()  # done and oldest: the loop and its acknowledger share them
        self.acks_failed: PerhapClientError | None = None  # what stopped the acknowledger, to raise

    def pending(self) -> Delivery | None:
        """The next event to handle, or None when none is left (or their leases ran out)."""
        if self.next >= len(self.events):
            return None
        if time.monotonic() >= self.expires:
            log.warning("%s: the leases of %d events ran out before their turn; they went back to the group",
                        self.name, len(self.events) - self.next)
            self.next = len(self.events)
            return None
        return self.events[self.next]

    def handled(self, event_id: str) -> None:
        """Its handler returned: the event is to be acknowledged."""
        with self.lock:
            if not self.done:
                self.oldest = time.monotonic()
            self.done.append(event_id)

    def ack_due(self) -> bool:
        """True once the oldest unacknowledged handled event has waited :data:`ACK_EVERY`."""
        return bool(self.done) and time.monotonic() - self.oldest >= ACK_EVERY

    def until_due(self) -> float:
        """Seconds until acknowledgements are due (:data:`ACK_EVERY` while none waits)."""
        with self.lock:
            return max(0.0, self.oldest + ACK_EVERY - time.monotonic()) if self.done else ACK_EVERY

    def take_done(self) -> list[str]:
        """The handled events to acknowledge now (then none)."""
        with self.lock:
            done, self.done = self.done, []
        return done

    def check_acks(self) -> None:
        """Raise what made the acknowledger stop, in the loop, as the loop's own acks would."""
        if self.acks_failed is not None:
            raise self.acks_failed

    def take_rest(self) -> list[str]:
        """The events not handled, which go back to the group (none once their leases ran out)."""
        rest = [] if time.monotonic() >= self.expires else [e.event_id for e in self.events[self.next:]]
        self.next = len(self.events)
        return rest


class _Loop:
    """What both loops share: their arguments, and the messages they log."""

    def __init__(self, realm: str, group: str, consumer: str | None, max: int, wait: float) -> None:
        self.realm, self.group = realm, group
        self.consumer = consumer if consumer is not None else default_consumer()
        self.max, self.wait = max, wait
        self.name = f"consumer {self.consumer} of {realm}/{group}"
        self.ack_timeout = 30.0
        self.handled = 0

    def started(self, info: dict[str, Any]) -> None:
        timeout = info.get("ack_timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            self.ack_timeout = float(timeout)
        log.info("%s: started", self.name)

    def retrying(self, error: PerhapClientError, delay: float) -> None:
        log.warning("%s: %s; trying again in %.1f s", self.name, error.one_line(), delay)

    def failed(self, event: Delivery) -> None:
        log.exception("%s: the handler failed on event %s (%s/%s, delivery %d); it goes back to the group",
                      self.name, event.event_id, event.domain, event.entity, event.delivery)

    def ran_out(self, kind: str, event_id: str) -> None:
        log.warning("%s: %s of event %s refused: its lease ran out and it went back to the group",
                    self.name, kind, event_id)

    def gave_up(self, kind: str, count: int, error: PerhapClientError) -> None:
        log.warning("%s: %s of %d events not sent before their leases ran out (%s); they go back to the group",
                    self.name, kind, count, error.one_line())

    def pause(self, error: PerhapClientError, kind: str, ids: list[str], batch: Batch,
              backoff: Backoff) -> float | None:
        """How long to wait before sending ``kind`` of ``ids`` again after ``error``; None: give up
        (the leases ran out meanwhile). A failure that is not transient is raised."""
        if not transient(error):
            raise error
        left = batch.expires - time.monotonic()
        if left <= 0:
            self.gave_up(kind, len(ids), error)
            return None
        delay = min(backoff.next(), left)
        self.retrying(error, delay)
        return delay

    def nacked(self, counts: Any) -> None:
        if isinstance(counts, dict) and counts.get("parked"):
            log.warning("%s: %d events parked (delivered max_deliveries times)", self.name, counts["parked"])


class Worker(_Loop):
    """The blocking loop of :meth:`Client.consume <perhap.client.sync.Client.consume>`."""

    def __init__(self, client: GroupCalls, realm: str, group: str, handler: Callable[[Delivery], object], *,
                 consumer: str | None, max: int, wait: float, stop: threading.Event | None) -> None:
        super().__init__(realm, group, consumer, max, wait)
        self.client, self.handler = client, handler
        self.stop = stop if stop is not None else threading.Event()

    def run(self) -> int:
        """Lease, handle, acknowledge until stopped; the number of events handled."""
        info = self._answer(lambda: self.client.group(self.realm, self.group))  # an unknown group fails here
        if info is None:
            return 0
        self.started(info)
        while not self.stop.is_set():
            events = self._answer(lambda: self.client.lease(self.realm, self.group, self.consumer,
                                                            max=self.max, wait=self.wait))
            if events:
                self._work(Batch(events, self.ack_timeout, self.name))
        return self.handled

    def _answer(self, call: Callable[[], Any]) -> Any:
        """``call()``, tried again after transient failures until it answers; None once stopped."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                return call()
            except PerhapClientError as exc:
                if not transient(exc):
                    raise
                delay = backoff.next()
                self.retrying(exc, delay)
                self.stop.wait(delay)
        return None

    def _work(self, batch: Batch) -> None:
        finished = threading.Event()
        acknowledger: threading.Thread | None = None  # started once a handler runs with acks waiting
        try:
            while not self.stop.is_set() and (event := batch.pending()) is not None:
                if acknowledger is None and batch.done:
                    acknowledger = threading.Thread(target=self._acknowledge, args=(batch, finished),
                                                    name=f"perhap-acks {self.name}", daemon=True)
                    acknowledger.start()
                try:
                    self.handler(event)
                except Exception:
                    batch.next += 1
                    self.failed(event)
                    self._settle("retry", [event.event_id], batch)
                    continue
                batch.next += 1
                batch.handled(event.event_id)
                self.handled += 1
                batch.check_acks()
            _join(finished, acknowledger)
            batch.check_acks()
        except BaseException:  # KeyboardInterrupt, or an error the loop cannot go on after
            _join(finished, acknowledger)  # (an acknowledgement in flight is answered first)
            self._finish(batch, quietly=True)
            raise
        self._finish(batch)

    def _acknowledge(self, batch: Batch, finished: threading.Event) -> None:
        """Send the batch's due acknowledgements until it is finished (on a thread of its own)."""
        while not finished.wait(batch.until_due()):
            if batch.ack_due():
                try:
                    self._settle("ack", batch.take_done(), batch)
                except PerhapClientError as exc:
                    batch.acks_failed = exc
                    return

    def _finish(self, batch: Batch, *, quietly: bool = False) -> None:
        """Acknowledge what was handled, give back what was not."""
        try:
            self._settle("ack", batch.take_done(), batch)
            self._settle("release", batch.take_rest(), batch)
        except PerhapClientError as exc:
            if not quietly:
                raise
            log.warning("%s: could not settle its leases (%s); they go back to the group when they run out",
                        self.name, exc.one_line())

    def _settle(self, kind: str, ids: list[str], batch: Batch) -> None:
        """``kind``: "ack", or the nack action ("retry", "release") for ``ids``; a 409 is split up
        to settle the others."""
        backoff = Backoff()
        while ids:
            try:
                if kind == "ack":
                    self.client.ack(self.realm, self.group, self.consumer, ids)
                else:
                    self.nacked(self.client.nack(self.realm, self.group, self.consumer, ids, kind))
                return
            except Conflict:
                if len(ids) == 1:
                    self.ran_out(kind, ids[0])
                else:
                    for one in ids:
                        self._settle(kind, [one], batch)
                return
            except PerhapClientError as exc:
                delay = self.pause(exc, kind, ids, batch, backoff)
                if delay is None:
                    return
                time.sleep(delay)


class AsyncWorker(_Loop):
    """The asyncio loop of :meth:`AsyncClient.consume <perhap.client.aio.AsyncClient.consume>`; the
    handler may be a coroutine function or a plain one (which runs on the event loop)."""

    def __init__(self, client: AsyncGroupCalls, realm: str, group: str,
                 handler: Callable[[Delivery], Awaitable[object] | object], *, consumer: str | None,
                 max: int, wait: float, stop: asyncio.Event | None) -> None:
        super().__init__(realm, group, consumer, max, wait)
        self.client, self.handler = client, handler
        self.stop = stop if stop is not None else asyncio.Event()

    async def run(self) -> int:
        """Lease, handle, acknowledge until stopped; the number of events handled."""
        info = await self._answer(lambda: self.client.group(self.realm, self.group))
        if info is None:
            return 0
        self.started(info)
        while not self.stop.is_set():
            events = await self._answer(lambda: self.client.lease(self.realm, self.group, self.consumer,
                                                                  max=self.max, wait=self.wait))
            if events:
                await self._work(Batch(events, self.ack_timeout, self.name))
        return self.handled

    async def _answer(self, call: Callable[[], Awaitable[Any]]) -> Any:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                return await call()
            except PerhapClientError as exc:
                if not transient(exc):
                    raise
                delay = backoff.next()
                self.retrying(exc, delay)
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
        return None

    async def _work(self, batch: Batch) -> None:
        finished = asyncio.Event()
        acknowledger: asyncio.Task[None] | None = None  # started once a handler runs with acks waiting
        try:
            while not self.stop.is_set() and (event := batch.pending()) is not None:
                if acknowledger is None and batch.done:
                    acknowledger = asyncio.create_task(self._acknowledge(batch, finished))
                try:
                    result = self.handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    batch.next += 1
                    self.failed(event)
                    await self._settle("retry", [event.event_id], batch)
                    continue
                batch.next += 1
                batch.handled(event.event_id)
                self.handled += 1
                batch.check_acks()
                if batch.ack_due():  # (a plain handler holds the loop, and the task cannot run)
                    await self._settle("ack", batch.take_done(), batch)
            await _await(finished, acknowledger)
            batch.check_acks()
        except BaseException:  # cancelled, or an error the loop cannot go on after
            await _await(finished, acknowledger)  # (an acknowledgement in flight is answered first)
            await self._finish(batch, quietly=True)
            raise
        await self._finish(batch)

    async def _acknowledge(self, batch: Batch, finished: asyncio.Event) -> None:
        """Send the batch's due acknowledgements until it is finished (a task beside the loop)."""
        while not finished.is_set():
            try:
                await asyncio.wait_for(finished.wait(), batch.until_due())
                return
            except TimeoutError:
                pass
            if batch.ack_due():
                try:
                    await self._settle("ack", batch.take_done(), batch)
                except PerhapClientError as exc:
                    batch.acks_failed = exc
                    return

    async def _finish(self, batch: Batch, *, quietly: bool = False) -> None:
        try:
            await self._settle("ack", batch.take_done(), batch)
            await self._settle("release", batch.take_rest(), batch)
        except PerhapClientError as exc:
            if not quietly:
                raise
            log.warning("%s: could not settle its leases (%s); they go back to the group when they run out",
                        self.name, exc.one_line())

    async def _settle(self, kind: str, ids: list[str], batch: Batch) -> None:
        backoff = Backoff()
        while ids:
            try:
                if kind == "ack":
                    await self.client.ack(self.realm, self.group, self.consumer, ids)
                else:
                    self.nacked(await self.client.nack(self.realm, self.group, self.consumer, ids, kind))
                return
            except Conflict:
                if len(ids) == 1:
                    self.ran_out(kind, ids[0])
                else:
                    for one in ids:
                        await self._settle(kind, [one], batch)
                return
            except PerhapClientError as exc:
                delay = self.pause(exc, kind, ids, batch, backoff)
                if delay is None:
                    return
                await asyncio.sleep(delay)


def _join(finished: threading.Event, acknowledger: threading.Thread | None) -> None:
    """End a batch's acknowledger thread, once it has sent what it was sending."""
    finished.set()
    if acknowledger is not None:
        acknowledger.join()


async def _await(finished: asyncio.Event, acknowledger: asyncio.Task[None] | None) -> None:
    """End a batch's acknowledger task, once it has sent what it was sending (even if the loop
    itself is being cancelled: the shield lets that acknowledgement finish)."""
    finished.set()
    if acknowledger is not None:
        await asyncio.shield(acknowledger)
