"""What every command shares: the expected-failure exception, one-line error messages, scope and
JSON arguments, and the client a command talks to a server with.

Light at import time (no httpx, no backends): ``perhap --help`` must start fast.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, PerhapError, hide_tokens_in
from ..jsoncodec import load_json, refuse_duplicate_keys
from ..model import Scope, check_name

if TYPE_CHECKING:
    from ..client.sync import Client

DEFAULT_PORT = 8787
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
LEVELS = ("REALM", "DOMAIN", "ENTITY", "TYPE")
TOKEN_ENV = "PERHAP_TOKEN"
#: RFC 6750's b64token: what may follow "Bearer " (perhap's own tokens are ``perhap_`` + base64url).
_BEARER = re.compile(r"[A-Za-z0-9._~+/-]+=*")


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1 (2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines too) made one space, and any token in it
    hidden: an error may quote an argument where a token was pasted (a scope, a URL, a file)."""
    return " ".join(hide_tokens_in(text).split())


class _OwnWarnings(logging.Handler):
    """Every command but ``serve`` (which logs): perhap's own warnings as one ``warning:`` line each;
    nothing else. A library's records (asyncpg's pool, asyncio's, a driver's, with their tracebacks)
    would otherwise reach stderr through Python's last-resort handler, around the one ``error:``
    line a failure is reported by; so would an error logged by perhap, which that line reports."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING or not (record.name == "perhap" or record.name.startswith("perhap.")):
            return
        try:
            print(f"warning: {one_line(record.getMessage())}", file=sys.stderr, flush=True)
        except Exception:  # a message that cannot be formatted, a closed stderr: never a traceback
            pass


def quiet_logging() -> None:
    """Send every log record to :class:`_OwnWarnings` (for the commands that set up no logging)."""
    root = logging.getLogger()
    root.handlers = [_OwnWarnings()]
    root.setLevel(logging.WARNING)


def option_names(exc: PerhapError) -> PerhapError:
    """A clash found before sending names the API's parameters; say the command's options instead."""
    if type(exc) is InvalidInput:  # raised here, not a server's BadRequest
        detail = exc.detail
        for name in ("after_position", "before_position", "after_version", "until_version", "order=desc",
                     "order=asc", "following"):
            option = {"order=desc": "--desc", "order=asc": "oldest first (no --desc)"}.get(
                name, "--" + name.replace("_", "-"))
            detail = detail.replace(name, option)
        return InvalidInput(detail)
    return exc


def client_error(exc: PerhapError) -> CommandError:
    """One line for a client error: the server's problem, no connection, or a bad name (usage)."""
    from ..client.errors import ConnectionFailed, PerhapClientError

    if isinstance(exc, ConnectionFailed):
        text = exc.one_line()
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text.lower():
            return CommandError(f"{text} (the server there does not speak TLS: use http://)")
        if "CERTIFICATE_VERIFY_FAILED" in text:  # it answers, with a certificate not trusted here
            return CommandError(f"{text} (for a certificate of your own, name it or its CA: "
                                "SSL_CERT_FILE=/path/to/cert.pem perhap ...)")
        if "disconnected without sending a response" in text and (exc.url or "").startswith("http://"):
            # What a server speaking TLS does to plain HTTP (or one that stopped mid-request).
            return CommandError(f"{text} (if the server there was started with --tls-cert, use https://)")
        if text.startswith("no answer"):  # something answered the connection: it is running
            return CommandError(text)
        return CommandError(f"{text} (is `perhap serve` running there?)")
    if isinstance(exc, PerhapClientError):
        if exc.status == 401:
            return CommandError(f"{exc.one_line()} (give the token with --token or {TOKEN_ENV})")
        return CommandError(exc.one_line())
    if isinstance(exc, InvalidInput):
        return CommandError(exc.detail, 2)
    return CommandError(str(exc))


def parse_scope(text: str, *, levels: int = 4, what: str = "a scope") -> Scope:
    """A Scope from REALM[/DOMAIN[/ENTITY[/TYPE]]] (at most ``levels`` names); usage error if bad."""
    parts = text.strip("/").split("/")
    shape = "/".join(LEVELS[:levels])
    if text.startswith(("http://", "https://")):  # the whole URL, as curl takes it
        raise CommandError(f"{what} is at most {shape}, not a URL: give the server with --url and the "
                           "scope alone (perhap read shop/orders --url http://HOST:PORT)", 2)
    if len(parts) > levels:
        raise CommandError(f"{what} is at most {shape}, got {text!r}", 2)
    try:
        return Scope(*parts)
    except InvalidInput as exc:
        raise CommandError(f"{what} {text!r}: {exc.detail}", 2) from None


