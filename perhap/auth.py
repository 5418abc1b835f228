"""Bearer tokens per realm: the token file, and the checks the HTTP app makes with it.

The file holds only SHA-256 hashes of tokens, so reading it does not let anyone act as a client.
A token is random (256 bits), so an unsalted fast hash is enough: there is nothing to guess.
The server looks tokens up by hash in a dict and re-reads the file when it changes (checked at
most once a second), so ``perhap token add`` and ``revoke`` take effect without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from time import time as wall_clock  # (the file system's clock, not a monotonic one)

import orjson

from .errors import InvalidInput
from .jsoncodec import refuse_duplicate_keys

log = logging.getLogger("perhap.auth")

PERMISSIONS = ("read", "write", "admin")  # each implies the ones before it
_RANK = {p: i for i, p in enumerate(PERMISSIONS)}
ANY_REALM = "*"
TOKEN_PREFIX = "perhap_"


class AuthFileError(Exception):
    """The token file cannot be read or written: one line for the CLI or the log."""


@dataclass(frozen=True)
class Grant:
    id: str
    hash: str
    realm: str
    permission: str
    created: str = ""

    def allows(self, realm: str | None, permission: str) -> bool:
        """``realm`` None means "any realm will do" (used for /_metrics)."""
        if _RANK[self.permission] < _RANK[permission]:
            return False
        return realm is None or self.realm == ANY_REALM or self.realm == realm


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- the file


_REQUIRED = ("id", "hash", "realm", "permission")
_FIELDS = frozenset((*_REQUIRED, "created"))
_HEX = frozenset("0123456789abcdef")


def load_grants(path: str) -> list[Grant]:
    """The grants in FILE; a missing file has none. Anything but a whole, valid token file is an
    AuthFileError (never another exception: the server fails closed on it, the CLI prints it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AuthFileError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not raw.strip():
        return []
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AuthFileError(f"the token file {path} is not a perhap token file: {exc}") from None
    try:
        refuse_duplicate_keys(raw, data)  # ("permission" twice: which one would a reader believe?)
    except InvalidInput as exc:
        raise AuthFileError(f"the token file {path} is not a perhap token file: {exc.detail}") from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise AuthFileError(f'the token file {path} is not a perhap token file: no "tokens" list')
    grants = [_grant(path, n, item) for n, item in enumerate(items)]
    # Two entries of one id or one token: the server would take the last, and revoking by id or
    # token would remove the first and say so while the token still worked.
    for field in ("id", "hash"):
        seen: set[str] = set()
        for n, grant in enumerate(grants):
            value = getattr(grant, field)
            if value in seen:
                what = f"the id {value[:20]!r}" if field == "id" else "the token (hash) of an earlier entry"
                raise AuthFileError(f"the token file {path} has a bad entry: entry {n} repeats {what}")
            seen.add(value)
    return grants


def _grant(path: str, n: int, item: object) -> Grant:
    """Entry ``n`` of the file, checked: an object with string fields id, hash (64 lowercase hex
    digits), realm, permission (a known one) and optionally created, and nothing else."""
    problem = _entry_problem(item)
    if problem is None and isinstance(item, dict):
        return Grant(**item)
    named = f" ({item['id'][:20]!r})" if isinstance(item, dict) and isinstance(item.get("id"), str) else ""
    raise AuthFileError(f"the token file {path} has a bad entry: entry {n}{named} {problem}")


def _entry_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "is not an object"
    if missing := [k for k in _REQUIRED if k not in item]:
        return f"has no {', '.join(missing)}"
    if extra := sorted(str(k) for k in item if k not in _FIELDS):
        return f"has unknown field(s) {', '.join(extra)}"
    if bad := [k for k, v in item.items() if not isinstance(v, str) or (k in _REQUIRED and not v)]:
        return f"has a field that is not a non-empty string: {', '.join(bad)}"
    if item["permission"] not in _RANK:
        return f"has an unknown permission {item['permission'][:20]!r}"
    if len(item["hash"]) != 64 or not _HEX.issuperset(item["hash"]):
        return "has a hash that is not 64 lowercase hex digits"
    return None


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the exclusive lock of the token file: ``token add`` and ``revoke`` read, change and
    replace the file under it, so concurrent ones (other processes too) never lose an update. The
    lock is a flock on a sidecar file (FILE.lock, mode 0600, never removed: removing it would let
    two holders lock different files); readers (the server) need none, the replace is atomic."""
    if os.path.isdir(path):  # (said before a FILE.lock is made beside the directory)
        raise AuthFileError(f"the token file {path} is a directory; give a file's path")
    try:  # (the file a link names: one lock whichever name a process uses)
        fd = os.open(os.path.realpath(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AuthFileError(f"cannot lock the token file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_grants(path: str, grants: list[Grant]) -> None:
    """Write atomically (a reader never sees half a file), readable by the owner only."""
    body = orjson.dumps({"tokens": [g.__dict__ for g in grants]}, option=orjson.OPT_INDENT_2) + b"\n"
    # A symbolic link is written through: replaced, it would become a file of its own, and the file
    # it named (the one a server may read) would keep the old tokens.
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".perhap-tokens-", dir=directory)
    except OSError as exc:
        raise AuthFileError(f"cannot write the token file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def add_token(path: str, realm: str, permission: str) -> tuple[str, Grant]:
    """Create a token; returns it (shown once, never stored) and its grant."""
    if permission not in _RANK:
        raise AuthFileError(f"permission must be one of {', '.join(PERMISSIONS)}")
    with _locked(path):
        grants = load_grants(path)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        ids = {g.id for g in grants}
        gid = secrets.token_hex(4)
        while gid in ids:
            gid = secrets.token_hex(4)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        grant = Grant(gid, hash_token(token), realm, permission, created)
        save_grants(path, [*grants, grant])
    return token, grant


def revoke_token(path: str, which: str) -> Grant:
    """Remove a grant given its id, or the token itself."""
    digest = hash_token(which)
    with _locked(path):
        grants = load_grants(path)
        for g in grants:
            if g.id == which or hmac.compare_digest(g.hash, digest):
                save_grants(path, [x for x in grants if x is not g])
                return g
    # A token is never echoed, not even one that matches nothing.
    named = "that token (not shown)" if which.startswith(TOKEN_PREFIX) else f"id {which!r}"
    raise AuthFileError(f"no token with {named} in {path}")


# --------------------------------------------------------------------------- the server side


_Stamp = tuple[int, int, int]  # inode, size, mtime: the file changed when this does
_UNREAD: _Stamp = (-1, -1, -1)  # no file has it: the file is looked at again
#: A file modified this recently (seconds) may be edited again within the same tick of the file
#: system's clock (coarse: a few ms on Linux, 2 s on FAT) and keep its size: the stamp cannot tell,
#: so such a file is read again at every look until its mtime is older than this.
_RACY = 2.0


class Authenticator:
    """Tokens of one file, re-read when the file changes (stat checked at most every ``recheck`` s)."""

    def __init__(self, path: str, recheck: float = 1.0) -> None:
        self.path = path
        self.recheck = recheck
        self._by_hash: dict[str, Grant] = {}
        self._stamp: _Stamp | None = None
        self._checked = float("-inf")
        self._failed: str | None = None  # the last load's error, logged once
        self._reload(self._stat())

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError:  # cannot even stat it: loading it fails too (closed), or is tried again
            return _UNREAD
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload(self, stamp: _Stamp | None) -> None:
        try:
            grants = load_grants(self.path)
        except Exception as exc:  # whatever went wrong: fail closed
            # A broken file must not keep a revoked token alive: no token is valid until a good
            # file is read. The stamp is not kept, so the file is read again at the next look
            # (a passing failure, such as too many open files, does not last until the file
            # changes); the error is logged once, not at every look.
            reason = str(exc)
            if not isinstance(exc, AuthFileError):
                reason = f"cannot load the token file {self.path}: {exc!r}"
            self._by_hash = {}
            self._stamp = _UNREAD
            if reason != self._failed:
                self._failed = reason
                log.error("%s; every request with a token is refused until it is fixed", reason)
            return
        self._by_hash = {g.hash: g for g in grants}
        self._stamp = stamp if stamp is None or wall_clock() - stamp[2] / 1e9 >= _RACY else _UNREAD
        self._failed = None
        log.info("loaded %d token(s) from %s", len(grants), self.path)

    def refresh(self, since: float | None = None) -> None:
        """Look at the file if the last look is ``recheck`` seconds old, or (``since``, a
        time.monotonic() value) came before that moment."""
        now = time.monotonic()
        if now - self._checked >= self.recheck or (since is not None and self._checked <= since):
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._reload(stamp)

    def lookup(self, token: str) -> Grant | None:
        self.refresh()
        digest = hash_token(token)
        grant = self._by_hash.get(digest)
        if grant is None or not hmac.compare_digest(grant.hash, digest):
            return None
        return grant

    def still_valid(self, grant: Grant, since: float) -> bool:
        """For long-lived streams, before each send: has the grant been revoked (or changed)?
        ``since`` is when the read that found the events to send was done (time.monotonic()):
        unless the file was looked at after it, it is looked at now, so a revocation made
        before those events were committed is always seen, and a stream of a revoked token ends
        before it carries another event. Streams that send what one read found share one look.
        (A time-based cache, as requests have, let an event committed within it slip through.)"""
        self.refresh(since)
        return self._by_hash.get(grant.hash) == grant

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> Grant | None:
        """The grant of the request's bearer token; None when absent or unknown."""
        sent = [value for key, value in headers if key == b"authorization"]
        if len(sent) != 1:  # none, or two (which would a proxy in front have checked?): no token
            return None
        # HTTP's own whitespace only (str.strip() also took U+0085 and U+00A0 off a latin-1 value:
        # a token with one of them added still passed).
        scheme, _, token = sent[0].decode("latin-1").strip(" \t").partition(" ")
        token = token.strip(" \t")
        if scheme.lower() != "bearer" or not token:
            return None
        return self.lookup(token)
