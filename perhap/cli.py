"""The ``perhap`` command line: serve, tail, and the everyday client commands.

Thin by design: parse arguments, turn every expected failure into one line on stderr and a non-zero
exit code, and hand the real work to the server, the store or the client.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .limits import (DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_MAX_DEPTH, DEFAULT_MAX_HEADER,
                     DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_TOKEN)
from .store import PerhapError

DEFAULT_PORT = 8787
DEFAULT_DB = "sqlite:///./perhap.db"
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

log = logging.getLogger("perhap")


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage dump: the help says the rest
        raise CommandError(f"{self.prog}: {message} (see {self.prog} --help)", 2)


def _command(sub: Any, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
    text = "example:" if len(examples) == 1 else "examples:"
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=text + "".join(f"\n  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="perhap", description="perhap: an immutable, DDD-inspired event store.",
                     epilog="example:\n  perhap serve --db sqlite:///./perhap.db --port 8787\n\n"
                            "every command has --help with an example",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = _command(sub, "serve", "run the HTTP server",
                     "perhap serve --db sqlite:///./events.db --host 127.0.0.1 --port 8787")
    serve.add_argument("--db", default=DEFAULT_DB, help=f"store URL (default {DEFAULT_DB})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (PostgreSQL and Cassandra only; default 1)")
    serve.add_argument("--max-body", type=int, default=1024 * 1024, help="largest request body in bytes")
    serve.add_argument("--heartbeat", type=float, default=15.0,
                       help="seconds between keep-alive comments on idle streams (default 15)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="json: every log line a JSON object, plus one access line per request")
    sec = serve.add_argument_group("security (docs/security.md)")
    sec.add_argument("--auth", metavar="FILE", help="require bearer tokens from this token file "
                     "(see perhap token add); re-read when it changes")
    sec.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback --host without --auth (anyone can read and write)")
    sec.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (with --tls-key)")
    sec.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sec.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="allow browser pages from this origin, e.g. https://app.example.com (repeatable; none by default)")
    lim = serve.add_argument_group("limits (docs/operations.md)")
    lim.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                     help=f"most events in one batch append, 413 beyond (default {DEFAULT_MAX_BATCH})")
    lim.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH, metavar="N",
                     help=f"deepest JSON nesting of a body, 400 beyond (default {DEFAULT_MAX_DEPTH})")
    lim.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                     help=f"open streams in total, 429 beyond (default {DEFAULT_MAX_STREAMS})")
    lim.add_argument("--max-streams-per-token", type=int, default=DEFAULT_MAX_STREAMS_PER_TOKEN, metavar="N",
                     help=f"open streams per token with --auth, 429 beyond (default {DEFAULT_MAX_STREAMS_PER_TOKEN})")
    lim.add_argument("--max-header", type=int, default=DEFAULT_MAX_HEADER, metavar="BYTES",
                     help=f"request line plus headers, 431 beyond (default {DEFAULT_MAX_HEADER})")
    lim.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
                     help=f"time to send a request's headers before the connection is closed (default {DEFAULT_HEADER_TIMEOUT:g})")
    lim.add_argument("--idle-timeout", type=float, default=5.0, metavar="SECONDS",
                     help="close a keep-alive connection idle this long (default 5)")
    lim.add_argument("--max-connections", type=int, metavar="N",
                     help="open connections and requests at once, 503 beyond (default: no limit)")
    serve.set_defaults(run=_serve)

    token = _command(sub, "token", "manage the bearer tokens of a token file (perhap serve --auth FILE)",
                     "perhap token add --auth tokens.json --realm shop --permission write",
                     "perhap token list --auth tokens.json",
                     "perhap token revoke --auth tokens.json 3f9a01c2")
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=_Parser, required=True)
    tadd = _command(tsub, "add", "create a token; prints it once on the first line of stdout (only its hash is kept)",
                    "perhap token add --auth tokens.json --realm shop --permission read",
                    "perhap token add --auth tokens.json --realm '*' --permission admin")
    tadd.add_argument("--auth", required=True, metavar="FILE", help="the token file (created if missing)")
    tadd.add_argument("--realm", required=True, help="the realm the token may use; '*' means every realm")
    tadd.add_argument("--permission", required=True, choices=["read", "write", "admin"],
                      help="read; write (implies read); admin (implies write, and may read /_metrics)")
    tadd.set_defaults(run=_token_add)
    tlist = _command(tsub, "list", "list the tokens: id, realm, permission, creation time (never the tokens)",
                     "perhap token list --auth tokens.json")
    tlist.add_argument("--auth", required=True, metavar="FILE", help="the token file")
    tlist.set_defaults(run=_token_list)
    trevoke = _command(tsub, "revoke", "revoke a token by its id (from token list) or the token itself; "
                       "a running server stops accepting it within a second",
                       "perhap token revoke --auth tokens.json 3f9a01c2")
    trevoke.add_argument("which", metavar="ID_OR_TOKEN", help="the id shown by token list, or the token")
    trevoke.add_argument("--auth", required=True, metavar="FILE", help="the token file")
    trevoke.set_defaults(run=_token_revoke)

    append = _command(sub, "append", "append one event; prints its event_id, version and timestamp",
                      """perhap append shop/orders/order-17/placed '{"total": 42}'""",
                      """echo '{"total": 42}' | perhap append shop/orders/order-17/placed - --expected-version -1""")
    append.add_argument("target", metavar="REALM/DOMAIN/ENTITY/TYPE", help="where the event goes")
    append.add_argument("event", metavar="JSON", help="the event, any JSON value; - reads it from stdin")
    append.add_argument("--event-id", help="a UUID you choose: retrying the same append is then safe")
    append.add_argument("--meta", metavar="JSON", help="a JSON object stored with the event")
    append.add_argument("--expected-version", type=int, metavar="N",
                        help="fail unless the entity is at version N (-1: a new entity)")
    _url_option(append)
    append.set_defaults(run=_append)

    read = _command(sub, "read", "print a scope's events, one JSON object a line, through every page",
                    "perhap read shop/orders --type placed > placed.jsonl")
    read.add_argument("scope", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY[/TYPE]]]")
    read.add_argument("--type", help="only events of this type")
    read.add_argument("--following", metavar="EVENT_ID", help="start after this event id")
    read.add_argument("--page-size", type=int, default=1000, metavar="N",
                      help="events per request, 1 to 10000 (default 1000)")
    _url_option(read)
    read.set_defaults(run=_read)

    keys = _command(sub, "keys", "list the names one level down: realms, domains, entities or types",
                    "perhap keys shop/orders")
    keys.add_argument("scope", nargs="?", metavar="SCOPE",
                      help="nothing (realms), REALM (domains), REALM/DOMAIN (entities) or "
                           "REALM/DOMAIN/ENTITY (types)")
    _url_option(keys)
    keys.set_defaults(run=_keys)

    tail = _command(sub, "tail", "print a scope's events as they arrive, one JSON object a line",
                    "perhap tail performance/communications --url http://127.0.0.1:8787")
    tail.add_argument("scope", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY[/TYPE]]]")
    _url_option(tail)
    tail.add_argument("--following", metavar="EVENT_ID", help="start after this event id (default: from the start)")
    tail.add_argument("--type", help="only events of this type")
    tail.set_defaults(run=_tail)

    export = _command(sub, "export", "write a full-fidelity dump of a store (or a realm, domain or entity) "
                      "to stdout, one JSON object a line",
                      "perhap export --db sqlite:///./perhap.db > dump.jsonl",
                      "perhap export --db postgresql://perhap@localhost/perhap shop/orders -o orders.jsonl")
    export.add_argument("scope", nargs="?", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY]] (default: everything)")
    export.add_argument("--db", required=True, metavar="URL", help="the store to read")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=_export)

    imp = _command(sub, "import", "import a dump into a store, keeping ids, versions and timestamps "
                   "(running it again stores nothing twice)",
                   "perhap import --db sqlite:///./restored.db dump.jsonl",
                   "perhap export --db sqlite:///./a.db | perhap import --db sqlite:///./b.db -")
    imp.add_argument("dump", metavar="FILE", help="the dump; - reads stdin")
    imp.add_argument("--db", required=True, metavar="URL", help="the store to write")
    imp.set_defaults(run=_import)

    copy = _command(sub, "copy", "copy a whole store to another backend, resumably, then verify every "
                    "realm by count and checksum",
                    "perhap copy --from sqlite:///./perhap.db --to postgresql://perhap@localhost/perhap")
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help="the store to copy")
    copy.add_argument("--to", dest="destination", required=True, metavar="URL",
                      help="the store to write (run again after an interruption: it resumes)")
    copy.add_argument("--limit", type=int, metavar="N",
                      help="stop after N events this run (run again to go on)")
    copy.set_defaults(run=_copy)
    return parser


# --------------------------------------------------------------------------- serve and the client commands


def _serve(args: argparse.Namespace) -> int:
    from .backends import parse_store_url
    from .server import serve

    try:
        scheme, _ = parse_store_url(args.db)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.workers < 1:
        raise CommandError("--workers must be 1 or more")
    if args.workers > 1 and scheme == "sqlite":
        raise CommandError("--workers > 1 needs a shared backend (postgresql:// or cassandra://); "
                           "embedded SQLite is served by one process")
    if not 1 <= args.port <= 65535:
        raise CommandError("--port must be from 1 to 65535")
    for name in ("max_body", "max_batch", "max_depth", "max_streams", "max_streams_per_token", "max_header"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be 1 or more", 2)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("give --tls-cert and --tls-key together", 2)
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"cannot read {path}: no such file")
    from .server import _setup_logging

    _setup_logging(args.log_level, args.log_format)  # so the warnings below are log lines too
    if args.auth is not None:
        from .auth import AuthFileError, load_grants

        try:
            if not load_grants(args.auth):
                log.warning("the token file %s has no tokens yet: every request needing one gets 401 "
                            "until `perhap token add --auth %s ...`", args.auth, args.auth)
        except AuthFileError as exc:
            raise CommandError(str(exc)) from None
    elif not _is_loopback(args.host):
        if not args.insecure:
            raise CommandError(f"refusing to listen on {args.host} without --auth: anyone who can reach it "
                               "could read and write every realm; add --auth FILE, or --insecure if you mean it", 2)
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach it may read "
                    "and write every realm", args.host)
    net = dict(tls_cert=args.tls_cert, tls_key=args.tls_key, idle_timeout=args.idle_timeout,
               header_timeout=args.header_timeout, max_header=args.max_header,
               max_connections=args.max_connections)
    return serve(db=args.db, host=args.host, port=args.port, workers=args.workers,
                 log_level=args.log_level, log_format=args.log_format, net=net,
                 max_body=args.max_body, heartbeat=args.heartbeat, auth=args.auth,
                 max_batch=args.max_batch, max_depth=args.max_depth, max_streams=args.max_streams,
                 max_streams_per_token=args.max_streams_per_token, cors_origins=args.cors_origin)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- tokens


def _token_add(args: argparse.Namespace) -> int:
    from .auth import ANY_REALM, AuthFileError, add_token
    from .store import InvalidInput, check_name

    if args.realm != ANY_REALM:
        try:
            check_name(args.realm, "realm", realm=True)
        except InvalidInput as exc:
            raise CommandError(f"--realm: {exc.detail}", 2) from None
    try:
        token, grant = add_token(args.auth, args.realm, args.permission)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    print(token)  # the first line, alone: scripts read it with `head -1`
    print(f"id {grant.id}: {grant.permission} on realm {grant.realm!r}; store it now, it is not shown again",
          file=sys.stderr)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from .auth import AuthFileError, load_grants

    try:
        grants = load_grants(args.auth)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    for g in grants:
        print(f"{g.id}\t{g.realm}\t{g.permission}\t{g.created}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from .auth import AuthFileError, revoke_token

    try:
        grant = revoke_token(args.auth, args.which)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"revoked {grant.id} ({grant.permission} on realm {grant.realm!r})")
    return 0


def parse_scope(text: str, *, levels: int = 4, what: str = "a scope") -> Any:
    """A Scope from REALM[/DOMAIN[/ENTITY[/TYPE]]] (at most ``levels`` names); usage error if bad."""
    from .store import InvalidInput, Scope

    parts = text.strip("/").split("/")
    shape = "/".join(["REALM", "DOMAIN", "ENTITY", "TYPE"][:levels])
    if len(parts) > levels:
        raise CommandError(f"{what} is at most {shape}, got {text!r}", 2)
    try:
        return Scope(*parts)
    except InvalidInput as exc:
        raise CommandError(f"{what} {text!r}: {exc.detail}", 2) from None


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    if not args.url.startswith(("http://", "https://")):
        raise CommandError(f"--url must be an http:// or https:// URL, got {args.url!r}", 2)
    return Client(args.url)


def _client_error(exc: Exception) -> CommandError:
    """One line for a client error: the server's problem, no connection, or a bad name (usage)."""
    from .client import ConnectionFailed, PerhapClientError
    from .store import InvalidInput

    if isinstance(exc, ConnectionFailed):
        return CommandError(f"{exc.one_line()} (is `perhap serve` running there?)")
    if isinstance(exc, PerhapClientError):
        return CommandError(exc.one_line())
    if isinstance(exc, InvalidInput):
        return CommandError(exc.detail, 2)
    return CommandError(str(exc))


def _parse_json(text: str | bytes, what: str) -> Any:
    from .store import load_json

    try:
        return load_json(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    except Exception as exc:  # orjson.JSONDecodeError, or InvalidInput for NaN and the like
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise CommandError(f"{what} is not valid JSON: {reason}", 2) from None


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")


def _append(args: argparse.Namespace) -> int:
    scope = parse_scope(args.target, what="the target")
    if scope.type is None:
        raise CommandError(f"the target is REALM/DOMAIN/ENTITY/TYPE, got {args.target!r}", 2)
    if args.event == "-":
        event = _parse_json(sys.stdin.buffer.read(), "the event on stdin")
    else:
        event = _parse_json(args.event, "the event")
    meta = None
    if args.meta is not None:
        meta = _parse_json(args.meta, "--meta")
        if not isinstance(meta, dict):
            raise CommandError("--meta must be a JSON object", 2)
    with _client(args) as client:
        try:
            result = client.append(scope.realm, scope.domain, scope.entity, scope.type, event,
                                   event_id=args.event_id, meta=meta,
                                   expected_version=args.expected_version)
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise _client_error(exc) from None
    _print_json(result.first.to_dict())
    return 0


def scope_with_type(text: str, type: str | None) -> Any:
    """parse_scope, then add ``--type`` (given at most once, in the scope or as the option)."""
    from .store import InvalidInput, Scope

    scope = parse_scope(text)
    if type is None:
        return scope
    if scope.type is not None:
        raise CommandError("give the type in the scope or with --type, not both", 2)
    try:
        return Scope(scope.realm, scope.domain, scope.entity, type)
    except InvalidInput as exc:
        raise CommandError(f"--type: {exc.detail}", 2) from None


def _read(args: argparse.Namespace) -> int:
    import orjson

    scope = scope_with_type(args.scope, args.type)
    if not 1 <= args.page_size <= 10_000:
        raise CommandError("--page-size must be from 1 to 10000", 2)
    out = sys.stdout.buffer
    with _client(args) as client:
        try:
            for event in client.read(scope, following=args.following, page_size=args.page_size):
                out.write(orjson.dumps(event.to_json_dict()) + b"\n")
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise _client_error(exc) from None
    out.flush()
    return 0


def _keys(args: argparse.Namespace) -> int:
    levels: list[str] = []
    if args.scope is not None:
        scope = parse_scope(args.scope, levels=3)
        levels = [n for n in (scope.realm, scope.domain, scope.entity) if n is not None]
    with _client(args) as client:
        try:
            for name in client.keys(*levels):
                sys.stdout.write(name + "\n")
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise _client_error(exc) from None
    sys.stdout.flush()
    return 0


def _tail(args: argparse.Namespace) -> int:
    from .tail import tail

    return tail(args.url, args.scope, following=args.following, type=args.type)


# --------------------------------------------------------------------------- export, import, copy


def _check_db(url: str, option: str, *, must_exist: bool) -> str:
    from .backends import parse_store_url

    try:
        scheme, options = parse_store_url(url)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}", 2) from None
    # Opening a SQLite path creates the file: reading from a typo would export an empty store.
    if must_exist and scheme == "sqlite" and not os.path.exists(options["path"]):
        raise CommandError(f"{option}: there is no SQLite store at {options['path']}")
    return url


