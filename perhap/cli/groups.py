"""``perhap group create|list|stats|parked|replay|delete``: manage a server's consumer groups.

Output is for people by default (a table, aligned fields) and for scripts with ``--json``;
``parked`` prints one JSON object a line, as ``perhap read`` does.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PerhapError
from .common import client_error, open_client, write_json_line

if TYPE_CHECKING:
    from ..client.sync import Client

T = TypeVar("T")


def parse_start(text: str) -> str | int:
    """``--start``: ``beginning``, ``end`` or a position (an integer, 0 or more)."""
    if text in ("beginning", "end"):
        return text
    try:
        position = int(text)
    except ValueError:
        position = -1
    if position < 0:
        raise argparse.ArgumentTypeError(f"must be beginning, end or a position (an integer, 0 or more), got {text!r}")
    return position


def bounded(kind: Callable[[str], float], low: float, high: float, *,
            above: bool = False) -> Callable[[str], float]:
    """An option's type: a number from ``low`` (excluded with ``above``) to ``high``, as the server
    checks it, so a bad one is a usage error (exit 2), not the server's 400 (exit 1)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (low < value if above else low <= value) or not value <= high:  # (NaN fails both)
            shown = f"more than {low:g}" if above else f"from {low:g}"
            raise argparse.ArgumentTypeError(f"must be a number {shown} to {high:g}, got {text!r}")
        return value
    return parse


def _call(args: argparse.Namespace, work: Callable[[Client], T]) -> T:
    """``work(client)`` against the server of ``--url``; a failure is the command's one error line."""
    with open_client(args.url, args.token) as client:
        try:
            return work(client)
        except PerhapError as exc:  # the client's errors, and bad names caught before sending
            raise client_error(exc) from None


def run_group_create(args: argparse.Namespace) -> int:
    """Create a group (or find it with the same settings); print the group object."""
    group = _call(args, lambda c: c.create_group(
        args.realm, args.group, domain=args.domain, types=args.type, start=args.start,
        ack_timeout=args.ack_timeout, max_deliveries=args.max_deliveries, max_in_flight=args.max_in_flight))
    if args.json:
        write_json_line(group)
    else:
        start = group["start"]
        where = f"position {start}" if isinstance(start, int) else f"the {start}"
        print(f"group {group['realm']}/{group['name']}: {scope_text(group)}, from {where}")
    return 0


def run_group_list(args: argparse.Namespace) -> int:
    """A table of the realm's groups: name, scope, lag, in flight, parked (``--json``: one a line)."""
    groups = _call(args, lambda c: c.groups(args.realm))
    if args.json:
        for group in groups:
            write_json_line(group)
        return 0
    rows = [["NAME", "SCOPE", "LAG", "IN_FLIGHT", "PARKED"]]
    rows += [[g["name"], scope_text(g), str(g.get("lag")), str(g.get("in_flight")), str(g.get("parked"))]
             for g in groups]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        # Text left-aligned, numbers right-aligned; the last column ends the line without spaces.
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))
    return 0


def run_group_stats(args: argparse.Namespace) -> int:
    """A group's settings and figures, readable (``--json``: the group object)."""
    group = _call(args, lambda c: c.group(args.realm, args.group))
    if args.json:
        write_json_line(group)
        return 0
    for label, value in stats_lines(group):
        print(f"{label:<13}{value}".rstrip())
    return 0


def stats_lines(group: dict[str, Any]) -> list[tuple[str, str]]:
    """The readable form of a group object, as (label, value) lines."""
    seconds = group.get("ack_timeout")
    lines = [
        ("group", f"{group.get('realm')}/{group.get('name')}"),
        ("scope", scope_text(group)),
        ("start", str(group.get("start"))),
        ("leases", f"ack_timeout {seconds} s, max_deliveries {group.get('max_deliveries')}, "
                   f"max_in_flight {group.get('max_in_flight')}"),
        ("created", str(group.get("created"))),
        ("checkpoint", f"{group.get('checkpoint')} (head {group.get('head')})"),
        ("lag", str(group.get("lag"))),
        ("in flight", str(group.get("in_flight"))),
        ("parked", str(group.get("parked"))),
        ("delivered", f"{group.get('delivered')} ({group.get('redeliveries')} redeliveries), "
                      f"{group.get('acknowledged')} acknowledged"),
    ]
    consumers = group.get("consumers") or []
    lines.append(("consumers", str(len(consumers))))
    for c in consumers:
        lines.append(("", f"{c.get('consumer')}: {c.get('in_flight')} in flight, last seen {c.get('last_seen')}"))
    return lines


def scope_text(group: dict[str, Any]) -> str:
    """``shop/orders`` (or ``shop``: the whole realm), then ``type placed, paid`` when filtered."""
    where = "/".join(str(n) for n in (group.get("realm"), group.get("domain")) if n is not None)
    types = group.get("types")
    return f"{where} type {', '.join(types)}" if types else where


def run_group_parked(args: argparse.Namespace) -> int:
    """The group's parked events, one JSON object a line (the event, delivery, parked_at, reason)."""
    import orjson

    parked = _call(args, lambda c: c.parked(args.realm, args.group))
    out = sys.stdout.buffer
    for event in parked:
        out.write(orjson.dumps(event.to_json_dict()) + b"\n")
    out.flush()
    return 0


def run_group_replay(args: argparse.Namespace) -> int:
    """Put parked events (all, or the ``--event-id`` ones) back in the group."""
    count = _call(args, lambda c: c.replay_parked(args.realm, args.group, args.event_id))
    print(f"replayed {count} parked event{'' if count == 1 else 's'} of {args.realm}/{args.group}")
    return 0


def run_group_delete(args: argparse.Namespace) -> int:
    """Delete a group and its state."""
    _call(args, lambda c: c.delete_group(args.realm, args.group))
    print(f"deleted group {args.realm}/{args.group}")
    return 0