def scope_with_types(text: str, types: list[str] | None) -> tuple[Scope, list[str] | None]:
    """parse_scope, and the ``--type`` options (the type goes in the scope or in them, not both)."""
    scope = parse_scope(text)
    if not types:
        return scope, None
    if scope.type is not None:
        raise CommandError("give the type in the scope or with --type, not both", 2)
    for name in types:
        try:
            check_name(name, "type")
        except InvalidInput as exc:
            raise CommandError(f"--type {name!r}: {exc.detail}", 2) from None
    return scope, types


def check_url(url: str, option: str = "--url") -> str:
    """A server's base URL, refused (usage error naming ``option``) unless it is a well-formed
    http:// or https:// URL with a host (and a port from 1 to 65535, if it has one)."""
    from ..backends import redact
    from ..client.core import url_problem

    try:
        shown = repr(redact(url))  # a password in the URL is not shown
    except ValueError:  # not even urlsplit can read it
        shown = repr(re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url))
    problem = url_problem(url)
    if problem is not None:
        raise CommandError(f"{option} {shown}{problem}", 2)
    return url


def bearer_token(option: str | None, name: str = "--token", env: str = TOKEN_ENV) -> str | None:
    """The token to send: the option ``name`` (``--token``), else ``$env`` (``PERHAP_TOKEN``;
    empty means unset), else None.

    A malformed token is a usage error that never shows the token: it is a secret, and it may
    have been pasted in the wrong place.
    """
    if option is not None:
        token, source = option.strip(), name
    else:
        token, source = os.environ.get(env, "").strip(), env
        if not token:
            return None
    if not token:
        raise CommandError(f"{name} is empty", 2)
    if not _BEARER.fullmatch(token):
        raise CommandError(f"{source} is not a bearer token (not shown): it may hold only letters, digits "
                           "and - . _ ~ + /, then = at the end", 2)
    return token


def open_client(url: str, token: str | None = None) -> Client:
    """A blocking client of the server at ``url`` (checked first), sending ``--token`` or $PERHAP_TOKEN."""
    from ..client.sync import Client

    url = check_url(url)
    secret = bearer_token(token)
    return Client(url, headers=None if secret is None else {"authorization": f"Bearer {secret}"})


def parse_json(text: str | bytes, what: str, *, string_hint: bool = False) -> Any:
    """A JSON argument (any JSON value: a boundary); a usage error names ``what`` when it is bad.

    With ``string_hint``, a bare word (``hello``: no JSON value starts like that) gets the quoted
    form in the message, since a string was almost certainly meant.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    try:
        value = load_json(raw)
        refuse_duplicate_keys(raw, value)  # as the server does: it would be stored with one of them
        return value
    except Exception as exc:  # orjson.JSONDecodeError, or InvalidInput for NaN and the like
        reason = one_line(str(exc)) or exc.__class__.__name__
        hint = _quote_hint(text) if string_hint else ""
        raise CommandError(f"{what} is not valid JSON: {reason}{hint}", 2) from None


def _quote_hint(text: str | bytes) -> str:
    """``; to send a string, quote it as JSON: '"hello"'`` for a bare word, else nothing."""
    import shlex

    import orjson

    word = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    word = word.strip()
    if not word or word[0] in '{["-0123456789' or word in ("true", "false", "null"):
        return ""  # meant as JSON, just broken: the parser's reason says where
    try:
        quoted = orjson.dumps(word if len(word) <= 40 else "...").decode()
    except TypeError:  # a lone surrogate from an undecodable argument
        return ""
    if isinstance(text, bytes):  # from stdin: no shell in between
        return f"; to send a string, quote it as JSON: {quoted}"
    import os

    name = word[1:] if word.startswith("@") else word  # a file's name where its JSON was meant (curl's -d @file)
    if os.path.isfile(name):
        return f"; to send the JSON in the file {name}, give - and redirect it: - < {shlex.quote(name)}"
    return f"; to send a string, quote it as JSON: {shlex.quote(quoted)}"


def write_json_line(value: Any) -> None:
    """One JSON value on a line of stdout."""
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")
