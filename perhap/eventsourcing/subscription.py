"""``ApplicationRecorder.subscribe``: perhap's live stream of the application's domain as an iterator.

The stream (SSE over HTTP, the store's own subscription in process) runs on a thread or task of its
own and hands each batch of events to a queue; the iterating thread turns them into notifications,
leaving out tracking records and, when topics are given, other topics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, Notification, PersistenceError, Subscription

from ..model import Event, Scope
from . import mapping
from .backlog import Backlog
from .transport import Transport


class PerhapSubscription(Subscription[ApplicationRecorder]):
    """Notifications with ids above ``gt``, then each new one as it is recorded, until stopped:
    the live stream of ``scope`` (the recorder's domain) through ``transport``."""

    def __init__(self, recorder: ApplicationRecorder, transport: Transport, scope: Scope,
                 gt: int | None = None, topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._queue = Backlog()  # (bounded: the stream waits while it is full)
        self._ready: deque[Notification] = deque()
        #: What ended the stream, raised again at every next() after (as the library's own
        #: subscriptions do): a caller who catches it and asks again must not take it for an end.
        self._error: PersistenceError | None = None
        #: An event of a batch that could not be read as a notification: the error once those
        #: before it are taken.
        self._failed: PersistenceError | None = None
        types = mapping.type_filter(topics)
        self._end_stream = transport.subscribe(scope, gt, types, self._queue)

    def stop(self) -> None:
        super().stop()
        self._end_stream()
        self._queue(None)  # wakes a thread waiting in __next__, which wakes the next one

    def __next__(self) -> Notification:
        while True:
            if self._has_been_stopped:
                if self._error is not None:
                    raise self._error
                raise StopIteration
            if self._ready:
                notification = self._ready.popleft()
                self._last_notification_id = notification.id
                return notification
            if self._failed is not None:  # after the notifications before the event that failed
                self._error = self._failed
                self.stop()
                continue
            item = self._queue.take()
            if item is None:  # stopped: every thread waiting here must see it, not only the first
                self._queue(None)
            elif isinstance(item, PersistenceError):
                self._error = item
                self.stop()
            elif item:
                self._take(item)

    def _take(self, events: list[Event]) -> None:
        """The notifications among a batch of events. One that cannot be read as one (a state in a
        form this perhap does not know) ends the subscription with its error once those before it
        are taken: the rest of the batch is never skipped, as select_notifications never does."""
        try:
            self._ready.extend(mapping.notifications(events, self._topics))
        except PersistenceError:
            for n in range(len(events)):
                try:
                    self._ready.extend(mapping.notifications(events[n:n + 1], self._topics))
                except PersistenceError as exc:
                    self._failed = exc
                    self._end_stream()
                    return
