"""``perhap serve``: check the options, refuse unsafe ones, and hand over to :func:`perhap.server.serve`."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from .common import CommandError

log = logging.getLogger("perhap")

#: Options that count something: each must be 1 or more.
POSITIVE_OPTIONS = ("max_body", "max_batch", "max_depth", "max_streams", "max_streams_per_token", "max_header")


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; every bad option is one line before anything starts."""
    from ..backends import parse_store_url
    from ..server import _setup_logging, serve

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
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be 1 or more", 2)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("give --tls-cert and --tls-key together", 2)
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"cannot read {path}: no such file")
    _setup_logging(args.log_level, args.log_format)  # so the warnings below are log lines too
    if args.auth is not None:
        _check_token_file(args.auth)
    elif not is_loopback(args.host):
        if not args.insecure:
            raise CommandError(f"refusing to listen on {args.host} without --auth: anyone who can reach it "
                               "could read and write every realm; add --auth FILE, or --insecure if you mean it", 2)
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach it may read "
                    "and write every realm", args.host)
    net: dict[str, Any] = dict(tls_cert=args.tls_cert, tls_key=args.tls_key, idle_timeout=args.idle_timeout,
                               header_timeout=args.header_timeout, max_header=args.max_header,
                               max_connections=args.max_connections)
    return serve(db=args.db, host=args.host, port=args.port, workers=args.workers,
                 log_level=args.log_level, log_format=args.log_format, net=net,
                 max_body=args.max_body, heartbeat=args.heartbeat, auth=args.auth,
                 max_batch=args.max_batch, max_depth=args.max_depth, max_streams=args.max_streams,
                 max_streams_per_token=args.max_streams_per_token, cors_origins=args.cors_origin)


def _check_token_file(path: str) -> None:
    from ..auth import AuthFileError, load_grants

    try:
        if not load_grants(path):
            log.warning("the token file %s has no tokens yet: every request needing one gets 401 "
                        "until `perhap token add --auth %s ...`", path, path)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (so serving without tokens exposes nothing)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
