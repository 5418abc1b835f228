"""``perhap tail``: follow a scope over SSE, printing one JSON event a line, resuming after drops.

The streaming, the resume with Last-Event-ID and the backoff are the client's
(:meth:`perhap.client.sync.Client.subscribe`); this module only prints.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PerhapError
from .common import client_error, one_line, open_client, option_names, scope_with_types


def run_tail(args: argparse.Namespace) -> int:
    """``perhap tail SCOPE [--following ID | --after-position N] [--type TYPE ...] [--url URL] [--token TOKEN]``."""
    return tail(args.url, args.scope, following=args.following, after_position=args.after_position,
                types=args.type, token=args.token)


def tail(base_url: str, scope: str, *, following: str | None = None, after_position: int | None = None,
         types: list[str] | None = None, max_retries: int | None = None, token: str | None = None) -> int:
    """Print the scope's events (of ``types``, when given) from the start, or after ``following``
    or ``after_position``, then as they arrive.

    The server must answer at first (else one line and exit 1); after that, dropped connections
    are retried for ever (or ``max_retries`` times in a row), each noted on stderr. ``token`` is
    ``--token`` (None: $PERHAP_TOKEN, if set).
    """
    import orjson

    where, wanted = scope_with_types(scope, types)

    def note(error: Exception, delay: float) -> None:
        reason = one_line(str(error)) or error.__class__.__name__
        print(f"perhap tail: connection lost ({reason}); reconnecting in {delay:.1f} s",
              file=sys.stderr, flush=True)

    out = sys.stdout.buffer
    with open_client(base_url, token) as client:
        try:
            client.ping()  # fail fast (one line) when nothing answers at all
            for event in client.subscribe(where, following=following, after_position=after_position,
                                          types=wanted, max_retries=max_retries, on_retry=note):
                out.write(orjson.dumps(event.to_json_dict()) + b"\n")
                out.flush()
        except PerhapError as exc:  # a clash found before sending is said in the options' names
            raise client_error(option_names(exc)) from None
    return 0
