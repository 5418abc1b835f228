"""`perhap serve` as a user runs it: defaults, the start line, bad URLs, clean shutdown, and the
CLI's error contract on start-up (one `error:` line; exit 2 for bad arguments, 1 for a failed start)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ProcessServer, free_port


def run_cli(*args: str, cwd: Any = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_unknown_scheme_is_a_clear_error() -> None:
    r = run_cli("serve", "--db", "mysql://localhost/events")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "mysql" in line
    for scheme in ("sqlite", "postgresql", "cassandra"):
        assert scheme in line


def test_bad_arguments_are_one_line() -> None:
    for args in (["serve", "--port", "nope"], ["serve", "--port", "70000"], ["serve", "--workers", "2"],
                 ["nosuchcommand"], ["serve", "--db", "sqlite://"]):
        r = run_cli(*args)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_help_has_examples() -> None:
    for args in (["--help"], ["serve", "--help"], ["tail", "--help"]):
        r = run_cli(*args)
        assert r.returncode == 0 and "example" in r.stdout


def test_defaults_sqlite_file_in_current_directory_and_start_line(tmp_path: Any) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server = ProcessServer("unused", port)
        server.proc = proc
        _wait_healthy(f"http://127.0.0.1:{port}")
        r = httpx.post(f"http://127.0.0.1:{port}/r/d/e/t", json={"event": 1})
        assert r.status_code == 201
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "perhap.db").exists()
    lines = [line for line in err.splitlines() if "listening" in line]
    assert len(lines) == 1
    assert f"http://127.0.0.1:{port}" in lines[0] and "sqlite:///./perhap.db" in lines[0]
    assert "Traceback" not in err


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_store_url_with_missing_directory_fails_cleanly(tmp_path: Any) -> None:
    # The store opens inside uvicorn's start-up (the lifespan): its failure is still one line.
    r = run_cli("serve", "--db", f"sqlite:///{tmp_path}/no/such/dir/x.db", "--port", str(free_port()))
    assert r.returncode == 1
    assert "does not exist" in one_error_line(r)


def test_a_store_url_naming_a_directory_fails_cleanly_and_makes_nothing(tmp_path: Path) -> None:
    """A directory given as the database: one line, and no lock file left beside it."""
    (tmp_path / "adir").mkdir()
    r = run_cli("serve", "--db", f"sqlite:///{tmp_path}/adir", "--port", str(free_port()))
    assert r.returncode == 1
    assert one_error_line(r).endswith(f": {tmp_path}/adir is a directory, not a database file"), r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]


def test_a_database_that_does_not_answer_is_one_line() -> None:
    """PostgreSQL and Cassandra that cannot be reached at start (nothing listens on the port):
    one line naming the reason (the Cassandra driver's own log printed its tracebacks first)."""
    for url in (f"postgresql://perhap@127.0.0.1:{free_port()}/perhap?timeout=2",
                f"cassandra://127.0.0.1:{free_port()}/perhap?timeout=2"):
        r = run_cli("serve", "--db", url, "--port", str(free_port()))
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        line = one_error_line(r)
        assert "cannot" in line, line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_in_use_is_one_line_and_creates_no_store(tmp_path: Path, busy_port: int) -> None:
    r = run_cli("serve", "--db", "sqlite:///./perhap.db", "--port", str(busy_port), cwd=tmp_path)
    assert r.returncode == 1
    line = one_error_line(r)
    assert f"cannot listen on 127.0.0.1:{busy_port}: address already in use" in line and "--port" in line
    assert not list(tmp_path.iterdir())  # checked before the store was opened


RACE = """
import sys
from perhap.cli.common import CommandError
from perhap.cli.serve import reporting_start_failure
from perhap.server import serve
try:
    reporting_start_failure(serve, db=sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]))
except CommandError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.status)
"""


def test_port_taken_inside_uvicorn_is_one_line(tmp_path: Path, busy_port: int) -> None:
    # The port is taken after the pre-flight check (a race): uvicorn's own failure, one line too.
    r = subprocess.run([sys.executable, "-c", RACE, f"sqlite:///{tmp_path}/x.db", str(busy_port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "address already in use" in one_error_line(r)


def test_bad_serve_arguments_exit_2() -> None:
    cases = [["--port", "70000"], ["--workers", "0"], ["--workers", "2"], ["--db", "mysql://x/y"],
             ["--body-timeout", "0"], ["--header-timeout", "-1"], ["--max-connections", "0"],
             ["--tls-cert", "no.pem", "--tls-key", "no.pem"], ["--host", "0.0.0.0"]]
    for args in cases:
        r = run_cli("serve", "--port", str(free_port()), *args)
        assert r.returncode == 2, (args, r.stderr)
        one_error_line(r)


def _serve_errors(cases: list[list[str]], cwd: Path) -> list[str]:
    """Each serve's one error line, after checking it is exit 2 (run four at a time)."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: run_cli("serve", "--port", str(free_port()), *args, cwd=cwd), cases))
    for args, r in zip(cases, results):
        assert r.returncode == 2, (args, r.stderr)
    return [one_error_line(r) for r in results]


def test_seconds_options_must_be_finite_and_above_0(tmp_path: Path) -> None:
    """--idle-timeout -1 and nan were taken (nan then made every request log uvloop's ValueError)."""
    cases = [["--idle-timeout", "-1"], ["--idle-timeout", "nan"], ["--idle-timeout", "0"], ["--heartbeat", "inf"],
             ["--header-timeout", "nan"], ["--body-timeout", "inf"], ["--write-timeout", "nan"],
             ["--write-timeout", "inf"], ["--write-timeout", "-1"]]
    for args, line in zip(cases, _serve_errors(cases, tmp_path)):
        assert args[0] in line and "seconds (and finite)" in line, line
    assert not list(tmp_path.iterdir())


def test_options_that_would_refuse_every_request_are_exit_2(tmp_path: Path) -> None:
    """--max-header 10 started and answered every request 431; --auth '' started with no tokens,
    every request a 401; --tls-cert given a directory was "no such file"."""
    (tmp_path / "pems").mkdir()
    cases = [["--max-header", "10"], ["--max-header", "1023"], ["--auth", ""],
             ["--auth", "t.json", "--tls-cert", "pems", "--tls-key", "pems"]]
    lines = _serve_errors(cases, tmp_path)
    assert "--max-header must be 1024 or more" in lines[0] and "--max-header must be 1024" in lines[1], lines
    assert "--auth takes the path of a token file" in lines[2], lines
    assert lines[3] == "error: cannot read pems: a directory", lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pems"]


def test_a_token_file_that_is_a_directory_is_refused_before_its_lock_is_made(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    r = run_cli("token", "add", "--auth", str(tmp_path / "tokens"), "--realm", "shop", "--permission", "read")
    assert r.returncode == 1 and "is a directory" in one_error_line(r), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]  # no tokens.lock beside it


def test_a_cors_origin_no_browser_sends_is_exit_2(tmp_path: Path) -> None:
    """'*' and a bare host were taken, and matched no page ever (the operator's pages were refused
    in silence): an origin is scheme://host[:port]."""
    cases = [["--cors-origin", o] for o in ("*", "app.example.com", "https://a.example/app", "ftp://a.example",
                                            "https://a.example:x", "https://user:pw@a.example", "https://a.example//")]
    for args, line in zip(cases, _serve_errors(cases, tmp_path)):
        assert f"--cors-origin {args[1]!r} is not an origin: give scheme://host[:port]" in line, line
    assert not list(tmp_path.iterdir())


def test_a_cors_origin_written_otherwise_than_a_browser_sends_it_is_exit_2_with_the_form_to_give(
        tmp_path: Path) -> None:
    """A browser sends the scheme and host in lower case, no default port, an international name
    as punycode: 'HTTPS://Up.example.com' or 'https://p.example.com:443' started and then never
    matched (preflights from the real page were 401s); 'https://日本.jp' failed with an unexpected
    UnicodeEncodeError (exit 1)."""
    given = {"HTTPS://Up.example.com": "https://up.example.com", "https://p.example.com:443": "https://p.example.com",
             "http://127.0.0.1:80": "http://127.0.0.1", "https://日本.jp": "https://xn--wgv71a.jp",
             "https://a b": None}
    cases = [["--cors-origin", o] for o in given]
    for (origin, canonical), line in zip(given.items(), _serve_errors(cases, tmp_path)):
        assert f"--cors-origin {origin!r} is not an origin as a browser sends it" in line, line
        assert (f"give {canonical}" in line) if canonical else ("give" not in line), line
    assert not list(tmp_path.iterdir())


def test_an_ipv6_address_is_bracketed_in_the_start_line_and_the_busy_port_error(tmp_path: Path) -> None:
    """http://::1:8787 is no URL: the start line names one a client can use, http://[::1]:8787."""
    port = free_port()
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", port))
        except OSError:
            pytest.skip("this machine has no IPv6 loopback")  # (a machine without ::1, not a backend)
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "serve", "--host", "::1", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(f"http://[::1]:{port}")
        busy = run_cli("serve", "--host", "::1", "--port", str(port), "--db", f"sqlite:///{tmp_path}/b.db")
        assert f"cannot listen on [::1]:{port}" in one_error_line(busy)
        # Written as URLs write it, the address is taken (it was looked up as the name "[::1]").
        busy = run_cli("serve", "--host", "[::1]", "--port", str(port), "--db", f"sqlite:///{tmp_path}/b.db")
        assert f"cannot listen on [::1]:{port}: address already in use" in one_error_line(busy)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"perhap listening on http://[::1]:{port}," in err, err


def test_a_malformed_store_url_is_exit_2_before_anything_starts(tmp_path: Path) -> None:
    """They were `error: cannot open the store ...: invalid literal for int() ...`, exit 1."""
    cases = {"postgresql://u@h:notaport/db": "the port of a PostgreSQL URL must be a whole number from 1 to 65535, "
                                             "not 'notaport'",
             "postgresql://u@h:0/db": "not '0'", "postgresql://u@h:99999/db": "not '99999'",
             "postgresql://u@h1:5432,[::1]:x/db": "not 'x'", "postgresql://u@h/db?pool_size=x": "pool_size",
             "postgres://u@h/db?timeout=nan": "timeout", "cassandra://h:notaport/ks": "port of a Cassandra URL",
             "cassandra://h/ks?nope=1": "unknown Cassandra URL options: nope"}
    lines = _serve_errors([["--db", url] for url in cases], tmp_path)
    for expected, line in zip(cases.values(), lines):
        assert line.startswith("error: --db: ") and expected in line, line


def test_a_malformed_store_url_is_exit_2_without_the_backends_driver_too(tmp_path: Path) -> None:
    """The default install has neither asyncpg nor cassandra-driver: a port that is not a number
    was "needs asyncpg", exit 1, there; and a bad ?synchronous= was exit 1 on any install."""
    missing = tmp_path / "no-drivers"
    (missing / "cassandra").mkdir(parents=True)
    (missing / "asyncpg.py").write_text("raise ImportError('asyncpg is not installed here')\n")
    (missing / "cassandra" / "__init__.py").write_text("raise ImportError('cassandra-driver is not installed here')\n")
    cases = {"postgresql://u@h:notaport/db": "the port of a PostgreSQL URL must be a whole number from 1 to 65535, "
                                             "not 'notaport'",
             "cassandra://h:x/ks": "the port of a Cassandra URL must be a whole number",
             "sqlite:///./s.db?synchronous=bogus": "synchronous must be FULL, NORMAL, EXTRA or OFF"}
    env = {**os.environ, "PYTHONPATH": str(missing)}
    for url, expected in cases.items():
        for command in (["serve", "--port", str(free_port()), "--db", url], ["export", "--db", url]):
            r = subprocess.run([sys.executable, "-m", "perhap.cli", *command], capture_output=True, text=True,
                               timeout=60, cwd=tmp_path, env=env)
            line = one_error_line(r)
            assert r.returncode == 2 and line.startswith("error: --db: ") and expected in line, (command, line)
    assert not (tmp_path / "s.db").exists()


def _key_and_cert(tmp_path: Path, name: str, password: bytes | None = None) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    encryption = (serialization.NoEncryption() if password is None
                  else serialization.BestAvailableEncryption(password))
    cert_path, key_path = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))
    return cert_path, key_path


def test_tls_files_that_do_not_load_are_one_line_exit_2(tmp_path: Path) -> None:
    """Garbage PEM files were `error: unexpected SSLError: [SSL] PEM lib ...`, exit 1, once the
    store was open; a key with a passphrase would ask for it on the terminal."""
    files = tmp_path / "pem"
    files.mkdir()
    garbage = files / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    cert, key = _key_and_cert(files, "a")
    other_cert, _ = _key_and_cert(files, "b")
    locked_cert, locked_key = _key_and_cert(files, "c", password=b"secret")
    run = tmp_path / "run"
    run.mkdir()
    cases = {(garbage, garbage): f"{garbage} holds no PEM certificate",
             (cert, garbage): f"{garbage} holds no PEM private key",
             (other_cert, key): f"{key} is not the private key of the certificate in {other_cert}",
             (locked_cert, locked_key): f"{locked_key} is protected by a passphrase"}
    lines = _serve_errors([["--auth", "tokens.json", "--tls-cert", str(c), "--tls-key", str(k)] for c, k in cases],
                          run)
    for ((c, k), expected), line in zip(cases.items(), lines):
        assert line.startswith(f"error: --tls-cert {c}, --tls-key {k}: ") and expected in line, line
    assert not list(run.iterdir())  # refused before the token file or the store was touched


def test_limit_defaults_come_from_perhap_limits() -> None:
    from perhap import limits
    from perhap.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.body_timeout == limits.DEFAULT_BODY_TIMEOUT
    assert args.max_connections == limits.DEFAULT_MAX_CONNECTIONS
    assert args.heartbeat == limits.DEFAULT_HEARTBEAT and args.idle_timeout == limits.DEFAULT_IDLE_TIMEOUT


def test_body_timeout_reaches_the_server(tmp_path: Path) -> None:
    # A body that stops arriving is answered 408 once --body-timeout has passed (5 s of slack).
    with ProcessServer(f"sqlite:///{tmp_path}/t.db", None, "--body-timeout", "1") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /r/d/e/t HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 20\r\n\r\n{\"event\"")
            started = time.monotonic()
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 1 + 5


def _wait_healthy(url: str, verify: ssl.SSLContext | bool = True) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


def test_a_certificate_of_your_own_is_trusted_through_ssl_cert_file(tmp_path: Path) -> None:
    """docs/security.md: the CLI (and the client) trust a self-signed certificate named by
    SSL_CERT_FILE; without it the error says so, not "is perhap serve running there?"."""
    from tests.test_limits import _self_signed

    cert_path, key_path = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "serve", "--port", str(port), "--db",
                             f"sqlite:///{tmp_path}/t.db", "--tls-cert", str(cert_path), "--tls-key", str(key_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"https://127.0.0.1:{port}"
        _wait_healthy(url, verify=ssl.create_default_context(cafile=str(cert_path)))
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        untrusted = subprocess.run([sys.executable, "-m", "perhap.cli", "keys", "--url", url], capture_output=True,
                                   text=True, timeout=60, env=env)
        line = one_error_line(untrusted)
        assert "SSL_CERT_FILE" in line and "running there" not in line, line
        trusted = subprocess.run([sys.executable, "-m", "perhap.cli", "keys", "--url", url], capture_output=True,
                                 text=True, timeout=60, env={**env, "SSL_CERT_FILE": str(cert_path)})
        assert trusted.returncode == 0, trusted.stderr
        # Plain HTTP to it: the server closes the connection, and the line says what may be why.
        plain = subprocess.run([sys.executable, "-m", "perhap.cli", "keys", "--url", url.replace("https", "http")],
                               capture_output=True, text=True, timeout=60, env=env)
        line = one_error_line(plain)
        assert line.endswith("(if the server there was started with --tls-cert, use https://)"), line
        assert "running there" not in line, line
    finally:
        proc.terminate()
        proc.wait(30)


LOGGING = """
import logging, sys
from perhap.server import _setup_logging
_setup_logging("info", sys.argv[1])
try:
    raise ConnectionRefusedError(111, "Connect call failed")
except OSError:
    logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    logging.getLogger("perhap.http").error("unhandled error on GET /x", exc_info=True)
"""


def test_a_library_warning_during_an_outage_is_one_line_and_perhap_errors_keep_their_traceback() -> None:
    """`perhap serve` on PostgreSQL logged a traceback a second while the database was down (asyncpg's
    pool retrying its connections, a warning): now one line each, the exception's summary at its end."""
    for log_format in ("text", "json"):
        r = subprocess.run([sys.executable, "-c", LOGGING, log_format], capture_output=True, text=True, timeout=60)
        lines = r.stderr.splitlines()
        warning = next(line for line in lines if "Failed to restore" in line)
        assert warning.endswith("retrying: ConnectionRefusedError: [Errno 111] Connect call failed") or \
            "retrying: ConnectionRefusedError: [Errno 111] Connect call failed\"" in warning, warning
        assert r.stderr.count("Traceback") == 1 and "unhandled error" in r.stderr, r.stderr  # perhap's own: kept
        assert r.stderr.index("Failed to restore") < r.stderr.index("unhandled error"), r.stderr
