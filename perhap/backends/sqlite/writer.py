"""The writer thread: group commit, with a batched fast path and a careful per-job fallback.

Design, and why:
- One writer thread owns the only write connection and drains every append queued while it was
  busy into a single transaction, so concurrent clients share one fsync (group commit). Each
  append behaves as if in its own SAVEPOINT, so a conflict in one never undoes another.
- One writer means commit order is ``seq`` order, and each realm's ``position`` order: the writer
  assigns both (:mod:`.writes`), one after another from the last it wrote, so a reader paging by
  either can never skip an event that commits later with a smaller one.
- The group's statements are batched (fast path): every job's checks run first, then all events
  go in a few multi-row INSERTs. A failing check raises before its job writes anything; any SQLite
  error rolls the group back and redoes it job by job, each in a SAVEPOINT (the careful path), so
  outcomes are exactly those of the careful path. Fewer statements mean fewer GIL hand-offs
  between the writer thread and the event loop, which is where a group's time went.
- ``PRAGMA data_version`` tells the writer when another connection committed, so its caches
  never outlive another writer's changes.
- A caller on a plain thread (``append_blocking``) commits its own job on its own thread when
  nothing is queued or being committed (:meth:`Writer.commit_inline`): two thread crossings fewer,
  which were a fifth of a single-threaded caller's time (docs/performance.md, section 14). One lock
  is held by whoever commits, so groups still commit one at a time, and a job goes ahead of no job
  queued before it.
- The thread must outlive anything a caller does: a commit notice to a loop that has closed is
  dropped (nobody is left to tell). Should it stop all the same, it says why in ``failure`` and
  fails every queued job, and the store fails later appends with that reason instead of queueing
  them for nobody.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import NamedTuple

from ...errors import PerhapError, StorageUnavailable
from ...ids import utc_timestamp
from ...model import AppendResult, Event
from ...store.groupcommit import STOP, settle_group, take_group
from ...store.job import WriteJob
from .queries import make_event
from .ring import Ring
from .schema import is_busy
from .writes import Deferred, Undeferrable, WriterState

log = logging.getLogger("perhap.sqlite")

#: Called on the committing thread after each commit that stored events, in commit order, with the
#: events it stored (None: unknown), the last seq it wrote, and whether the group holds jobs of an
#: event loop (their callers are answered after the notice reaches the loop).
CommitHook = Callable[[list[Event] | None, int | None, bool, int], None]


class JobOutcome(NamedTuple):
    """A job and what became of it: its result, or the error to raise to its caller."""

    job: WriteJob
    outcome: AppendResult | BaseException


def apply_together(state: WriterState, jobs: list[WriteJob], ts: str, *,
                   cached: bool = False) -> list[JobOutcome] | None:
    """The fast path: every job's events in a few INSERTs (``cached``: the caches hold every
    entity the jobs name, so there is nothing to look up first).

    A job that fails a check (version or event-id conflict) raises before it writes anything, so
    no savepoint is needed to undo it. Any SQLite error, or a failing job that did write, returns
    None: the caller rolls back and takes :func:`apply_each` instead.
    """
    conn = state.conn
    deferred = Deferred()
    outcomes: list[JobOutcome] = []
    try:
        if len(jobs) > 1 and not cached:  # (one job: the same one look-up as it reaches its entity)
            state.look_up_entities(jobs, deferred)
        for job in jobs:
            changes = conn.total_changes
            try:
                outcomes.append(JobOutcome(job, state.apply(job, ts, deferred)))
            except PerhapError as exc:
                if conn.total_changes != changes:
                    return None
                outcomes.append(JobOutcome(job, exc))
        state.flush(deferred)
    except (sqlite3.Error, Undeferrable) as exc:
        if is_busy(exc):  # another process's lock: job by job would wait as long again for each
            raise
        return None
    finally:
        state.deferred = None
    return outcomes


def decided_by_caches(state: WriterState, jobs: list[WriteJob]) -> bool:
    """Whether a group can be written as one INSERT, which SQLite commits as a transaction of its
    own, as durably as a COMMIT: the caches decide every job (:meth:`WriterState.cached`) and its
    rows fit one statement (64, or fewer if the connection allows fewer bound parameters).

    That spares ``BEGIN``, ``PRAGMA data_version`` and ``COMMIT``: each SQLite call lets go of the
    GIL, and the writer takes it back only when the event loop lets it, so under HTTP load a group's
    time went mostly to these waits (docs/performance.md, section 15). Without the data_version
    check the caches may be stale should another connection have written: then the INSERT takes a
    seq that connection took (each writer numbers on from the largest), the unique index refuses
    it, and nothing of the statement stands.
    """
    return sum(len(job.batch) for job in jobs) <= state.sql.one_statement_rows and all(map(state.cached, jobs))


def apply_each(state: WriterState, jobs: list[WriteJob], ts: str) -> list[JobOutcome]:
    """The careful path: each job in its own savepoint, so a failure undoes that job alone."""
    conn = state.conn
    outcomes: list[JobOutcome] = []
    for job in jobs:
        conn.execute("SAVEPOINT job")
        seq = state.seq  # where the job's seqs begin: a job undone gives them back
        try:
            result = state.apply(job, ts)
            conn.execute("RELEASE job")
            outcomes.append(JobOutcome(job, result))
        except PerhapError as exc:  # a conflict: undo whatever this job wrote
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            state.heads.clear()  # (a job takes numbers only once written: this is a safety net)
            state.seq = seq
            outcomes.append(JobOutcome(job, exc))
        except sqlite3.Error as exc:  # a failure of this job only: undo it alone
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            state.forget()
            state.seq = seq
            outcomes.append(JobOutcome(job, StorageUnavailable(f"write failed: {exc}")))
    return outcomes


class Writer:
    """The thread that takes jobs from ``jobs`` in groups and commits each group at once."""

    def __init__(self, conn: sqlite3.Connection, jobs: queue.SimpleQueue[object], ring: Ring,
                 on_commit: CommitHook, file_problem: Callable[[], str | None] = lambda: None,
                 marker: Callable[[], int] = lambda: 0) -> None:
        self.state = WriterState(conn)
        self.jobs, self.ring, self.on_commit = jobs, ring, on_commit
        #: The file's commit marker (shared by the stores of this process on it), read before a
        #: group's first statement and handed to ``on_commit`` with the notice.
        self.marker = marker
        #: Why the file the connection writes is no longer the store's (deleted, renamed or
        #: replaced while open), or None: asked after each commit, before anyone is answered.
        self.file_problem = file_problem
        #: Held by whoever takes and commits a group: the writer thread, or a caller committing
        #: its own job (commit_inline). The connection and ``state`` are used under it only.
        self.commit_lock = threading.Lock()
        self._stopped = False  # the connection is closed (under commit_lock)
        #: The writer thread holds a job from the queue (it may still wait for commit_lock): a
        #: caller on a plain thread then queues behind it rather than taking the lock first.
        self._taking = False
        # Group-commit statistics, read by benchmarks and metrics.
        self.groups_committed = 0
        self.events_committed = 0
        #: Why the thread stopped before it was told to (None while it runs or after a clean stop).
        self.failure: str | None = None
        self.thread = threading.Thread(target=self.run, name="perhap-sqlite-writer", daemon=True)

    def run(self) -> None:
        try:
            self.take_groups()
        except BaseException as exc:
            self.failure = f"the SQLite writer thread stopped: {exc!r}"
            self.fail_queued()
            log.exception("the SQLite writer thread stopped; appends now fail (restart the server)")
        finally:
            with self.commit_lock:  # not under a caller's inline commit
                self._stopped = True
                self.state.conn.close()

    def take_groups(self) -> None:
        get, get_nowait = self.jobs.get, self.jobs.get_nowait
        while True:
            first = get()
            if first is STOP:
                break
            assert isinstance(first, WriteJob)
            self._taking = True
            with self.commit_lock:
                # What queued up meanwhile, bounded so one transaction stays short.
                group, stop = take_group(first, get_nowait)
                self.commit_group(group)
            self._taking = False
            if stop:
                break

    def commit_inline(self, job: WriteJob) -> bool:
        """Commit ``job`` on the calling thread if nothing is queued or being committed (else
        False: queue it). For a caller on a plain thread, which would otherwise wake this thread
        and be woken by it. At most one such commit goes ahead of a job the writer thread has
        just taken from the queue (in the moment before it marks itself taking): the two were
        submitted at the same moment, and the writer is never kept waiting by a stream of them."""
        if self._taking or not self.jobs.empty() or not self.commit_lock.acquire(blocking=False):
            return False
        try:
            if self._taking or self._stopped or self.failure is not None or not self.jobs.empty():
                return False
            try:
                self.commit_group([job])
            except BaseException:  # the caller was interrupted (KeyboardInterrupt) mid-group
                self.abandon()
                raise
            return True
        finally:
            self.commit_lock.release()

    def abandon(self) -> None:
        """Undo a group's open transaction (a failure, or an interrupted caller), and read every
        cache and the last seq again at the next group, whatever the failure left."""
        state = self.state
        try:
            if state.conn.in_transaction:
                state.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        state.forget()
        state.last_seq = None

    def fail_queued(self) -> None:
        """Settle every job still queued with the failure (the store fails later ones itself)."""
        error = StorageUnavailable(self.failure or "the SQLite writer thread stopped")
        while True:
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, WriteJob):
                settle_group([(item, error)], from_thread=True)

    def commit_group(self, jobs: list[WriteJob]) -> None:
        """Decide every job, commit them all with one fsync, then tell the loop and the callers."""
        state = self.state
        conn = state.conn
        outcomes: list[JobOutcome] | None
        if self.failure is not None:  # the file went (below): nothing more is written to it
            settle_group([JobOutcome(job, StorageUnavailable(self.failure)) for job in jobs], from_thread=True)
            return
        marker_before = self.marker()
        try:
            ts = utc_timestamp()
            if decided_by_caches(state, jobs):
                outcomes = apply_together(state, jobs, ts, cached=True)  # its INSERT is its own transaction
            else:
                conn.execute("BEGIN IMMEDIATE")
                state.check_external_writes()  # inside the write lock: no commit can slip in after it
                outcomes = apply_together(state, jobs, ts)
                if outcomes is not None:
                    conn.execute("COMMIT")
            if outcomes is None:  # a statement failed: undo the group, redo it one job at a time
                self.abandon()  # (and take back the numbers it took)
                conn.execute("BEGIN IMMEDIATE")
                state.check_external_writes()  # (the seq back to the last committed, too)
                outcomes = apply_each(state, jobs, ts)
                conn.execute("COMMIT")
        except Exception as exc:
            # The transaction itself failed (disk full, an I/O error; SQLite may have rolled it
            # back on its own): nothing in it is durable.
            self.abandon()
            if is_busy(exc):
                # Another connection holds the file's write lock past the busy timeout: the whole
                # group fails once (each job retried alone waited as long again, and again).
                error = StorageUnavailable("the SQLite file's write lock is held by another connection (a "
                                           "write transaction left open in another process?); nothing was written")
            elif len(jobs) > 1:
                # It may be one job's doing (its events did not fit on the disk): each job alone,
                # in a transaction of its own, so that the others are not failed with it. (A job
                # whose failed commit did reach the disk cannot be stored twice: its event ids are
                # fixed, and unique in the table.)
                for job in jobs:
                    self.commit_group([job])
                return
            else:
                error = StorageUnavailable(f"commit failed: {exc}")
            outcomes = [JobOutcome(job, error) for job in jobs]
        else:
            problem = self.file_problem()
            if problem is not None:  # committed to a file its name no longer opens: lost at the next open
                self.failure = problem
                log.error("%s", problem)
                settle_group([JobOutcome(job, StorageUnavailable(problem)) for job in jobs], from_thread=True)
                return
            written = sum(len(job.batch) for job, result in outcomes
                          if isinstance(result, AppendResult) and result.created)
            self.groups_committed += 1
            self.events_committed += written
            if written:
                try:
                    notice = self.ring_events(outcomes)
                except BaseException:  # a bug: the group is committed, so answer it before stopping
                    settle_group(outcomes, from_thread=True)
                    raise
                self.on_commit(*notice, any(job.loop is not None for job in jobs), marker_before)
        # One wake-up per event loop for the whole group, queued after the commit notification.
        settle_group(outcomes, from_thread=True)

    def ring_events(self, outcomes: list[JobOutcome]) -> tuple[list[Event] | None, int | None]:
        """The events a commit stored, with their seqs, for the ring (None: reset the ring).

        The writer numbers a group's events on from the last seq committed, in the order of the
        jobs and of each job's events (:mod:`.writes`); the last seq it took confirms the count.
        """
        state = self.state
        last, first = state.seq, state.last_seq
        state.last_seq = last
        if first is None or not self.ring.wants_events():
            return None, last
        events: list[Event] = []
        seq = first
        make = make_event
        for job, result in outcomes:
            if isinstance(result, AppendResult) and result.created:
                realm, domain, entity = job.realm, job.domain, job.entity
                for e, a in zip(job.batch, result.events):
                    seq += 1
                    events.append(make(e.event_id, realm, domain, a.entity or entity, e.type, a.version,
                                       a.timestamp, e.data_json, e.meta_json, a.position, seq))
        if seq != last:
            return None, last
        return events, last
