"""``perhap append``, ``append-many``, ``read`` and ``keys``: the everyday client commands, against a server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InvalidInput, PerhapError
from ..jsoncodec import load_json, refuse_duplicate_keys
from ..model import MAX_LIMIT
from .common import (
    CommandError,
    client_error,
    open_client,
    option_names,
    parse_json,
    parse_scope,
    scope_with_types,
    write_json_line,
)


def run_append(args: argparse.Namespace) -> int:
    """Append one event; print its event_id, version, position and timestamp."""
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

    scope, types = scope_with_types(args.scope, args.type)
    if not 1 <= args.page_size <= MAX_LIMIT:
        raise CommandError(f"--page-size must be from 1 to {MAX_LIMIT}", 2)
    left = args.limit
    if left is not None and left < 1:
        raise CommandError("--limit must be 1 or more", 2)
    page_size = args.page_size if left is None else min(left, args.page_size)  # never read more than asked
    out = sys.stdout.buffer
    with open_client(args.url, args.token) as client:
        try:
            for event in client.read(scope, following=args.following, page_size=page_size,
                                     order="desc" if args.desc else "asc", types=types,
                                     after_position=args.after_position,
                                     before_position=args.before_position,
                                     after_version=args.after_version, until_version=args.until_version):
                out.write(orjson.dumps(event.to_json_dict()) + b"\n")
                if left is not None:
                    left -= 1
                    if not left:
                        break
        except PerhapError as exc:  # the client's errors, and bad arguments caught before sending
            raise client_error(option_names(exc)) from None
    out.flush()
    return 0


def run_append_many(args: argparse.Namespace) -> int:
    """Append events to several entities of one domain at once; print one result a line."""
    scope = parse_scope(args.target, levels=2, what="the target")
    if scope.domain is None:
        raise CommandError(f"the target is REALM/DOMAIN, got {args.target!r}", 2)
    name = "stdin" if args.events == "-" else args.events
    events, expected = read_many(_read_input(args.events), name)
    for option in args.expect:
        entity, version = parse_expect(option)
        if entity in expected and expected[entity] != version:
            raise CommandError(f"--expect {option}: {name} expects version {expected[entity]} of {entity}", 2)
        expected[entity] = version
    with open_client(args.url, args.token) as client:
        try:
            result = client.append_many(scope.realm, scope.domain, events,
                                        expected_versions=expected or None)
        except PerhapError as exc:  # the client's errors, and bad events caught before sending
            raise client_error(exc) from None
    for appended in result.events:
        write_json_line(appended.to_dict())
    return 0


def _read_input(where: str) -> bytes:
    if where == "-":
        return sys.stdin.buffer.read()
    try:
        with open(where, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {where}: {exc.strerror}", 2) from None


def read_many(data: bytes, name: str) -> tuple[list[Any], dict[str, int]]:
    """The events (and expected versions) of ``append-many``'s input: a request body
    ``{"events": [...], "expected_versions": {...}}``, a JSON array of events, one event, or JSON
    lines of them."""
    try:
        whole = load_json(data)
    except Exception:  # not one JSON value: JSON lines, read below (orjson or InvalidInput)
        whole = None
    else:
        try:
            refuse_duplicate_keys(data, whole)
        except InvalidInput as exc:
            raise CommandError(f"{name}: {exc.detail}", 2) from None
        if isinstance(whole, list):
            return whole, {}
        if isinstance(whole, dict) and "events" in whole:
            unknown = set(whole) - {"events", "expected_versions"}
            if unknown:
                raise CommandError(f"{name}: unknown keys {', '.join(sorted(unknown))} "
                                   "(a request body has events and expected_versions)", 2)
            expected = whole.get("expected_versions") or {}
            if not isinstance(expected, dict):
                raise CommandError(f"{name}: expected_versions must be an object of entity: version", 2)
            return whole["events"], dict(expected)
        if isinstance(whole, dict):
            return [whole], {}  # one event (on one line, or spread over several)
    events = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            events.append(parse_json(line, f"{name} line {number}"))
    if not events:
        raise CommandError(f"{name} holds no events", 2)
    return events, {}


def parse_expect(option: str) -> tuple[str, int]:
    """``--expect ENTITY=VERSION``: split at the last '=' (an entity name may hold one)."""
    entity, sep, version = option.rpartition("=")
    try:
        number = int(version)
    except ValueError:
        number = None
    if not sep or not entity or number is None:
        raise CommandError(f"--expect must be ENTITY=VERSION (an integer, -1 for a new entity), got {option!r}", 2)
    return entity, number


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
