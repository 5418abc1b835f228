"""The ``perhap`` command line's arguments, all in one place: every command, option and example.

Each command's ``run`` is a function of a thin command module (serve, tokens, events, tail,
groups, transfer) that takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any, NoReturn, TypeAlias

from ..auth import TOKEN_PREFIX
from ..errors import InvalidInput
from ..groups.settings import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_IN_FLIGHT,
    MAX_ACK_TIMEOUT,
    MAX_DELIVERIES,
    MAX_IN_FLIGHT,
)
from ..ids import check_event_id
from ..limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HEARTBEAT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_PAGE_BYTES,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_STREAMS_PER_TOKEN,
    DEFAULT_STREAM_BUFFER,
    DEFAULT_WRITE_TIMEOUT,
)
from ..model import DEFAULT_LIMIT, MAX_LIMIT, check_expected_version
from .common import DEFAULT_PORT, DEFAULT_URL, TOKEN_ENV, CommandError
from .events import run_append, run_append_many, run_keys, run_read
from .groups import (
    bounded,
    parse_start,
    run_group_create,
    run_group_delete,
    run_group_list,
    run_group_parked,
    run_group_replay,
    run_group_stats,
)
from .serve import run_serve
from .tail import run_tail
from .tokens import run_token_add, run_token_list, run_token_revoke
from .transfer import FROM_TOKEN_ENV, TO_TOKEN_ENV, run_copy, run_export, run_import

DEFAULT_DB = "sqlite:///./perhap.db"


#: What argparse may quote back from the command line that must not be shown: a token, and the
#: value given to --token, --from-token or --to-token (say, where a command takes none).
_SECRETS = re.compile(r"(--(?:from-|to-)?token[= ])\S+|\b" + re.escape(TOKEN_PREFIX) + r"[\w-]+")


def _hide_secrets(message: str) -> str:
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "(a token, not shown)", message)


def _event_id(text: str) -> str:
    """An --event-id: a UUID, checked here (a bad one is a usage error, exit 2, not a 400)."""
    try:
        return check_event_id(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def _expected_version(text: str) -> int:
    try:
        version = check_expected_version(int(text))
    except (ValueError, InvalidInput):
        raise argparse.ArgumentTypeError(f"an entity's version, -1 for a new entity; got {text[:40]!r}") from None
    assert version is not None
    return version


class CommandParser(argparse.ArgumentParser):
    """argparse, with perhap's one-line usage errors."""

    def error(self, message: str) -> NoReturn:  # one line, no usage dump: the help says the rest
        raise CommandError(f"{self.prog}: {_hide_secrets(message)} (see {self.prog} --help)", 2)

    def parse_command(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """``parse_args``, but arguments the command does not take point to that command's help
        (argparse reports them from the top, whose help does not list the command's options)."""
        args, extras = self.parse_known_args(argv)
        if extras:
            command = getattr(args, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            message = _hide_secrets(f"unrecognized arguments: {' '.join(extras)}")
            raise CommandError(f"{prog}: {message} (see {prog} --help)", 2)
        return args


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("perhap")
        except PackageNotFoundError:  # run from a checkout that was never installed
            text = "(version unknown: not installed)"
        print(f"perhap {text}")
        parser.exit()


#: argparse names no public type for it (and the class is not subscriptable at run time).
Subcommands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


#: A negative JSON number, exponent and all: an argument, not an option.
_NEGATIVE_NUMBER = re.compile(r"^-(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$|^-\d*\.\d+$")


def _command(sub: Subcommands, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
    text = "example:" if len(examples) == 1 else "examples:"
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=text + "".join(f"\n  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    # No default shown: the token is a secret, and is read from the environment only when running.
    parser.add_argument("--token", metavar="TOKEN",
                        help=f"bearer token for a server run with --auth (default: ${TOKEN_ENV}, which "
                             "keeps it out of the process list and the shell history)")


def build_parser() -> CommandParser:
    """The whole command line: ``perhap COMMAND ...``, each command with its ``run`` function."""
    parser = CommandParser(prog="perhap", description="perhap: an immutable, DDD-inspired event store.",
                     epilog="example:\n  perhap serve --db sqlite:///./perhap.db --port 8787\n\n"
                            "every command has --help with an example",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print perhap's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    _add_serve(sub)
    _add_token(sub)
    _add_client_commands(sub)
    _add_group(sub)
    _add_transfer(sub)
    return parser


def _add_serve(sub: Subcommands) -> None:
    serve = _command(sub, "serve", "run the HTTP server",
                     "perhap serve --db sqlite:///./events.db --host 127.0.0.1 --port 8787")
    serve.add_argument("--db", default=DEFAULT_DB, help=f"store URL (default {DEFAULT_DB})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (PostgreSQL and Cassandra only; default 1)")
    serve.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY,
                       help=f"largest request body in bytes, 413 beyond (default {DEFAULT_MAX_BODY})")
    serve.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT,
                       help=f"seconds between keep-alive comments on idle streams (default {DEFAULT_HEARTBEAT:g})")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="the least severe log lines written (default info)")
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
                     help="allow browser pages from this exact origin, scheme://host[:port], e.g. "
                          "https://app.example.com (repeatable; none by default)")
    lim = serve.add_argument_group("limits (docs/operations.md)")
    lim.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, metavar="N",
                     help=f"most events in one batch append, 413 beyond (default {DEFAULT_MAX_BATCH})")
    lim.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH, metavar="N",
                     help=f"deepest JSON nesting of a body, 400 beyond (default {DEFAULT_MAX_DEPTH})")
    lim.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                     help=f"open streams of one server process (each of --workers has its own), 429 beyond "
                          f"(default {DEFAULT_MAX_STREAMS})")
    lim.add_argument("--max-streams-per-token", type=int, default=DEFAULT_MAX_STREAMS_PER_TOKEN, metavar="N",
                     help=f"open streams per token with --auth, 429 beyond (default {DEFAULT_MAX_STREAMS_PER_TOKEN})")
    lim.add_argument("--stream-buffer", type=int, default=DEFAULT_STREAM_BUFFER, metavar="BYTES",
                     help=f"bytes of events one stream sends at once (default {DEFAULT_STREAM_BUFFER})")
    lim.add_argument("--max-page-bytes", type=int, default=DEFAULT_MAX_PAGE_BYTES, metavar="BYTES",
                     help="end a JSON page of events once their data and meta hold this many bytes (one "
                          f"event at least; its next continues) (default {DEFAULT_MAX_PAGE_BYTES})")
    lim.add_argument("--write-timeout", type=float, default=DEFAULT_WRITE_TIMEOUT, metavar="SECONDS",
                     help="end a stream, or close any connection, whose client leaves a write unread "
                          f"this long; 0: never (default {DEFAULT_WRITE_TIMEOUT:g})")
    lim.add_argument("--max-header", type=int, default=DEFAULT_MAX_HEADER, metavar="BYTES",
                     help=f"request line plus headers, 431 beyond (default {DEFAULT_MAX_HEADER})")
    lim.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="SECONDS",
                     help="time to send a request's headers before the connection is closed "
                          f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    lim.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT, metavar="SECONDS",
                     help="time to send a request's body once its headers are in, 408 beyond "
                          f"(default {DEFAULT_BODY_TIMEOUT:g})")
    lim.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                     help=f"close a keep-alive connection idle this long (default {DEFAULT_IDLE_TIMEOUT:g})")
    lim.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                     help=f"open connections served at once; a request on one beyond is 503 "
                          f"(default {DEFAULT_MAX_CONNECTIONS})")
    serve.set_defaults(run=run_serve)


def _add_token(sub: Subcommands) -> None:
    token = _command(sub, "token", "manage the bearer tokens of a token file (perhap serve --auth FILE)",
                     "perhap token add --auth tokens.json --realm shop --permission write",
                     "perhap token list --auth tokens.json",
                     "perhap token revoke --auth tokens.json 3f9a01c2")
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=CommandParser, required=True)
    tadd = _command(tsub, "add", "create a token; prints it once on the first line of stdout (only its hash is kept)",
                    "perhap token add --auth tokens.json --realm shop --permission read",
                    "perhap token add --auth tokens.json --realm '*' --permission admin")
    tadd.add_argument("--auth", required=True, metavar="FILE", help="the token file (created if missing)")
    tadd.add_argument("--realm", required=True, help="the realm the token may use; '*' means every realm")
    tadd.add_argument("--permission", required=True, choices=["read", "write", "admin"],
                      help="read; write (implies read); admin (implies write, and may read /_metrics)")
    tadd.set_defaults(run=run_token_add)
    tlist = _command(tsub, "list", "list the tokens: id, realm, permission, creation time (never the tokens)",
                     "perhap token list --auth tokens.json")
    tlist.add_argument("--auth", required=True, metavar="FILE", help="the token file")
    tlist.set_defaults(run=run_token_list)
    trevoke = _command(tsub, "revoke", "revoke a token by its id (from token list) or the token itself; "
                       "a running server stops accepting it within a second",
                       "perhap token revoke --auth tokens.json 3f9a01c2")
    trevoke.add_argument("which", metavar="ID_OR_TOKEN", help="the id shown by token list, or the token")
    trevoke.add_argument("--auth", required=True, metavar="FILE", help="the token file")
    trevoke.set_defaults(run=run_token_revoke)


