"""``perhap export``, ``import`` and ``copy``: whole stores, opened directly, or served by a
``perhap serve`` at an http(s):// URL, with a bearer token (see :mod:`perhap.transfer`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import PerhapError
from .common import TOKEN_ENV, CommandError, bearer_token, check_url, client_error, parse_scope

if TYPE_CHECKING:
    from ..model import Scope
    from ..transfer.progress import Progress
    from ..transfer.reading import TransferStore

FROM_TOKEN_ENV = "PERHAP_FROM_TOKEN"
TO_TOKEN_ENV = "PERHAP_TO_TOKEN"
_TOKEN_HINT = f"give the token with --token or {TOKEN_ENV}"
_COPY_TOKEN_HINT = f"give the tokens with --from-token and --to-token, or {FROM_TOKEN_ENV} and {TO_TOKEN_ENV}"


def _is_server(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def check_target(url: str, option: str, token: str | None, token_option: str, *, must_exist: bool) -> str:
    """A store URL (checked) or a server's; a token given for a store is a usage error."""
    if _is_server(url):
        return check_url(url, option)
    if token is not None:
        raise CommandError(f"{token_option} is for a server (an http:// or https:// {option}), "
                           f"not for a store URL", 2)
    return check_db(url, option, must_exist=must_exist)


def open_target(url: str, token: str | None) -> AbstractAsyncContextManager[TransferStore]:
    """A store opened directly, or the server at an http(s):// ``url`` through its API."""
    if _is_server(url):
        from ..transfer.remote import open_remote

        return open_remote(url, token)
    from ..backends import open_store

    return open_store(url)


def check_db(url: str, option: str, *, must_exist: bool) -> str:
    """A store URL, checked before anything opens it; usage error when it is bad."""
    from ..backends import check_store_url

    try:
        scheme, options = check_store_url(url)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}", 2) from None
    # Opening a SQLite path creates the file: reading from a typo would export an empty store.
    if must_exist and scheme == "sqlite" and not os.path.exists(options["path"]):
        raise CommandError(f"{option}: there is no SQLite store at {options['path']}")
    return url


def _same_store(a: str, b: str) -> bool:
    """Whether two (checked) URLs name one store: the same text, or one SQLite file spelled two
    ways (relative and absolute, through a link, with other options)."""
    if a == b:
        return True
    if _is_server(a) or _is_server(b):
        return False
    from ..backends import parse_store_url

    (scheme_a, options_a), (scheme_b, options_b) = parse_store_url(a), parse_store_url(b)
    if scheme_a != "sqlite" or scheme_b != "sqlite":
        return False
    path_a: str = options_a["path"]
    path_b: str = options_b["path"]
    if os.path.exists(path_a) and os.path.exists(path_b):
        return os.path.samefile(path_a, path_b)
    return os.path.realpath(path_a) == os.path.realpath(path_b)


def _overwrites_store(url: str, output: str) -> bool:
    """Whether a dump written at ``output`` (moved over it once whole) would replace the SQLite
    store of ``url``, or a file beside it (its WAL, shared memory or lock)."""
    if _is_server(url):
        return False
    path = os.path.abspath(output)
    return any(path.endswith(suffix) and _same_store(url, f"sqlite:///{path.removesuffix(suffix) if suffix else path}")
               for suffix in ("", "-wal", "-shm", "-lock"))


_RUN_AGAIN = "(running the same command again is safe: an import or a copy goes on where it stopped)"


