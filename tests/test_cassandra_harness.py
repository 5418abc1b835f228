"""Smoke tests for perhap.testing.cassandra: a real Cassandra node, no mocks.

A node that cannot start makes these tests fail (with the log tail), never skip.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from perhap.testing.cassandra import CassandraNode

pytestmark = pytest.mark.cassandra


@contextmanager
def session(node: CassandraNode) -> Iterator[Any]:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster([node.host], port=node.port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


def read(node: CassandraNode) -> dict[int, str]:
    with session(node) as s:
        return {r.id: r.body for r in s.execute("SELECT id, body FROM smoke.t")}


def test_write_survives_stop_and_kill(tmp_path: Path) -> None:
    node = CassandraNode(tmp_path / "node")
    assert node.url("smoke") == f"cassandra://127.0.0.1:{node.port}/smoke"
    node.start()
    try:
        with session(node) as s:
            s.execute("CREATE KEYSPACE smoke WITH replication = "
                      "{'class': 'SimpleStrategy', 'replication_factor': 1}")
            s.execute("CREATE TABLE smoke.t (id int PRIMARY KEY, body text)")
            s.execute("INSERT INTO smoke.t (id, body) VALUES (1, 'before stop')")
        assert read(node) == {1: "before stop"}

        node.stop()  # graceful: same directory and ports on restart
        assert not node.running()
        node.start()
        with session(node) as s:
            s.execute("INSERT INTO smoke.t (id, body) VALUES (2, 'before kill')")

        # SIGKILL right after the acknowledged write: the commit log is synced
        # before acknowledging (group mode), so nothing acknowledged is lost.
        node.kill()
        node.start()
        assert read(node) == {1: "before stop", 2: "before kill"}
    finally:
        node.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perhap.testing.cassandra", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_start_stop(tmp_path: Path) -> None:
    directory = tmp_path / "cli-node"
    started = cli("start", "--dir", str(directory))
    node = CassandraNode(directory)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"127.0.0.1:{node.port}"
        assert node.running()  # outlived the CLI process that started it
        with session(node) as s:
            assert s.execute("SELECT release_version FROM system.local").one()[0].startswith("5.0")
        stopped = cli("stop", "--dir", str(directory))
        assert stopped.returncode == 0, stopped.stderr
        assert not node.running()
    finally:
        node.stop()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    done = cli("stop", "--dir", str(tmp_path / "missing"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_the_throughput_profile_sizes_the_node_for_load_and_keeps_its_durability(tmp_path: Path) -> None:
    from perhap.testing.cassandra.config import cassandra_yaml

    state = {"storage_port": 7000, "ssl_storage_port": 7001}
    small = cassandra_yaml(tmp_path, state, 9042)
    big = cassandra_yaml(tmp_path, state, 9042, "throughput")
    assert "concurrent_writes: 4\n" in small and "concurrent_writes: 32\n" in big
    assert "memtable_heap_space: 64MiB" in small and "memtable_heap_space: 512MiB" in big
    for text in (small, big):  # a 201 is durable whatever the sizing
        assert "commitlog_sync: group\n" in text
    assert CassandraNode(tmp_path / "a").heap_mb == 512
    assert CassandraNode(tmp_path / "b", profile="throughput").heap_mb == 2048
    assert CassandraNode(tmp_path / "c", profile="throughput", heap_mb=1024).heap_mb == 1024
    with pytest.raises(ValueError, match="profile must be one of test, throughput"):
        CassandraNode(tmp_path / "d", profile="huge")
