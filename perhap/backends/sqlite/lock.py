"""One process owns a SQLite store file, by whatever name it is opened: exclusive locks while a
store is open.

Why: a second process writing the file is neither safe for its users nor visible to this one's
subscribers. Its commits reach this process's live streams only at the next poll (5 s), its
transactions make this process's appends wait on SQLite's write lock, and ``--workers`` above 1
is refused for SQLite for the same reasons. Through a hard link it is worse: SQLite names the
write-ahead log after the name opened, so each name has its own ``-wal`` file and neither process
sees the other's commits (a corruption risk). So a second process that opens the file is refused
at open, with a message naming the holder and what to do.

How: two ``flock(LOCK_EX | LOCK_NB)``, which the kernel drops when the process ends, however it
ends (a SIGKILL included), so a restarted server never finds a stale lock.

- On ``<database>-lock``, the database's real path (symlinks resolved, as SQLite resolves them)
  with a suffix: it holds the owner's process id, for the message.
- On a descriptor of the database file itself, which follows the file, not its name: a hard
  link, or a name the first lock missed, is refused too. On Linux flock locks and the POSIX
  (fcntl) locks SQLite takes are independent (except on network file systems, where SQLite's WAL
  mode does not work anyway). But closing any descriptor of a file drops every POSIX lock the
  process holds on it, SQLite's included: the descriptor is closed only when this process holds
  no POSIX lock on the file (every store's connections are closed by then; one that is not a
  store's may be open), else it is unlocked and kept until then (checked at the next acquire).
  Why both: the lock file names the holder; the database's lock cannot, and it alone may not be
  taken on a file that does not exist yet (it is created for it, as SQLite would).

Several stores on one file in one process share the locks (tests open a second store to play
another writer), by any symlink; they are released when the last of them closes. A hard link to a
file a store of this process holds is refused (SQLite would give it a ``-wal`` file of its own).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading

from ...errors import StorageUnavailable

#: The lock file is the database's real path with this suffix, beside SQLite's ``-wal`` and ``-shm``.
SUFFIX = "-lock"

_guard = threading.Lock()
_held: dict[tuple[int, int], FileLock] = {}  # by the lock file's (device, inode)
_files: dict[tuple[int, int], FileLock] = {}  # by the database file's (device, inode)
#: Descriptors of database files no store holds, kept open (unlocked) while this process held
#: POSIX locks on the file: closing them would have dropped those locks (see the module's doc).
_parked: list[tuple[tuple[int, int], int]] = []


def _forget_after_fork() -> None:
    """A forked child holds none of its parent's stores: it must take a file's lock itself (and
    be refused while the parent holds it), and the guard may have been held by a parent's thread."""
    global _guard
    _guard = threading.Lock()
    _held.clear()
    _files.clear()
    _parked.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class FileLock:
    """This process's hold on one store file's locks, shared by the stores open on that file."""

    def __init__(self, path: str, key: tuple[int, int], fd: int, file_key: tuple[int, int], file_fd: int) -> None:
        self.path, self.key, self.fd, self.file_key, self.file_fd, self.users = path, key, fd, file_key, file_fd, 1
        #: Changes with every commit that stored events, by any store of this process on the file;
        #: as only this process writes the file, an unchanged marker means unchanged data.
        self.commit_marker = 0
        self._markers = itertools.count(1)
        self._marking = threading.Lock()  # taken and set together, the marker only grows

    def committed(self) -> int:
        """A commit that stored events (called on the committing thread, see SQLiteStore): the
        marker it set, which no other commit shares."""
        with self._marking:
            marker = self.commit_marker = next(self._markers)
        return marker

    def release(self) -> None:
        """One store is done with the file; the last one lets go of both locks."""
        with _guard:
            self.users -= 1
            if self.users == 0:
                del _held[self.key], _files[self.file_key]
                _let_go(self.file_key, self.file_fd)
                os.close(self.fd)


def lock_path(path: str) -> str:
    """The lock file of the database at ``path``: beside the file a symlink points to."""
    real = os.path.realpath(path)
    return path + SUFFIX if real == os.path.abspath(path) else real + SUFFIX