def _run_store_job(job: Any) -> int:
    """Run a coroutine using stores; store and transfer errors become one line."""
    import asyncio

    from .transfer import TransferError

    try:
        return asyncio.run(job)  # type: ignore[no-any-return]
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    except PerhapError as exc:
        raise CommandError(f"{exc.title}: {exc.detail}") from None
    except ValueError as exc:  # open_store: a backend's driver missing, a bad option
        raise CommandError(str(exc)) from None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise CommandError(f"{exc.__class__.__name__}: {exc}") from None


def _export(args: argparse.Namespace) -> int:
    from .backends import open_store
    from .transfer import Progress, export_dump

    scope = None
    if args.scope is not None:
        scope = parse_scope(args.scope)
        if scope.type is not None:
            raise CommandError("export whole entities: a TYPE scope would leave gaps in the versions, "
                               "and an import keeps versions", 2)
    db = _check_db(args.db, "--db", must_exist=True)

    async def job() -> int:
        async with open_store(db) as store:
            if args.output:
                with open(args.output, "wb") as out:
                    progress = Progress("exporting")
                    await export_dump(store, out, scope, progress=progress)
            else:
                progress = Progress("exporting")
                await export_dump(store, sys.stdout.buffer, scope, progress=progress)
            progress.close()
        return 0

    return _run_store_job(job())