def run_store_job(job: Coroutine[Any, Any, int], token_hint: str = _TOKEN_HINT) -> int:
    """Run a coroutine using stores or servers; their errors and transfer errors become one line
    (a server's with where it answered: a copy may talk to two)."""
    import asyncio

    from ..client.errors import APPEND_RETRY_HINT, ConnectionFailed, PerhapClientError
    from ..transfer.dump import TransferError

    try:
        return asyncio.run(job)
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    except PerhapClientError as exc:
        if isinstance(exc, ConnectionFailed):  # (the client's advice is for an append)
            error = client_error(exc)
            raise CommandError(str(error).replace(APPEND_RETRY_HINT, _RUN_AGAIN), error.status) from None
        if exc.url is None:
            raise client_error(exc) from None
        import httpx

        where = httpx.URL(exc.url).copy_with(path="/", query=None, fragment=None)
        hint = f"; {token_hint}" if exc.status == 401 else ""
        raise CommandError(f"{exc.one_line()} (from {str(where).rstrip('/')}{hint})") from None
    except PerhapError as exc:
        raise CommandError(f"{exc.title}: {exc.detail}") from None
    except ValueError as exc:  # open_store: a backend's driver missing, a bad option
        raise CommandError(str(exc)) from None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise CommandError(f"{exc.__class__.__name__}: {exc}") from None


def run_export(args: argparse.Namespace) -> int:
    """Write a dump of a store (or a realm, domain or entity) to stdout or ``--output``."""
    from ..transfer.dump import TYPE_SCOPE_REFUSED
    from ..transfer.export import count_events, export_dump
    from ..transfer.progress import Progress

    scope = None
    if args.scope is not None:
        scope = parse_scope(args.scope)
        if scope.type is not None:
            raise CommandError(TYPE_SCOPE_REFUSED, 2)
    db = check_target(args.db, "--db", args.token, "--token", must_exist=True)
    token = bearer_token(args.token) if _is_server(db) else None
    if args.output and _overwrites_store(db, args.output):
        raise CommandError(f"--output {args.output} is the store's own file (or one of its companions): "
                           "write the dump elsewhere", 2)

    async def job() -> int:
        async with open_target(db, token) as store:
            progress = Progress("exporting")
            if progress.enabled:  # a bar on a terminal, where the store can count the events
                progress.total_events = await count_events(store, scope)
            if args.output:
                await _export_to_file(store, args.output, scope, progress)
            else:
                await export_dump(store, sys.stdout.buffer, scope, progress=progress)
            progress.close()
        return 0

    return run_store_job(job())


async def _export_to_file(store: TransferStore, path: str, scope: Scope | None, progress: Progress) -> None:
    """Write the dump beside ``path`` and move it there once whole: an export that fails (a store
    that cannot open or refuses a read, a dropped connection) leaves no file, or the old one,
    rather than a dump that would import as fewer events than the store holds."""
    from ..transfer.export import export_dump

    if os.path.isdir(path):  # noqa: ASYNC240 (as the open below) found now, not after the whole dump is written
        raise CommandError(f"cannot write {path}: it is a directory; give a file's path")
    # A symbolic link is written through, as the shell's > does: replaced, the link would become
    # a file of its own, and what it points to would keep the old dump.
    target = os.path.realpath(path)  # noqa: ASYNC240
    try:
        mode = os.stat(path).st_mode  # (through links: /dev/stdout's real path is no name to open)
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        # A device, a pipe, a socket (/dev/stdout, >(gzip), /dev/null): written into, as by the
        # shell's >. Renamed over, it became a plain file (as root, -o /dev/null replaced /dev/null).
        try:
            with open(path, "wb") as out:  # noqa: ASYNC230 (a pipe opens when read, as for the shell's >)
                await export_dump(store, out, scope, progress=progress)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None
        return
    # A name of this export's own: two exports to one file at once (overlapping cron runs) each
    # write a whole dump and the last to finish replaces the file. (One fixed name had the second
    # truncate the first's dump midway, which then moved a dump with a hole in place, exit 0.)
    try:
        fd, partial = tempfile.mkstemp(prefix=f"{os.path.basename(target)}.", suffix=".partial",
                                       dir=os.path.dirname(target))
    except OSError as exc:  # a directory that is not there, no permission: said as the file's, not .partial's
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() makes a file (mkstemp's is the owner's alone)
    else:  # the file's own mode, as the shell's > keeps it (a private dump stays private)
        os.fchmod(fd, stat.S_IMODE(mode))
    out = os.fdopen(fd, "wb")
    try:
        with out:
            await export_dump(store, out, scope, progress=progress)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def run_import(args: argparse.Namespace) -> int:
    """Import a dump (a file, or stdin for ``-``) into a store; print what was written."""
    from ..transfer.dump import not_empty
    from ..transfer.importer import import_dump
    from ..transfer.progress import Progress, file_size

    db = check_target(args.db, "--db", args.token, "--token", must_exist=False)
    token = bearer_token(args.token) if _is_server(db) else None
    name = "stdin" if args.dump == "-" else args.dump

    async def job(stream: BinaryIO) -> int:
        progress = Progress("importing", total_bytes=file_size(stream))
        lines = not_empty(stream, name)  # (an empty dump makes no store)
        async with open_target(db, token) as store:
            stats = await import_dump(store, lines, name, progress=progress)
        progress.close()
        realms = len(stats.realms)
        print(f"imported {stats.imported:,} events into {realms:,} realm{'s' if realms != 1 else ''}"
              f" ({stats.present:,} were there already)")
        return 0

    with _open_dump(args.dump) as stream:
        return run_store_job(job(stream))


