"""One process owns a SQLite store file: an exclusive lock on a file beside it while a store is open.

Why: a second process writing the file is neither safe for its users nor visible to this one's
subscribers. Its commits reach this process's live streams only at the next poll (5 s), its
transactions make this process's appends wait on SQLite's write lock, and ``--workers`` above 1
is refused for SQLite for the same reasons. So a second process that opens the file is refused
at open, with a message naming the lock file and what to do.

How: ``flock(LOCK_EX | LOCK_NB)`` on ``<database>-lock``. The kernel drops the lock when the
process ends, however it ends (a SIGKILL included), so a restarted server never finds a stale
lock. A separate file, not the database itself: SQLite keeps its own POSIX locks on the database,
and closing any other descriptor of that file would silently drop them.

Several stores on one file in one process share the lock (tests open a second store to play
another writer); the lock is released when the last of them closes.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading

from ...errors import StorageUnavailable

#: The lock file is the database's path with this suffix, beside SQLite's ``-wal`` and ``-shm``.
SUFFIX = "-lock"

_guard = threading.Lock()
_held: dict[tuple[int, int], FileLock] = {}  # by the lock file's (device, inode)


class FileLock:
    """This process's hold on one store file's lock, shared by the stores open on that file."""

    def __init__(self, key: tuple[int, int], fd: int) -> None:
        self.key, self.fd, self.users = key, fd, 1
        #: Changes with every commit that stored events, by any store of this process on the file;
        #: as only this process writes the file, an unchanged marker means unchanged data.
        self.commit_marker = 0
        self._markers = itertools.count(1)  # next() is atomic: writers of two stores never share one

    def committed(self) -> None:
        """A commit that stored events (called on the committing thread, see SQLiteStore)."""
        self.commit_marker = next(self._markers)

    def release(self) -> None:
        """One store is done with the file; the last one closes the descriptor (and the lock)."""
        with _guard:
            self.users -= 1
            if self.users == 0:
                del _held[self.key]
                os.close(self.fd)


def lock_path(path: str) -> str:
    """The lock file of the database at ``path``."""
    return path + SUFFIX


def acquire(path: str) -> FileLock:
    """Hold the lock of the database at ``path``; StorageUnavailable if another process holds it."""
    name = lock_path(path)
    with _guard:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageUnavailable(f"cannot open the lock file {name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            held = _held.get(key)
            if held is not None:  # another store of this process has the file open
                os.close(fd)
                held.users += 1
                return held
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                by = f"process {holder}" if holder.isdigit() else "another process"
                raise StorageUnavailable(
                    f"{path} is in use by {by}, which holds its lock file {name}. One process owns "
                    f"a SQLite store: stop that process first (or talk to it over HTTP), or use "
                    f"PostgreSQL for a store shared by several processes") from None
            # Who holds it, for the message above (informative only: the flock is the lock).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageUnavailable(f"cannot lock {name}: {exc.strerror}") from None
        lock = _held[key] = FileLock(key, fd)
        return lock
