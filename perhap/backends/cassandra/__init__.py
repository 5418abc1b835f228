"""The Apache Cassandra (and ScyllaDB) backend: partitioned, replicated, no single writer.

Modules, by concern: ``url`` (the cassandra:// URL), ``driver`` (cassandra-driver bridged to
asyncio), ``schema`` (tables and prepared statements), ``migrate`` (positions for the events of an
older schema), ``records``, ``clock``, ``names`` (key listings), ``positions`` (writer slots and
ts ranges), ``writer`` (appends), ``settle`` (resolving and fencing attempts, repair), ``scan``
(walking a scope's index either way), ``reader`` (reads by id, entity and scope) and ``store``
(the Store template wired to them; its docstring sums up the design, proved in
docs/backends/cassandra.md).
"""

from .store import CassandraStore, open_cassandra
from .url import CassandraOptions, parse_cassandra_url

__all__ = ["CassandraOptions", "CassandraStore", "open_cassandra", "parse_cassandra_url"]
