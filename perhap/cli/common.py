"""What every command shares: the expected-failure exception, one-line error messages, scope and
JSON arguments, and the client a command talks to a server with.

Light at import time (no httpx, no backends): ``perhap --help`` must start fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, PerhapError
from ..jsoncodec import load_json
from ..model import Scope

if TYPE_CHECKING:
    from ..client.sync import Client

DEFAULT_PORT = 8787
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
LEVELS = ("REALM", "DOMAIN", "ENTITY", "TYPE")


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines too) made one space."""
    return " ".join(text.split())


def client_error(exc: PerhapError) -> CommandError:
    """One line for a client error: the server's problem, no connection, or a bad name (usage)."""
    from ..client.errors import ConnectionFailed, PerhapClientError

    if isinstance(exc, ConnectionFailed):
        return CommandError(f"{exc.one_line()} (is `perhap serve` running there?)")
    if isinstance(exc, PerhapClientError):
        return CommandError(exc.one_line())
    if isinstance(exc, InvalidInput):
        return CommandError(exc.detail, 2)
    return CommandError(str(exc))


def parse_scope(text: str, *, levels: int = 4, what: str = "a scope") -> Scope:
    """A Scope from REALM[/DOMAIN[/ENTITY[/TYPE]]] (at most ``levels`` names); usage error if bad."""
    parts = text.strip("/").split("/")
    shape = "/".join(LEVELS[:levels])
    if len(parts) > levels:
        raise CommandError(f"{what} is at most {shape}, got {text!r}", 2)
    try:
        return Scope(*parts)
    except InvalidInput as exc:
        raise CommandError(f"{what} {text!r}: {exc.detail}", 2) from None


def scope_with_type(text: str, type: str | None) -> Scope:
    """parse_scope, then add ``--type`` (given at most once, in the scope or as the option)."""
    scope = parse_scope(text)
    if type is None:
        return scope
    if scope.type is not None:
        raise CommandError("give the type in the scope or with --type, not both", 2)
    try:
        return Scope(scope.realm, scope.domain, scope.entity, type)
    except InvalidInput as exc:
        raise CommandError(f"--type: {exc.detail}", 2) from None


def check_url(url: str) -> str:
    """A server's base URL, refused (usage error) unless it is http:// or https://."""
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--url must be an http:// or https:// URL, got {url!r}", 2)
    return url


def open_client(url: str) -> Client:
    """A blocking client of the server at ``url`` (checked first)."""
    from ..client.sync import Client

    return Client(check_url(url))


def parse_json(text: str | bytes, what: str) -> Any:
    """A JSON argument (any JSON value: a boundary); a usage error names ``what`` when it is bad."""
    try:
        return load_json(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    except Exception as exc:  # orjson.JSONDecodeError, or InvalidInput for NaN and the like
        reason = one_line(str(exc)) or exc.__class__.__name__
        raise CommandError(f"{what} is not valid JSON: {reason}", 2) from None


def write_json_line(value: Any) -> None:
    """One JSON value on a line of stdout."""
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
