"""What a test node runs with: its JVM flags, cassandra.yaml and logback.xml."""

from __future__ import annotations

from pathlib import Path

# From Cassandra's conf/jvm17-server.options (plus java.nio): Java 17 module access that
# Cassandra (and jamm, netty, chronicle) need, plus its netty settings.
JVM17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
        "java.base/java.lang.ref", "jdk.unsupported/sun.misc",
        "jdk.compiler/com.sun.tools.javac.file", "jdk.attach/sun.tools.attach")),
    *(f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math",
        "java.base/jdk.internal.module", "java.base/jdk.internal.util.jar",
        "jdk.management/com.sun.management.internal", "java.base/sun.nio.ch", "java.base/java.io",
        "java.base/java.lang.reflect", "jdk.compiler/com.sun.tools.javac", "java.base/java.lang",
        "java.base/java.util", "java.base/java.nio")),
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]


#: The node's sizing: "test" keeps its footprint small (many nodes may share a machine with a test
#: suite); "throughput" gives the engine what a benchmark or a load run needs on this machine class.
#: Durability is the same in both: the commit log is fsync'd before a write is acknowledged.
PROFILES = ("test", "throughput")
#: The JVM heap each profile defaults to, in MiB.
HEAP_MB = {"test": 512, "throughput": 2048}


def sizing(profile: str) -> str:
    """The cassandra.yaml lines that differ between the profiles."""
    if profile == "test":
        return """\
# Keep the footprint small: few threads and tiny caches.
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 2
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
native_transport_max_threads: 16
key_cache_size: 8MiB
row_cache_size: 0MiB
counter_cache_size: 0MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
"""
    if profile == "throughput":
        # Cassandra's own advice is 16 x disks for writes and reads, 8 x cores for counter writes;
        # one disk and 2 cores here, and Paxos rounds hold a write thread across their phases.
        return """\
# Sized for throughput: enough threads for the writes in flight, memtables that flush rarely.
concurrent_reads: 16
concurrent_writes: 32
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 8
concurrent_compactors: 1
native_transport_max_threads: 128
key_cache_size: 64MiB
row_cache_size: 0MiB
counter_cache_size: 0MiB
file_cache_size: 256MiB
networking_cache_size: 64MiB
memtable_heap_space: 512MiB
memtable_offheap_space: 512MiB
"""
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")


def cassandra_yaml(data: Path, state: dict[str, int], port: int, profile: str = "test") -> str:
    """A single-node cluster: ``data`` holds its directories, ``state`` its other ports, ``profile``
    its sizing (:data:`PROFILES`)."""
    return f"""\
# Written by perhap.testing.cassandra: a single-node cluster, profile {profile}.
cluster_name: perhap-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{state['storage_port']}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {state['storage_port']}
ssl_storage_port: {state['ssl_storage_port']}
native_transport_port: {port}
start_native_transport: true
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
saved_caches_directory: {data / 'saved_caches'}
hints_directory: {data / 'hints'}
cdc_raw_directory: {data / 'cdc_raw'}
# An event store answers 201 only for durable writes: fsync the commit log
# before acknowledging (group commit batches concurrent writes per 2 ms window),
# so a SIGKILLed node loses nothing it acknowledged.
commitlog_sync: group
commitlog_sync_group_window: 2ms
# Two cores shared with the test process and a cold JIT: under a burst of batched writes (the
# eventsourcing suite writes 10,000 events from 10 threads) a write can wait out the default 2 s
# while a tiny memtable flushes. A timeout there reports an outcome as unknown, which the tests
# would see as a failure of the store, not of the machine.
write_request_timeout: 10000ms
# The same goes for lightweight transactions racing on one partition (consumer groups' state,
# tests/test_group_states.py): a serial read or a Paxos round waits out contention, not 1-5 s.
read_request_timeout: 10000ms
cas_contention_timeout: 5000ms
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
hinted_handoff_enabled: false
dynamic_snitch: false
cdc_enabled: false
{sizing(profile)}commitlog_total_space: 1024MiB
"""


def logback_xml(log_path: Path) -> str:
    return f"""\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log_path}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


#: nodetool's own logging: warnings and errors on stderr (its default prints every DEBUG line).
NODETOOL_LOGBACK = """\
<configuration>
  <appender name="ERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %logger{0} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="ERR"/></root>
</configuration>
"""
