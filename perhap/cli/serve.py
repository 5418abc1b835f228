"""``perhap serve``: check the options, refuse unsafe ones, and hand over to :func:`perhap.server.serve`."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable
from typing import Any

from .common import CommandError, one_line

log = logging.getLogger("perhap")

#: Options that count something: each must be 1 or more.
POSITIVE_OPTIONS = ("max_body", "max_batch", "max_depth", "max_streams", "max_streams_per_token", "max_header",
                    "max_connections", "stream_buffer", "max_page_bytes")
#: Options in seconds that must be more than 0 (0 would drop every connection, or spin) and finite.
POSITIVE_SECONDS = ("heartbeat", "header_timeout", "body_timeout", "idle_timeout")


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; every bad option is one line before anything starts, and so is a
    failed start (port in use, store that cannot open): exit 2 for bad arguments, 1 otherwise."""
    from ..backends import check_store_url
    from ..limits import MIN_MAX_HEADER
    from ..server import _setup_logging, serve

    try:
        scheme, _ = check_store_url(args.db)
    except ValueError as exc:
        raise CommandError(f"--db: {exc}", 2) from None
    if args.workers < 1:
        raise CommandError("--workers must be 1 or more", 2)
    if args.workers > 1 and scheme == "sqlite":
        raise CommandError("--workers > 1 needs a shared backend (postgresql:// or cassandra://); "
                           "embedded SQLite is served by one process", 2)
    if not 1 <= args.port <= 65535:
        raise CommandError("--port must be from 1 to 65535", 2)
    for name in POSITIVE_OPTIONS:
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be 1 or more", 2)
    if args.max_header < MIN_MAX_HEADER:  # (it started, and answered every request 431)
        raise CommandError(f"--max-header must be {MIN_MAX_HEADER} or more: a request's usual headers "
                           "alone take hundreds of bytes", 2)
    if args.auth is not None and not args.auth.strip():  # (it started with no tokens: every request a 401)
        raise CommandError("--auth takes the path of a token file", 2)
    for name in POSITIVE_SECONDS:
        if not 0 < getattr(args, name) < math.inf:  # (NaN fails it too)
            raise CommandError(f"--{name.replace('_', '-')} must be more than 0 seconds (and finite)", 2)
    if not 0 <= args.write_timeout < math.inf:
        raise CommandError("--write-timeout must be 0 (never) or more seconds (and finite)", 2)
    _check_host(args.host)
    if args.host.startswith("[") and args.host.endswith("]"):  # an IPv6 address as URLs write it
        args.host = args.host[1:-1]
    for origin in args.cors_origin:
        _check_origin(origin)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("give --tls-cert and --tls-key together", 2)
    if args.tls_cert is not None:
        check_tls(args.tls_cert, args.tls_key)
    _setup_logging(args.log_level, args.log_format)  # so the warnings below are log lines too
    if args.auth is not None:
        _check_token_file(args.auth)
    elif not is_loopback(args.host):
        if not args.insecure:
            raise CommandError(f"refusing to listen on {args.host} without --auth: anyone who can reach it "
                               "could read and write every realm; add --auth FILE, or --insecure if you mean it", 2)
        log.warning("listening on %s WITHOUT authentication (--insecure): anyone who can reach it may read "
                    "and write every realm", args.host)
    # Before the store opens (a SQLite file would be created for nothing). Another process may
    # still take the port in between: uvicorn's own failure is then reported the same way.
    check_listen(args.host, args.port)
    if args.workers > 1:
        check_store_opens(args.db)
    net: dict[str, Any] = dict(tls_cert=args.tls_cert, tls_key=args.tls_key, idle_timeout=args.idle_timeout,
                               header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                               max_header=args.max_header, max_connections=args.max_connections)
    return reporting_start_failure(
        serve, db=args.db, host=args.host, port=args.port, workers=args.workers,
        log_level=args.log_level, log_format=args.log_format, net=net,
        max_body=args.max_body, heartbeat=args.heartbeat, auth=args.auth,
        max_batch=args.max_batch, max_depth=args.max_depth, max_streams=args.max_streams,
        max_streams_per_token=args.max_streams_per_token, cors_origins=args.cors_origin,
        stream_buffer=args.stream_buffer, write_timeout=args.write_timeout or None,
        max_page_bytes=args.max_page_bytes)


def check_store_opens(url: str) -> None:
    """With several workers, open the store once here first: a store that cannot open is one line
    (each worker would log its own failure, as uvicorn does), and a first start's schema is made
    here once rather than by workers waiting on each other's migration lock."""
    import asyncio

    from ..backends import open_store, redact

    async def probe() -> None:
        store = await open_store(url)
        await store.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        raise CommandError(f"cannot open the store {redact(url)}: {one_line(str(exc))}") from None


def check_tls(cert: str, key: str) -> None:
    """Load the certificate and its key as the server will, before anything starts; one line naming
    both files if they do not load (a key protected by a passphrase is refused, never asked for)."""
    import ssl

    for path in (cert, key):
        if not os.path.isfile(path):
            raise CommandError(f"cannot read {path}: {'a directory' if os.path.isdir(path) else 'no such file'}", 2)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
        return
    except ssl.SSLError as exc:
        failure = exc
    except OSError as exc:
        raise CommandError(f"--tls-cert {cert}, --tls-key {key}: cannot read them: "
                           f"{exc.strerror or one_line(str(exc))}", 2) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError):
        what = f"{cert} holds no PEM certificate"
    else:
        if failure.reason == "KEY_VALUES_MISMATCH":
            what = f"{key} is not the private key of the certificate in {cert}"
        else:
            try:
                with open(key, "rb") as file:
                    encrypted = b"ENCRYPTED" in file.read(1 << 20)
            except OSError:
                encrypted = False
            what = (f"{key} is protected by a passphrase, which perhap cannot ask for: give the key "
                    f"without one" if encrypted else f"{key} holds no PEM private key")
    raise CommandError(f"--tls-cert {cert}, --tls-key {key}: the certificate and key do not load: {what}", 2)


