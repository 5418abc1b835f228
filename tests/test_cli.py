"""The `perhap` command line through its entry point: the client commands against a real server,
help with examples on every command, one-line errors, and docs/cli.md generated from the parser.

Regenerate the reference part of docs/cli.md after changing the parser: ``python -m tests.test_cli``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perhap.store import load_json
from tests.conftest import BACKENDS, get_provider
from tests.servers import ProcessServer, free_port

DOCS = Path(__file__).parent.parent / "docs" / "cli.md"
BEGIN, END = "<!-- BEGIN GENERATED: perhap --help -->", "<!-- END GENERATED -->"
COMMANDS = ["serve", "append", "append-many", "read", "keys", "tail", "export", "import", "copy", "token"]
HELP_COLUMNS = "100"


def run_cli(*args: str, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], input=input, capture_output=True,
                          timeout=60, env={**os.environ, **(env or {})})


def one_error_line(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err and "usage:" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    provider = get_provider(request.param, tmp_path_factory)
    with ProcessServer(provider.new_url(), None, "--heartbeat", "1", cwd=tmp_path_factory.mktemp("cli")) as s:
        yield s


# --------------------------------------------------------------------------- help and usage errors


def test_every_command_has_help_with_an_example() -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run_cli(*c, "--help"), [[]] + [[c] for c in COMMANDS]))
    for command, r in zip(["perhap"] + COMMANDS, results):
        out = r.stdout.decode()
        assert r.returncode == 0 and r.stderr == b"", command
        assert "usage: perhap" in out and re.search(r"examples?:\n  perhap ", out), (command, out)


def test_the_console_script_is_installed() -> None:
    script = shutil.which("perhap") or str(Path(sys.executable).parent / "perhap")
    r = subprocess.run([script, "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0 and b"append" in r.stdout and b"copy" in r.stdout


USAGE_ERRORS = [
    ["bogus"], ["append"], ["append", "r/d/e", "1"], ["append", "r/d/e/t/x", "1"],
    ["append", "r/d/e/t", "{bad"], ["append", "r/d/e/t", "NaN"], ["append", "r/d/e/t", "1", "--meta", "[1]"],
    ["append", "r/d/e/t", "1", "--meta", "{bad"], ["append", "r/d/e/t", "1", "--expected-version", "x"],
    ["append", "r/d/e/t", "1", "--expected-version", "-2"], ["append", "r/d/e/t", "1", "--event-id", "notauuid"],
    ["group", "replay", "shop", "g", "--event-id", "x"],
    ["append", "keys/d/e/t", "1"], ["append", "r/d//t", "1"], ["read"], ["read", "a/b/c/d/e"], ["read", "_sys"],
    ["read", "r", "--page-size", "0"], ["read", "r/d/e/t", "--type", "u"], ["read", "r", "--url", "ftp://x"],
    ["read", "r", "--following"], ["keys", "a/b/c/d"], ["tail"], ["tail", "r", "--url", "localhost"],
    ["export"], ["export", "--db", "mysql://x/y"], ["export", "--db", "sqlite:///x.db", "a/b/c/d/e"],
    ["import", "--db", "sqlite:///x.db"], ["import", "dump.jsonl"], ["copy", "--from", "sqlite:///x.db"],
    ["copy", "--to", "sqlite:///x.db"],
]


def test_bad_arguments_give_one_line_and_exit_2(tmp_path: Path) -> None:
    def attempt(args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, timeout=60,
                              cwd=tmp_path)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, USAGE_ERRORS))
    for args, r in zip(USAGE_ERRORS, results):
        one_error_line(r)
        assert r.returncode == 2, (args, r.stderr)
    assert not list(tmp_path.iterdir())  # no command created a store on its way to the error
    r = run_cli("append", "r/d/e/t", "-", input=b"{not json")
    assert "the event on stdin is not valid JSON" in one_error_line(r) and r.returncode == 2



def test_a_mistyped_option_points_to_its_command_s_help_and_a_port_in_host_is_named() -> None:
    """An option a command does not take was reported from the top ("see perhap --help", whose
    help does not list it); a port or a URL given to --host was judged as a host name (refused as
    needing --auth, then as a name that does not resolve)."""
    r = run_cli("read", "shop", "--ulr", "http://127.0.0.1:1")
    assert one_error_line(r).endswith("(see perhap read --help)") and r.returncode == 2, r.stderr
    assert "--ulr" in one_error_line(r)
    for host, told in (("127.0.0.1:8000", "--port 8000"), ("[::1]:8000", "--port 8000"),
                       ("http://127.0.0.1", "not a URL")):
        r = run_cli("serve", "--host", host, "--port", str(free_port()))
        assert told in one_error_line(r) and r.returncode == 2, (host, r.stderr)


def test_no_command_is_a_one_line_usage_error() -> None:
    """No arguments are bad arguments: one error line on stderr pointing at --help, exit 2 (it
    printed 37 lines of help on stdout)."""
    r = run_cli()
    assert r.returncode == 2 and r.stdout == b""
    assert "a command is needed" in one_error_line(r) and "perhap --help" in one_error_line(r)


# --------------------------------------------------------------------------- the client commands


def test_append_read_keys(server: ProcessServer, realm: str) -> None:
    url = ["--url", server.url]
    r = run_cli("append", f"{realm}/orders/o-1/placed", '{"total": 42}', *url)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    first = orjson.loads(r.stdout)
    assert set(first) == {"event_id", "version", "position", "timestamp"} and first["version"] == 0
    eid = str(uuid.uuid4())
    for _ in range(2):  # with a chosen id, the same append twice stores one event
        r = run_cli("append", f"{realm}/orders/o-1/paid", "-", "--event-id", eid, "--meta", '{"by": "me"}',
                    "--expected-version", "0", *url, input=b'{"amount": 42, "big": 123456789012345678901234}')
        assert r.returncode == 0, r.stderr
        assert orjson.loads(r.stdout)["event_id"] == eid
    run_cli("append", f"{realm}/orders/o-2/placed", "[1, 2]", *url)
    run_cli("append", f"{realm}/users/u-1/joined", '"ü✓"', *url)

    r = run_cli("read", realm, "--page-size", "1", *url)
    assert r.returncode == 0 and r.stderr == b""
    api = httpx.get(f"{server.url}/{realm}").content.rstrip(b"\n")
    # Each line is the API's event object, byte for byte.
    assert api == b'{"events":[' + b",".join(r.stdout.splitlines()) + b'],"next":null}'
    events = [load_json(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == [{"total": 42}, {"amount": 42, "big": 123456789012345678901234},
                                            [1, 2], "ü✓"]
    assert events[1]["meta"] == {"by": "me"} and events[1]["event_id"] == eid

    def lines(*args: str) -> list[Any]:
        r = run_cli(*args, *url)
        assert r.returncode == 0, r.stderr
        return [orjson.loads(line) for line in r.stdout.splitlines()]

    assert [e["type"] for e in lines("read", f"{realm}/orders/o-1")] == ["placed", "paid"]
    assert [e["entity"] for e in lines("read", f"{realm}/orders", "--type", "placed")] == ["o-1", "o-2"]
    assert [e["event"] for e in lines("read", f"{realm}/orders", "--following", first["event_id"])][1] == [1, 2]
    assert lines("read", f"{realm}x") == []  # an unknown realm is an empty scope, as in the API

    def names(*args: str) -> list[str]:
        r = run_cli("keys", *args, *url)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode().splitlines()

    assert realm in names()
    assert names(realm) == ["orders", "users"]
    assert names(f"{realm}/orders") == ["o-1", "o-2"]
    assert names(f"{realm}/orders/o-1") == ["paid", "placed"]



def test_negative_numbers_with_an_exponent_are_events_and_a_closed_stdout_is_said_first(
        server: ProcessServer, realm: str) -> None:
    """argparse took -1e3 for an option ("the following arguments are required: JSON"); and a
    command started with stdout closed stored the event, then failed as "unexpected"."""
    url = ["--url", server.url]
    for text in ("-1e3", "-1E+3", "-2.5e-1", "-5"):
        r = run_cli("append", f"{realm}/d/neg/t", text, *url)
        assert r.returncode == 0, r.stderr
    got = [e["event"] for e in orjson.loads(httpx.get(f"{server.url}/{realm}/d/neg").content)["events"]]
    assert got == [-1000.0, -1000.0, -0.25, -5]
    closed = subprocess.run([sys.executable, "-m", "perhap.cli", "append", f"{realm}/d/closed/t", "1", *url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and b"standard output is closed" in closed.stderr, closed.stderr
    assert httpx.get(f"{server.url}/{realm}/d/closed").json()["events"] == []  # nothing was sent
    with open("/dev/full", "wb") as device:
        full = subprocess.run([sys.executable, "-m", "perhap.cli", "read", f"{realm}/d/neg", *url],
                              stdout=device, stderr=subprocess.PIPE, timeout=60)
    assert full.returncode == 1 and full.stderr.decode().strip() == "error: could not write the output: "\
        "No space left on device", full.stderr


def test_read_follows_every_page_and_survives_a_closed_pipe(server: ProcessServer, realm: str) -> None:
    batch = [{"type": "t", "event": {"n": n, "pad": "x" * 500}} for n in range(300)]
    assert httpx.post(f"{server.url}/{realm}/d/e", json={"events": batch}).status_code == 201
    r = run_cli("read", f"{realm}/d", "--page-size", "7", "--url", server.url)
    assert [orjson.loads(line)["event"]["n"] for line in r.stdout.splitlines()] == list(range(300))
    # `perhap read ... | head -1`: the reader goes away early; that is not an error.
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "read", realm, "--page-size", "10",
                             "--url", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert orjson.loads(proc.stdout.readline())["event"]["n"] == 0
    proc.stdout.close()
    assert proc.wait(30) == 0 and proc.stderr.read() == b""


def test_read_newest_first_from_a_position_of_several_types(server: ProcessServer, realm: str) -> None:
    url = ["--url", server.url]
    for i in range(10):
        assert httpx.post(f"{server.url}/{realm}/d{i % 2}/e{i % 3}/t{i % 3}", json={"event": i}).status_code == 201

    def values(*args: str) -> list[Any]:
        r = run_cli("read", *args, *url)
        assert r.returncode == 0 and r.stderr == b"", r.stderr
        return [orjson.loads(line)["event"] for line in r.stdout.splitlines()]

    events = [orjson.loads(line) for line in run_cli("read", realm, *url).stdout.splitlines()]
    position = [e["position"] for e in events]
    assert position == sorted(position)
    assert values(realm, "--desc", "--page-size", "3") == list(range(9, -1, -1))
    assert values(realm, "--desc", "--limit", "1") == [9]  # the realm's head
    assert values(realm, "--limit", "4", "--page-size", "3") == [0, 1, 2, 3]
    assert values(realm, "--type", "t0", "--type", "t2") == [0, 2, 3, 5, 6, 8, 9]
    assert values(f"{realm}/d1", "--type", "t1", "--type", "t0", "--desc") == [9, 7, 3, 1]
    assert values(realm, "--after-position", str(position[6])) == [7, 8, 9]
    assert values(realm, "--desc", "--before-position", str(position[2]), "--page-size", "1") == [1, 0]
    assert values(f"{realm}/d0/e0", "--after-version", "0", "--until-version", "1") == [6]
    # Clashes are usage errors that name the options.
    for args, words in ((["--desc", "--after-position", "3"], "--after-position"),
                        (["--before-position", "3"], "--before-position"),
                        (["--after-version", "1"], "--after-version"),
                        (["--following", events[0]["event_id"], "--after-position", "1"], "--following"),
                        (["--limit", "0"], "--limit"), ([f"{realm}/d0/e0/t0", "--type", "t1"], "not both")):
        scope = [] if args[0].startswith(realm) else [realm]
        r = run_cli("read", *scope, *args, *url)
        assert r.returncode == 2 and words in one_error_line(r), (args, r.stderr)
    # And by tail (it named the API's parameters: after_position, following).
    for args in (["--after-position", "-5"], ["--following", events[0]["event_id"], "--after-position", "1"]):
        r = run_cli("tail", realm, *args, *url)
        line = one_error_line(r)
        assert r.returncode == 2 and args[0] in line and "after_position" not in line, (args, line)


def test_append_many(server: ProcessServer, realm: str, tmp_path: Path) -> None:
    url = ["--url", server.url]
    target = f"{realm}/orders"
    assert httpx.post(f"{server.url}/{target}/stock-4/received", json={"event": 12}).status_code == 201
    lines = (b'{"entity": "order-17", "type": "placed", "event": {"total": 42}}\n\n'
             b'{"entity": "stock-4", "type": "reserved", "event": 1, "meta": {"by": "cli"}}\n')
    r = run_cli("append-many", target, "--expect", "order-17=-1", "--expect", "stock-4=0", *url, input=lines)
    if r.returncode == 1 and "501" in one_error_line(r):
        return  # a backend without multi-entity appends says so in one line
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    results = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [(x["entity"], x["version"]) for x in results] == [("order-17", 0), ("stock-4", 1)]
    assert set(results[0]) == {"entity", "event_id", "version", "position", "timestamp"}
    assert results[1]["position"] > results[0]["position"]
    # A file holding a request body (with its expected versions) or a JSON array works too.
    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps({"events": [{"entity": "order-17", "type": "paid", "event": 42}],
                                   "expected_versions": {"order-17": 0, "stock-4": 1}}))
    r = run_cli("append-many", target, str(body), *url)
    assert r.returncode == 0 and orjson.loads(r.stdout)["version"] == 1, r.stderr
    array = tmp_path / "array.json"
    array.write_bytes(orjson.dumps([{"entity": "a", "type": "t", "event": 1},
                                    {"entity": "b", "type": "t", "event": 2}]))
    r = run_cli("append-many", target, str(array), *url)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    # A conflict names every failing entity; nothing is stored.
    r = run_cli("append-many", target, str(array), "--expect", "a=5", "--expect", "b=0", "--expect", "c=0", *url)
    line = one_error_line(r)
    assert r.returncode == 1 and "409" in line and "a: expected 5" in line and "c: expected 0" in line, line
    assert len(run_cli("read", target, *url).stdout.splitlines()) == 6
    # Usage errors: one line each, exit 2.
    for args, stdin, words in ((["--expect", "order-17"], lines, "ENTITY=VERSION"),
                               ([str(body), "--expect", "order-17=3"], None, "expects version 0"),
                               ([], b"{oops\n", "line 1"), ([], b"", "no events"),
                               ([str(tmp_path / "missing.jsonl")], None, "cannot read"),
                               ([], b'[{"type": "t", "event": 1}]', "entity")):
        r = run_cli("append-many", target, *args, *url, input=stdin)
        assert r.returncode == 2 and words in one_error_line(r), (args, r.stderr)
    r = run_cli("append-many", f"{realm}/orders/e", *url, input=lines)
    assert r.returncode == 2 and "REALM/DOMAIN" in one_error_line(r)


def test_server_errors_are_one_line(server: ProcessServer, realm: str) -> None:
    url = ["--url", server.url]
    run_cli("append", f"{realm}/d/e/t", "1", *url)
    r = run_cli("append", f"{realm}/d/e/t", "2", "--expected-version", "-1", *url)
    line = one_error_line(r)
    assert r.returncode == 1 and "409" in line and "at version 0" in line
    r = run_cli("read", realm, "--following", "01a2173a-af2e-701e-bbf0-c30a3181d1d9", *url)
    assert r.returncode == 1 and "404" in one_error_line(r)
    # A malformed value is a bad argument (exit 2), told before anything is sent.
    r = run_cli("append", f"{realm}/d/e/t", "1", "--event-id", "not-a-uuid", *url)
    assert r.returncode == 2 and "event_id" in one_error_line(r)
    r = run_cli("read", realm, "--following", "nope", *url)
    assert r.returncode == 2 and "following" in one_error_line(r)


def test_server_down_is_one_line() -> None:
    url = ["--url", f"http://127.0.0.1:{free_port()}"]
    cases = [["append", "r/d/e/t", "1"], ["read", "r"], ["keys"], ["keys", "r/d"], ["tail", "r"]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: run_cli(*args, *url), cases))
    for args, r in zip(cases, results):
        line = one_error_line(r)
        assert r.returncode == 1 and "cannot reach http://127.0.0.1:" in line, (args, line)



def test_https_to_a_plain_server_is_told_to_use_http(server: ProcessServer) -> None:
    """A server that is running, asked over TLS: "is perhap serve running there?" pointed away
    from the mistake, the scheme."""
    r = run_cli("read", "shop", "--url", server.url.replace("http://", "https://"))
    line = one_error_line(r)
    assert r.returncode == 1 and "use http://" in line and "running there" not in line, line


#: A malformed server or store URL, and what the one line must say (exit 2, before anything runs).
MALFORMED_URLS = [
    (["read", "shop", "--url", "http://127.0.0.1:1/?x=1"], "has a query or a fragment"),
    (["append", "a/b/c/d", "{}", "--url", "http://[::1"], "--url 'http://[::1' is not a valid URL"),
    (["read", "r", "--url", "http://127.0.0.1:99999"], "--url 'http://127.0.0.1:99999': the port must be from 1"),
    (["keys", "--url", "http://"], "--url 'http://' names no host"),
    (["tail", "r", "--url", "http://u:s3cret@[::1"], "--url 'http://u:***@[::1' is not a valid URL"),
    (["group", "list", "shop", "--url", "http://h:0"], "the port must be from 1 to 65535, not 0"),
    (["export", "--db", "http://[::1"], "--db 'http://[::1' is not a valid URL"),
    (["import", "--db", "https://[::1", "dump.jsonl"], "--db 'https://[::1' is not a valid URL"),
    (["copy", "--from", "sqlite:///a.db", "--to", "http://h:x"], "--to 'http://h:x' is not a valid URL"),
    (["export", "--db", "postgresql://u@h:notaport/db"],
     "--db: the port of a PostgreSQL URL must be a whole number from 1 to 65535, not 'notaport'"),
    (["import", "--db", "postgresql://u@h1:5432,h2:99999/db", "dump.jsonl"], "not '99999'"),
    (["export", "--db", "postgresql://u@[::1]:zz/db"], "not 'zz'"),
    (["copy", "--from", "postgres://u@h/db?pool_size=x", "--to", "sqlite:///b.db"],
     "--from: pool_size in a PostgreSQL URL must be a whole number above 0, not 'x'"),
    (["copy", "--from", "postgresql://u@h:0/db", "--to", "sqlite:///b.db"], "not '0'"),
    (["import", "--db", "cassandra://h:notaport/ks", "dump.jsonl"],
     "--db: the port of a Cassandra URL must be a whole number from 1 to 65535, not 'notaport'"),
    (["export", "--db", "postgresql://u@[::1/db"], "--db: not a valid store URL"),
    # The whole URL as curl takes it, given as the scope (it was "domain must be 1 to 255 bytes").
    (["read", "http://u:s3cret@127.0.0.1:8787/shop"], "a scope is at most REALM/DOMAIN/ENTITY/TYPE, not a URL: "
                                                      "give the server with --url"),
]


def test_malformed_urls_are_usage_errors_naming_the_option(tmp_path: Path) -> None:
    """A --url httpx cannot parse was `error: unexpected InvalidURL: ...`, exit 1; a store URL with
    a bad port or option failed (exit 1) only when the store opened."""
    (tmp_path / "a.db").touch()
    (tmp_path / "dump.jsonl").write_bytes(b"")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: subprocess.run(
            [sys.executable, "-m", "perhap.cli", *case[0]], capture_output=True, timeout=60, cwd=tmp_path),
            MALFORMED_URLS))
    for (args, expected), r in zip(MALFORMED_URLS, results):
        line = one_error_line(r)
        assert r.returncode == 2 and expected in line and "unexpected" not in line, (args, line)
        assert "s3cret" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "dump.jsonl"]  # nothing was created


def test_options_from_url_refuses_a_bad_port_in_words() -> None:
    """open_store from Python: asyncpg's own complaint was int()'s, when connecting."""
    import asyncio

    from perhap import open_store

    for url, port in (("postgresql://u@h:notaport/db", "'notaport'"), ("postgresql://u@h1,h2:70000/db", "'70000'"),
                      ("postgresql://u@h/db?port=5432,x", "'x'")):
        with pytest.raises(ValueError, match=f"port of a PostgreSQL URL must be a whole number from 1 to 65535, "
                                             f"not {port}"):
            asyncio.run(open_store(url).__aenter__())


def test_only_perhap_s_own_warnings_are_printed_by_a_command() -> None:
    """The logging every command but serve sets up (main calls quiet_logging; the export test in
    test_transfer.py shows it in place): a library's record never reaches stderr (Python's
    last-resort handler printed asyncpg's pool warning with its traceback before the error line),
    nor an error perhap logs (the command's one error line reports the failure); perhap's own
    warnings are one `warning:` line each."""
    code = """if True:
        import logging
        from perhap.cli.common import quiet_logging

        quiet_logging()
        logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor", exc_info=True)
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        logging.getLogger("perhap.postgres").warning("the server runs with\\nfsync = off")
        logging.getLogger("perhap.sqlite").error("failed", exc_info=ValueError("x"))
        logging.getLogger("perhaps").warning("not ours")
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr.decode() == "warning: the server runs with fsync = off\n", r.stderr


def test_a_bare_word_as_the_event_suggests_quoting_it() -> None:
    r = run_cli("append", "r/d/e/t", "hello")
    line = one_error_line(r)
    assert r.returncode == 2 and "not valid JSON" in line and """quote it as JSON: '"hello"'""" in line
    r = run_cli("append", "r/d/e/t", "-", input=b"hello world\n")
    assert r.returncode == 2 and 'quote it as JSON: "hello world"' in one_error_line(r)
    r = run_cli("append", "r/d/e/t", '{"a": 1')  # broken JSON, not a word: no quoting advice
    assert r.returncode == 2 and "quote" not in one_error_line(r)


def test_a_file_named_as_the_event_is_told_to_redirect_it(tmp_path: Path) -> None:
    """`perhap append r/d/e/t event.json` (or curl's @event.json) with the file there: advice to
    quote the name as a JSON string was no help."""
    path = tmp_path / "event.json"
    path.write_text('{"a": 1}')
    for given in (str(path), f"@{path}"):
        line = one_error_line(run_cli("append", "r/d/e/t", given))
        assert line.endswith(f"; to send the JSON in the file {path}, give - and redirect it: - < {path}"), line


def test_json_naming_a_key_twice_is_refused_before_anything_is_sent() -> None:
    """As the server refuses it: the client would otherwise send one of the two values."""
    for args, data in [(("append", "r/d/e/t", '{"a": 1, "a": 2}'), None),
                       (("append", "r/d/e/t", '{"a": 1}', "--meta", '{"m": {"k": 1, "k": 1}}'), None),
                       (("append-many", "r/d", "-"), b'[{"entity": "e", "entity": "f", "type": "t", "event": 1}]')]:
        r = run_cli(*args, "--url", "http://127.0.0.1:9", input=data)  # nothing listens there
        line = one_error_line(r)
        assert r.returncode == 2 and "appears twice" in line, line


def test_version_and_python_m_perhap() -> None:
    import perhap

    for entry in (["-m", "perhap"], ["-m", "perhap.cli"]):
        r = subprocess.run([sys.executable, *entry, "--version"], capture_output=True, timeout=60)
        assert r.returncode == 0 and r.stderr == b"", (entry, r.stderr)
        assert r.stdout.decode() == f"perhap {perhap.__version__}\n", entry
    r = subprocess.run([sys.executable, "-m", "perhap", "keys", "a/b/c/d"], capture_output=True, timeout=60)
    assert r.returncode == 2 and one_error_line(r).startswith("error: ")


# --------------------------------------------------------------------------- tokens (serve --auth)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessServer, dict[str, str]]]:
    """`perhap serve --auth FILE` (SQLite: tokens do not depend on the backend), and its tokens."""
    from perhap.auth import add_token

    where = tmp_path_factory.mktemp("auth")
    tokens = str(where / "tokens.json")
    issued = {name: add_token(tokens, realm, permission)[0]
              for name, realm, permission in (("write", "shop", "write"), ("read", "shop", "read"))}
    with ProcessServer(f"sqlite:///{where}/auth.db", None, "--auth", tokens, "--heartbeat", "1", cwd=where) as s:
        yield s, issued


def test_commands_send_a_token_from_the_option_or_the_environment(
        auth_server: tuple[ProcessServer, dict[str, str]]) -> None:
    server, tokens = auth_server
    url = ["--url", server.url]
    secrets = list(tokens.values())

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        r = run_cli(*args, *url, env={"PERHAP_TOKEN": "", **(env or {})})
        for token in secrets:  # a token is never printed, whatever happens
            assert token.encode() not in r.stdout + r.stderr, args
        return r

    # No token: 401, and the error says how to give one.
    r = run("append", "shop/orders/o-1/placed", "1")
    line = one_error_line(r)
    assert r.returncode == 1 and "401" in line and "--token" in line and "PERHAP_TOKEN" in line
    # --token, then PERHAP_TOKEN; the option wins over the variable.
    r = run("append", "shop/orders/o-1/placed", "1", "--token", tokens["write"])
    assert r.returncode == 0, r.stderr
    r = run("append", "shop/orders/o-1/paid", "2", env={"PERHAP_TOKEN": tokens["write"]})
    assert r.returncode == 0, r.stderr
    r = run("append", "shop/orders/o-2/placed", "3", "--token", tokens["write"],
            env={"PERHAP_TOKEN": "perhap_revoked-or-wrong"})
    assert r.returncode == 0, r.stderr
    reader = {"PERHAP_TOKEN": tokens["read"]}
    r = run("read", "shop/orders", env=reader)
    assert r.returncode == 0 and [orjson.loads(x)["event"] for x in r.stdout.splitlines()] == [1, 2, 3]
    r = run("keys", "shop", env=reader)
    assert r.returncode == 0 and r.stdout == b"orders\n"
    # A read token may not write (403); an unknown token is 401 and is not echoed.
    r = run("append", "shop/orders/o-3/placed", "4", env=reader)
    assert r.returncode == 1 and "403" in one_error_line(r)
    r = run("read", "shop", "--token", "perhap_wrong")
    assert r.returncode == 1 and "401" in one_error_line(r) and "perhap_wrong" not in one_error_line(r)
    # tail: the stream is authenticated too.
    tail = subprocess.Popen([sys.executable, "-m", "perhap.cli", "tail", "shop/orders/o-1", *url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **reader})
    try:
        assert tail.stdout is not None
        assert orjson.loads(tail.stdout.readline())["event"] == 1
    finally:
        tail.kill()
        tail.wait()
    r = run("tail", "shop", env={"PERHAP_TOKEN": "perhap_wrong"})
    assert r.returncode == 1 and "401" in one_error_line(r)


def test_a_token_pasted_in_an_argument_is_not_printed_in_the_error() -> None:
    """docs/cli.md: a token is never printed, not in errors: a token pasted where a scope, a URL,
    a store or a file goes was quoted back whole."""
    token = "perhap_" + "Zq9-" * 10 + "abc"
    server = f"http://127.0.0.1:{free_port()}"
    for args in (["keys", f"{token}/x/y/z", "--url", server], ["read", "shop", "--url", token],
                 ["export", "--db", token], ["read", f"_{token}", "--url", server],
                 ["import", "--db", server, token]):
        r = run_cli(*args)
        line = one_error_line(r)
        assert token not in line and token[7:20] not in line and "a token, not shown" in line, (args, line)


def test_a_malformed_token_is_a_usage_error_that_does_not_show_it() -> None:
    secret = "perhap_s3cret value"
    url = ["--url", f"http://127.0.0.1:{free_port()}"]
    for args, env in ((["--token", secret], {}), ([], {"PERHAP_TOKEN": secret}),
                      ([], {"PERHAP_TOKEN": "perhap_s3cret\nHost: evil"}), (["--token", ""], {})):
        r = run_cli("read", "shop", *url, *args, env=env)
        line = one_error_line(r)
        assert r.returncode == 2 and ("not a bearer token" in line or "empty" in line), line
        assert "s3cret" not in line
    # Nor does --help show it, though it says where the token comes from.
    r = run_cli("read", "--help", env={"PERHAP_TOKEN": "perhap_s3cret"})
    assert r.returncode == 0 and b"PERHAP_TOKEN" in r.stdout and b"s3cret" not in r.stdout


def test_tail_prints_new_events_of_a_type(server: ProcessServer, realm: str) -> None:
    httpx.post(f"{server.url}/{realm}/d/e/a", json={"event": 0})
    tail = subprocess.Popen([sys.executable, "-m", "perhap.cli", "tail", f"{realm}/d", "--type", "b",
                             "--url", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tail.stdout is not None
        httpx.post(f"{server.url}/{realm}/d/e/b", json={"event": 1})
        # Its first line shows the tail is following the stream: the events below arrive live.
        got = [orjson.loads(tail.stdout.readline())]
        for i in range(2, 5):
            httpx.post(f"{server.url}/{realm}/d/e/{'ab'[i % 2]}", json={"event": i})
        got.append(orjson.loads(tail.stdout.readline()))
        assert [(e["type"], e["event"]) for e in got] == [("b", 1), ("b", 3)]
    finally:
        tail.kill()
        tail.wait()


def test_tail_from_a_position_of_several_types(server: ProcessServer, realm: str) -> None:
    positions = [httpx.post(f"{server.url}/{realm}/d/e/{t}", json={"event": i}).json()["position"]
                 for i, t in enumerate("abcab")]
    tail = subprocess.Popen([sys.executable, "-m", "perhap.cli", "tail", realm, "--after-position",
                             str(positions[1]), "--type", "a", "--type", "c", "--url", server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tail.stdout is not None
        got = [orjson.loads(tail.stdout.readline()) for _ in range(2)]
        httpx.post(f"{server.url}/{realm}/d/e/b", json={"event": 5})
        httpx.post(f"{server.url}/{realm}/d/e/c", json={"event": 6})
        got.append(orjson.loads(tail.stdout.readline()))
        assert [(e["type"], e["event"]) for e in got] == [("c", 2), ("a", 3), ("c", 6)]
    finally:
        tail.kill()
        tail.wait()


# --------------------------------------------------------------------------- docs/cli.md


def render_help(sections: Callable[[argparse.ArgumentParser], list[tuple[str, str]]]) -> str:
    """(title, --help text) sections of the CLI's parser, as printed on a 100-column terminal,
    in docs/cli.md's form."""
    from perhap.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parts = sections(build_parser())
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "".join(f"\n### `{title}`\n\n```text\n{text.rstrip()}\n```\n" for title, text in parts)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def render_reference() -> str:
    """The reference section of docs/cli.md: every command's --help, and each token action's
    (the group commands have a section of their own: see tests.test_groups_cli)."""
    def sections(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
        found = [("perhap --help", parser.format_help())]
        for name in COMMANDS:
            command = subcommands(parser)[name]
            found.append((f"perhap {name} --help", command.format_help()))
            if name == "token":
                found += [(f"perhap token {action} --help", sub.format_help())
                          for action, sub in subcommands(command).items()]
        return found

    return render_help(sections)


def test_docs_match_the_help_output() -> None:
    text = DOCS.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert generated == render_reference() + "\n", "docs/cli.md is stale: run python -m tests.test_cli"
    # The rendering is the real --help output.
    r = run_cli("read", "--help", env={"COLUMNS": HELP_COLUMNS})
    assert r.stdout.decode().rstrip() in generated


if __name__ == "__main__":
    text = DOCS.read_text()
    head, rest = text.split(BEGIN, 1)
    tail_text = rest.split(END, 1)[1]
    DOCS.write_text(head + BEGIN + render_reference() + "\n" + END + tail_text)
    print(f"updated {DOCS}")