def _add_client_commands(sub: Subcommands) -> None:
    append = _command(sub, "append", "append one event; prints its event_id, version, position and timestamp",
                      """perhap append shop/orders/order-17/placed '{"total": 42}'""",
                      # (a chosen event id: the example may run twice, the second time a replay)
                      """echo '{"amount": 42}' | perhap append shop/orders/order-17/paid - """
                      "--event-id 7c9e6679-7425-40de-944b-e07fc1f90ae7")
    # argparse takes -1e3 (a JSON number) for an option: its test of a negative number knows no exponent.
    append._negative_number_matcher = _NEGATIVE_NUMBER
    append.add_argument("target", metavar="REALM/DOMAIN/ENTITY/TYPE", help="where the event goes")
    append.add_argument("event", metavar="JSON", help="the event, any JSON value; - reads it from stdin")
    append.add_argument("--event-id", type=_event_id,
                        help="a UUID you choose: retrying the same append is then safe")
    append.add_argument("--meta", metavar="JSON", help="a JSON object stored with the event")
    append.add_argument("--expected-version", type=_expected_version, metavar="N",
                        help="fail unless the entity is at version N (-1: a new entity)")
    _server_options(append)
    append.set_defaults(run=run_append)

    append_many = _command(
        sub, "append-many", "append events to several entities of one domain atomically (all or none); "
        "prints each event's entity, event_id, version, position and timestamp",
        "perhap append-many shop/orders moves.jsonl --expect order-18=-1",
        """echo '{"entity": "o-1", "type": "placed", "event": {"total": 42}}' | perhap append-many shop/orders""")
    append_many.add_argument("target", metavar="REALM/DOMAIN", help="the domain the events go to")
    append_many.add_argument("events", nargs="?", default="-", metavar="FILE",
                             help="the events: JSON lines of {entity, type, event, event_id?, meta?}, a JSON "
                                  "array of them, or a request body {events, expected_versions?}; "
                                  "- reads stdin (the default)")
    append_many.add_argument("--expect", action="append", default=[], metavar="ENTITY=VERSION",
                             help="fail (storing nothing) unless ENTITY is at VERSION (-1: a new entity); "
                                  "repeatable; any entity, with or without events here")
    _server_options(append_many)
    append_many.set_defaults(run=run_append_many)

    read = _command(sub, "read", "print a scope's events, one JSON object a line, through every page",
                    "perhap read shop/orders --type placed --type paid > orders.jsonl",
                    "perhap read shop --desc --limit 1   # the realm's newest event",
                    "perhap read shop --after-position 1200   # resume a projection from its checkpoint")
    read.add_argument("scope", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY[/TYPE]]]")
    read.add_argument("--type", action="append", metavar="TYPE",
                      help="only events of this type (repeatable: events of any of them)")
    read.add_argument("--desc", action="store_true", help="newest first (default: oldest first)")
    read.add_argument("--following", metavar="EVENT_ID", help="start after this event id (in the order read)")
    read.add_argument("--after-position", type=int, metavar="N",
                      help="only events after position N (oldest first)")
    read.add_argument("--before-position", type=int, metavar="N",
                      help="only events before position N (with --desc)")
    read.add_argument("--after-version", type=int, metavar="N",
                      help="an entity's events after version N")
    read.add_argument("--until-version", type=int, metavar="N",
                      help="an entity's events up to version N (included)")
    read.add_argument("--limit", type=int, metavar="N", help="stop after N events (default: every one)")
    read.add_argument("--page-size", type=int, default=DEFAULT_LIMIT, metavar="N",
                      help=f"events per request, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})")
    _server_options(read)
    read.set_defaults(run=run_read)

    keys = _command(sub, "keys", "list the names one level down: realms, domains, entities or types",
                    "perhap keys shop/orders")
    keys.add_argument("scope", nargs="?", metavar="SCOPE",
                      help="nothing (realms), REALM (domains), REALM/DOMAIN (entities) or "
                           "REALM/DOMAIN/ENTITY (types)")
    _server_options(keys)
    keys.set_defaults(run=run_keys)

    tail = _command(sub, "tail", "print a scope's events as they arrive, one JSON object a line",
                    "perhap tail performance/communications --url http://127.0.0.1:8787")
    tail.add_argument("scope", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY[/TYPE]]]")
    _server_options(tail)
    tail.add_argument("--following", metavar="EVENT_ID", help="start after this event id (default: from the start)")
    tail.add_argument("--after-position", type=int, metavar="N", help="start after position N")
    tail.add_argument("--type", action="append", metavar="TYPE",
                      help="only events of this type (repeatable: events of any of them)")
    tail.set_defaults(run=run_tail)


