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


def _command(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="perhap", description="perhap: an immutable, DDD-inspired event store.",
                     epilog="example:\n  perhap serve --db sqlite:///./perhap.db --port 8787",
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
    serve.set_defaults(run=_serve)

    tail = _command(sub, "tail", "print a scope's events as they arrive, one JSON object a line",
                    "perhap tail performance/communications --url http://127.0.0.1:8787")
    tail.add_argument("scope", help="REALM[/DOMAIN[/ENTITY[/TYPE]]]")
    tail.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    tail.add_argument("--following", help="start after this event id (default: from the start)")
    tail.add_argument("--type", help="only events of this type")
    tail.set_defaults(run=_tail)
    return parser


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
    return serve(db=args.db, host=args.host, port=args.port, workers=args.workers,
                 max_body=args.max_body, heartbeat=args.heartbeat, log_level=args.log_level)


def _tail(args: argparse.Namespace) -> int:
    from .tail import tail

    return tail(args.url, args.scope, following=args.following, type=args.type)


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
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `perhap read ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
