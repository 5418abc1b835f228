"""Cassandra for the conformance suite: a private node in the session's work directory (or the
cluster PERHAP_TEST_CASSANDRA_HOSTS names, e.g. ``127.0.0.1:9042``).

Creating a keyspace costs seconds of schema changes, so every URL names the session's one keyspace
and a namespace of its own (``?namespace=``): a separate, empty store at no cost.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from perhap.testing.cassandra import CassandraNode


class CassandraProvider:
    name = "cassandra"

    def __init__(self) -> None:
        self.node: CassandraNode | None = None
        self.hosts: str | None = None
        self.counter = itertools.count()
        self.keyspace = f"perhap_t{os.getpid()}"
        self.keyspaces = [self.keyspace]  # others (tests of whole keyspaces) may add theirs

    def start(self, workdir: Path) -> None:
        self.hosts = os.environ.get("PERHAP_TEST_CASSANDRA_HOSTS")
        if not self.hosts:
            # CassandraError (with the log tail) propagates: a node that cannot start is a failure.
            self.node = CassandraNode(workdir / "cassandra")
            self.node.start()
            self.hosts = f"{self.node.host}:{self.node.port}"

    def new_url(self) -> str:
        assert self.hosts is not None, "start() first"
        return f"cassandra://{self.hosts}/{self.keyspace}?namespace=t{next(self.counter)}"

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        elif self.hosts:
            # A shared cluster outlives us: leave it as we found it.
            from cassandra.cluster import Cluster

            host, _, port = self.hosts.rpartition(":")
            cluster = Cluster(host.split(","), port=int(port))
            try:
                session = cluster.connect()
                for keyspace in self.keyspaces:
                    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
            finally:
                cluster.shutdown()


def provider() -> CassandraProvider:
    return CassandraProvider()