def _open_dump(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", 2) from None


def run_copy(args: argparse.Namespace) -> int:
    """Copy a whole store into another, resumably, then verify every realm."""
    from ..transfer.copy import copy_store
    from ..transfer.progress import Progress
    from ..transfer.reading import check_every_realm_shown

    source = check_target(args.source, "--from", args.from_token, "--from-token", must_exist=True)
    destination = check_target(args.destination, "--to", args.to_token, "--to-token", must_exist=False)
    # Each side its own token: one set for a server must not be sent to another ($PERHAP_TOKEN is not read).
    from_token = bearer_token(args.from_token, "--from-token", FROM_TOKEN_ENV) if _is_server(source) else None
    to_token = bearer_token(args.to_token, "--to-token", TO_TOKEN_ENV) if _is_server(destination) else None
    if _same_store(source, destination):
        raise CommandError("--from and --to are the same store", 2)
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be 1 or more", 2)

    quiet = False

    def say(line: str) -> None:
        # What a copy prints tells how it goes; the copy is the work. A reader that goes away
        # (`| head -1`) stops the telling, not the copy, whose exit status still says how it ended.
        nonlocal quiet
        if quiet:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            quiet = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (nothing left to flush at exit)

    async def job() -> int:
        async with open_target(source, from_token) as src:
            # The source answers before the destination is opened: a server that is down, a token
            # it refuses or one that reads one realm leaves no empty store behind at a new
            # destination (as import). A server is asked once (GET /keys); a store is open already.
            await check_every_realm_shown(src, "a copy")
            async with open_target(destination, to_token) as dst:
                report = await copy_store(src, dst, limit=args.limit, progress=Progress("copying"), log=say)
        stats = report.stats
        if not report.complete:
            say(f"stopped after {stats.imported + stats.present:,} events (--limit); "
                f"run the same command again to go on")
            return 0
        for check in report.checks:
            (n1, h1), (n2, h2) = check.source, check.destination
            if check.ok:
                say(f"verified {check.realm}: {n1:,} event{'' if n1 == 1 else 's'}, sha256 {h1}")
            else:
                say(f"MISMATCH {check.realm}: source {n1:,} events sha256 {h1}, "
                    f"destination {n2:,} events sha256 {h2}")
        for realm in report.extra_realms:
            say(f"note: the destination also holds realm {realm}, which the source does not (not checked)")
        bad = sum(not c.ok for c in report.checks)
        total = sum(c.source.events for c in report.checks)
        if bad:
            raise CommandError(f"copy verification failed: {bad} of {len(report.checks)} realms differ")
        realms = f"{len(report.checks):,} realm{'' if len(report.checks) == 1 else 's'}"
        # There already: what an earlier run copied (skipped by resuming after it) or this run found.
        say(f"copy verified: {realms}, {total:,} event{'' if total == 1 else 's'} "
            f"({stats.imported:,} copied now, {total - stats.imported:,} there already)")
        return 0

    return run_store_job(job(), _COPY_TOKEN_HINT)
