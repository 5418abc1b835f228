"""A real single-node Apache Cassandra for tests, without Docker.

Cassandra's jars (``cassandra-all`` and its runtime dependencies) are resolved
from Maven Central with ``mvn`` into a per-version cache, and
``org.apache.cassandra.service.CassandraDaemon`` runs in a child JVM with a
minimal ``cassandra.yaml`` written into the node's directory.

    with CassandraNode(tmp_path) as node:
        cluster = Cluster([node.host], port=node.port)

CLI (``python -m perhap.testing.cassandra``):
    start --dir DIR [--port PORT]   start detached, print host:port when ready
    stop --dir DIR                  stop a node started with ``start``
    resolve                         only download the jars

Environment: PERHAP_CASSANDRA_CACHE (cache root, default ~/.cache/perhap),
PERHAP_CASSANDRA_VERSION (default version), JAVA_HOME (which java to run),
PERHAP_CASSANDRA_JVM_OPTS (extra JVM flags, e.g. for debugging).

Modules: ``jars`` (resolving and caching the jars), ``process`` (ports and child
JVMs), ``node`` (a node's life cycle), ``config`` (its cassandra.yaml), ``__main__`` (the CLI).
"""

from .jars import DEFAULT_VERSION, CassandraError, cache_root, resolve_jars
from .node import READY_LINE, CassandraNode

__all__ = ["DEFAULT_VERSION", "READY_LINE", "CassandraError", "CassandraNode", "cache_root", "resolve_jars"]
