"""`perhap serve` as a user runs it: defaults, the start line, bad URLs, clean shutdown."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx

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


def test_store_url_with_missing_directory_fails_cleanly(tmp_path: Any) -> None:
    r = run_cli("serve", "--db", f"sqlite:///{tmp_path}/no/such/dir/x.db", "--port", str(free_port()))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "does not exist" in r.stderr


def _wait_healthy(url: str) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not start")