def _check_origin(origin: str) -> None:
    """An origin as a browser sends it, or exit 2: one that no browser sends would never match, and
    its pages would be refused in silence (a '*' is not a wildcard here: origins are listed). A
    browser writes the scheme and host in lower case, leaves out the scheme's default port and
    sends an international name in its ASCII (punycode) form; an origin written otherwise is
    refused with the form to give."""
    from urllib.parse import urlsplit

    bare = origin.removesuffix("/")  # one, as an address bar shows it: no more
    try:
        parts = urlsplit(bare)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password or port == 0):
        raise CommandError(f"--cors-origin {one_line(origin)!r} is not an origin: give scheme://host[:port] "
                           "exactly as the browser sends it, e.g. https://app.example.com (each origin its "
                           "own --cors-origin; there is no wildcard)", 2)
    canonical = _browser_origin(parts.scheme.lower(), parts.hostname, port)
    if canonical != bare:
        said = f"; give {canonical}" if canonical else ""
        raise CommandError(f"--cors-origin {one_line(origin)!r} is not an origin as a browser sends it (lower "
                           f"case, no default port, a host name in ASCII){said}", 2)


def _browser_origin(scheme: str, host: str, port: int | None) -> str | None:
    """The origin a browser would send for these parts, or None when the host is no host name."""
    import ipaddress
    import re

    try:
        host = ipaddress.ip_address(host).compressed
        shown = f"[{host}]" if ":" in host else host
    except ValueError:
        try:
            shown = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return None
        if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", shown):
            return None
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{shown}" + (f":{port}" if port is not None and port != default else "")


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will (asyncio's create_server), then let it go; one line if not."""
    import asyncio
    import errno
    import socket

    from ..server import url_host

    async def probe() -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(probe())
    except OSError as exc:
        if isinstance(exc, socket.gaierror):  # a host name that does not resolve
            reason = str(exc.strerror).lower()
        elif exc.errno:
            reason = os.strerror(exc.errno).lower()
        else:
            reason = one_line(str(exc))
        hint = " (another server is listening there: stop it, or choose another --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise CommandError(f"cannot listen on {url_host(host)}:{port}: {reason}{hint}") from None


class _StartFailure(logging.Filter):
    """Holds back uvicorn's error lines about a failed start (the lifespan's message, a bind error,
    "Application startup failed"), so that the failure is reported as one ``error:`` line instead.

    Only records logged from uvicorn's start-up code are held; should the server start after all,
    they are let through at the end, so nothing is ever lost.
    """

    def __init__(self) -> None:
        super().__init__()
        import uvicorn

        self.root = os.path.dirname(uvicorn.__file__)
        self.lifespan = os.path.join(self.root, "lifespan")
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        # Server.startup (bind), Config.bind_socket (bind, with --workers), LifespanOn.startup and
        # LifespanOn.send (the app's "lifespan.startup.failed" message).
        if record.levelno >= logging.ERROR and record.pathname.startswith(self.root) and (
                record.funcName in ("startup", "bind_socket")
                or (record.funcName == "send" and record.pathname.startswith(self.lifespan))):
            self.held.append(record)
            return False
        return True

    def reason(self) -> str:
        lines = [r.getMessage() for r in self.held if not r.getMessage().startswith("Application startup failed")]
        return "; ".join(one_line(line) for line in lines) or "the server stopped with an error (see the log above)"


def reporting_start_failure(serve: Callable[..., int], **options: Any) -> int:
    """Run ``serve(**options)``; a failed start (uvicorn exits with 3) becomes one CommandError line."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    held = _StartFailure()
    uvicorn_log.addFilter(held)
    status: int | str | None = None
    try:
        try:
            status = serve(**options)
        except SystemExit as exc:  # uvicorn's way to give up on start-up
            status = exc.code
    finally:
        uvicorn_log.removeFilter(held)
    if status in (0, None):
        for record in held.held:  # the server did start: these were not about its start
            uvicorn_log.handle(record)
        return 0
    raise CommandError(held.reason())


def _check_token_file(path: str) -> None:
    from ..auth import AuthFileError, load_grants

    try:
        if not load_grants(path):
            log.warning("the token file %s has no tokens yet: every request needing one gets 401 "
                        "until `perhap token add --auth %s ...`", path, path)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None


def _check_host(host: str) -> None:
    """A URL or host:port given to --host is a usage error that says so (it was judged as a host
    name: refused as needing --auth, then as a name that does not resolve)."""
    if "://" in host or "/" in host:
        raise CommandError(f"--host takes a host name or address, not a URL ({host!r}); the port is --port", 2)
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (name.startswith("[") and name.endswith("]") or name and ":" not in name):
        raise CommandError(f"--host takes a host name or address alone; give the port with --port {port}", 2)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (so serving without tokens exposes nothing)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