def acquire(path: str) -> FileLock:
    """Hold the locks of the database at ``path``; StorageUnavailable if another process (or
    this one, under another name) holds them."""
    name = lock_path(path)
    with _guard:
        if _parked:
            _sweep()
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
                raise _in_use(path, int(holder) if holder.isdigit() else None, f"its lock file {name}") from None
            # Who holds it, for the message above (informative only: the flock is the lock).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            file_key, file_fd = _lock_file(path)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot lock {name}: {exc.strerror}") from None
            raise
        lock = _held[key] = _files[file_key] = FileLock(path, key, fd, file_key, file_fd)
        return lock


def _lock_file(path: str) -> tuple[tuple[int, int], int]:
    """The (device, inode) of the database file and a descriptor holding its flock (under _guard)."""
    fd = None
    try:
        before = os.stat(path)
    except FileNotFoundError:  # a new store: created here, as SQLite would (an empty file is a database)
        pass
    else:  # no descriptor of a file this process holds is opened (nor closed): see the module's doc
        _refuse_another_name(path, (before.st_dev, before.st_ino))
        fd = next((fd for key, fd in _parked if key == (before.st_dev, before.st_ino)), None)
        if fd is not None:
            _parked.remove(((before.st_dev, before.st_ino), fd))
    try:
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (flock takes either; SQLite says if it may write)
        info = os.fstat(fd)
    except OSError as exc:
        if fd is not None:
            os.close(fd)  # (a descriptor of no file this process holds: fstat failed, or so did the stat)
        raise StorageUnavailable(f"cannot open {path}: {exc.strerror}") from None
    key = (info.st_dev, info.st_ino)
    try:
        _refuse_another_name(path, key)  # (the file was made, or replaced, after the stat)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as exc:
        _let_go(key, fd)
        if isinstance(exc, BlockingIOError):  # held by a process that opened the file by another name
            holders = _lock_holders("FLOCK", info.st_ino)
            raise _in_use(path, holders[0] if holders else None,
                          "a lock on the file itself (opened by another name: a hard link)") from None
        if isinstance(exc, OSError):
            raise StorageUnavailable(f"cannot lock {path}: {exc.strerror}") from None
        raise
    return key, fd


def _refuse_another_name(path: str, key: tuple[int, int]) -> None:
    other = _files.get(key)
    if other is not None:
        raise _in_use(path, os.getpid(), f"it under another name, {other.path} (a hard link)")


def _in_use(path: str, pid: int | None, holds: str) -> StorageUnavailable:
    by = f"process {pid}" if pid else "another process"
    return StorageUnavailable(
        f"{path} is in use by {by}, which holds {holds}. One process owns a SQLite store: stop that "
        f"process first (or talk to it over HTTP), or use PostgreSQL for a store shared by several processes")


def _let_go(key: tuple[int, int], fd: int) -> None:
    """Close a database file's descriptor, or unlock and keep it while closing it would drop POSIX
    locks of this process on the file (under _guard)."""
    if _posix_locked(key):
        fcntl.flock(fd, fcntl.LOCK_UN)
        _parked.append((key, fd))
    else:
        os.close(fd)


def _sweep() -> None:
    """Close the kept descriptors of files this process holds no POSIX lock on any more (under _guard)."""
    for key, fd in list(_parked):
        if not _posix_locked(key):
            _parked.remove((key, fd))
            os.close(fd)


def _posix_locked(key: tuple[int, int]) -> bool:
    """Whether this process holds POSIX locks on the file (SQLite's); True when unknown."""
    holders = _lock_holders("POSIX", key[1])
    return holders is None or os.getpid() in holders


def _lock_holders(kind: str, inode: int) -> list[int] | None:
    """The processes holding ``kind`` (FLOCK, POSIX) locks on the file with this inode number,
    from Linux's /proc/locks (None: not readable). By the inode number alone: a file system's
    device there may not be the one stat gives (btrfs), and a false match only keeps a
    descriptor open a while longer, or names a holder wrongly in a message."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    pids: list[int] = []
    suffix = f":{inode}"
    for line in lines:
        fields = line.split()  # "1: POSIX  ADVISORY  READ 4242 fe:00:9979218 0 EOF" (waiters: "1: -> ...")
        if len(fields) >= 6 and fields[1] == kind and fields[5].endswith(suffix) and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids
