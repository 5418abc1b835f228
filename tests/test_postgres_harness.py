"""Smoke tests for the private PostgreSQL harness (perhap.testing.postgres).

These start a real server.  A server that cannot start is a test failure
(with the server log tail), never a skip: CI must notice a broken harness.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from perhap.testing import postgres as pgmod
from perhap.testing.postgres import PostgresError, PostgresServer, existing_server_url

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A directory for a cluster outside pytest's temp root: a pytest session starting meanwhile
    resets that root to mode 0700, which would lock out the postgres user the server runs as."""
    directory = Path(tempfile.mkdtemp(prefix="perhap-pg-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _start(server: PostgresServer) -> float:
    t0 = time.perf_counter()
    try:
        server.start()
    except PostgresError as e:  # message carries pg_ctl output and the log tail
        pytest.fail(f"PostgreSQL harness could not start:\n{e}", pytrace=False)
    return time.perf_counter() - t0


async def _query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _sql(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    return asyncio.run(_query(url, sql, *args))


def test_write_stop_restart_read(pg_dir: Path) -> None:
    server = PostgresServer(pg_dir / "pg")
    try:
        first = _start(server)
        url = server.url()
        assert url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        _sql(url, "CREATE TABLE events (id int PRIMARY KEY, body text NOT NULL)")
        _sql(url, "INSERT INTO events VALUES (1, 'created'), (2, 'renamed')")
        assert [tuple(r) for r in _sql(url, "SELECT id, body FROM events ORDER BY id")] == [
            (1, "created"), (2, "renamed")]

        t0 = time.perf_counter()
        server.stop()
        stop = time.perf_counter() - t0
        assert not server.running()
        with pytest.raises(OSError):
            _sql(url, "SELECT 1")
        restart = _start(server)
        assert server.url() == url  # same directory, same port
        assert [r["id"] for r in _sql(url, "SELECT id FROM events ORDER BY id")] == [1, 2]

        # Crash-style stop: committed rows survive recovery (fsync is on).
        _sql(url, "INSERT INTO events VALUES (3, 'deleted')")
        server.stop("immediate")
        recover = _start(server)
        assert [r["id"] for r in _sql(url, "SELECT id FROM events ORDER BY id")] == [1, 2, 3]

        db_url = server.create_database("perhap_smoke")
        assert db_url == server.url("perhap_smoke")
        assert _sql(db_url, "SELECT current_database() AS d")[0]["d"] == "perhap_smoke"
        assert _sql(db_url, "SELECT to_regclass('events') AS t")[0]["t"] is None  # fresh
        with pytest.raises(PostgresError, match="already exists"):
            server.create_database("perhap_smoke")
        print(f"\ninitdb+start {first:.2f}s, fast stop {stop:.2f}s, "
              f"restart {restart:.2f}s, restart after immediate stop {recover:.2f}s")
    finally:
        server.cleanup()
    assert not server.running()
    assert (pg_dir / "pg" / "data" / "PG_VERSION").exists()  # caller's directory is kept


def test_temporary_directory_is_removed() -> None:
    with PostgresServer() as server:
        directory = server.directory
        assert _sql(server.url(), "SELECT 1 AS one")[0]["one"] == 1
    assert not directory.exists()


def test_cli_start_stop(pg_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "perhap.testing.postgres", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    directory = pg_dir / "cli"
    started = cli("start", "--dir", str(directory))
    try:
        if started.returncode != 0:
            log = directory / "postgres.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"CLI start failed: {started.stderr}\n{tail}", pytrace=False)
        url = started.stdout.strip()
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        assert _sql(url, "SELECT 1 AS one")[0]["one"] == 1  # outlived the CLI process
        again = cli("start", "--dir", str(directory))  # already running: same URL
        assert (again.returncode, again.stdout.strip()) == (0, url)
    finally:
        stopped = cli("stop", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(OSError):
        _sql(url, "SELECT 1")

    missing = cli("stop", "--dir", str(pg_dir / "nothing-here"))
    assert missing.returncode != 0
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr


def test_start_failure_reports_log_tail(pg_dir: Path) -> None:
    with socket.socket() as busy:  # hold the port so postgres cannot bind it
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = PostgresServer(pg_dir / "pg", port=busy.getsockname()[1])
        try:
            with pytest.raises(PostgresError) as info:
                server.start(timeout=20)
        finally:
            server.cleanup()
    assert "server log tail" in str(info.value)
    assert "could not bind" in str(info.value)


def test_missing_binaries_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pgmod, "PG_GLOB", str(tmp_path / "none" / "*" / "bin"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PostgresError, match="apt-get install postgresql"):
        PostgresServer(tmp_path / "pg")


def test_existing_server_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERHAP_TEST_POSTGRES_URL", raising=False)
    assert existing_server_url() is None
    monkeypatch.setenv("PERHAP_TEST_POSTGRES_URL", "postgresql://u@db:5432/x")
    assert existing_server_url() == "postgresql://u@db:5432/x"