def _import(args: argparse.Namespace) -> int:
    from .backends import open_store
    from .transfer import Progress, file_size, import_dump

    db = _check_db(args.db, "--db", must_exist=False)
    if args.dump == "-":
        stream, name = sys.stdin.buffer, "stdin"
    else:
        try:
            stream, name = open(args.dump, "rb"), args.dump
        except OSError as exc:
            raise CommandError(f"cannot read {args.dump}: {exc.strerror}", 2) from None

    async def job() -> int:
        progress = Progress("importing", total_bytes=file_size(stream))
        with stream:
            async with open_store(db) as store:
                stats = await import_dump(store, stream, name, progress=progress)
        progress.close()
        realms = len(stats.realms)
        print(f"imported {stats.imported:,} events into {realms:,} realm{'s' if realms != 1 else ''}"
              f" ({stats.present:,} were there already)")
        return 0

    return _run_store_job(job())


def _copy(args: argparse.Namespace) -> int:
    from .backends import open_store
    from .transfer import Progress, copy_store

    source = _check_db(args.source, "--from", must_exist=True)
    destination = _check_db(args.destination, "--to", must_exist=False)
    if source == destination:
        raise CommandError("--from and --to are the same store", 2)
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be 1 or more", 2)

    def say(line: str) -> None:
        print(line, flush=True)

    async def job() -> int:
        async with open_store(source) as src, open_store(destination) as dst:
            report = await copy_store(src, dst, limit=args.limit, progress=Progress("copying"), log=say)
        stats = report.stats
        if not report.complete:
            say(f"stopped after {stats.imported + stats.present:,} events (--limit); "
                f"run the same command again to go on")
            return 0
        for check in report.checks:
            (n1, h1), (n2, h2) = check.source, check.destination
            if check.ok:
                say(f"verified {check.realm}: {n1:,} events, sha256 {h1}")
            else:
                say(f"MISMATCH {check.realm}: source {n1:,} events sha256 {h1}, "
                    f"destination {n2:,} events sha256 {h2}")
        for realm in report.extra_realms:
            say(f"note: the destination also holds realm {realm}, which the source does not (not checked)")
        bad = sum(not c.ok for c in report.checks)
        total = sum(c.source[0] for c in report.checks)
        if bad:
            raise CommandError(f"copy verification failed: {bad} of {len(report.checks)} realms differ")
        realms = f"{len(report.checks):,} realm{'' if len(report.checks) == 1 else 's'}"
        say(f"copy verified: {realms}, {total:,} events "
            f"({stats.imported:,} copied now, {stats.present:,} there already)")
        return 0

    return _run_store_job(job())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
        if run is None:
            parser.print_help()
            return 2
        return run(args)
    except CommandError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `perhap read ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: still one line (PERHAP_DEBUG=1 shows the traceback)
        if os.environ.get("PERHAP_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or "no message"
        print(f"error: unexpected {exc.__class__.__name__}: {message} (set PERHAP_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: other modules raise
    # perhap.cli.CommandError, which must be the class main() catches.
    from perhap.cli import main as _main

    sys.exit(_main())
