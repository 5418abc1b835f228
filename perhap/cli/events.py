"""``perhap append``, ``read`` and ``keys``: the everyday client commands, against a server."""

from __future__ import annotations

import argparse
import sys

from ..errors import PerhapError
from ..model import MAX_LIMIT
from .common import CommandError, client_error, open_client, parse_json, parse_scope, scope_with_type, write_json_line


def run_append(args: argparse.Namespace) -> int:
    """Append one event; print its event_id, version and timestamp."""
    scope = parse_scope(args.target, what="the target")
    if scope.domain is None or scope.entity is None or scope.type is None:
        raise CommandError(f"the target is REALM/DOMAIN/ENTITY/TYPE, got {args.target!r}", 2)
    if args.event == "-":
        event = parse_json(sys.stdin.buffer.read(), "the event on stdin", string_hint=True)
    else:
        event = parse_json(args.event, "the event", string_hint=True)
    meta = None
    if args.meta is not None:
        meta = parse_json(args.meta, "--meta")
        if not isinstance(meta, dict):
            raise CommandError("--meta must be a JSON object", 2)
    with open_client(args.url, args.token) as client:
        try:
            result = client.append(scope.realm, scope.domain, scope.entity, scope.type, event,
                                   event_id=args.event_id, meta=meta,
                                   expected_version=args.expected_version)
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise client_error(exc) from None
    write_json_line(result.first.to_dict())
    return 0


def run_read(args: argparse.Namespace) -> int:
    """Print a scope's events, one JSON object a line (the API's own), through every page."""
    import orjson

    scope = scope_with_type(args.scope, args.type)
    if not 1 <= args.page_size <= MAX_LIMIT:
        raise CommandError(f"--page-size must be from 1 to {MAX_LIMIT}", 2)
    out = sys.stdout.buffer
    with open_client(args.url, args.token) as client:
        try:
            for event in client.read(scope, following=args.following, page_size=args.page_size):
                out.write(orjson.dumps(event.to_json_dict()) + b"\n")
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise client_error(exc) from None
    out.flush()
    return 0


def run_keys(args: argparse.Namespace) -> int:
    """Print the names one level down, one a line, through every page."""
    levels: list[str] = []
    if args.scope is not None:
        scope = parse_scope(args.scope, levels=3)
        levels = [n for n in (scope.realm, scope.domain, scope.entity) if n is not None]
    with open_client(args.url, args.token) as client:
        try:
            for name in client.keys(*levels):
                sys.stdout.write(name + "\n")
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise client_error(exc) from None
    sys.stdout.flush()
    return 0