def _add_group(sub: Subcommands) -> None:
    group = _command(sub, "group", "manage consumer groups: server-side checkpoints shared by competing consumers",
                     "perhap group create shop billing --domain orders --type placed --type paid",
                     "perhap group list shop",
                     "perhap group stats shop billing --json")
    gsub = group.add_subparsers(dest="group_command", metavar="ACTION", parser_class=CommandParser, required=True)

    def action(name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        parser = _command(gsub, name, help, *examples)
        parser.add_argument("realm", metavar="REALM", help="the realm the group belongs to")
        if name != "list":
            parser.add_argument("group", metavar="GROUP", help="the group's name")
        return parser

    create = action("create", "create a consumer group (again with the same settings: nothing changes)",
                    "perhap group create shop projector --domain orders",
                    "perhap group create shop mailer --domain orders --type placed --start end --max-deliveries 3")
    create.add_argument("--domain", help="only events of this domain (default: the whole realm)")
    create.add_argument("--type", action="append", metavar="TYPE",
                        help="only events of this type (repeatable: events of any of them)")
    create.add_argument("--start", type=parse_start, default="beginning", metavar="WHERE",
                        help="beginning (default), end (only events appended from now on), or a position "
                             "(the first event delivered is the first at or after it)")
    create.add_argument("--ack-timeout", type=bounded(float, 0, MAX_ACK_TIMEOUT, above=True),
                        default=DEFAULT_ACK_TIMEOUT, metavar="SECONDS",
                        help="a lease not acknowledged this long goes back to the group "
                             f"(default {DEFAULT_ACK_TIMEOUT:g})")
    create.add_argument("--max-deliveries", type=bounded(int, 1, MAX_DELIVERIES), default=DEFAULT_MAX_DELIVERIES,
                        metavar="N",
                        help=f"deliveries before an unacknowledged event is parked (default {DEFAULT_MAX_DELIVERIES})")
    create.add_argument("--max-in-flight", type=bounded(int, 1, MAX_IN_FLIGHT), default=DEFAULT_MAX_IN_FLIGHT,
                        metavar="N",
                        help=f"unacknowledged leases one consumer may hold (default {DEFAULT_MAX_IN_FLIGHT})")
    create.add_argument("--json", action="store_true", help="print the group object as JSON")
    create.set_defaults(run=run_group_create)

    listing = action("list", "list a realm's groups: name, scope, lag, in flight, parked", "perhap group list shop")
    listing.add_argument("--json", action="store_true", help="one group object a line, as JSON")
    listing.set_defaults(run=run_group_list)

    stats = action("stats", "show a group's settings, checkpoint, lag, leases and consumers",
                   "perhap group stats shop projector", "perhap group stats shop projector --json | jq .lag")
    stats.add_argument("--json", action="store_true", help="print the group object as JSON")
    stats.set_defaults(run=run_group_stats)

    parked = action("parked", "print a group's parked events, one JSON object a line "
                    "(the event, its delivery count, parked_at and reason)", "perhap group parked shop projector")
    parked.set_defaults(run=run_group_parked)

    replay = action("replay", "put parked events back in the group, to be delivered again",
                    "perhap group replay shop projector",
                    "perhap group replay shop projector --event-id 01a2173a-af2e-701e-bbf0-c30a3181d1d9")
    replay.add_argument("--event-id", action="append", metavar="EVENT_ID", type=_event_id,
                        help="only this parked event (repeatable; default: every parked event)")
    replay.set_defaults(run=run_group_replay)

    delete = action("delete", "delete a group, its checkpoint and its parked events",
                    "perhap group delete shop projector")
    delete.set_defaults(run=run_group_delete)
    for parser in (create, listing, stats, parked, replay, delete):
        _server_options(parser)


def _token_option(parser: argparse.ArgumentParser, option: str, env: str, what: str) -> None:
    # No default shown: the token is a secret, and is read from the environment only when running.
    parser.add_argument(option, metavar="TOKEN",
                        help=f"bearer token for {what} when it is a server run with --auth (default: ${env}, "
                             "which keeps it out of the process list and the shell history)")


def _add_transfer(sub: Subcommands) -> None:
    export = _command(sub, "export", "write a full-fidelity dump of a store (or a realm, domain or entity) "
                      "to stdout, one JSON object a line",
                      "perhap export --db sqlite:///./perhap.db > dump.jsonl",
                      "perhap export --db postgresql://perhap@localhost/perhap shop/orders -o orders.jsonl",
                      "PERHAP_TOKEN=... perhap export --db https://events.example.com shop > shop.jsonl")
    export.add_argument("scope", nargs="?", metavar="SCOPE", help="REALM[/DOMAIN[/ENTITY]] (default: everything)")
    export.add_argument("--db", required=True, metavar="URL",
                        help="the store to read, or a server's http(s):// URL (read through its API)")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write here instead of stdout (never the store's own file: refused)")
    _token_option(export, "--token", TOKEN_ENV, "--db")
    export.set_defaults(run=run_export)

    imp = _command(sub, "import", "import a dump into a store, keeping ids, versions and timestamps "
                   "(running it again stores nothing twice)",
                   "perhap import --db sqlite:///./restored.db dump.jsonl",
                   "perhap export --db sqlite:///./a.db | perhap import --db sqlite:///./b.db -")
    imp.add_argument("dump", metavar="FILE", help="the dump; - reads stdin")
    imp.add_argument("--db", required=True, metavar="URL",
                     help="the store to write, or a server's http(s):// URL (written through its API)")
    _token_option(imp, "--token", TOKEN_ENV, "--db")
    imp.set_defaults(run=run_import)

    copy = _command(sub, "copy", "copy a whole store to another backend, resumably, then verify every "
                    "realm by count and checksum",
                    "perhap copy --from sqlite:///./perhap.db --to postgresql://perhap@localhost/perhap",
                    "PERHAP_FROM_TOKEN=... PERHAP_TO_TOKEN=... perhap copy --from https://old.example.com "
                    "--to https://new.example.com")
    copy.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the store to copy, or a server's http(s):// URL")
    copy.add_argument("--to", dest="destination", required=True, metavar="URL",
                      help="the store to write, or a server's http(s):// URL (run again after an "
                           "interruption: it resumes)")
    _token_option(copy, "--from-token", FROM_TOKEN_ENV, "--from")
    _token_option(copy, "--to-token", TO_TOKEN_ENV, "--to")
    copy.add_argument("--limit", type=int, metavar="N",
                      help="stop after N events this run (run again to go on)")
    copy.set_defaults(run=run_copy)
